"""Sessions: every migration session in the working folder; Enter resumes an interrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from spmt_tui.tui.plan import SignedIn
from spmt_tui.tui.widgets.footer import SteadyFooter
from spmt_tui.tui.widgets.header import AppHeader

SESSION_COLUMNS = ("Status", "Session", "Created", "Migrated", "Failed", "Task")


def session_status(info: Any) -> str:
    return str(getattr(info, "status", "") or "unknown")


def session_row(info: Any) -> tuple[str, ...]:
    counts = getattr(info, "counts", None) or {}
    tasks = list(getattr(info, "tasks", None) or [])
    task = str(tasks[0]) if tasks else ""
    if len(tasks) > 1:
        task += f" (+{len(tasks) - 1} more)"
    created = str(getattr(info, "created", ""))[:16].replace("T", " ")
    return (session_status(info).replace("_", " "), str(info.id), created,
            f"{counts.get('migrated', 0):,}", f"{counts.get('failed', 0):,}", task)


def is_resumable(info: Any) -> bool:
    from spmt_tui.tui.app import RESUMABLE_STATUSES

    return session_status(info) in RESUMABLE_STATUSES


def first_resumable(sessions: list[Any]) -> int:
    """Return the index of the newest resumable session (sessions are newest first), else 0."""
    for index, info in enumerate(sessions):
        if is_resumable(info):
            return index
    return 0


def fill_session_table(table: DataTable, sessions: list[Any]) -> None:
    table.clear(columns=not table.columns)
    if not table.columns:
        table.add_columns(*SESSION_COLUMNS)
    for info in sessions:
        table.add_row(*session_row(info), key=str(info.id))
    if sessions:
        table.move_cursor(row=first_resumable(sessions))


class SessionActions:
    """Resume and report actions shared by the start and sessions screens."""

    app: Any

    def open_session(self, info: Any) -> None:
        run = self.app.active_run
        if run is not None and run.session_id == str(info.id):
            self.app.show_progress()
            return
        if is_resumable(info):
            self.resume(info)
            return
        report_dir = getattr(info, "report_dir", None)
        if report_dir:
            from spmt_tui.tui.screens.report import SessionReportScreen

            self.app.push_screen(SessionReportScreen(info))
        else:
            self.app.notify(f"Session {info.id} is {session_status(info)}.")

    def resume(self, info: Any) -> None:
        profile = getattr(info, "profile_path", None) or self.app.tenant_profile
        self.app.notify(f"Resuming session {info.id}…", timeout=3)
        self._resume_with_saved_sign_in(info, Path(profile) if profile else None)

    @work(exclusive=True, group="resume")
    async def _resume_with_saved_sign_in(self, info: Any, profile: Path | None) -> None:
        from spmt_tui.tui.screens.signin import SignInScreen

        plan = self.app.plan
        signed_in: SignedIn | None = plan.signed_in
        if signed_in is None or (profile and signed_in.profile.source_path
                                 and Path(signed_in.profile.source_path) != profile):
            signed_in = await self.app.services.saved_sign_in(profile, self._prompt_not_expected)
        if signed_in is not None:
            self.app.resume_migration(info, signed_in)
            return

        def signed_in_now(result: SignedIn | None) -> None:
            if result is not None:
                self.app.plan.signed_in = result
                self.app.resume_migration(info, result)

        self.app.notify("Sign in again to resume this session.", timeout=5)
        self.app.push_screen(SignInScreen(profile_path=profile, resume_session=str(info.id)),
                             signed_in_now)

    @staticmethod
    def _prompt_not_expected(prompt: Any) -> None:
        # A saved device code account refreshes silently; a new device code means the saved
        # sign-in expired, which the SignInScreen handles instead.
        raise RuntimeError("interactive sign-in needed")


class SessionsScreen(SessionActions, Screen[None]):
    """Every session with its state."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("enter", "open", "Resume / open", show=True),
        Binding("f5", "refresh", "Refresh"),
    ]

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield Static("Sessions", classes="screen-title")
        yield Static("", id="sessions-hint", classes="hint")
        yield DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        yield SteadyFooter()

    def on_mount(self) -> None:
        self.sessions: list[Any] = []
        self.action_refresh()

    def action_refresh(self) -> None:
        self.sessions = self.app.services.list_sessions(self.app.working_folder)
        table = self.query_one("#sessions", DataTable)
        fill_session_table(table, self.sessions)
        table.focus()
        hint = self.query_one("#sessions-hint", Static)
        if not self.sessions:
            hint.update(f"No sessions in {self.app.working_folder}. Start a new migration from the "
                        "start screen.")
        else:
            hint.update("Enter resumes an interrupted session or opens the report of a finished one.")

    @on(DataTable.RowSelected, "#sessions")
    def _row_selected(self, event: DataTable.RowSelected) -> None:
        self._open_index(event.cursor_row)

    def action_open(self) -> None:
        self._open_index(self.query_one("#sessions", DataTable).cursor_row)

    def _open_index(self, index: int) -> None:
        if 0 <= index < len(self.sessions):
            self.open_session(self.sessions[index])
