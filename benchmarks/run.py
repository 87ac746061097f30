"""Run the benchmarks and print one ``ratio <name> <value> (goal <op> <target>)`` line each.

    python -m benchmarks.run --quick           # about 10 minutes on 2 cores (what `make bench` runs)
    python -m benchmarks.run --full            # more rounds and the large memory runs
    python -m benchmarks.run --only scan,upload --record

Generated data goes under ``--data`` (default: a new folder in /tmp). It is deleted at the end
unless ``--keep-data`` is given, and the next run with the same ``--data`` reuses a kept tree.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import PYTHON, REPO, Result, machine_summary

# Module name, and the results it reports with their goals (used when it fails or is skipped).
BENCHMARKS: list[tuple[str, list[tuple[str, str, float]]]] = [
    ("scan", [("scan", ">=", 0.7)]),
    ("encrypt", [("encrypt", ">=", 0.8)]),
    ("upload", [("upload_large", ">=", 0.85), ("upload_large_rclone", ">=", 1.3),
                ("upload_small", ">=", 0.9), ("upload_small_rclone", ">=", 1.8)]),
    ("end_to_end", [("end_to_end", ">=", 0.7)]),
    ("memory", [("memory", "<=", 300), ("memory_migrate_small", "<=", 300),
                ("memory_migrate_large", "<=", 300)]),
    ("tui_latency", [("tui_latency", "<", 100)]),
]


@dataclass
class Context:
    """Run options passed to every benchmark module's ``run(context)``."""

    quick: bool
    data: Path


def _failed(goals: list[tuple[str, str, float]], reason: str) -> list[Result]:
    return [Result(name, op, target, skipped=reason) for name, op, target in goals]


def run_module(module_name: str, goals: list[tuple[str, str, float]], context: Context) -> list[Result]:
    """Run one benchmark module; a crash becomes skipped results carrying the error."""
    if module_name == "tui_latency":
        return run_tui_latency(goals, context)
    module = importlib.import_module(f"benchmarks.{module_name}")
    try:
        return asyncio.run(module.run(context))
    except Exception as error:  # noqa: BLE001 - one broken benchmark must not stop the others
        traceback.print_exc()
        return _failed(goals, f"failed: {type(error).__name__}: {error}")


