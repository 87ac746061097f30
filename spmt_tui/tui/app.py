"""The spmt-tui application: themes, screens, the engine worker and the command palette."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.theme import Theme

from spmt_tui.engine.settings import Settings
from spmt_tui.tui.bridge import BufferLogHandler, EventBuffer
from spmt_tui.tui.plan import MigrationPlan, SignedIn
from spmt_tui.tui.prefs import UiPrefs, load_prefs, save_prefs
from spmt_tui.tui.reauth import ReauthEvent, SignInAgain
from spmt_tui.tui.rows import MemoryRowSource, RowSource, StoreRowSource
from spmt_tui.tui.services import Services
from spmt_tui.tui.themes import DEFAULT_THEME, STATE_VARIABLE_DEFAULTS, load_themes

log = logging.getLogger("spmt.tui")

RESUMABLE_STATUSES = frozenset({"interrupted", "paused", "failed", "cancelled", "stopped_after_scan",
                                "running"})
"""Session states that the Sessions screen offers to resume.

``running`` is included because a session whose process was killed keeps the status
``running`` until it is opened again.
"""


@dataclass
class ActiveRun:
    """The migration this app started or resumed, and what the progress screen reads."""

    tasks: list[str]  # one description per task, "source → site/library/folder"
    buffer: EventBuffer
    rows: RowSource
    migration: Any = None  # the engine's Migration, set once it is built in the worker thread
    result: Any = None  # the engine's MigrationResult, set when run() returns
    error: str = ""
    paused: bool = False
    resumed_session: str | None = None
    started: float = field(default=0.0)

    @property
    def finished(self) -> bool:
        return self.result is not None or bool(self.error)

    @property
    def session_id(self) -> str:
        if self.migration is not None:
            return str(self.migration.session_id)
        return self.resumed_session or ""


class EngineStarted(Message):
    """The worker built the Migration and is about to run it."""


class EngineFinished(Message):
    """``Migration.run()`` returned, or the engine failed before or while running."""


class SpmtApp(App[int]):
    """Terminal UI for migrating file shares into SharePoint Online."""

    CSS_PATH = "app.tcss"
    TITLE = "spmt-tui"
    SUB_TITLE = "file share → SharePoint Online"
    ENABLE_COMMAND_PALETTE = True

    BINDINGS = [
        Binding("ctrl+t", "next_theme", "Theme", show=False, id="theme"),
        Binding("f2", "sessions", "Sessions", show=False, id="sessions"),
    ]

    def __init__(
        self,
        *,
        services: Services | None = None,
        theme_name: str | None = None,
        tenant_profile: Path | None = None,
        settings: Settings | None = None,
        prefs_file: Path | None = None,
        remember_theme: bool = True,
        source: str | None = None,
    ) -> None:
        super().__init__()
        self.services = services or Services(passphrase_callback=self.ask_passphrase_blocking)
        self.tenant_profile = tenant_profile
        self.initial_source = source or ""
        self.base_settings = settings or Settings()
        self.plan = MigrationPlan(settings=self._copy_settings())
        self.active_run: ActiveRun | None = None
        self._reauth_modal: Any = None  # the ReauthModal on the screen stack, if any
        self._requested_theme = theme_name
        self._prefs_file = prefs_file
        self._remember_theme = remember_theme
        self._spmt_themes: dict[str, Theme] = load_themes()
        for theme in self._spmt_themes.values():
            self.register_theme(theme)
        self.theme = self._initial_theme()
        if "TEXTUAL_ANIMATIONS" not in os.environ:
            # Animations cost frames over slow SSH links and delay key handling while the
            # engine shares the interpreter; TEXTUAL_ANIMATIONS=full turns them back on.
            self.animation_level = "none"

    # -- themes ---------------------------------------------------------------------------------

    def _initial_theme(self) -> str:
        if self._requested_theme:
            return self._requested_theme
        saved = load_prefs(self._prefs_file).theme if self._remember_theme else None
        if saved and saved in self.available_themes:
            return saved
        return DEFAULT_THEME

    def get_theme_variable_defaults(self) -> dict[str, str]:
        # Textual's own themes (selectable in the palette) lack the item state colours.
        return {**super().get_theme_variable_defaults(), **STATE_VARIABLE_DEFAULTS}

    @property
    def spmt_theme_names(self) -> list[str]:
        return list(self._spmt_themes)

    def on_mount(self) -> None:
        self.theme_changed_signal.subscribe(self, self._theme_changed)

    def on_unmount(self) -> None:
        # Textual waits for its worker threads when the app closes. A running engine would
        # keep the process alive after an unexpected exit, so cancel it here.
        run = self.active_run
        if run is not None and run.migration is not None and not run.finished:
            log.warning("the app is closing while session %s runs; cancelling it", run.session_id)
            run.migration.cancel()

    def _theme_changed(self, theme: Theme) -> None:
        if self._remember_theme:
            save_prefs(UiPrefs(theme=theme.name), self._prefs_file)

    def action_next_theme(self) -> None:
        names = self.spmt_theme_names
        index = names.index(self.theme) if self.theme in names else -1
        self.theme = names[(index + 1) % len(names)]
        self.notify(f"Theme: {self.theme}", timeout=2)

    # -- screens --------------------------------------------------------------------------------

    def get_default_screen(self) -> Screen:
        from spmt_tui.tui.screens.start import StartScreen

        return StartScreen()

    def _copy_settings(self) -> Settings:
        return Settings.from_json(self.base_settings.to_json())

    def new_plan(self) -> MigrationPlan:
        """Start a fresh wizard, keeping the sign-in of this run."""
        signed_in = self.plan.signed_in
        self.plan = MigrationPlan(settings=self._copy_settings(), signed_in=signed_in,
                                  profile_path=self.tenant_profile, source=self.initial_source)
        if signed_in is not None:
            self.plan.site_url = signed_in.profile.site_url
        return self.plan

    def action_sessions(self) -> None:
        from spmt_tui.tui.screens.sessions import SessionsScreen

        if not isinstance(self.screen, SessionsScreen):
            self.push_screen(SessionsScreen())

    def show_progress(self) -> None:
        """Return to the start screen and open the progress screen above it."""
        from spmt_tui.tui.screens.progress import ProgressScreen

        while len(self.screen_stack) > 1:
            self.pop_screen()
        self.push_screen(ProgressScreen())

    @property
    def working_folder(self) -> Path:
        return Path(self.base_settings.working_folder)

    # -- the engine -----------------------------------------------------------------------------

    def start_migration(self, plan: MigrationPlan) -> None:
        """Run the plan's tasks as a new session and show its progress."""
        assert plan.signed_in is not None
        if self.active_run is not None and not self.active_run.finished:
            self.notify("A migration is already running in this window.", severity="warning")
            return
        run = ActiveRun(tasks=[task.describe() for task in plan.tasks()], buffer=EventBuffer(), rows=MemoryRowSource())
        self.active_run = run
        signed_in = plan.signed_in
        settings = plan.settings
        tasks = plan.tasks()

        def build() -> Any:
            migration = self.services.new_migration(tasks, settings, signed_in, run.buffer)
            self._handle_sign_in_requests(migration, signed_in)
            return migration

        self._run_engine(run, build)
        self.show_progress()

    def resume_migration(self, session: Any, signed_in: SignedIn) -> None:
        """Resume an interrupted session with its stored tasks and settings."""
        if self.active_run is not None and not self.active_run.finished:
            self.notify("A migration is already running in this window.", severity="warning")
            return
        tasks = [str(text) for text in getattr(session, "tasks", [])]
        run = ActiveRun(tasks=tasks, buffer=EventBuffer(), rows=MemoryRowSource(),
                        resumed_session=str(session.id))
        self.active_run = run
        settings = self._copy_settings()

        def build() -> Any:
            migration = self.services.open_session(str(session.id), settings, signed_in, run.buffer)
            self._handle_sign_in_requests(migration, signed_in)
            return migration

        self._run_engine(run, build)
        self.show_progress()

    @work(thread=True, exit_on_error=False, group="engine", name="migration",
          description="runs the migration engine in its own event loop")
    def _run_engine(self, run: ActiveRun, build: Callable[[], Any]) -> None:
        handler = BufferLogHandler(run.buffer)
        engine_logger = logging.getLogger("spmt")
        engine_logger.addHandler(handler)
        try:
            migration = build()
            run.migration = migration
            run.rows = self._row_source(migration, run.rows)
            self.post_message(EngineStarted())
            run.result = asyncio.run(migration.run())
        except BaseException as error:  # noqa: BLE001 - every failure must reach the screen
            log.exception("the migration engine stopped with an error")
            run.error = f"{type(error).__name__}: {error}"
        finally:
            engine_logger.removeHandler(handler)
            self.post_message(EngineFinished())

    def _handle_sign_in_requests(self, migration: Any, signed_in: SignedIn) -> None:
        """Make ``migration`` wait for a new sign-in in a dialog when its tokens cannot be refreshed."""
        stats = getattr(migration, "stats", None)

        def reason() -> str:
            return stats.snapshot().message if stats is not None else ""

        migration.sign_in_handler = SignInAgain(self, signed_in, reason)

    def on_reauth_event(self, event: ReauthEvent) -> None:
        from spmt_tui.tui.screens.reauth import ReauthModal

        if event.kind == "open":
            self._reauth_modal = ReauthModal(event.state)
            self.push_screen(self._reauth_modal)
            self.bell()
            return
        modal = self._reauth_modal
        if modal is None or modal.state is not event.state:
            return
        if event.kind == "close":
            self._reauth_modal = None
        # The dialog applies the update in its own message handler. Dismissing it from this
        # handler instead left the app waiting for its removal for good (Textual 8.2.8).
        modal.post_message(ReauthEvent(event.state, event.kind, prompt=event.prompt, text=event.text))

    @staticmethod
    def _row_source(migration: Any, fallback: RowSource) -> RowSource:
        memory = fallback if isinstance(fallback, MemoryRowSource) else MemoryRowSource()
        return StoreRowSource(Path(migration.session_dir) / "session.db", memory)

    def on_engine_started(self, message: EngineStarted) -> None:
        self._notify_progress()

    def on_engine_finished(self, message: EngineFinished) -> None:
        self._notify_progress()
        run = self.active_run
        if run is None:
            return
        if run.error:
            self.notify(run.error, title="Migration failed", severity="error", timeout=15)
        self._show_report_when_done(run)

    def _notify_progress(self) -> None:
        from spmt_tui.tui.screens.progress import ProgressScreen

        for screen in self.screen_stack:
            if isinstance(screen, ProgressScreen):
                screen.engine_changed()

    def _show_report_when_done(self, run: ActiveRun) -> None:
        from spmt_tui.tui.screens.progress import ProgressScreen
        from spmt_tui.tui.screens.report import ReportScreen

        if run.result is None:
            return
        if isinstance(self.screen, ProgressScreen):
            self.push_screen(ReportScreen(run.result, run.tasks))
        else:
            status = str(run.result.status).replace("_", " ")
            self.notify(f"Migration {status}. The progress screen has the report (key o).",
                        timeout=10)

    def pause_run(self) -> None:
        run = self.active_run
        if run is None or run.migration is None or run.finished:
            self.notify("No migration is running.", severity="warning")
            return
        run.migration.pause()
        run.paused = True
        self.notify("Pausing: uploads in flight finish first.", timeout=3)

    def resume_run(self) -> None:
        run = self.active_run
        if run is None or run.migration is None or run.finished:
            self.notify("No migration is running.", severity="warning")
            return
        run.migration.resume()
        run.paused = False
        self.notify("Resumed.", timeout=3)

    def cancel_run(self) -> None:
        from spmt_tui.tui.screens.modals import ConfirmModal

        run = self.active_run
        if run is None or run.migration is None or run.finished:
            self.notify("No migration is running.", severity="warning")
            return

        def confirmed(answer: bool | None) -> None:
            if answer and run.migration is not None:
                run.migration.cancel()
                self.notify("Cancelling: the session stays on disk and can be resumed.", timeout=5)

        self.push_screen(ConfirmModal(
            "Cancel the migration?",
            "Files already migrated stay in SharePoint. The session can be resumed later from "
            "Sessions.", confirm="Cancel migration", cancel="Keep running"), confirmed)

    def report_folder(self) -> Path | None:
        run = self.active_run
        if run is None:
            return None
        if run.result is not None:
            return Path(run.result.report_dir)
        if run.migration is not None:
            return Path(run.migration.report_dir)
        return None

    def action_show_report_folder(self) -> None:
        folder = self.report_folder()
        if folder is None:
            self.notify("No migration in this window yet.", severity="warning")
            return
        self.copy_to_clipboard(str(folder))
        self.notify(str(folder), title="Report folder (copied)", timeout=10)

    async def action_quit(self) -> None:
        from spmt_tui.tui.screens.modals import ConfirmModal

        run = self.active_run
        if run is None or run.migration is None or run.finished:
            self.exit(0)
            return

        def confirmed(answer: bool | None) -> None:
            if answer:
                self._stop_engine_and_exit(run)

        self.push_screen(ConfirmModal(
            "Quit while the migration runs?",
            f"The migration stops. Session {run.session_id} can be resumed later from Sessions "
            "or with spmt-tui resume; files already migrated are not sent again.",
            confirm="Stop and quit", cancel="Keep running"), confirmed)

    @work(group="quit")
    async def _stop_engine_and_exit(self, run: ActiveRun) -> None:
        # NOTE: the engine has no "interrupt" call yet, so quitting uses cancel(), which marks
        # the session cancelled; the Sessions screen still offers to resume it.
        run.migration.cancel()
        for _ in range(100):
            if run.finished:
                break
            await asyncio.sleep(0.1)
        self.exit(0)

    # -- prompts from other threads -------------------------------------------------------------

    def ask_secret_blocking(self, title: str, prompt: str) -> str | None:
        """Ask for a secret in a modal and wait for it; call this from a worker thread only."""
        from spmt_tui.tui.screens.modals import SecretModal

        answer: list[str | None] = [None]
        done = threading.Event()

        def finished(value: str | None) -> None:
            answer[0] = value
            done.set()

        self.call_from_thread(self.push_screen, SecretModal(title, prompt), finished)
        done.wait()
        return answer[0]

    def ask_passphrase_blocking(self) -> str | None:
        return self.ask_secret_blocking(
            "Token cache passphrase",
            "The sign-in tokens are kept in a file encrypted with this passphrase.")

    # -- command palette ------------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        run = self.active_run
        running = run is not None and run.migration is not None and not run.finished
        if running and run is not None and not run.paused:
            yield SystemCommand("Pause migration", "Finish the uploads in flight, then wait", self.pause_run)
        if running and run is not None and run.paused:
            yield SystemCommand("Resume migration", "Continue the paused migration", self.resume_run)
        if running:
            yield SystemCommand("Cancel migration", "Stop the migration (it can be resumed later)",
                                self.cancel_run)
        if run is not None:
            yield SystemCommand("Report folder", "Show and copy the path of the report files",
                                self.action_show_report_folder)
        yield SystemCommand("Sessions", "List migration sessions; resume an interrupted one",
                            self.action_sessions)
        for name in self.spmt_theme_names:
            yield SystemCommand(f"Switch theme: {name}", "Use this colour theme (remembered)",
                                lambda name=name: setattr(self, "theme", name))
