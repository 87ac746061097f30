"""Start screen: new migration, resume, bulk task file, and the most recent sessions."""

from __future__ import annotations

from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, OptionList, Static
from textual.widgets.option_list import Option

from spmt_tui.tui.screens.sessions import SessionActions, fill_session_table, is_resumable
from spmt_tui.tui.widgets.footer import SteadyFooter
from spmt_tui.tui.widgets.header import AppHeader

RECENT_SESSIONS = 8

ACTIONS = (
    ("new", "n", "New migration", "sign in, pick a folder and a library, migrate"),
    ("sessions", "s", "Resume a session", "list every session; Enter resumes an interrupted one"),
    ("bulk", "b", "Open a bulk task file", "CSV or JSON with many source → destination rows"),
    ("quit", "q", "Quit", ""),
)


class StartScreen(SessionActions, Screen[None]):
    """First screen of the app."""

    BINDINGS = [
        Binding("n", "new", "New"),
        Binding("s", "sessions", "Sessions"),
        Binding("b", "bulk", "Bulk file"),
        Binding("r", "resume_latest", "Resume latest", show=False),
        Binding("m", "progress", "Running migration"),
        Binding("q", "app.quit", "Quit"),
    ]

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Vertical(id="start"):
            yield Static("Migrate file shares to SharePoint Online", classes="screen-title")
            options = [Option(f"[b]{key}[/b]  {title}" + (f"  [dim]{help_text}[/dim]" if help_text else ""),
                              id=action) for action, key, title, help_text in ACTIONS]
            yield OptionList(*options, id="start-actions")
            yield Static("Recent sessions", classes="section-title")
            yield Static("", id="recent-hint", classes="hint")
            yield DataTable(id="recent", cursor_type="row", zebra_stripes=True)
        yield SteadyFooter()

    def on_mount(self) -> None:
        self.sessions: list[Any] = []
        self.query_one("#start-actions", OptionList).focus()

    def on_screen_resume(self) -> None:
        self.refresh_sessions()

    def refresh_sessions(self) -> None:
        self.sessions = self.app.services.list_sessions(self.app.working_folder)[:RECENT_SESSIONS]
        table = self.query_one("#recent", DataTable)
        fill_session_table(table, self.sessions)
        hint = self.query_one("#recent-hint", Static)
        if not self.sessions:
            hint.update("No sessions yet.")
            hint.display = True
            table.display = False
        else:
            hint.display = False
            table.display = True

    @on(OptionList.OptionSelected, "#start-actions")
    def _action_chosen(self, event: OptionList.OptionSelected) -> None:
        action = event.option.id
        if action == "quit":
            self.run_action("app.quit")
        else:
            self.run_action(str(action))

    def action_new(self) -> None:
        from spmt_tui.tui.screens.signin import SignInScreen

        plan = self.app.new_plan()
        self.app.push_screen(SignInScreen(profile_path=plan.profile_path))

    def action_sessions(self) -> None:
        self.app.action_sessions()

    def action_progress(self) -> None:
        from spmt_tui.tui.screens.progress import ProgressScreen

        self.app.push_screen(ProgressScreen())

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "progress":
            return self.app.active_run is not None
        return True

    def action_bulk(self) -> None:
        from spmt_tui.tui.screens.bulk import BulkScreen

        plan = self.app.new_plan()
        plan.bulk_tasks = []  # marks the bulk flow, so the step bar shows the bulk steps
        self.app.push_screen(BulkScreen())

    def action_resume_latest(self) -> None:
        for info in self.sessions:
            if is_resumable(info):
                self.resume(info)
                return
        self.app.notify("No interrupted session to resume.", severity="warning")

    @on(DataTable.RowSelected, "#recent")
    def _recent_selected(self, event: DataTable.RowSelected) -> None:
        if 0 <= event.cursor_row < len(self.sessions):
            self.open_session(self.sessions[event.cursor_row])
