"""Tests of the UI's parts that need no tenant: themes, preferences, rows, forms, widgets."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Checkbox, Input, Static

from spmt_tui.engine.progress import ItemEvent, LogEvent, PhaseEvent
from spmt_tui.engine.settings import Settings, SettingsError
from spmt_tui.tui.app import SpmtApp
from spmt_tui.tui.bridge import BufferLogHandler, EventBuffer, log_line
from spmt_tui.tui.cli import run_app
from spmt_tui.tui.plan import MigrationPlan, TaskSpec, changed_settings
from spmt_tui.tui.prefs import UiPrefs, load_prefs, prefs_path, save_prefs
from spmt_tui.tui.rows import FileRow, MemoryRowSource, StoreRowSource
from spmt_tui.tui.screens.bulk import NOT_SUPPORTED, BulkScreen
from spmt_tui.tui.screens.destination import folder_problem
from spmt_tui.tui.screens.progress import ProgressScreen
from spmt_tui.tui.screens.report import ReportScreen, counts_line
from spmt_tui.tui.screens.sessions import SessionsScreen
from spmt_tui.tui.screens.settings_form import SettingsScreen
from spmt_tui.tui.screens.signin import SignInScreen
from spmt_tui.tui.screens.source import source_problem
from spmt_tui.tui.themes import (
    STATE_VARIABLE_DEFAULTS,
    THEMES_DIR,
    ThemeFileError,
    load_themes,
    resolve_theme_name,
    theme_from_mapping,
)
from spmt_tui.tui.widgets.big_text import big_text
from spmt_tui.tui.widgets.file_list import FILE_COLUMNS, FileList, fit, layout_columns
from spmt_tui.tui.widgets.format import human_bytes, human_duration
from tui_fakes import FakeServices, FakeSession, fake_signed_in

# -- small helpers ----------------------------------------------------------------------------


def test_big_text_rows_have_equal_width() -> None:
    rows = big_text("AB-9?").split("\n")
    assert len(rows) == 3
    assert len({len(row) for row in rows}) == 1
    assert "?" in rows[1]


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1 KB"), (1536, "1.5 KB"), (52_428_800_000, "48.8 GB"),
])
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "--"), (0, "0s"), (59.6, "1m 00s"), (3_725, "1h 02m"), (90_000, "1d 01h"),
])
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


def test_layout_columns_fill_width() -> None:
    for width in (60, 80, 137):
        widths = layout_columns(FILE_COLUMNS, width)
        assert sum(widths) + len(widths) - 1 == width


def test_fit_keeps_end_of_paths() -> None:
    assert fit("a/very/long/path/name.txt", 10, keep_end=True) == "…/name.txt"
    assert fit("abc", 5, right=True) == "  abc"
    assert fit("reason text", 6) == "reaso…"


# -- themes and preferences -------------------------------------------------------------------


def test_theme_files_load() -> None:
    themes = load_themes()
    for name in ("spmt-dark", "spmt-light", "spmt-high-contrast"):
        assert name in themes
        for variable in STATE_VARIABLE_DEFAULTS:
            assert variable in themes[name].variables
    assert themes["spmt-light"].dark is False
    assert len(list(THEMES_DIR.glob("*.toml"))) >= 3


def test_theme_file_errors() -> None:
    with pytest.raises(ThemeFileError, match="unknown key"):
        theme_from_mapping({"name": "x", "primary": "#fff", "primery": "#000"}, "x.toml")
    with pytest.raises(ThemeFileError, match="invalid colour"):
        theme_from_mapping({"name": "x", "primary": "not-a-colour"}, "x.toml")
    with pytest.raises(ThemeFileError, match="needs both"):
        theme_from_mapping({"primary": "#ffffff"}, "x.toml")


def test_broken_theme_file_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "good.toml").write_text('name = "good"\nprimary = "#112233"\n')
    (tmp_path / "bad.toml").write_text("name = [\n")
    themes = load_themes(tmp_path)
    assert "good" in themes
    assert "spmt-dark" in themes  # the built-in fallback


def test_theme_aliases() -> None:
    assert resolve_theme_name("dark") == "spmt-dark"
    assert resolve_theme_name("high-contrast") == "spmt-high-contrast"
    assert resolve_theme_name("nord") == "nord"


def test_prefs_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "ui.json"
    save_prefs(UiPrefs(theme="spmt-light"), path)
    assert load_prefs(path).theme == "spmt-light"
    path.write_text("{broken")
    assert load_prefs(path).theme is None


def test_prefs_path_follows_xdg() -> None:
    assert prefs_path() == Path(os.environ["XDG_CONFIG_HOME"]) / "spmt-tui" / "ui.json"


async def test_theme_switch_is_remembered() -> None:
    app = SpmtApp(services=FakeServices())
    async with app.run_test(size=(80, 24)) as pilot:
        assert app.theme == "spmt-dark"
        await pilot.press("ctrl+t")
        await pilot.pause()
        chosen = app.theme
        assert chosen != "spmt-dark"
        assert chosen in app.spmt_theme_names
    assert json.loads(prefs_path().read_text())["theme"] == chosen
    again = SpmtApp(services=FakeServices())
    async with again.run_test(size=(80, 24)):
        assert again.theme == chosen


async def test_theme_option_wins_over_prefs() -> None:
    save_prefs(UiPrefs(theme="spmt-light"))
    app = SpmtApp(services=FakeServices(), theme_name="spmt-high-contrast")
    async with app.run_test(size=(80, 24)):
        assert app.theme == "spmt-high-contrast"


def test_run_app_rejects_unknown_theme(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(theme="no-such-theme", tenant_profile=None, source=None, config=None)
    assert run_app(args) == 2
    assert "unknown theme 'no-such-theme'" in capsys.readouterr().err


async def test_no_color_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    app = SpmtApp(services=FakeServices())
    async with app.run_test(size=(80, 24)):
        assert app.no_color


# -- engine events ----------------------------------------------------------------------------


def test_event_buffer_drains_by_kind() -> None:
    buffer = EventBuffer(max_items=3)
    for item in range(5):
        buffer(ItemEvent(item, 1, f"f{item}", "scanned"))
    buffer(LogEvent("info", "hello"))
    buffer(PhaseEvent("migrating"))
    drained = buffer.drain()
    assert [event.item_id for event in drained.items] == [2, 3, 4]
    assert [event.message for event in drained.logs] == ["hello"]
    assert [event.phase for event in drained.phases] == ["migrating"]
    assert buffer.drain().items == []


def test_log_lines_are_redacted() -> None:
    line = log_line(LogEvent("warning", "GET https://x/blob?sv=1&sig=SECRETSIG failed, Bearer abc.def"))
    assert "SECRETSIG" not in line
    assert "abc.def" not in line
    assert line.startswith("WARNING")


def test_log_handler_feeds_buffer() -> None:
    buffer = EventBuffer()
    handler = BufferLogHandler(buffer)
    logger = logging.getLogger("spmt.test.tui")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("package %d submitted", 7)
    finally:
        logger.removeHandler(handler)
    assert [event.message for event in buffer.drain().logs] == ["spmt.test.tui: package 7 submitted"]


# -- row sources ------------------------------------------------------------------------------


def memory_rows(count: int) -> MemoryRowSource:
    states = ("migrated", "failed", "scanned", "skipped")
    return MemoryRowSource(FileRow(item, f"dir/file-{item:06d}.txt", states[item % 4], item)
                           for item in range(1, count + 1))


def test_memory_source_filters_and_pages() -> None:
    rows = memory_rows(100)
    page = rows.page("failed", "", 0, 10)
    assert page.total == 25
    assert all(row.state == "failed" for row in page.rows)
    last = rows.page("all", "", -5, 5)
    assert last.offset == 95
    assert [row.item_id for row in last.rows] == [96, 97, 98, 99, 100]
    found = rows.page("all", "FILE-000042", 0, 10)
    assert [row.item_id for row in found.rows] == [42]
    assert rows.page("active", "", 0, 100).total == 25


def test_memory_source_applies_events() -> None:
    rows = MemoryRowSource()
    rows.apply([ItemEvent(2, 1, "b", "scanned", 10), ItemEvent(1, 1, "a", "scanned", 5)])
    rows.apply([ItemEvent(2, 1, "b", "failed", 0, "0x1", "boom")])
    page = rows.page("all", "", 0, 10)
    assert [(row.item_id, row.state, row.size) for row in page.rows] == [(1, "scanned", 5), (2, "failed", 10)]
    assert rows.counts() == {"scanned": 1, "failed": 1}


def test_store_source_pages_by_offset(tmp_path: Path) -> None:
    from spmt_tui.state.store import NewItem, SessionStore

    db = tmp_path / "session.db"
    source = StoreRowSource(db)
    source.apply([ItemEvent(1, 1, "early.txt", "scanned")])
    assert source.page("all", "", 0, 10).total == 1  # from events until the database exists

    store = SessionStore.open(db)
    store.start_session("s1", Settings().to_json(), [{"source": "/s", "site_url": "https://h/sites/x",
                                                       "library": "Documents", "folder": ""}])
    task_id = store.task_id(0)
    items = [NewItem(f"dir/file-{number:04d}.txt", "file", number, None, None, False, "scanned")
             for number in range(1, 501)]
    row_ids = store.add_items(task_id, 1, items)
    for row_id in row_ids[::5]:
        store.mark(row_id, "failed", code="0x01510001", message="upload failed")
    store.close()

    page = source.page("all", "", 200, 20)
    assert page.total == 500
    assert page.offset == 200
    assert [row.path for row in page.rows][:2] == ["dir/file-0201.txt", "dir/file-0202.txt"]
    failed = source.page("failed", "", 10, 5)
    assert failed.total == 100
    assert [row.path for row in failed.rows] == [f"dir/file-{n:04d}.txt" for n in (51, 56, 61, 66, 71)]
    assert failed.rows[0].code == "0x01510001"
    tail = source.page("all", "file-04", -3, 3)
    assert [row.path for row in tail.rows] == ["dir/file-0497.txt", "dir/file-0498.txt", "dir/file-0499.txt"]
    assert source.counts() == {"scanned": 400, "failed": 100}
    source.close()


async def test_file_list_with_100k_rows() -> None:
    rows = memory_rows(100_000)

    from textual.app import App, ComposeResult

    class ListApp(App[None]):
        def get_theme_variable_defaults(self) -> dict[str, str]:
            return {**super().get_theme_variable_defaults(), **STATE_VARIABLE_DEFAULTS}

        def compose(self) -> ComposeResult:
            yield FileList(rows, id="files")

    app = ListApp()
    async with app.run_test(size=(100, 30)) as pilot:
        files = app.query_one(FileList)
        files.focus()
        files.reload()
        await pilot.pause(0.3)
        assert files.total == 100_000
        started = time.perf_counter()
        await pilot.press("end")
        await pilot.pause(0.3)
        assert files.cursor == 99_999
        assert files.row_at(99_999).item_id == 100_000
        await pilot.press("pageup", "up")
        await pilot.pause(0.3)
        elapsed = time.perf_counter() - started
        assert files.row_at(files.cursor) is not None
        assert elapsed < 2.0
        files.state_filter = "failed"
        await pilot.pause(0.3)
        assert files.total == 25_000
        files.search = "file-09999"
        await pilot.pause(0.3)
        assert files.total == 2  # file-099993 and file-099997: failed rows have id % 4 == 1
        assert all(row.state == "failed" for row in files._window.rows)


# -- wizard pieces ----------------------------------------------------------------------------


def test_source_problem(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    assert "does not exist" in source_problem(str(tmp_path / "missing"))
    assert "is not a folder" in source_problem(str(tmp_path / "file.txt"))
    assert source_problem(str(tmp_path)) is None
    assert "type the folder" in source_problem("  ")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read every folder")
def test_source_problem_unreadable(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0)
    try:
        assert "not readable" in source_problem(str(locked))
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize(("folder", "problem"), [
    ("", None), ("Finance/2024", None), ("/Finance/", None), ("a//b", "empty folder name"),
    ("bad:name", "contains :"), ("trailing.", "ends with a dot"), (" lead", "starts or ends"),
])
def test_folder_problem(folder: str, problem: str | None) -> None:
    result = folder_problem(folder)
    if problem is None:
        assert result is None
    else:
        assert problem in (result or "")


def test_review_lines_show_changed_settings() -> None:
    plan = MigrationPlan(signed_in=fake_signed_in(), source="/srv/a", site_url="https://h/sites/x",
                         library="Docs", folder="F")
    plan.settings.package_max_files = 100
    labels = dict(plan.review_lines())
    assert labels["Task 1"] == "/srv/a → https://h/sites/x/Docs/F"
    assert labels["package max files"] == "100"
    assert changed_settings(Settings()) == [("Settings", "SPMT defaults")]
    bulk = MigrationPlan(bulk_tasks=[TaskSpec("/a", "https://h/s"), TaskSpec("/b", "https://h/s")])
    assert [label for label, _ in bulk.review_lines()] == ["Task 1", "Task 2", "Settings"]


def app_with(**options: Any) -> SpmtApp:
    settings = Settings()
    return SpmtApp(services=FakeServices(**options), settings=settings, remember_theme=False)


async def test_settings_form_has_every_field() -> None:
    app = app_with()
    async with app.run_test(size=(100, 30)) as pilot:
        app.plan.signed_in = fake_signed_in()
        app.push_screen(SettingsScreen())
        await pilot.pause()
        screen = app.screen
        for item in dataclasses.fields(Settings):
            editor = screen.query_one(f"#setting-{item.name}")
            assert isinstance(editor, Checkbox if str(item.type) == "bool" else Input)
        assert screen.read_form() == app.plan.settings

        screen.query_one("#setting-package_max_files", Input).value = "100"
        screen.query_one("#setting-incremental", Checkbox).value = False
        screen.query_one("#setting-created_after", Input).value = "2024-01-31"
        settings = screen.read_form()
        assert settings.package_max_files == 100
        assert settings.incremental is False
        assert settings.created_after is not None and settings.created_after.year == 2024

        screen.query_one("#setting-auto_rerun", Input).value = "9"
        with pytest.raises(SettingsError, match="auto_rerun"):
            screen.read_form()
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, SettingsScreen)
        assert "auto_rerun" in str(app.screen.query_one("#step-error", Static).render())
        await pilot.press("ctrl+d")
        await pilot.pause()
        assert app.screen.read_form() == Settings()


async def test_bulk_file_not_supported_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("spmt_tui.tui.screens.bulk.task_loader", lambda: None)
    app = app_with()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("b")
        await pilot.pause()
        assert isinstance(app.screen, BulkScreen)
        assert NOT_SUPPORTED in str(app.screen.query_one("#bulk-unsupported", Static).render())
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, BulkScreen)
        await pilot.press("escape")
        await pilot.pause()
        assert app.plan.bulk_tasks is None


async def test_bulk_file_with_loader(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def load_tasks(path: Path) -> list[Any]:
        return [TaskSpec("/srv/a", "https://h/sites/x"), TaskSpec("/srv/b", "https://h/sites/y", "Docs")]

    monkeypatch.setattr("spmt_tui.tui.screens.bulk.task_loader", lambda: load_tasks)
    task_file = tmp_path / "tasks.csv"
    task_file.write_text("x")
    app = app_with()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("b")
        await pilot.pause()
        app.screen.query_one("#task-file", Input).value = str(task_file)
        await pilot.press("ctrl+n")
        await pilot.pause()
        assert [task.source for task in app.plan.tasks()] == ["/srv/a", "/srv/b"]
        assert isinstance(app.screen, SignInScreen)
        assert "Task file" in str(app.screen.query_one(".step-bar", Static).render())


async def test_wizard_with_fakes_reaches_report(tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    app = app_with(migration_options={"files": 60, "batch": 20, "step_seconds": 0.01})
    app.base_settings.working_folder = tmp_path / "work"
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("n")
        await pilot.pause()
        await pilot.press("ctrl+n")  # sign in (the fake signs in at once)
        await pilot.pause(0.2)
        app.screen.query_one("#source", Input).value = str(share)
        await pilot.press("ctrl+n")
        await pilot.pause(0.3)
        await pilot.press("ctrl+n")  # destination: Documents, library root
        await pilot.pause()
        await pilot.press("ctrl+n")  # settings
        await pilot.pause()
        await pilot.press("ctrl+n")  # review: Migrate
        for _ in range(50):
            if isinstance(app.screen, ReportScreen):
                break
            await pilot.pause(0.1)
        assert isinstance(app.screen, ReportScreen)
        assert app.active_run.result.status == "completed_with_failures"
        assert app.active_run.result.counts["failed"] == 4
        await pilot.press("escape")
        await pilot.pause(0.6)
        assert isinstance(app.screen, ProgressScreen)
        failures = app.screen.query_one("#failure-list", FileList)
        await pilot.press("2")
        await pilot.pause(0.6)
        assert failures.total == 4


async def test_resume_takes_two_keys() -> None:
    sessions = [FakeSession("new-done", "2024-02-01T00:00", "completed", ["t"], {}),
                FakeSession("old-interrupted", "2024-01-01T00:00", "interrupted", ["t"], {})]
    app = app_with(sessions=sessions, migration_options={"files": 10, "step_seconds": 0.01})
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, SessionsScreen)
        await pilot.press("enter")
        for _ in range(30):
            if app.services.created:
                break
            await pilot.pause(0.1)
        assert app.services.created[0].session_id == "old-interrupted"
        await pilot.pause(0.5)


async def test_pause_resume_cancel_keys() -> None:
    app = app_with(migration_options={"steps": 0})
    async with app.run_test(size=(80, 24)) as pilot:
        app.plan.signed_in = fake_signed_in()
        app.plan.source = "/srv/a"
        app.start_migration(app.plan)
        for _ in range(20):
            if app.active_run.migration is not None:
                break
            await pilot.pause(0.05)
        migration = app.active_run.migration
        await pilot.press("p")
        await pilot.pause()
        assert not migration._running.is_set()
        assert "paused" in str(app.screen.query_one("#run-phase", Static).render())
        await pilot.press("r")
        await pilot.pause()
        assert migration._running.is_set()
        commands = [command.title for command in app.get_system_commands(app.screen)]
        assert "Pause migration" in commands
        assert "Cancel migration" in commands
        assert "Report folder" in commands
        await pilot.press("c")
        await pilot.pause()
        await pilot.click("#confirm")
        for _ in range(40):
            if app.active_run.finished:
                break
            await pilot.pause(0.05)
        assert app.active_run.result.status == "cancelled"
        await pilot.pause(0.3)


def test_counts_line_formats_sizes() -> None:
    line = counts_line({"scanned": 3, "migrated": 2, "failed": 1, "files": 2, "folders": 1,
                        "bytes": 2048, "waiting": 0})
    assert "migrated\u00a0[b]2[/b]" in line
    assert "size\u00a0[b]2 KB[/b]" in line
    assert "waiting" not in line


async def running_app(pilot: Any, app: SpmtApp) -> Any:
    """Start a fake migration that runs until cancelled; return its ``ActiveRun``."""
    app.plan.signed_in = fake_signed_in()
    app.plan.source = "/srv/a"
    app.start_migration(app.plan)
    for _ in range(40):
        if app.active_run.migration is not None:
            break
        await pilot.pause(0.05)
    assert app.active_run.migration is not None
    return app.active_run


async def test_q_on_progress_asks_then_quits() -> None:
    app = app_with(migration_options={"steps": 0})
    async with app.run_test(size=(80, 24)) as pilot:
        run = await running_app(pilot, app)
        assert isinstance(app.screen, ProgressScreen)
        await pilot.press("q")
        await pilot.pause()
        body = str(app.screen.query_one(".dialog-body", Static).render())
        assert "can be resumed" in body
        assert run.session_id in body
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ProgressScreen)
        assert not run.finished

        await pilot.press("q")
        await pilot.pause()
        await pilot.click("#confirm")
        for _ in range(60):
            if not app.is_running:
                break
            await pilot.pause(0.05)
        assert not app.is_running
    assert run.result.status == "cancelled"
    assert app.return_code == 0


async def test_q_in_search_field_is_typed() -> None:
    app = app_with(migration_options={"steps": 0})
    async with app.run_test(size=(80, 24)) as pilot:
        await running_app(pilot, app)
        await pilot.press("slash", "q")
        await pilot.pause()
        assert app.screen.query_one("#search", Input).value == "q"
        assert isinstance(app.screen, ProgressScreen)
        await pilot.press("escape", "c")
        await pilot.pause()
        await pilot.click("#confirm")
        await pilot.pause(0.3)


async def test_q_after_migration_quits_at_once(tmp_path: Path) -> None:
    app = app_with(migration_options={"files": 5, "step_seconds": 0.01})
    app.base_settings.working_folder = tmp_path / "work"
    async with app.run_test(size=(80, 24)) as pilot:
        run = await running_app(pilot, app)
        for _ in range(60):
            if isinstance(app.screen, ReportScreen):
                break
            await pilot.pause(0.05)
        assert run.finished
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ProgressScreen)
        await pilot.press("q")
        for _ in range(40):
            if not app.is_running:
                break
            await pilot.pause(0.05)
        assert not app.is_running


async def test_exit_while_screen_mounts() -> None:
    # The app exits while a screen with a header is still mounting, so the header's title
    # watchers run after its children are gone. Textual 8.2's own Header fails here.
    from spmt_tui.tui.widgets.header import AppHeader

    for attempt in range(3):
        app = app_with()
        async with app.run_test(size=(80, 24)):
            app.push_screen(SessionsScreen())
            app.title = f"exit test {attempt}"
        # run_test() raises the app's error, so getting here means the exit was clean.
        assert app.return_code in (0, None)
    headers = [header for header in SessionsScreen().compose() if isinstance(header, AppHeader)]
    assert headers, "the Sessions screen no longer uses AppHeader"
