"""Scan: the scanner with every rule switched on, against a bare ``os.scandir`` + stat walk.

The reported ratio uses a tree of 100,000 empty files in 1,000 folders. One name in 1,000
triggers a rule (hidden, an invalid character, a trailing space, a skipped extension, an Office
owner file), so the rules' per-item path runs for one folder in ten and their whole-listing fast
path for the rest. Detail lines give the ratio for a tree with no rule hits and for one with a
rule hit in every folder. The page cache is warm for both
sides: dropping it would slow down everything else running on a shared machine.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path

from benchmarks.common import Result, cached_tree, info, interleave, median, per_round_ratios, spread
from spmt_tui.engine.rules import ScanRules, ScanSettings
from spmt_tui.engine.source import FileShareSource
from spmt_tui.engine.task_runner import SCAN_BATCH

FOLDERS = 1_000
FILES_PER_FOLDER = 100
DESTINATION = "/sites/demo/Shared Documents/Share"


def all_rules_settings() -> ScanSettings:
    """Scan settings with every filter and the renaming rules switched on."""
    return ScanSettings(
        include_hidden=False,
        created_after=dt.datetime(1990, 1, 1, tzinfo=dt.timezone.utc),
        modified_after=dt.datetime(1990, 1, 1, tzinfo=dt.timezone.utc),
        skipped_extensions=frozenset({"tmp", "bak"}),
        replacement_char="_",
    )


async def scan_with_rules(root: Path) -> int:
    """Walk ``root`` with the product's scanner and evaluate every batch; return the item count."""
    rules = ScanRules(DESTINATION, all_rules_settings(), destination_is_library_root=False)
    count = 0
    async for batch in FileShareSource(root).walk(SCAN_BATCH):
        results = rules.evaluate(batch)
        count += len(results)
    return count


def bare_scandir_walk(root: Path) -> int:
    """Count every file and folder below ``root`` with ``os.scandir`` and ``DirEntry.stat``."""
    count = 0
    total_size = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                total_size += entry.stat(follow_symlinks=False).st_size
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return count


async def run(context) -> list[Result]:
    rounds = 7 if context.quick else 15
    trees = {
        # One name in 1,000 hits a rule, so one folder in ten takes the rules' per-item path.
        "scanner, 0.1 % names hit a rule": cached_tree(
            context.data / "scan-tree-mixed", FOLDERS, FILES_PER_FOLDER, 0, odd_names_every=1000),
        "scanner, no name hits a rule": cached_tree(
            context.data / "scan-tree-clean", FOLDERS, FILES_PER_FOLDER, 0),
        "scanner, 1 % names hit a rule (every folder)": cached_tree(
            context.data / "scan-tree-odd", FOLDERS, FILES_PER_FOLDER, 0, odd_names_every=100),
    }
    primary = "scanner, 0.1 % names hit a rule"
    baseline_name = "bare os.scandir + stat walk"
    expected = bare_scandir_walk(trees[primary])

    def scanner(root: Path):
        async def measure(_round: int) -> float:
            started = time.perf_counter()
            count = await scan_with_rules(root)
            elapsed = time.perf_counter() - started
            if count != expected:
                raise RuntimeError(f"the scanner returned {count} items in {root}, expected {expected}")
            return count / elapsed
        return measure

    async def baseline(_round: int) -> float:
        started = time.perf_counter()
        count = bare_scandir_walk(trees[primary])
        return count / (time.perf_counter() - started)

    configs = {name: scanner(root) for name, root in trees.items()}
    configs[baseline_name] = baseline
    for measure in configs.values():
        await measure(0)  # warm the page cache and the imports
    rates = await interleave(rounds, configs)
    base_rates = rates[baseline_name]
    info(f"{baseline_name}: {spread(base_rates)} items/s")
    ratios = {}
    for name in trees:
        ratios[name] = per_round_ratios(rates[name], base_rates)
        info(f"{name}: {spread(rates[name])} items/s, ratio {spread(ratios[name], '{:.2f}')}")
    return [Result("scan", ">=", 0.7, median(ratios[primary]),
                   details={"items": expected, "ours_per_s": median(rates[primary]),
                            "baseline_per_s": median(base_rates),
                            **{name: median(values) for name, values in ratios.items()}})]
