"""Bulk task file step: a CSV or JSON file with one source → destination row per task."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.widgets import DirectoryTree, Input, Static

from spmt_tui.tui.plan import TaskSpec
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
    """Pick a task file and check that it parses."""

    STEP = "Task file"

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        with Vertical(classes="form"):
            if task_loader() is None:
                yield Static(NOT_SUPPORTED, id="bulk-unsupported", classes="notice")
            yield field_row("Task file", Input(
                placeholder="SPMT CSV, Migration Manager CSV or JSON", id="task-file", compact=True))
            yield Static("", id="task-preview", classes="status")
            yield TaskFileTree(Path.home() if Path.home().is_dir() else Path("/"), id="task-tree")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#task-file", Input).focus()

    @on(DirectoryTree.FileSelected, "#task-tree")
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        self.query_one("#task-file", Input).value = str(event.path)
        self.action_next()

    @on(Input.Submitted, "#task-file")
    def _submitted(self) -> None:
        self.action_next()

    def save(self) -> bool:
        load_tasks = task_loader()
        if load_tasks is None:
            self.show_error(NOT_SUPPORTED)
            return False
        text = self.query_one("#task-file", Input).value.strip()
        if not text:
            self.show_error("Type the path of the task file, or pick it in the tree.")
            return False
        path = Path(text).expanduser()
        if not path.is_file():
            self.show_error(f"Task file {path} not found.")
            return False
        try:
            tasks = load_tasks(path)
        except (ValueError, OSError) as error:
            self.show_error(f"Invalid task file {path}: {error}")
            return False
        if not tasks:
            self.show_error(f"Task file {path} has no tasks.")
            return False
        specs = [TaskSpec(task.source, task.site_url, task.library, task.folder) for task in tasks]
        self.app.plan.bulk_tasks = specs
        self.app.plan.bulk_file = path
        preview = "\n".join(escape(spec.describe()) for spec in specs[:5])
        more = f"\n… and {len(specs) - 5} more" if len(specs) > 5 else ""
        self.query_one("#task-preview", Static).update(f"{len(specs)} task(s):\n{preview}{more}")
        return True

    def action_back(self) -> None:
        self.app.plan.bulk_tasks = None
        self.app.pop_screen()

    def go_next(self) -> None:
        from spmt_tui.tui.screens.signin import SignInScreen

        self.app.push_screen(SignInScreen(profile_path=self.app.plan.profile_path))
