"""Memory: peak resident set size of the migrating process, in MB (MiB).

Each measurement runs the migration in a process of its own (``python -m benchmarks.memory
--child ...``), which prints its own peak RSS (VmHWM from /proc/self/status) when it ends. The
parent also polls the child's VmHWM every 0.5 s and reports the larger of the two. Figures:

* ``memory``: a scan-only migration (``--scan-only``) of 1,000,000 empty files in 10,000
  folders: walk, rules, the session database and the scan reports;
* ``memory_migrate_small``: a whole migration of small files into the sandbox (100,000 in
  full mode, 2,000 in quick mode);
* ``memory_migrate_large``: a whole migration of one sparse file (5 GiB in full mode, 512 MiB
  in quick mode). The file is sparse, so it takes no disk space at the source.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import (
    GIB,
    PYTHON,
    REPO,
    Result,
    Sandbox,
    cached_tree,
    info,
    make_sparse_file,
    peak_rss_mib,
    start_sandbox,
)

GOAL_MIB = 300
IMPORT_DELAY = 0.2
CONTAINER_RETENTION = 120.0


def run_child(sandbox: Sandbox, source: Path, work: Path, folder: str, *, scan_only: bool) -> dict:
    """Migrate ``source`` in a child process; return its report with ``peak_rss_mib``."""
    command = [PYTHON, "-m", "benchmarks.memory", "--child", "--profile", str(sandbox.profile_path),
               "--source", str(source), "--work", str(work), "--folder", folder]
    if scan_only:
        command.append("--scan-only")
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    polled = 0.0
    while process.poll() is None:
        try:
            polled = max(polled, peak_rss_mib(process.pid))
        except (OSError, RuntimeError):
            pass  # the process ended between poll() and the read
        time.sleep(0.5)
    stdout, stderr = process.communicate()
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        raise RuntimeError(f"the migrating process exited with code {process.returncode}: {stderr[-3000:]}")
    report = json.loads(lines[-1])
    report["polled_peak_rss_mib"] = polled
    # The child reads its VmHWM just before it exits; a later poll can be a little higher.
    report["peak_rss_mib"] = max(report["peak_rss_mib"], polled)
    if report["status"] not in ("completed", "scan_only"):
        raise RuntimeError(f"the migration ended {report['status']}: {report}")
    return report


def _describe(report: dict) -> str:
    counts = report["counts"]
    return (f"peak RSS {report['peak_rss_mib']:.0f} MiB (polled VmHWM {report['polled_peak_rss_mib']:.0f}), "
            f"{report['seconds']:.0f} s, {counts.get('scanned', 0):,} scanned, "
            f"{counts.get('migrated', 0):,} migrated, {counts.get('failed', 0):,} failed")


async def run(context) -> list[Result]:
    small_folders = 20 if context.quick else 1000
    large_size = GIB // 2 if context.quick else 5 * GIB
    scan_tree = cached_tree(context.data / "memory-1m", 10_000, 100, 0)
    small_tree = cached_tree(context.data / f"memory-small-{small_folders}", small_folders, 100, 4096)
    large_dir = context.data / "memory-large"
    shutil.rmtree(large_dir, ignore_errors=True)
    make_sparse_file(large_dir / "sparse.bin", large_size)

    results = []
    # Azurite gets slower per request as it stores more blobs: at 33,000 files it took 100 % of a
    # core for 500 files a minute. Purging containers after two minutes (SharePoint does it after
    # 30 to 90 days) keeps its data small over 100,000 files.
    sandbox = start_sandbox(context.data / "sandbox-memory", import_delay=IMPORT_DELAY,
                            container_retention=CONTAINER_RETENTION)
    try:
        work = context.data / "memory-work"
        runs = [
            ("memory", scan_tree, True, "1,000,000 items, scan only"),
            ("memory_migrate_small", small_tree, False, f"{small_folders * 100:,} files of 4 KiB, migrated"),
            ("memory_migrate_large", large_dir, False,
             f"one sparse file of {large_size / GIB:g} GiB, migrated"),
        ]

        for name, source, scan_only, what in runs:
            try:
                report = await asyncio.to_thread(run_child, sandbox, source, work / name, name,
                                                 scan_only=scan_only)
            except RuntimeError as error:
                results.append(Result(name, "<=", GOAL_MIB, unit="MB", skipped=f"failed: {error}"))
                continue
            finally:
                shutil.rmtree(work / name, ignore_errors=True)
            info(f"{what}: {_describe(report)}")
            results.append(Result(name, "<=", GOAL_MIB, report["peak_rss_mib"], unit="MB", details=report))
    finally:
        sandbox.stop()
        shutil.rmtree(sandbox.data_dir, ignore_errors=True)
        shutil.rmtree(large_dir, ignore_errors=True)
    return results


async def _child(args: argparse.Namespace) -> dict:
    from spmt_tui.auth.cache import MemoryStore
    from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
    from spmt_tui.engine.migration import Migration, MigrationTask
    from spmt_tui.engine.settings import Settings
    from spmt_tui.profile import load_profile

    profile_data = json.loads(args.profile.read_text())
    credentials = UsernamePasswordProvider(AuthSettings.from_profile(profile_data),
                                           profile_data["user"]["username"],
                                           profile_data["user"]["password"], store=MemoryStore())
    profile = load_profile(args.profile)
    settings = Settings(working_folder=args.work, scan_only=args.scan_only)
    migration = Migration([MigrationTask(str(args.source), profile.site_url, folder=args.folder)],
                          settings, profile, credentials)
    started = time.perf_counter()
    result = await migration.run()
    return {"status": result.status, "message": result.message, "counts": result.counts,
            "seconds": time.perf_counter() - started}


def main() -> int:
    parser = argparse.ArgumentParser(description="Run one migration and print its peak RSS as JSON.")
    parser.add_argument("--child", action="store_true", required=True)
    parser.add_argument("--profile", type=Path, required=True, help="the sandbox's tenant.json")
    parser.add_argument("--source", type=Path, required=True, help="folder to migrate")
    parser.add_argument("--work", type=Path, required=True, help="working folder for the session")
    parser.add_argument("--folder", required=True, help="library folder to migrate into")
    parser.add_argument("--scan-only", action="store_true", help="scan and write the scan reports only")
    args = parser.parse_args()
    report = asyncio.run(_child(args))
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child started by a large
    # parent would report the parent's peak.
    report["peak_rss_mib"] = peak_rss_mib(os.getpid())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
