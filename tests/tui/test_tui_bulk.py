"""Bulk task files in the TUI: the task table, invalid files and per-task settings end to end."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.text import Text
from textual.widgets import DataTable, Input, Static

from parity_kit import arrived, unique, write_tree
from spmt_tui.engine.custom_storage import MissingAccessKey, find_key, forget_keys
from spmt_tui.engine.settings import Settings
from spmt_tui.engine.tasks import load_tasks
from spmt_tui.tui.app import SpmtApp
from spmt_tui.tui.plan import MigrationPlan, TaskSpec, task_settings_text
from spmt_tui.tui.screens.bulk import BulkScreen
from spmt_tui.tui.screens.progress import ProgressScreen
from spmt_tui.tui.screens.review import ReviewScreen
from spmt_tui.tui.screens.settings_form import SettingsScreen
from spmt_tui.tui.screens.signin import SignInScreen
from spmt_tui.tui.services import Services
from test_tui_sandbox import PASSPHRASE, choose_password_method, wait_until
from tui_fakes import FakeServices, fake_signed_in

SITE = "https://127.0.0.1:8443/sites/x"
# A base64 value that passes the access key check; it is not a real key.
ACCOUNT_KEY = "dGVzdC1rZXktbm90LXJlYWw="


def write_json_tasks(path: Path, tasks: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"Tasks": tasks}, indent=2), encoding="utf-8")
    return path


def table_rows(screen: BulkScreen) -> list[list[str]]:
    table = screen.query_one("#task-table", DataTable)
    return [[str(cell) for cell in table.get_row_at(index)] for index in range(table.row_count)]


def rendered(widget: Static) -> str:
    content = widget.render()
    return content.plain if isinstance(content, Text) else str(content)


async def open_task_file(pilot: Any, path: Path) -> BulkScreen:
    """From the start screen, open the bulk step and load ``path`` with Enter."""
    await pilot.press("b")
    await pilot.pause()
    screen = pilot.app.screen
    assert isinstance(screen, BulkScreen)
    screen.query_one("#task-file", Input).value = str(path)
    await pilot.press("enter")
    await pilot.pause()
    return screen


def test_task_settings_text_lists_overrides() -> None:
    text = task_settings_text({"include_hidden": True, "skip_extensions": "tmp:bak"})
    assert text == "hidden files, skip tmp:bak"
    assert task_settings_text({}) == ""
    assert task_settings_text({"incremental": False}) == "not incremental"
    assert task_settings_text({"replace_invalid_char": "_"}) == "replace invalid with _"
    assert task_settings_text({"replace_invalid_char": None}) == "skip invalid names"


def test_review_lines_show_task_settings() -> None:
    plan = MigrationPlan(bulk_tasks=[TaskSpec("/a", SITE, settings={"include_hidden": True}),
                                     TaskSpec("/b", SITE)])
    lines = dict(plan.review_lines())
    assert lines["Task 1"].endswith("(own settings: hidden files)")
    assert "own settings" not in lines["Task 2"]


async def test_bulk_table_shows_task_settings(tmp_path: Path) -> None:
    share = write_tree(tmp_path / "share", {"a.txt": "a"})
    task_file = write_json_tasks(tmp_path / "tasks.json", [
        {"SourcePath": str(share), "TargetPath": SITE, "TargetList": "Documents",
         "TargetListRelativePath": "one",
         "Settings": {"MigrateHiddenItems": True, "SkipFilesWithExtensions": "tmp:bak"}},
        {"SourcePath": str(share), "TargetPath": SITE, "TargetList": "Documents",
         "TargetListRelativePath": "two"},
    ])
    app = SpmtApp(services=FakeServices(), settings=Settings(), remember_theme=False)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_task_file(pilot, task_file)
        assert isinstance(app.screen, BulkScreen)
        rows = table_rows(screen)
        assert len(rows) == 2
        assert rows[0][1] == str(share)
        assert rows[0][2] == f"{SITE}/Documents/one"
        assert rows[0][3] == "hidden files, skip tmp:bak"
        assert rows[1][3] == ""
        plan_tasks = app.plan.tasks()
        assert plan_tasks[0].settings == {"include_hidden": True, "skip_extensions": "tmp:bak"}
        assert plan_tasks[1].settings == {}

        await pilot.press("enter")
        await pilot.pause()
        assert isinstance(app.screen, SignInScreen)


async def test_bulk_invalid_file_shows_line_column(tmp_path: Path) -> None:
    share = write_tree(tmp_path / "share", {"a.txt": "a"})
    good = {"SourcePath": str(share), "TargetPath": SITE, "TargetList": "Documents"}
    bad = dict(good, TargetListRelativePath="two", Settings={"MigrateHiddenFiles": True})
    task_file = write_json_tasks(tmp_path / "tasks.json", [good, bad])
    app = SpmtApp(services=FakeServices(), settings=Settings(), remember_theme=False)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_task_file(pilot, task_file)
        issues = rendered(screen.query_one("#task-issues", Static))
        error = rendered(screen.query_one("#step-error", Static))
        lines = task_file.read_text().splitlines()
        [line] = [number for number, text in enumerate(lines, 1) if "MigrateHiddenFiles" in text]
        column = lines[line - 1].index('"MigrateHiddenFiles"') + 1
        assert f"line {line}, column {column} " in issues
        assert "unknown setting 'MigrateHiddenFiles'" in issues
        assert "1 error(s)" in error
        assert not screen.query_one("#task-table", DataTable).display
        assert app.plan.bulk_tasks == []

        await pilot.press("ctrl+n")
        await pilot.pause()
        assert isinstance(app.screen, BulkScreen)

        write_json_tasks(task_file, [good, dict(bad, Settings={"MigrateHiddenItems": True})])
        await pilot.press("enter")
        await pilot.pause()
        assert not screen.query_one("#task-issues", Static).display
        assert [row[3] for row in table_rows(screen)] == ["", "hidden files"]


async def test_bulk_custom_storage_key_in_memory(tmp_path: Path) -> None:
    account = unique("bulkacct").replace("-", "")
    share = write_tree(tmp_path / "share", {"a.txt": "a"})
    storage = {"UseCustomAzureStorage": True, "CustomAzureStorageAccount": account}
    task = {"SourcePath": str(share), "TargetPath": SITE, "TargetList": "Documents"}
    forget_keys()
    try:
        without_key = write_json_tasks(tmp_path / "no-key.json", [dict(task, Settings=storage)])
        app = SpmtApp(services=FakeServices(), settings=Settings(), remember_theme=False)
        async with app.run_test(size=(120, 36)) as pilot:
            await open_task_file(pilot, without_key)
            assert app.plan.tasks()[0].settings["custom_azure_account"] == account
            with pytest.raises(MissingAccessKey, match=account):
                Services().new_migration(app.plan.tasks(), app.plan.settings, fake_signed_in(), None)

        with_key = write_json_tasks(tmp_path / "key.json", [
            dict(task, Settings=dict(storage, CustomAzureAccessKey=ACCOUNT_KEY))])
        app = SpmtApp(services=FakeServices(), settings=Settings(), remember_theme=False)
        async with app.run_test(size=(120, 36)) as pilot:
            screen = await open_task_file(pilot, with_key)
            assert find_key(account) == (ACCOUNT_KEY, "memory")
            tasks = app.plan.tasks()
            assert "access_key" not in json.dumps(tasks[0].settings).lower()
            assert ACCOUNT_KEY not in json.dumps(tasks[0].settings)
            assert ACCOUNT_KEY not in "".join(cell for row in table_rows(screen) for cell in row)
    finally:
        forget_keys()


@pytest.fixture
def bulk_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Session settings that leave hidden files out, so only a task's own setting adds them."""
    monkeypatch.setenv("SPMT_TUI_CACHE_PASSPHRASE", PASSPHRASE)
    settings = Settings()
    settings.working_folder = tmp_path / "work"
    settings.include_hidden = False
    return settings


