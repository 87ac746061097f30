"""``kill -9`` in the middle of a migration, then ``spmt-tui resume``: nothing lost, nothing twice."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from harness import REPO, Sandbox, start_sandbox
from spmt_tui.sandbox.export import export_library


@pytest.fixture
def slow_import_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    # Each job waits 3 s before it starts, so a kill lands while jobs are still running.
    box = start_sandbox(tmp_path / "tenant", "--import-delay", "3")
    try:
        yield box
    finally:
        box.stop()


def _count(db: Path, status: str) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            return connection.execute("SELECT count(*) FROM items WHERE status = ?", (status,)).fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def _cli(*args: str, **kwargs: object) -> list[str]:
    return [sys.executable, "-m", "spmt_tui", *args]


# CASE-14: kill -9 after jobs were submitted, then resume
@pytest.mark.parametrize("kill_when", ["submitted", "migrated"])
def test_kill_and_resume(slow_import_sandbox: Sandbox, tmp_path: Path, kill_when: str) -> None:
    source = tmp_path / "share"
    expected: dict[str, bytes] = {}
    for number in range(90):
        relative = f"d{number % 3}/f{number:03d}.bin"
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        content = os.urandom(100 + number)
        (source / relative).write_bytes(content)
        expected[relative] = content
    work = tmp_path / "work"
    common = ["--tenant-profile", str(slow_import_sandbox.profile_path), "--auth", "password"]
    process = subprocess.Popen(
        _cli("migrate", str(source), *common, "--working-folder", str(work), "--folder", "resume",
             "--package-max-files", "10", "--jobs-in-flight", "3"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    db = None
    while time.monotonic() < deadline:
        found = list(work.glob("sessions/*/session.db"))
        if found:
            db = found[0]
            if _count(db, kill_when) >= 5:
                break
        if process.poll() is not None:
            pytest.fail(f"the migration ended before it could be killed: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    else:
        pytest.fail("the migration never reached the point to kill it")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert db is not None
    assert _count(db, "migrated") < 90, "the migration finished before the kill"

    listing = subprocess.run(_cli("sessions", "--working-folder", str(work)), cwd=REPO,
                             capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "interrupted" in listing.stdout

    resumed = subprocess.run(_cli("resume", *common, "--working-folder", str(work)), cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert resumed.stdout.startswith("completed")

    out = tmp_path / "export"
    export_library(slow_import_sandbox.data_dir, "Documents", out)
    arrived = {str(p.relative_to(out / "resume")): p.read_bytes()
               for p in (out / "resume").rglob("*") if p.is_file()}
    assert sorted(arrived) == sorted(expected)
    assert all(arrived[name] == content for name, content in expected.items())

    with sqlite3.connect(slow_import_sandbox.data_dir / "tenant.db") as tenant:
        urls = [row[0] for row in tenant.execute("SELECT lower(url) FROM files WHERE url LIKE '%/resume/%'")]
        int_ids = [row[0] for row in tenant.execute("SELECT int_id FROM files WHERE url LIKE '%/resume/%'")]
    assert len(urls) == len(set(urls)) == 90
    assert len(int_ids) == len(set(int_ids)), "two files share a list item id"

    reports = list(work.glob("sessions/*/reports/**/ItemReport_R1.csv"))
    assert len(reports) == 1
    with open(reports[0], encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 93  # 90 files and 3 folders, each once
    assert {row["Status"] for row in rows} == {"Migrated"}
