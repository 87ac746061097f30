"""Chaos harness: migrations under random faults and random SIGKILLs, resumed until they finish.

One run generates a tree, starts a sandbox with a fault schedule, and starts
``spmt-tui migrate``; it then kills the tool with SIGKILL after a random delay and resumes it,
again and again, until a resume completes. At the end the sandbox export must equal the source
byte for byte, no destination URL or list item id may appear twice, and ItemReport must hold
each item exactly once.

    python scripts/chaos.py --seed 1 --files 2000 --kills 50           # soak run
    python scripts/chaos.py --seed 1 --files 200 --kills 5 --quick     # what CI runs

Every process binds to 127.0.0.1. Exit status 0 when every check held.
"""

from __future__ import annotations

import argparse
import csv
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from harness import start_sandbox  # noqa: E402
from spmt_tui.sandbox.export import export_library  # noqa: E402

FAULTS = "429=0.05,503=0.03,drop=0.02,fatal=0.05,postpone=0.1,lost_queue=0.2"


def make_tree(root: Path, files: int, rng: random.Random) -> dict[str, bytes]:
    expected: dict[str, bytes] = {}
    for number in range(files):
        depth = rng.randint(0, 3)
        folders = [f"d{rng.randint(0, 9)}" for _ in range(depth)]
        relative = "/".join([*folders, f"file{number:05d}.dat"])
        size = rng.choice([0, 1, 100, 4096, 70_000, 600_000])
        content = rng.randbytes(size)
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        expected[relative] = content
    return expected


def run(args: argparse.Namespace) -> int:
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="spmt-chaos-"))
    source = base / "share"
    expected = make_tree(source, args.files, rng)
    sandbox = start_sandbox(base / "tenant", "--faults", args.faults, "--fault-seed", str(args.seed),
                            "--import-delay", "0.5")
    work = base / "work"
    common = ["--tenant-profile", str(sandbox.profile_path), "--auth", "password",
              "--working-folder", str(work)]
    kills = 0
    started = time.monotonic()
    try:
        migrate = [sys.executable, "-m", "spmt_tui", "migrate", str(source), *common, "--folder", "chaos",
                   "--package-max-files", "25"]
        resume = [sys.executable, "-m", "spmt_tui", "resume", *common]
        command = migrate
        while True:
            process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
            if kills < args.kills:
                delay = rng.uniform(args.min_delay, args.max_delay)
                try:
                    process.wait(timeout=delay)
                except subprocess.TimeoutExpired:
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    kills += 1
                    print(f"kill {kills} after {delay:.1f} s", flush=True)
                    # A kill during start-up can come before the session exists: start it again.
                    started_session = any((work / "sessions").glob("*/session.db"))
                    command = resume if started_session else migrate
                    continue
            out, err = process.communicate(timeout=args.timeout)
            if process.returncode == 0 and out.startswith("completed"):
                break
            print(f"run ended with {process.returncode}: {out.strip()} {err.strip()[-500:]}", flush=True)
            if process.returncode not in (0, 1):
                return 1
            command = resume
        print(f"finished after {kills} kills in {time.monotonic() - started:.0f} s", flush=True)
        return verify(base, sandbox, work, expected)
    finally:
        sandbox.stop()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


def verify(base: Path, sandbox: object, work: Path, expected: dict[str, bytes]) -> int:
    out = base / "export"
    export_library(sandbox.data_dir, "Documents", out)  # type: ignore[attr-defined]
    root = out / "chaos"
    arrived = {str(p.relative_to(root)): p for p in root.rglob("*") if p.is_file()}
    problems: list[str] = []
    missing = sorted(set(expected) - set(arrived))
    extra = sorted(set(arrived) - set(expected))
    problems += [f"missing: {name}" for name in missing[:20]]
    problems += [f"unexpected: {name}" for name in extra[:20]]
    for name, content in expected.items():
        if name in arrived and arrived[name].read_bytes() != content:
            problems.append(f"bytes differ: {name}")
    with sqlite3.connect(sandbox.data_dir / "tenant.db") as tenant:  # type: ignore[attr-defined]
        urls = [r[0] for r in tenant.execute("SELECT lower(url) FROM files WHERE url LIKE '%/chaos/%'")]
        int_ids = [r[0] for r in tenant.execute("SELECT int_id FROM files WHERE url LIKE '%/chaos/%'")]
    if len(urls) != len(set(urls)):
        problems.append("a destination URL appears twice")
    if len(int_ids) != len(set(int_ids)):
        problems.append("a list item id appears twice")
    for report in work.glob("sessions/*/reports/**/ItemReport_R*.csv"):
        with open(report, encoding="utf-8-sig", newline="") as handle:
            sources = [row["Source"] for row in csv.DictReader(handle)]
        if len(sources) != len(set(sources)):
            problems.append(f"{report.name} lists an item twice")
    for problem in problems:
        print(problem)
    print(f"files expected {len(expected)}, arrived {len(arrived)}, problems {len(problems)}")
    print(f"{0 if problems else 1} passed, {1 if problems else 0} failed")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1, help="random seed of the tree, faults and kills")
    parser.add_argument("--files", type=int, default=2000, help="files in the generated tree")
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs before the run may finish")
    parser.add_argument("--faults", default=FAULTS, help=f"sandbox fault schedule (default: {FAULTS})")
    parser.add_argument("--min-delay", type=float, default=2.0, help="minimum seconds before a kill")
    parser.add_argument("--max-delay", type=float, default=12.0, help="maximum seconds before a kill")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the last run may take")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--quick", action="store_true", help="shorter kill delays, for CI")
    args = parser.parse_args()
    if args.quick:
        args.min_delay, args.max_delay = 1.0, 5.0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
