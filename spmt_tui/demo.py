"""``make demo``: start the sandbox tenant, create a sample share, and open the TUI on it.

Everything lives under ``.demo/`` in the current folder: the tenant (``.demo/tenant``), the sample
share (``.demo/sample``) and the working folder with sessions and reports (``.demo/work``). The
sandbox stops when the TUI exits; run ``make demo`` again to resume or start another migration.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from spmt_tui.sandbox.azurite import port_is_free

DEMO = Path(".demo")


def make_sample(root: Path) -> None:
    """Create a small share with ordinary files and a few that break SharePoint's rules."""
    if root.exists():
        return
    files = {
        "Finance/2024/budget.csv": "quarter,amount\nQ1,1200\nQ2,1350\n",
        "Finance/2024/report.txt": "Annual report draft.\n" * 200,
        "Finance/invoices/inv-0001.txt": "Invoice 0001\n",
        "Finance/invoices/inv-0002.txt": "Invoice 0002\n",
        "HR/policies/leave policy.txt": "Leave policy text.\n" * 50,
        "HR/policies/handbook.md": "# Handbook\n\nWelcome.\n",
        "Projects/alpha/notes.txt": "Alpha project notes.\n",
        "Projects/alpha/data.bin": "x" * 300_000,
        "Projects/beta/readme.txt": "Beta.\n",
        "Projects/beta/empty.txt": "",
        "Shared/what?.txt": "A name with a character SharePoint rejects.\n",
        "Shared/CON.txt": "A reserved device name.\n",
        "Shared/~$locked.docx": "An Office owner file.\n",
        "Shared/page_files/image.png": "A thicket folder.\n",
        "Shared/.hidden-notes.txt": "A hidden file.\n",
    }
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
    for number in range(60):
        path = root / "Archive" / f"batch-{number // 20}" / f"record-{number:03d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"record {number}\n" * (number + 1), encoding="utf-8")
    stamp = time.time() - 86400 * 30
    for path in root.rglob("*"):
        os.utime(path, (stamp, stamp))


def _free_port() -> int:
    for port in range(8443, 8543, 3):
        if all(port_is_free(p) for p in (port, port + 1, port + 2)):
            return port
    raise SystemExit("no free ports between 8443 and 8545 on 127.0.0.1 for the sandbox")


def main() -> int:
    DEMO.mkdir(exist_ok=True)
    make_sample(DEMO / "sample")
    tenant = DEMO / "tenant"
    command = [sys.executable, "-m", "spmt_tui", "sandbox", "--data", str(tenant),
               "--port", str(_free_port())]
    sandbox = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        assert sandbox.stdout is not None
        while True:
            if time.monotonic() > deadline or sandbox.poll() is not None:
                print(f"the sandbox did not start; see {tenant / 'sandbox.log'}", file=sys.stderr)
                return 1
            ready, _, _ = select.select([sandbox.stdout], [], [], 0.5)
            if ready and sandbox.stdout.readline().startswith("ready "):
                break
        from spmt_tui.cli import main as cli_main

        return cli_main([
            "--tenant-profile", str(tenant / "tenant.json"),
            "--source", str((DEMO / "sample").resolve()),
            "--working-folder", str((DEMO / "work").resolve()),
        ])
    finally:
        sandbox.send_signal(signal.SIGTERM)
        try:
            sandbox.wait(timeout=15)
        except subprocess.TimeoutExpired:
            sandbox.kill()


if __name__ == "__main__":
    raise SystemExit(main())
