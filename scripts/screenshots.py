"""Write SVG screenshots of the main screens of spmt-tui into screenshots/.

The screenshots come from the real app migrating a sample folder into a sandbox tenant that
this script starts on 127.0.0.1 (``python -m spmt_tui sandbox``) and stops at the end.
The sandbox needs Azurite: ``make setup`` installs it, or set SPMT_TUI_AZURITE_BIN.

Usage: python scripts/screenshots.py [--out screenshots] [--size 100x30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

READY_TIMEOUT = 60.0
MIGRATION_TIMEOUT = 600.0


def free_port_block(count: int = 3) -> int:
    """Return a port P on 127.0.0.1 with P .. P+count-1 free (the sandbox uses three)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = probe.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first
    raise RuntimeError("no block of three free ports on 127.0.0.1")


def start_sandbox(data_dir: Path) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the sandbox tenant and wait for its ``ready`` line; return it and its profile."""
    port = free_port_block()
    command = [sys.executable, "-m", "spmt_tui", "sandbox", "--data", str(data_dir), "--port",
               str(port), "--import-delay", "0.5"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    assert process.stdout is not None
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        readable, _, _ = select.select([process.stdout], [], [], 0.5)
        if readable and process.stdout.readline().startswith("ready "):
            return process, json.loads((data_dir / "tenant.json").read_text(encoding="utf-8"))
    process.kill()
    error = process.stderr.read() if process.stderr else ""
    raise RuntimeError(f"the sandbox did not start within {READY_TIMEOUT:.0f} s:\n{error[-2000:]}")


def stop_sandbox(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def make_sample_share(root: Path) -> Path:
    """Create a sample file share: nested folders, a few thousand small files, some rejects."""
    share = root / "finance-share"
    for year in range(2019, 2025):
        for month in range(1, 13):
            folder = share / "Budget" / str(year) / f"{month:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for number in range(25):
                (folder / f"ledger-{number:03d}.csv").write_text(f"{year},{month},{number}\n" * 40)
    projects = share / "Projects"
    projects.mkdir(parents=True)
    (projects / "plan.docx").write_bytes(os.urandom(200_000))
    (projects / "draft?.txt").write_text("a name SharePoint rejects\n")
    (projects / "~$lock.docx").write_text("an Office lock file\n")
    (projects / "notes.tmp").write_text("temporary\n")
    return share


async def wait_until(pilot: Any, condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await pilot.pause(0.2)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


async def capture(profile_path: Path, share: Path, work: Path, out: Path, size: tuple[int, int]) -> None:
    from textual.widgets import Input, OptionList, RadioSet

    from spmt_tui.engine.settings import Settings
    from spmt_tui.tui.app import SpmtApp
    from spmt_tui.tui.screens.destination import DestinationScreen
    from spmt_tui.tui.screens.progress import ProgressScreen
    from spmt_tui.tui.screens.report import ReportScreen
    from spmt_tui.tui.screens.sessions import SessionsScreen
    from spmt_tui.tui.screens.settings_form import SettingsScreen
    from spmt_tui.tui.screens.signin import SignInScreen
    from spmt_tui.tui.screens.source import SourceScreen

    settings = Settings()
    settings.working_folder = work
    app = SpmtApp(settings=settings, tenant_profile=profile_path, remember_theme=False,
                  theme_name="spmt-dark", source=str(share))

    async with app.run_test(size=size) as pilot:
        async def shot(name: str) -> None:
            for widget in app.screen.query(Input):
                widget.cursor_blink = False
            await pilot.pause(0.3)
            app.save_screenshot(f"{name}.svg", str(out))
            print(f"wrote {out / name}.svg")

        await pilot.pause()
        await shot("start")
        for theme in ("spmt-light", "spmt-high-contrast"):
            app.theme = theme
            await shot(f"start-{theme}")
        app.theme = "spmt-dark"

        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), 10, "the Sign in step")
        radio = app.screen.query_one("#method", RadioSet)
        radio.focus()
        await pilot.press("down", "down", "enter")
        await shot("sign-in")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: isinstance(app.screen, SourceScreen), 60, "the Source step")
        await shot("source")
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, DestinationScreen), 10, "the Destination step")
        libraries = app.screen.query_one("#libraries", OptionList)
        await wait_until(pilot, lambda: libraries.option_count, 30, "the libraries")
        app.screen.query_one("#folder", Input).value = "Finance"
        await shot("destination")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen), 10, "the Settings step")
        await shot("settings")
        await pilot.press("ctrl+n")
        await pilot.pause(0.3)
        await shot("review")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), 10, "the Progress screen")
        run = app.active_run
        await wait_until(pilot, lambda: run.migration is not None and
                         run.migration.stats.snapshot().counts.get("migrated", 0) > 300,
                         MIGRATION_TIMEOUT, "the first migrated files")
        await pilot.pause(1.0)
        await shot("progress")
        await pilot.press("3")
        await shot("progress-log")
        await pilot.press("1")
        await wait_until(pilot, lambda: run.finished, MIGRATION_TIMEOUT, "the migration to finish")
        await wait_until(pilot, lambda: isinstance(app.screen, ReportScreen), 10, "the Report screen")
        await shot("report")
        await pilot.press("escape")
        await pilot.press("2")
        await pilot.pause(0.6)
        await shot("progress-failures")
        await pilot.press("h")
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, SessionsScreen), 10, "the Sessions screen")
        await shot("sessions")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "screenshots",
                        help="folder for the SVG files (default: %(default)s)")
    parser.add_argument("--size", default="100x30", help="terminal size WIDTHxHEIGHT (default: %(default)s)")
    args = parser.parse_args()
    width, height = (int(part) for part in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="spmt-tui-screenshots-") as folder:
        root = Path(folder)
        # Config, tokens and sessions of this run stay in the temporary folder.
        os.environ["XDG_CONFIG_HOME"] = str(root / "config")
        os.environ["XDG_DATA_HOME"] = str(root / "data")
        os.environ.setdefault("SPMT_TUI_CACHE_PASSPHRASE", "screenshots-only")
        os.environ.setdefault("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
        from spmt_tui.logs import configure_logging

        # Log records go to a file, so none lands between the script's own lines.
        configure_logging(log_file=root / "screenshots.log", stderr=False)
        share = make_sample_share(root)
        process, _profile = start_sandbox(root / "tenant")
        try:
            asyncio.run(capture(root / "tenant" / "tenant.json", share, root / "work", args.out,
                                (width, height)))
        finally:
            stop_sandbox(process)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
