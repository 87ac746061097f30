"""The chaos harness in its short, fixed-seed form: kills and faults end in an exact library."""

from __future__ import annotations

import subprocess
import sys

from harness import REPO


def test_chaos_quick_run() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/chaos.py", "--seed", "11", "--files", "150", "--kills", "4", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "problems 0" in result.stdout
