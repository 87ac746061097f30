"""Shared frame of the wizard steps: the step bar, Back and Next."""

from __future__ import annotations

from typing import Any, ClassVar

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Label, Static

from spmt_tui.tui.widgets.footer import SteadyFooter
from spmt_tui.tui.widgets.header import AppHeader

WIZARD_STEPS = ("Sign in", "Source", "Destination", "Settings", "Review")
BULK_STEPS = ("Task file", "Sign in", "Settings", "Review")


def step_bar_text(steps: tuple[str, ...], current: str) -> str:
    """Return the step bar as Textual markup with the current step highlighted."""
    parts = []
    for number, name in enumerate(steps, start=1):
        if name == current:
            parts.append(f"[reverse b] {number} {name} [/]")
        else:
            parts.append(f" {number} {name} ")
    return "›".join(parts)


def field_row(label: str, editor: Widget, *, row_id: str | None = None) -> Horizontal:
    """Return one form line: a fixed-width label and a one-line editor."""
    return Horizontal(Label(label, classes="field-label"), editor, classes="field-row", id=row_id)


class WizardStep(Screen[Any]):
    """A wizard step. Subclasses set ``STEP`` and implement ``save`` and ``next_step``."""

    STEP: ClassVar[str] = ""

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
    ]

    def compose_header(self) -> ComposeResult:
        yield AppHeader()
        yield Static(step_bar_text(self.steps, self.STEP), classes="step-bar")

    def compose_footer(self) -> ComposeResult:
        yield Static("", classes="step-error", id="step-error")
        yield SteadyFooter()

    @property
    def steps(self) -> tuple[str, ...]:
        return BULK_STEPS if self.app.plan.bulk_tasks is not None else WIZARD_STEPS

    def show_error(self, text: str) -> None:
        error = self.query_one("#step-error", Static)
        error.update(text)
        error.display = bool(text)

    def on_mount(self) -> None:
        self.show_error("")

    def action_back(self) -> None:
        self.app.pop_screen()

    def action_next(self) -> None:
        if self.save():
            self.show_error("")
            self.go_next()

    def save(self) -> bool:
        """Validate the step and store its values in the plan; False keeps the user here."""
        return True

    def go_next(self) -> None:
        raise NotImplementedError
