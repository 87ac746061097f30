"""A full working-folder disk pauses the migration, which goes on once there is room again.

The command-line tests put the working folder on a real tmpfs of a few MiB. Mounting one needs
no root: ``unshare --user --map-root-user --mount`` gives the migration a mount namespace of its
own, where it mounts the tmpfs and runs. The test fills that tmpfs through
``/proc/<pid>/root`` (the process's view of the file system) until a write fails with ENOSPC,
then deletes the filler. Where user namespaces are disabled these tests are skipped.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness import REPO, Sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine import diskspace
from spmt_tui.engine.diskspace import WAITING_PHASE, DiskSpaceGuard, is_disk_full
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.progress import PhaseEvent
from spmt_tui.engine.settings import Settings, SettingsError
from spmt_tui.profile import load_profile
from spmt_tui.sandbox.export import export_library

TMPFS_MIB = 24


# -- classification against real failures ---------------------------------------------------------


def _dev_full_error() -> OSError:
    with pytest.raises(OSError) as caught:
        with open("/dev/full", "wb", buffering=0) as handle:
            handle.write(b"x" * 4096)
    return caught.value


def _sqlite_full_error(tmp_path: Path) -> sqlite3.Error:
    connection = sqlite3.connect(tmp_path / "small.db")
    connection.execute("CREATE TABLE t (data BLOB)")
    connection.execute("PRAGMA max_page_count = 4")
    with pytest.raises(sqlite3.Error) as caught:
        for _ in range(100):
            connection.execute("INSERT INTO t VALUES (?)", (os.urandom(4096),))
            connection.commit()
    connection.close()
    return caught.value


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is missing")
def test_dev_full_is_disk_full() -> None:
    error = _dev_full_error()
    assert error.errno == errno.ENOSPC
    assert is_disk_full(error)


def test_sqlite_full_is_disk_full(tmp_path: Path) -> None:
    error = _sqlite_full_error(tmp_path)
    assert "full" in str(error)
    assert is_disk_full(error)


def test_disk_full_found_in_chain(tmp_path: Path) -> None:
    # _Transaction's failed ROLLBACK replaces SQLITE_FULL; the original stays in __context__.
    try:
        try:
            raise _sqlite_full_error(tmp_path)
        except sqlite3.Error:
            raise sqlite3.OperationalError("cannot rollback - no transaction is active")
    except sqlite3.Error as outer:
        assert is_disk_full(outer)
    assert is_disk_full(ExceptionGroup("tasks", [ValueError("x"), OSError(errno.EDQUOT, "quota")]))


def test_other_errors_not_disk_full(tmp_path: Path) -> None:
    assert not is_disk_full(OSError(errno.EACCES, "denied"))
    assert not is_disk_full(sqlite3.OperationalError("database is locked"))
    assert not is_disk_full(ValueError("full"))
    assert not is_disk_full(None)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="/dev/full is missing")
def test_log_file_on_full_disk_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from spmt_tui.logs import _FileHandler

    handler = _FileHandler("/dev/full")
    record = logging.LogRecord("spmt.test", logging.WARNING, __file__, 1, "a line", None, None)
    handler.emit(record)
    handler.emit(record)
    handler.close()
    assert capsys.readouterr().err == ""
    assert handler.full_disk_errors >= 2


def test_min_free_space_setting_checked() -> None:
    with pytest.raises(SettingsError, match="min_free_space_mb -1"):
        Settings(min_free_space_mb=-1).validate()


async def test_guard_retries_until_write_succeeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskspace, "DISK_POLL_SECONDS", 0.01)
    messages: list[str] = []
    resumed: list[bool] = []
    guard = DiskSpaceGuard(tmp_path, 0, on_wait=messages.append, on_resume=lambda: resumed.append(True))
    attempts = 0

    def write() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise _dev_full_error()
        return "written"

    assert await guard.retry(write) == "written"
    assert attempts == 3
    assert len(messages) == 2
    assert str(tmp_path) in messages[0]
    assert "No space left on device" in messages[0]
    assert len(resumed) == 2
    with pytest.raises(ValueError):
        await guard.retry(lambda: (_ for _ in ()).throw(ValueError("not a disk error")))


# -- the engine's pause, with the free-space probe as a seam --------------------------------------


def _provider(box: Sandbox) -> UsernamePasswordProvider:
    data = json.loads(box.profile_path.read_text())
    return UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                    data["user"]["password"], store=MemoryStore())


def _make_tree(source: Path, count: int) -> dict[str, bytes]:
    expected: dict[str, bytes] = {}
    for number in range(count):
        relative = f"d{number % 5}/f{number:03d}.bin"
        data = os.urandom(200 + (number * 997) % 20_000)
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(data)
        expected[relative] = data
    return expected


def _exported(box: Sandbox, out: Path, folder: str) -> dict[str, bytes]:
    export_library(box.data_dir, "Documents", out)
    root = out / folder
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_low_free_space_pauses_engine(sandbox: Sandbox, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diskspace, "DISK_POLL_SECONDS", 0.1)
    monkeypatch.setattr(diskspace, "PROBE_INTERVAL_SECONDS", 0.0)
    expected = _make_tree(tmp_path / "share", 40)
    events: list[PhaseEvent] = []
    profile = load_profile(sandbox.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=5, packages_in_flight=1,
                        job_poll_seconds=0.5, min_free_space_mb=50)
    migration = Migration([MigrationTask(str(tmp_path / "share"), profile.site_url, "Documents",
                                         "low-space")], settings, profile, _provider(sandbox),
                          sink=lambda event: events.append(event) if isinstance(event, PhaseEvent) else None)
    free = {"bytes": 10 * 2**30}
    migration.disk.probe = lambda folder: free["bytes"]
    run = asyncio.create_task(migration.run())
    while migration.stats.snapshot().counts["migrated"] < 5:
        assert not run.done(), run.result().message
        await asyncio.sleep(0.05)
    free["bytes"] = 20 * 2**20
    for _ in range(400):
        if migration.stats.snapshot().phase == WAITING_PHASE:
            break
        await asyncio.sleep(0.05)
    snapshot = migration.stats.snapshot()
    assert snapshot.phase == WAITING_PHASE
    assert str(tmp_path / "work") in snapshot.message
    assert "20.0 MB free, 50.0 MB needed" in snapshot.message
    # While the probe reports too little room, no new file is uploaded.
    await asyncio.sleep(0.5)
    uploaded = migration.stats.snapshot().counts["uploaded"]
    await asyncio.sleep(1.0)
    assert migration.stats.snapshot().counts["uploaded"] == uploaded
    assert migration.stats.snapshot().phase == WAITING_PHASE
    free["bytes"] = 10 * 2**30
    result = await run
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0
    phases = [event.phase for event in events]
    assert WAITING_PHASE in phases
    assert phases[phases.index(WAITING_PHASE) + 1] == "migrating"
    assert _exported(sandbox, tmp_path / "export", "low-space") == expected


# -- a real full tmpfs under the command line -------------------------------------------------------


def _namespaces_work(tmp_path: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = tmp_path / "ns-probe"
    probe.mkdir()
    result = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                             'mount -t tmpfs -o size=1m tmpfs "$0"', str(probe)],
                            capture_output=True, timeout=30)
    return result.returncode == 0


class _Run:
    """``spmt-tui migrate`` on a tmpfs working folder in its own mount namespace."""

    def __init__(self, box: Sandbox, tmp_path: Path, source: Path, folder: str, *extra: str) -> None:
        self.work = tmp_path / "work"
        self.kept = tmp_path / "kept"
        self.work.mkdir()
        self.kept.mkdir()
        migrate = [sys.executable, "-m", "spmt_tui", "migrate", str(source), "--tenant-profile",
                   str(box.profile_path), "--auth", "password", "--working-folder", str(self.work),
                   "--folder", folder, "--package-max-files", "8", "--packages-in-flight", "1",
                   "--job-poll-seconds", "0.5", *extra]
        # The tmpfs disappears with the namespace, so the session folder is copied out at the end.
        script = ('mount -t tmpfs -o size=%dm,mode=0700 tmpfs "$0" || exit 90; "$@"; code=$?; '
                  'cp -a "$0/." "%s/"; exit $code' % (TMPFS_MIB, self.kept))
        self.process = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(self.work),
             *migrate], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.stderr: list[str] = []
        self.stdout = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    @property
    def inside(self) -> Path:
        """The working folder inside the migration's mount namespace: the tmpfs."""
        return Path(f"/proc/{self.process.pid}/root") / self.work.relative_to("/")

    def wait_for(self, predicate, what: str, timeout: float = 120.0) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; stderr:\n{''.join(self.stderr[-40:])}")

    def kept_packages(self) -> int:
        return len(list(self.inside.glob("sessions/*/packages/*")))

    def waiting_lines(self) -> list[str]:
        return [line for line in self.stderr if f"[{WAITING_PHASE}]" in line]

    def fill(self, leave_bytes: int) -> Path:
        """Write a filler file into the tmpfs until ENOSPC, or until ``leave_bytes`` remain."""
        filler = self.inside / "filler"
        hit_enospc = False
        with open(filler, "wb", buffering=0) as handle:
            while True:
                room = shutil.disk_usage(self.inside).free - leave_bytes
                if leave_bytes and room <= 0:
                    break
                try:
                    handle.write(b"\0" * min(2**20, room if leave_bytes else 2**20))
                except OSError as error:
                    assert error.errno == errno.ENOSPC, error
                    hit_enospc = True
                    break
        assert hit_enospc or leave_bytes, "the tmpfs never reported ENOSPC"
        return filler

    def finish(self, timeout: float = 300.0) -> int:
        assert self.process.stdout is not None
        self.stdout = self.process.stdout.read()
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


