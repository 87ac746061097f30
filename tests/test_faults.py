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