def run_tui_latency(goals: list[tuple[str, str, float]], context: Context) -> list[Result]:
    """Run benchmarks/tui_latency.py in its own process, when it exists, and read its ratio line.

    Quick mode passes ``--quick`` when the script has that option, else a 20,000-file share and
    100 key presses. Full mode passes ``--full`` when the script has it, else uses the script's
    defaults (a 100,000-file migration).
    """
    script = REPO / "benchmarks" / "tui_latency.py"
    if not script.exists():
        return _failed(goals, "benchmarks/tui_latency.py is not there yet")
    command = [PYTHON, str(script)]
    if context.quick:
        usage = subprocess.run(command + ["--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        command += ["--quick"] if "--quick" in usage.stdout else ["--files", "20000", "--presses", "100"]
    elif "--full" in subprocess.run(command + ["--help"], cwd=REPO, capture_output=True, text=True,
                                    timeout=120).stdout:
        command.append("--full")
    timeout = 900 if context.quick else 2400
    print(f"  {' '.join(command[1:])}", flush=True)
    try:
        process = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        output = error.stdout or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        for line in output.splitlines():
            print(f"  {line}", flush=True)
        return _failed(goals, f"benchmarks/tui_latency.py timed out after {timeout} s and was stopped")
    lines = process.stdout.splitlines()
    for line in lines:
        if not line.startswith("ratio "):
            print(f"  {line}", flush=True)
    pattern = re.compile(r"^ratio (\S+) (\S+) \(goal (\S+) ([\d.]+)\)")
    results = []
    for line in lines:
        match = pattern.match(line)
        if match is None:
            continue
        name, value, op, target = match.groups()
        try:
            results.append(Result(name, op, float(target), float(value), unit="ms"))
        except ValueError:
            results.append(Result(name, op, float(target), unit="ms", skipped=line.split(")", 1)[-1].strip()))
    if not results:
        reason = f"benchmarks.tui_latency printed no ratio line (exit code {process.returncode})"
        if process.stderr:
            print(process.stderr[-3000:], file=sys.stderr)
        return _failed(goals, reason)
    return results


def source_state() -> str:
    """Return the checked-out commit, and whether spmt_tui/ had uncommitted or untracked files."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True, timeout=30).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "spmt_tui"], cwd=REPO,
                                 capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown commit"
    if not commit:
        return "unknown commit"
    return f"commit {commit}" + (" with uncommitted changes in spmt_tui/" if changed else "")


def load_average() -> str:
    """Return the 1-minute load average: other work on a shared machine shows up here."""
    return f"{os.getloadavg()[0]:.1f}"


def results_table(results: list[Result], command: str, elapsed: float, load: str, source: str) -> str:
    """Return the markdown block for BENCHMARKS.md: date, machine, command and one row per figure."""
    rows = ["| name | value | goal | met |", "|---|---|---|---|"]
    for result in results:
        if result.value is None:
            rows.append(f"| {result.name} | skipped: {result.skipped} | {result.op} {result.target:g} | - |")
            continue
        unit = f" {result.unit}" if result.unit else ""
        value = f"{result.value:.0f}" if result.unit else f"{result.value:.2f}"
        rows.append(f"| {result.name} | {value}{unit} | {result.op} {result.target:g}{unit} | "
                    f"{'yes' if result.met else 'no'} |")
    header = (f"Date: {dt.date.today().isoformat()}. Machine: {machine_summary()}. "
              f"Source: {source} at the start. "
              f"Command: `{command}` ({elapsed / 60:.0f} min). "
              f"Load average (1 min) at start and end: {load}.")
    return header + "\n\n" + "\n".join(rows) + "\n"


def record(results: list[Result], mode: str, command: str, elapsed: float, load: str, source: str) -> None:
    """Replace the quick or full results block of BENCHMARKS.md with this run's table."""
    path = REPO / "BENCHMARKS.md"
    start = f"<!-- results:{mode}:start -->"
    end = f"<!-- results:{mode}:end -->"
    text = path.read_text() if path.exists() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text or end not in text:
        raise SystemExit(f"{path} has no {start} ... {end} block to replace")
    before, rest = text.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{results_table(results, command, elapsed, load, source)}{end}{after}")
    print(f"wrote the results table to {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="fewer rounds and smaller memory runs (default)")
    size.add_argument("--full", action="store_true",
                      help="more rounds, 1 GiB and 5,000-file uploads, 100,000-file and 5 GiB memory runs")
    names = [module for module, _ in BENCHMARKS]
    parser.add_argument("--only", default="",
                        help=f"comma-separated benchmarks to run, from: {', '.join(names)}")
    parser.add_argument("--data", type=Path, default=None,
                        help="folder for generated files and sandboxes (default: a new folder in /tmp)")
    parser.add_argument("--keep-data", action="store_true",
                        help="keep the generated data, so the next run with the same --data reuses it")
    parser.add_argument("--record", action="store_true",
                        help="write the results table into BENCHMARKS.md at the repository root")
    args = parser.parse_args(argv)
    selected = [name for name in args.only.split(",") if name]
    unknown = sorted(set(selected) - set(names))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}: choose from {', '.join(names)}")

    data = args.data or Path(tempfile.mkdtemp(prefix="spmt-bench-", dir="/tmp"))
    data.mkdir(parents=True, exist_ok=True)
    context = Context(quick=not args.full, data=data)
    command = "python -m benchmarks.run " + " ".join(argv if argv is not None else sys.argv[1:])
    load_at_start = load_average()
    source = source_state()
    print(f"{command.strip()}: {'quick' if context.quick else 'full'} mode, data in {data}, "
          f"{machine_summary()}, load average {load_at_start}", flush=True)
    started = time.monotonic()
    results: list[Result] = []
    try:
        for module_name, goals in BENCHMARKS:
            if selected and module_name not in selected:
                continue
            print(f"== {module_name}", flush=True)
            module_started = time.monotonic()
            module_results = run_module(module_name, goals, context)
            for result in module_results:
                print(result.line(), flush=True)
            print(f"  ({time.monotonic() - module_started:.0f} s)", flush=True)
            results.extend(module_results)
    finally:
        if not args.keep_data:
            shutil.rmtree(data, ignore_errors=True)
    elapsed = time.monotonic() - started
    load = f"{load_at_start} and {load_average()}"
    print(f"== summary ({elapsed / 60:.1f} min, load average at start and end {load})")
    for result in results:
        print(result.line())
    if args.record:
        record(results, "quick" if context.quick else "full", command.strip(), elapsed, load, source)
    return 0


if __name__ == "__main__":
    sys.exit(main())
