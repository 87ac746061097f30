"""Dialogs: confirm, message, secret input and file details."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from spmt_tui.tui.rows import FileRow
from spmt_tui.tui.widgets.format import human_bytes


class ConfirmModal(ModalScreen[bool]):
    """Yes or no question; Escape answers no."""

    BINDINGS = [Binding("escape", "dismiss(False)", "Back")]

    def __init__(self, title: str, text: str, *, confirm: str = "Yes", cancel: str = "No") -> None:
        super().__init__()
        self.title_text = title
        self.body_text = text
        self.confirm_label = confirm
        self.cancel_label = cancel

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.body_text, classes="dialog-body")
            with Horizontal(classes="dialog-buttons"):
                yield Button(self.cancel_label, id="cancel")
                yield Button(self.confirm_label, id="confirm", variant="error")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    @on(Button.Pressed, "#confirm")
    def _confirm(self) -> None:
        self.dismiss(True)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(False)


class MessageModal(ModalScreen[None]):
    """Text to read (scrollable), closed with Escape or Enter."""

    BINDINGS = [Binding("escape,enter", "dismiss(None)", "Close")]

    def __init__(self, title: str, text: str) -> None:
        super().__init__()
        self.title_text = title
        self.body_text = text

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog -wide"):
            yield Label(self.title_text, classes="dialog-title")
            with VerticalScroll(classes="dialog-scroll"):
                yield Static(self.body_text, classes="dialog-body", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Close", id="close", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#close", Button).focus()

    @on(Button.Pressed, "#close")
    def _close(self) -> None:
        self.dismiss(None)


class SecretModal(ModalScreen[str | None]):
    """Masked input for a password or passphrase; Escape returns None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, prompt: str) -> None:
        super().__init__()
        self.title_text = title
        self.prompt_text = prompt

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Static(self.prompt_text, classes="dialog-body")
            yield Input(password=True, id="secret")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Cancel", id="cancel")
                yield Button("OK", id="ok", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#secret", Input).focus()

    @on(Input.Submitted)
    @on(Button.Pressed, "#ok")
    def _ok(self) -> None:
        self.dismiss(self.query_one("#secret", Input).value)

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)


def describe_row(row: FileRow) -> str:
    lines = [f"Path:   {row.path}", f"State:  {row.state}"]
    if row.size:
        lines.append(f"Size:   {human_bytes(row.size)} ({row.size:,} bytes)")
    if row.code:
        lines.append(f"Code:   {row.code}")
    if row.message:
        lines.append(f"Reason: {row.message}")
    return "\n".join(lines)


class FileDetailsModal(MessageModal):
    """Every field of one file row, for reasons too long for the list."""

    def __init__(self, row: FileRow) -> None:
        super().__init__("File", describe_row(row))