async def test_bulk_json_runs_task_settings(sandbox: Any, bulk_settings: Settings,
                                            tmp_path: Path) -> None:
    share = write_tree(tmp_path / "share", {"plain.txt": "p", ".hidden.txt": "h"})
    with_hidden, without_hidden = unique("bulk-hidden"), unique("bulk-plain")
    task_file = write_json_tasks(tmp_path / "tasks.json", [
        {"SourcePath": str(share), "TargetPath": sandbox.site_url, "TargetList": "Documents",
         "TargetListRelativePath": with_hidden, "Settings": {"MigrateHiddenItems": True}},
        {"SourcePath": str(share), "TargetPath": sandbox.site_url, "TargetList": "Documents",
         "TargetListRelativePath": without_hidden},
    ])
    app = SpmtApp(settings=bulk_settings, tenant_profile=sandbox.profile_path, remember_theme=False)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = await open_task_file(pilot, task_file)
        assert [row[3] for row in table_rows(screen)] == ["hidden files", ""]
        await pilot.press("enter")
        await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the Sign in step")
        await choose_password_method(pilot)
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the Settings step")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: isinstance(app.screen, ReviewScreen), what="the Review step")
        await pilot.press("ctrl+n")
        await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), what="the Progress screen")
        await wait_until(pilot, lambda: app.active_run is not None and app.active_run.finished,
                         timeout=180, what="the migration to finish")
        run = app.active_run
        assert run is not None
        assert run.error == ""
        assert run.result.status == "completed", run.result.message
        assert run.migration.settings.include_hidden is False
        assert run.migration.tasks == load_tasks(task_file)

    assert sorted(arrived(sandbox, tmp_path / "out1", with_hidden)) == [".hidden.txt", "plain.txt"]
    assert sorted(arrived(sandbox, tmp_path / "out2", without_hidden)) == ["plain.txt"]
