"""End to end: a whole migration into the sandbox tenant against the upload-only baseline.

The migration is ``Migration(...).run()`` with the default settings: pre-flight, scan, package,
encrypt and upload, submit the jobs, follow them through the queue until the sandbox's import
timer job has imported every file, and write the reports. The baseline uploads the same files
with the bare SDK, 32 in flight, to the same Azurite, and stops there. Each round migrates into
a new library folder, so no round finds the previous round's files at the destination.

The sandbox starts jobs 0.2 s after they are queued (``--import-delay 0.2``, as the tests use);
SharePoint Online takes minutes, so this measures the client and the sandbox, not the service.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Result,
    Sandbox,
    cached_tree,
    info,
    interleave,
    median,
    per_round_ratios,
    process_cpu_seconds,
    spread,
    start_sandbox,
)
from benchmarks.upload import SMALL_FILES_PER_FOLDER, SMALL_SIZE, UploadBench
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile

IMPORT_DELAY = 0.2


async def migrate(sandbox: Sandbox, source: Path, folder: str, working_folder: Path,
                  credentials: Any = None, **settings: Any) -> tuple[float, dict[str, int]]:
    """Run one migration of ``source`` into ``Documents/<folder>``; return seconds and counts."""
    profile = load_profile(sandbox.profile_path)
    migration = Migration([MigrationTask(str(source), profile.site_url, folder=folder)],
                          Settings(working_folder=working_folder, **settings), profile,
                          credentials or sandbox.credentials())
    started = time.perf_counter()
    result = await migration.run()
    elapsed = time.perf_counter() - started
    if result.status != "completed":
        raise RuntimeError(f"the migration ended {result.status}: {result.message} (counts {result.counts})")
    return elapsed, result.counts


async def run(context) -> list[Result]:
    rounds = 3
    folders = 10 if context.quick else 50
    source = cached_tree(context.data / f"e2e-{folders}", folders, SMALL_FILES_PER_FOLDER, SMALL_SIZE)
    files = folders * SMALL_FILES_PER_FOLDER
    sandbox = start_sandbox(context.data / "sandbox-e2e", import_delay=IMPORT_DELAY)
    bench = None
    try:
        bench = UploadBench(sandbox, None, source, None)
        credentials = sandbox.credentials()
        sandbox_cpu: list[float] = []

        async def ours(round_number: int) -> float:
            work = context.data / f"e2e-work-{round_number}"
            cpu_before = process_cpu_seconds(sandbox.process.pid)
            elapsed, counts = await migrate(sandbox, source, f"bench-{round_number}", work, credentials)
            sandbox_cpu.append((process_cpu_seconds(sandbox.process.pid) - cpu_before) / elapsed)
            shutil.rmtree(work, ignore_errors=True)
            if counts.get("migrated", 0) < files:
                raise RuntimeError(f"the migration migrated {counts.get('migrated', 0)} items, expected "
                                   f"at least {files}: {counts}")
            return files / elapsed

        async def baseline(_round: int) -> float:
            return files / await bench.sdk_small("SDK upload only")

        info(f"{files:,} files of {SMALL_SIZE // 1024} KiB, files/s:")
        rates = await interleave(rounds, {"full migration": ours, "SDK upload only": baseline})
        ratios = per_round_ratios(rates["full migration"], rates["SDK upload only"])
        info(f"full migration: {spread(rates['full migration'])} files/s")
        info(f"SDK upload only, 32 in flight: {spread(rates['SDK upload only'])} files/s")
        info(f"sandbox process CPU during the migrations: {spread(sandbox_cpu, '{:.2f}')} cores")
        info(f"per-round ratios: {spread(ratios, '{:.2f}')}")
        return [Result("end_to_end", ">=", 0.7, median(ratios),
                       details={"files": files, "ours_files_s": median(rates["full migration"]),
                                "baseline_files_s": median(rates["SDK upload only"])})]
    finally:
        if bench is not None:
            await bench.close()
        sandbox.stop()
        shutil.rmtree(sandbox.data_dir, ignore_errors=True)
