"""Snapshot tests of the main screens at 80x24, with fixed data so every run draws the same.

The tenant and the engine are replaced by the fakes in ``tui_fakes``; paths shown on screen
are relative or fixed. Accept new baselines with ``pytest tests/tui --snapshot-update`` after
looking at ``snapshot_report.html``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import Input

from spmt_tui.engine.progress import StatsSnapshot
from spmt_tui.engine.settings import Settings
from spmt_tui.tui.app import ActiveRun, SpmtApp
from spmt_tui.tui.bridge import EventBuffer
from spmt_tui.tui.rows import FileRow, MemoryRowSource
from spmt_tui.tui.screens.report import ReportScreen
from tui_fakes import FakeMigration, FakeResult, FakeServices, FakeSession, fake_signed_in

TASK = "/srv/shares/finance → https://127.0.0.1:8443/sites/demo/Documents/Finance"

SESSIONS = [
    FakeSession("20240131-080000-abc123", "2024-01-31T08:00:00", "interrupted", [TASK],
                {"migrated": 81_204, "failed": 12}),
    FakeSession("20240130-170000-def456", "2024-01-30T17:00:00", "completed", [TASK],
                {"migrated": 100_000, "failed": 0}),
    FakeSession("20240129-093000-0a0b0c", "2024-01-29T09:30:00", "completed_with_failures",
                ["/srv/shares/hr → https://127.0.0.1:8443/sites/hr/Documents"],
                {"migrated": 5_230, "failed": 7}),
]

PRESET = StatsSnapshot(
    phase="migrating", counts={"scanned": 100_000, "packaged": 62_500, "uploaded": 61_250,
                               "submitted": 60_000, "migrated": 58_750, "skipped": 1_204, "failed": 37},
    bytes_total=52_428_800_000, bytes_uploaded=32_212_254_720, bytes_migrated=30_000_000_000,
    rate_bytes=48_234_496.0, rate_files=91.5, eta_seconds=4_200.0, elapsed=3_725.0, throttled=3,
    throttled_seconds=42.0, jobs_running=6,
    history=tuple(float(20 + (index * 7) % 30) * 1_000_000 for index in range(60)),
)


def file_rows(count: int = 400) -> list[FileRow]:
    states = ("migrated", "migrated", "uploaded", "packaged", "skipped", "failed", "scanned")
    rows = []
    for item in range(1, count + 1):
        state = states[item % len(states)]
        code, message = "", ""
        if state == "failed":
            code, message = "0x01510001", "upload failed: HTTP 503 Service Unavailable after 8 attempts"
        elif state == "skipped":
            code, message = "0x00000000", "unchanged since the last run"
        rows.append(FileRow(item, f"Budget/{2020 + item % 5}/report-{item:05d}.xlsx", state,
                            1_000 * item, code, message))
    return rows


def make_app(**services: Any) -> SpmtApp:
    settings = Settings()
    settings.working_folder = Path("spmt-work")
    fake = FakeServices(sessions=list(SESSIONS), **services)
    return SpmtApp(services=fake, settings=settings, remember_theme=False, theme_name="spmt-dark")


async def settle(pilot: Pilot) -> None:
    """Stop cursor blinking and wait until workers and messages are done."""
    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    # DirectoryTree keeps a loader worker running for as long as the tree exists.
    finite = [worker for worker in pilot.app.workers if worker.group != "_loader"]
    if finite:  # wait_for_complete([]) would wait for every worker, the loader too
        await pilot.app.workers.wait_for_complete(finite)
    await pilot.pause()
    await pilot.pause()


@pytest.fixture(autouse=True)
def _fixed_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a folder of our own with a fixed home, so trees and paths look the same."""
    home = tmp_path / "home"
    for name in ("finance", "hr", "projects"):
        (home / "shares" / name).mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)


def test_start_screen(snap_compare: Any) -> None:
    assert snap_compare(make_app(), run_before=settle)


def test_start_screen_light_theme(snap_compare: Any) -> None:
    app = make_app()
    app.theme = "spmt-light"
    assert snap_compare(app, run_before=settle)


