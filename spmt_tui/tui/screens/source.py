"""Source step: the file share folder, typed or picked from a folder tree, then validated."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.widgets import DirectoryTree, Input, Static

from spmt_tui.tui.screens.wizard import WizardStep, field_row


def source_problem(text: str) -> str | None:
    """Return why ``text`` cannot be the source folder, or None when it can."""
    if not text.strip():
        return "type the folder to migrate, or pick it in the tree"
    path = Path(text.strip()).expanduser()
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a folder: pick the folder that contains the files"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable by this user ({os.getuid()}): check its permissions"
    try:
        with os.scandir(path) as entries:
            next(entries, None)
    except OSError as error:
        return f"cannot list {path}: {error.strerror}"
    return None


class FolderTree(DirectoryTree):
    """Directory tree that lists folders only."""

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        folders = []
        for path in paths:
            try:
                if path.is_dir():
                    folders.append(path)
            except OSError:
                continue
        return folders


class SourceScreen(WizardStep):
    """Pick the file share folder."""

    STEP = "Source"

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+u", "tree_up", "Parent folder"),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        with Vertical(classes="form"):
            yield field_row("Folder to migrate", Input(
                self.app.plan.source, placeholder="/srv/shares/finance (local path or mounted share)",
                id="source", compact=True))
            yield Static("", id="source-check", classes="status")
            with Horizontal(id="tree-heading"):
                yield Static("Pick a folder: arrows move, Enter selects, Ctrl+U goes up", classes="hint")
            yield FolderTree(self._tree_root(), id="source-tree")
        yield from self.compose_footer()

    def _tree_root(self) -> Path:
        typed = Path(self.app.plan.source).expanduser() if self.app.plan.source else None
        if typed is not None and typed.is_dir():
            return typed.parent if typed.parent != typed else typed
        return Path.home() if Path.home().is_dir() else Path("/")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#source", Input).focus()
        self._check(self.query_one("#source", Input).value)

    @on(Input.Changed, "#source")
    def _typed(self, event: Input.Changed) -> None:
        self._check(event.value)

    def _check(self, text: str) -> bool:
        problem = source_problem(text) if text.strip() else None
        status = self.query_one("#source-check", Static)
        if problem:
            status.update(f"[b]✗[/b] {problem}")
            status.set_class(True, "-error")
        elif text.strip():
            status.update("[b]✓[/b] readable folder")
            status.set_class(False, "-error")
        else:
            status.update("")
        return problem is None and bool(text.strip())

    @on(Input.Submitted, "#source")
    def _submitted(self) -> None:
        self.action_next()

    @on(DirectoryTree.DirectorySelected, "#source-tree")
    def _picked(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#source", Input).value = str(event.path)

    def action_tree_up(self) -> None:
        tree = self.query_one("#source-tree", FolderTree)
        current = Path(tree.path)
        if current.parent != current:
            tree.path = current.parent
            tree.focus()

    def save(self) -> bool:
        text = self.query_one("#source", Input).value
        problem = source_problem(text)
        if problem:
            self.show_error(f"Source: {problem}")
            return False
        self.app.plan.source = str(Path(text.strip()).expanduser().resolve())
        return True

    def go_next(self) -> None:
        from spmt_tui.tui.screens.destination import DestinationScreen

        self.app.push_screen(DestinationScreen())
