"""Review step: everything the migration will do, then Migrate."""

from __future__ import annotations

from rich.table import Table
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.widgets import Button, Static

from spmt_tui.tui.screens.wizard import WizardStep


class ReviewScreen(WizardStep):
    """Summary of the plan; Ctrl+N or the Migrate button starts the migration."""

    STEP = "Review"

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Migrate", priority=True),
    ]

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        with VerticalScroll(classes="form"):
            yield Static(self._summary(), id="review-summary")
            with Horizontal(classes="buttons"):
                yield Button("Migrate", id="migrate", variant="success")
        yield from self.compose_footer()

    def _summary(self) -> Table:
        # A two-column grid wraps long values inside their column, under the value.
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold", no_wrap=True)
        table.add_column(overflow="fold")
        for label, value in self.app.plan.review_lines():
            table.add_row(label, value)
        if self.app.plan.settings.scan_only:
            table.add_row("Scan only", "nothing is uploaded; the scan reports are written")
        return table

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#migrate", Button).focus()

    @on(Button.Pressed, "#migrate")
    def _migrate(self) -> None:
        self.action_next()

    def save(self) -> bool:
        plan = self.app.plan
        if plan.signed_in is None:
            self.show_error("Not signed in: go back to the Sign in step.")
            return False
        if not plan.tasks():
            self.show_error("No task to run.")
            return False
        return True

    def go_next(self) -> None:
        self.app.start_migration(self.app.plan)