def test_start_screen_high_contrast(snap_compare: Any) -> None:
    app = make_app()
    app.theme = "spmt-high-contrast"
    assert snap_compare(app, run_before=settle)


def test_sessions_screen(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=["s"], run_before=settle)


def test_sign_in_screen(snap_compare: Any) -> None:
    assert snap_compare(make_app(), press=["n"], run_before=settle)


def test_sign_in_device_code(snap_compare: Any) -> None:
    async def sign_in(pilot: Pilot) -> None:
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("ctrl+n")
        await pilot.pause(0.2)
        for widget in pilot.app.screen.query(Input):
            widget.cursor_blink = False
        await pilot.pause()

    assert snap_compare(make_app(device_code=True), run_before=sign_in)


async def _to_step(pilot: Pilot, steps: int) -> None:
    app = pilot.app
    assert isinstance(app, SpmtApp)
    await pilot.press("n")
    await pilot.pause()
    app.plan.signed_in = fake_signed_in()
    app.plan.site_url = app.plan.signed_in.profile.site_url
    app.plan.source = str(Path.home() / "shares" / "finance")
    for _ in range(steps):
        await pilot.press("ctrl+n")
        await settle(pilot)


def test_source_screen(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _to_step(pilot, 1)
        # The typed path contains the temporary folder, so show the tree with an empty field.
        pilot.app.screen.query_one("#source", Input).value = ""
        await settle(pilot)

    assert snap_compare(make_app(), run_before=run_before)


def test_destination_screen(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _to_step(pilot, 2)

    assert snap_compare(make_app(), run_before=run_before)


def test_settings_screen(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _to_step(pilot, 3)

    assert snap_compare(make_app(), run_before=run_before)


def test_review_screen(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _to_step(pilot, 4)
        pilot.app.plan.source = "/srv/shares/finance"
        screen = pilot.app.screen
        screen.query_one("#review-summary").update(screen._summary())
        await settle(pilot)

    assert snap_compare(make_app(), run_before=run_before)


def _progress_app() -> SpmtApp:
    app = make_app()
    migration = FakeMigration([], lambda event: None, Path("spmt-work"), preset=PRESET)
    run = ActiveRun(tasks=[TASK], buffer=EventBuffer(), rows=MemoryRowSource(file_rows()),
                    migration=migration)
    app.active_run = run
    return app


async def _open_progress(pilot: Pilot) -> None:
    pilot.app.show_progress()
    await pilot.pause()
    await settle(pilot)
    await pilot.pause(0.3)
    await settle(pilot)


def test_progress_screen(snap_compare: Any) -> None:
    assert snap_compare(_progress_app(), run_before=_open_progress)


def test_progress_failures_tab(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot) -> None:
        await _open_progress(pilot)
        await pilot.press("2")
        await pilot.pause(0.3)
        await settle(pilot)

    assert snap_compare(_progress_app(), run_before=run_before)


def test_progress_wide_terminal(snap_compare: Any) -> None:
    assert snap_compare(_progress_app(), run_before=_open_progress, terminal_size=(140, 40))


def test_report_screen(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot) -> None:
        reports = Path("reports")
        (reports / "TaskReport_1").mkdir(parents=True)
        (reports / "SummaryReport.csv").write_text("Source,Status\n/srv/shares/finance,Completed\n")
        (reports / "TaskReport_1" / "ItemReport_R1.csv").write_text("Source,Status\n" * 20)
        (reports / "TaskReport_1" / "ItemFailureReport_R1.csv").write_text("Source,Status\n")
        result = FakeResult("completed_with_failures",
                            {"scanned": 100_000, "migrated": 99_951, "skipped": 12, "failed": 37,
                             "files": 98_000, "folders": 2_000, "bytes": 52_428_800_000},
                            reports, "37 item(s) failed; see ItemFailureReport")
        pilot.app.push_screen(ReportScreen(result, [TASK]))
        await settle(pilot)

    assert snap_compare(make_app(), run_before=run_before)
