"""Cancelling a busy migration from another thread ends it promptly, and it can be resumed."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

from harness import Sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile


async def test_cancel_busy_run_returns(sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "share"
    for number in range(3000):
        path = source / f"d{number % 30}" / f"f{number}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 64)
    data = json.loads(sandbox.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                        data["user"]["password"], store=MemoryStore())
    profile = load_profile(sandbox.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=20, packages_in_flight=2)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "cancel-test")],
                          settings, profile, provider)
    run = asyncio.create_task(migration.run())
    while migration.stats.snapshot().counts["uploaded"] < 40:
        assert not run.done(), "the migration ended before it could be cancelled"
        await asyncio.sleep(0.02)
    started = time.monotonic()
    # Front ends call cancel() from their own thread.
    threading.Thread(target=migration.cancel).start()
    result = await asyncio.wait_for(run, timeout=30)
    assert time.monotonic() - started < 30
    assert result.status == "cancelled"
    assert result.counts["migrated"] < 3030
