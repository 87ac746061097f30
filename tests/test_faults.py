"""Migrations under injected faults end with the library equal to the source."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Iterator

import pytest

from harness import Sandbox, start_sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile
from spmt_tui.sandbox.export import export_library

FAULTS = "429=0.1,503=0.05,drop=0.03,slow=0.02,fatal=0.3,postpone=0.2,lost_queue=0.3,sas_expired=0.05"


@pytest.fixture
def faulty_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = start_sandbox(tmp_path / "tenant", "--faults", FAULTS, "--fault-seed", "7")
    try:
        yield box
    finally:
        box.stop()


# CASE-13, CASE-14, CASE-22: throttling, drops, JobFatalError, lost queue events, expired SAS
async def test_faults_leave_no_gap_or_duplicate(faulty_sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "share"
    expected: dict[str, bytes] = {}
    for number in range(120):
        relative = f"dir{number % 6}/sub{number % 2}/file{number}.txt"
        data = os.urandom(number * 37)
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(data)
        expected[relative] = data
    data = json.loads(faulty_sandbox.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                        data["user"]["password"], store=MemoryStore())
    profile = load_profile(faulty_sandbox.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=6, fatal_retries=8,
                        job_poll_seconds=1.0)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "faults")],
                          settings, profile, provider)
    result = await migration.run()
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0
    snapshot = migration.stats.snapshot()
    assert snapshot.throttled > 0, "no throttling was injected, so the test proved nothing"
    injected = faulty_sandbox.admin("state")["faults"]["injected"]
    assert injected["fatal"] > 0
    assert injected["lost_queue"] > 0

    out = tmp_path / "export"
    export_library(faulty_sandbox.data_dir, "Documents", out)
    arrived = {str(p.relative_to(out / "faults")): p.read_bytes()
               for p in (out / "faults").rglob("*") if p.is_file()}
    assert sorted(arrived) == sorted(expected)
    for relative, content in expected.items():
        assert arrived[relative] == content, relative


async def test_source_share_gone_waits_then_finishes(sandbox: Sandbox, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from spmt_tui.engine import task_runner

    monkeypatch.setattr(task_runner, "SOURCE_POLL_SECONDS", 0.2)
    source = tmp_path / "share"
    for number in range(60):
        (source / f"f{number:02d}.txt").parent.mkdir(parents=True, exist_ok=True)
        (source / f"f{number:02d}.txt").write_text(f"file {number}\n")
    data = json.loads(sandbox.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                        data["user"]["password"], store=MemoryStore())
    profile = load_profile(sandbox.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=5, packages_in_flight=1,
                        upload_concurrency=1, job_poll_seconds=0.5)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "gone-share")],
                          settings, profile, provider)
    run = asyncio.create_task(migration.run())
    while migration.stats.snapshot().counts["uploaded"] < 5:
        await asyncio.sleep(0.02)
    away = tmp_path / "unmounted"
    source.rename(away)
    for _ in range(200):
        if migration.stats.snapshot().phase == "waiting for source":
            break
        await asyncio.sleep(0.05)
    assert migration.stats.snapshot().phase == "waiting for source"
    away.rename(source)
    result = await run
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0
    assert result.counts["migrated"] == 60


def test_container_retry_delay_backs_off() -> None:
    from spmt_tui.engine import task_runner

    assert task_runner.container_retry_delay(1) == 0.0
    first = task_runner.CONTAINER_RETRY_FIRST_DELAY
    assert first / 2 <= task_runner.container_retry_delay(2) <= first
    assert 2 * first / 2 <= task_runner.container_retry_delay(3) <= 2 * first
    for expiry in (10, 50, 500):
        delay = task_runner.container_retry_delay(expiry)
        assert task_runner.CONTAINER_RETRY_MAX_DELAY / 2 <= delay <= task_runner.CONTAINER_RETRY_MAX_DELAY


@pytest.fixture(scope="module")
def expiry_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(tmp_path_factory.mktemp("expiry"), "--fault-seed", "5")
    try:
        yield box
    finally:
        box.stop()


def _expiry_run(box: Sandbox, tmp_path: Path, folder: str, count: int) -> tuple[Migration, dict[str, bytes]]:
    source = tmp_path / "share"
    expected: dict[str, bytes] = {}
    for number in range(count):
        relative = f"e{number % 3}/f{number:02d}.txt"
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(os.urandom(100 + number))
        expected[relative] = (source / relative).read_bytes()
    data = json.loads(box.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                        data["user"]["password"], store=MemoryStore())
    profile = load_profile(box.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=3, job_poll_seconds=0.5)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", folder)],
                          settings, profile, provider)
    return migration, expected


async def test_repeated_expiry_rides_through(expiry_sandbox: Sandbox, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # Two of three provisions hand out expired containers. Under a limit of three expiries per
    # package, each of the 8 packages would fail with a probability of about 0.3 (0.67 cubed).
    # A time window with backoff rides through.
    from spmt_tui.engine import task_runner

    monkeypatch.setattr(task_runner, "CONTAINER_RETRY_FIRST_DELAY", 0.1)
    monkeypatch.setattr(task_runner, "CONTAINER_RETRY_MAX_DELAY", 0.4)
    monkeypatch.setattr(task_runner, "CONTAINER_RETRY_WINDOW_SECONDS", 120.0)
    before = expiry_sandbox.admin("state")["faults"]["injected"]["sas_expired"]
    expiry_sandbox.set_faults("sas_expired=0.67")
    try:
        migration, expected = _expiry_run(expiry_sandbox, tmp_path, "expiry-ok", 24)
        result = await migration.run()
    finally:
        expiry_sandbox.set_faults("")
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0
    expired = expiry_sandbox.admin("state")["faults"]["injected"]["sas_expired"] - before
    assert expired >= 8, f"only {expired} expired provisions for 8 packages"
    out = tmp_path / "export"
    export_library(expiry_sandbox.data_dir, "Documents", out)
    root = out / "expiry-ok"
    arrived = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert arrived == expected


async def test_expiry_window_fails_package(expiry_sandbox: Sandbox, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from spmt_tui.engine import task_runner

    monkeypatch.setattr(task_runner, "CONTAINER_RETRY_FIRST_DELAY", 0.2)
    monkeypatch.setattr(task_runner, "CONTAINER_RETRY_MAX_DELAY", 0.4)
    monkeypatch.setattr(task_runner, "CONTAINER_RETRY_WINDOW_SECONDS", 2.0)
    before = expiry_sandbox.admin("state")["faults"]["injected"]["sas_expired"]
    expiry_sandbox.set_faults("sas_expired=1")
    try:
        migration, _ = _expiry_run(expiry_sandbox, tmp_path, "expiry-fails", 2)
        result = await migration.run()
    finally:
        expiry_sandbox.set_faults("")
    assert result.status == "completed_with_failures", result.message
    assert result.counts["migrated"] == 0
    expired = expiry_sandbox.admin("state")["faults"]["injected"]["sas_expired"] - before
    assert expired > 3, f"{expired} expiries: the window should allow more than the old limit of 3"
    rows = list(csv_rows(migration.report_dir, "ItemFailureReport_R1.csv"))
    assert len(rows) == result.counts["failed"]
    assert {row["Error code"] for row in rows} == {task_runner.CODE_CONTAINER_EXPIRED}
    assert all("expired" in row["Message"] for row in rows), rows


def csv_rows(report_dir: Path, name: str) -> Iterator[dict[str, str]]:
    import csv

    for path in report_dir.rglob(name):
        with open(path, newline="", encoding="utf-8-sig") as handle:
            yield from csv.DictReader(handle)
