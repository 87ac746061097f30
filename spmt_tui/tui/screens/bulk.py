"""Bulk task file step: a CSV or JSON file with one source → destination row per task."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from rich.text import Text
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import DataTable, DirectoryTree, Input, Static

from spmt_tui.tui.plan import TaskSpec, task_settings_text
from spmt_tui.tui.screens.wizard import WizardStep, field_row

TASK_FILE_SUFFIXES = (".csv", ".json")

NOT_SUPPORTED = ("Bulk task files are not supported yet: this build has no task file parser "
                 "(module spmt_tui.engine.tasks). Start a single migration with New migration, "
                 "or run one task at a time.")


def task_loader() -> Callable[[Path], list[Any]] | None:
    """Return the engine's ``load_tasks`` function, or None when the parser is not installed."""
    try:
        module = importlib.import_module("spmt_tui.engine.tasks")
    except ImportError:
        return None
    return getattr(module, "load_tasks", None)


class TaskFileTree(DirectoryTree):
    """Directory tree that lists folders and CSV or JSON files."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        shown = []
        for path in paths:
            try:
                if path.is_dir() or path.suffix.lower() in TASK_FILE_SUFFIXES:
                    shown.append(path)
            except OSError:
                continue
        return shown


class BulkScreen(WizardStep):
    """Pick a task file, check that it parses and list its tasks with their own settings.

    Enter (or picking a file in the tree) loads the file and fills the task table. Enter again
    on the same file, or Ctrl+N, goes on to the next step.
    """

    STEP = "Task file"

    DEFAULT_CSS = """
    BulkScreen #task-table {
        height: auto;
        max-height: 12;
    }
    BulkScreen #task-issues {
        height: auto;
        max-height: 12;
        color: $error;
        padding: 0 1;
    }
    """

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.loaded_path: Path | None = None

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        with Vertical(classes="form"):
            if task_loader() is None:
                yield Static(NOT_SUPPORTED, id="bulk-unsupported", classes="notice")
            yield field_row("Task file", Input(
                placeholder="SPMT CSV, Migration Manager CSV or JSON", id="task-file", compact=True))
            yield Static("", id="task-preview", classes="status")
            yield Static("", id="task-issues")
            yield DataTable(id="task-table", cursor_type="row", zebra_stripes=True)
            yield TaskFileTree(Path.home() if Path.home().is_dir() else Path("/"), id="task-tree")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one("#task-table", DataTable)
        table.add_columns("#", "Source", "Destination", "Settings")
        table.display = False
        self.query_one("#task-issues", Static).display = False
        self.query_one("#task-file", Input).focus()

    @on(DirectoryTree.FileSelected, "#task-tree")
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#task-file", Input).value = str(event.path)
        self.load()

    @on(Input.Submitted, "#task-file")
    def _submitted(self) -> None:
        if self.loaded_path is not None and self.loaded_path == self._typed_path():
            self.action_next()
        else:
            self.load()

    @on(Input.Changed, "#task-file")
    def _edited(self) -> None:
        if self.loaded_path is not None and self.loaded_path != self._typed_path():
            self._clear()

    def _typed_path(self) -> Path | None:
        text = self.query_one("#task-file", Input).value.strip()
        return Path(text).expanduser() if text else None

    def _clear(self) -> None:
        self.loaded_path = None
        self.app.plan.bulk_tasks = []
        self.app.plan.bulk_file = None
        self.query_one("#task-preview", Static).update("")
        issues = self.query_one("#task-issues", Static)
        issues.update("")
        issues.display = False
        table = self.query_one("#task-table", DataTable)
        table.clear()
        table.display = False

    def load(self) -> bool:
        """Read the typed task file into the plan and the task table; False when it is invalid."""
        self._clear()
        load_tasks = task_loader()
        if load_tasks is None:
            self.show_error(NOT_SUPPORTED)
            return False
        path = self._typed_path()
        if path is None:
            self.show_error("Type the path of the task file, or pick it in the tree.")
            return False
        if not path.is_file():
            self.show_error(f"Task file {escape(str(path))} not found: check the path.")
            return False
        try:
            tasks = load_tasks(path)
        except (ValueError, OSError) as error:
            self._show_issues(path, error)
            return False
        if not tasks:
            self.show_error(f"Task file {escape(str(path))} has no tasks: add one row per task.")
            return False
        # The engine's tasks keep their own settings, so the TUI runs what the CLI would run.
        specs = [TaskSpec(task.source, task.site_url, task.library, task.folder,
                          dict(getattr(task, "settings", {}))) for task in tasks]
        self.app.plan.bulk_tasks = specs
        self.app.plan.bulk_file = path
        self.loaded_path = path
        self.show_error("")
        self._fill_table(specs)
        self.query_one("#task-preview", Static).update(
            f"{len(specs)} task(s). Press Enter again or Ctrl+N to continue.")
        return True

    def _show_issues(self, path: Path, error: Exception) -> None:
        """Show every line and column problem of an invalid file under the path field."""
        issues = getattr(error, "issues", None)
        if issues:
            listing = "\n".join(str(issue) for issue in issues)
            count = len(issues)
        else:
            listing = str(error)
            count = 1
        self.show_error(f"Invalid task file {escape(str(path))}: {count} error(s); fix them and "
                        "press Enter.")
        widget = self.query_one("#task-issues", Static)
        widget.update(Text(listing))
        widget.display = True

    def _fill_table(self, specs: list[TaskSpec]) -> None:
        table = self.query_one("#task-table", DataTable)
        table.clear()
        for number, spec in enumerate(specs, start=1):
            target = f"{spec.site_url.rstrip('/')}/{spec.library}"
            if spec.folder:
                target += "/" + spec.folder.strip("/")
            table.add_row(str(number), Text(spec.source), Text(target),
                          Text(task_settings_text(spec.settings)))
        table.display = True

    def save(self) -> bool:
        if self.loaded_path is not None and self.loaded_path == self._typed_path():
            return True
        return self.load()

    def action_back(self) -> None:
        self.app.plan.bulk_tasks = None
        self.app.pop_screen()

    def go_next(self) -> None:
        from spmt_tui.tui.screens.signin import SignInScreen

        self.app.push_screen(SignInScreen(profile_path=self.app.plan.profile_path))