@pytest.fixture
def namespaces(tmp_path: Path) -> None:
    if not _namespaces_work(tmp_path):
        pytest.skip("unprivileged user and mount namespaces are not available, so no tmpfs can be "
                    "mounted without root")


def test_enospc_pauses_then_completes(namespaces: None, sandbox: Sandbox, tmp_path: Path) -> None:
    expected = _make_tree(tmp_path / "share", 120)
    run = _Run(sandbox, tmp_path, tmp_path / "share", "enospc", "--min-free-space-mb", "0")
    run.wait_for(lambda: run.kept_packages() >= 2, "two packages kept")
    filler = run.fill(leave_bytes=0)
    run.wait_for(lambda: run.waiting_lines(), "the waiting status line")
    line = run.waiting_lines()[0]
    assert f"the working folder {run.work} is full" in line
    assert re.search(r"\d+\.\d MB free, 4\.0 MB needed", line), line
    assert "No space left on device" in line or "database or disk is full" in line, line
    # Two more status lines while full: the run waits instead of failing items.
    seen = len(run.stderr)
    run.wait_for(lambda: len(run.stderr) >= seen + 2, "status lines while the disk is full", 30)
    assert run.process.poll() is None
    assert "failed 0" in run.stderr[-1], run.stderr[-1]
    filler.unlink()
    code = run.finish()
    assert code == 0, run.stdout + "".join(run.stderr[-40:])
    assert run.stdout.startswith("completed:"), run.stdout
    assert "failed 0" in run.stdout
    assert _exported(sandbox, tmp_path / "export", "enospc") == expected
    session = next((run.kept / "sessions").iterdir())
    assert list((session / "reports").rglob("ItemReport_R1.csv")), "reports were not written"
    log_text = (session / "logs" / "spmt-tui.log").read_text()
    assert "is full" in log_text


def test_threshold_pauses_on_real_tmpfs(namespaces: None, sandbox: Sandbox, tmp_path: Path) -> None:
    expected = _make_tree(tmp_path / "share", 80)
    run = _Run(sandbox, tmp_path, tmp_path / "share", "threshold", "--min-free-space-mb", "8")
    run.wait_for(lambda: run.kept_packages() >= 2, "two packages kept")
    filler = run.fill(leave_bytes=3 * 2**20)
    run.wait_for(lambda: run.waiting_lines(), "the waiting status line")
    line = run.waiting_lines()[0]
    assert f"the working folder {run.work} is full:" in line
    assert re.search(r"[23]\.\d MB free, 8\.0 MB needed", line), line
    filler.unlink()
    code = run.finish()
    assert code == 0, run.stdout + "".join(run.stderr[-40:])
    assert "failed 0" in run.stdout
    assert _exported(sandbox, tmp_path / "export", "threshold") == expected
