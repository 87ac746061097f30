"""The migration engine: scan, package, encrypt and upload, submit, follow, report.

Each stage is a pool of asyncio workers with bounded queues between them, so a slow stage slows
the others down instead of filling memory:

    scan (one walker) -> package queue -> packager -> upload queue (packages_in_flight)
    -> upload workers (blob uploads bounded by upload_concurrency) -> submit + follow
       (jobs_in_flight jobs at once) -> results written to the session database

The engine imports no UI code. Front ends watch ``stats.snapshot()`` and receive events through
the ``sink`` callable; both are safe to use from another thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spmt_tui.engine.diskspace import WAITING_PHASE, DiskSpaceGuard, is_disk_full
from spmt_tui.engine.mirror import SessionMirror, follow_adopted_jobs
from spmt_tui.engine.preflight import PreflightError, check_source, resolve_target
from spmt_tui.engine.rules import CATEGORY_SCAN_FAILURE
from spmt_tui.engine.progress import (
    EventSink,
    LogEvent,
    PhaseEvent,
    Stats,
    null_sink,
)
from spmt_tui.engine.settings import (
    Settings,
    SettingsError,
    task_settings_from_json,
    task_settings_to_json,
)
from spmt_tui.engine.source import FileShareSource
from spmt_tui.logs import configure_logging, redact
from spmt_tui.profile import TenantProfile
from spmt_tui.spo.containers import StorageTransport
from spmt_tui.spo.http import SharePointHttp, new_session
from spmt_tui.spo.sharepoint import SharePointClient, UserInfo
from spmt_tui.engine.task_runner import TaskRunner
from spmt_tui.engine.users import AuthorMap, UserMappingError, build_author_map
from spmt_tui.state.store import SessionStore

log = logging.getLogger("spmt.engine")

DEVICE_NAME = socket.gethostname()

TASK_SETTINGS_KEY = "task_settings"
"""Key of the tasks' own settings (a list in task order) in the session's stored settings."""

CODE_USER_MAPPING = "0x02010008"
"""SPMT's code for a user mapping file that cannot be used."""


@dataclass
class MigrationTask:
    """One source folder into one library folder.

    ``settings`` contains the task's own settings, by Settings field name (only names in
    ``TASK_SETTINGS``). They replace the session's values for this task.
    """

    source: str
    site_url: str
    library: str = "Documents"
    folder: str = ""
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        folder = f"/{self.folder.strip('/')}" if self.folder.strip("/") else ""
        return f"{self.source} -> {self.site_url.rstrip('/')}/{self.library}{folder}"


@dataclass
class MigrationResult:
    status: str
    counts: dict[str, int]
    report_dir: Path
    message: str = ""

    @property
    def exit_code(self) -> int:
        if self.status in ("completed", "scan_only", "stopped_after_scan"):
            return 0
        if self.status == "cancelled":
            return 130
        return 1


SIGN_IN_KEY = "_sign_in"


def _first_leaf(error: BaseException) -> BaseException:
    """Return the first exception inside (nested) exception groups, or ``error`` itself."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


class Migration:
    """One migration session: a set of tasks run with one set of settings."""

    def __init__(
        self,
        tasks: list[MigrationTask],
        settings: Settings,
        profile: TenantProfile,
        credentials: Any,
        *,
        sink: EventSink = null_sink,
        session_id: str | None = None,
        log_to_stderr: bool = False,
    ) -> None:
        settings.validate()
        for task in tasks:
            settings.with_overrides(task.settings)
        self.tasks = tasks
        self.settings = settings
        self._authors: dict[tuple[str, str, str], AuthorMap] = {}
        self.profile = profile
        self.credentials = credentials
        self.sink = sink
        self.stats = Stats()
        self.session_id = session_id or dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        self.session_dir = Path(settings.working_folder) / "sessions" / self.session_id
        self.report_dir = self.session_dir / "reports"
        self.log_path = self.session_dir / "logs" / "spmt-tui.log"
        self._log_to_stderr = log_to_stderr
        self._running = threading.Event()
        self._running.set()
        self._cancel_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main_task: asyncio.Task[Any] | None = None
        self._resume_event: asyncio.Event | None = None
        self.store: SessionStore | None = None
        # Called when tokens can no longer be refreshed silently. It must sign the user in again:
        # the CLI runs the device code flow on a terminal, and the TUI shows its sign-in screen.
        self.sign_in_handler: Any = None
        # How the session signs in, kept with it so a resume signs in the same way. Only the
        # method, user name and certificate path; never a password or passphrase.
        self.sign_in_method: dict[str, Any] = {}
        # Keep an item about the session in a hidden list in the tenant (engine/mirror.py), so
        # the same account can resume it from another machine.
        self.mirror_enabled = True
        # Run even when the mirror records another copy of the session as the last writer
        # (resume --take-over).
        self.take_over = False
        self._mirror: SessionMirror | None = None
        self._sign_in_lock = asyncio.Lock()
        self.disk = DiskSpaceGuard(Path(settings.working_folder), settings.min_free_space_mb * 2**20,
                                   on_wait=self._disk_wait_started, on_resume=self._disk_wait_ended)
        self._phase_before_disk_wait: tuple[str, str] = ("migrating", "")

    # -- control from any thread ------------------------------------------------------------------

    def pause(self) -> None:
        self._running.clear()
        self.stats.set_phase("paused", "paused by the user; running uploads finish first")
        self.sink(PhaseEvent("paused"))

    def resume(self) -> None:
        self._running.set()
        if self._loop is not None and self._resume_event is not None:
            self._loop.call_soon_threadsafe(self._resume_event.set)
        self.stats.set_phase("migrating")
        self.sink(PhaseEvent("migrating"))

    def cancel(self) -> None:
        self._cancel_requested = True
        self._running.set()
        if self._loop is not None and self._main_task is not None:
            self._loop.call_soon_threadsafe(self._main_task.cancel)

    async def _gate(self) -> None:
        """Wait here while the migration is paused or the working folder has too little room."""
        while not self._running.is_set():
            assert self._resume_event is not None
            self._resume_event.clear()
            await self._resume_event.wait()
        await self.disk.check()

    def _disk_wait_started(self, message: str) -> None:
        snapshot = self.stats.snapshot()
        if snapshot.phase != WAITING_PHASE:
            self._phase_before_disk_wait = (snapshot.phase, snapshot.message)
        self.stats.set_phase(WAITING_PHASE, message)
        self.sink(PhaseEvent(WAITING_PHASE, message))
        self._emit_log("warning", message)

    def _disk_wait_ended(self) -> None:
        phase, message = self._phase_before_disk_wait
        if self.stats.snapshot().phase == WAITING_PHASE:
            self.stats.set_phase(phase, message)
            self.sink(PhaseEvent(phase, message))

    # -- the run ------------------------------------------------------------------------------

    @classmethod
    def open_session(
        cls,
        session_id: str,
        settings: Settings,
        profile: TenantProfile,
        credentials: Any,
        *,
        sink: EventSink = null_sink,
        log_to_stderr: bool = False,
    ) -> "Migration":
        """Reopen an existing session (to resume it) with its stored tasks and settings."""
        session_dir = Path(settings.working_folder) / "sessions" / session_id
        store = SessionStore.open(session_dir / "session.db")
        try:
            info = store.session_info()
            own_settings = info["settings"].get(TASK_SETTINGS_KEY) or []
            tasks = [MigrationTask(t["source"], t["site_url"], t["library"], t["folder"],
                                   task_settings_from_json(own_settings[index])
                                   if index < len(own_settings) else {})
                     for index, t in enumerate(store.tasks())]
            stored = Settings.from_json(info["settings"])
            if info["stored_status"] == "stopped_after_scan":
                # The user reviewed the scan and resumes to migrate.
                stored.start_when_no_issue = True
        finally:
            store.close()
        stored.working_folder = settings.working_folder
        migration = cls(tasks, stored, profile, credentials, sink=sink, session_id=session_id,
                        log_to_stderr=log_to_stderr)
        migration.sign_in_method = dict(info["settings"].get(SIGN_IN_KEY) or {})
        return migration

    @staticmethod
    def stored_sign_in(working_folder: Path, session_id: str) -> dict[str, Any]:
        """Return how a session signed in (method, user name, certificate path; never a secret)."""
        store = SessionStore.open(Path(working_folder) / "sessions" / session_id / "session.db")
        try:
            return dict(store.session_info()["settings"].get(SIGN_IN_KEY) or {})
        finally:
            store.close()

    async def run(self) -> MigrationResult:
        self._loop = asyncio.get_running_loop()
        self._resume_event = asyncio.Event()
        self._main_task = asyncio.current_task()
        self.session_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.session_dir, 0o700)
        configure_logging(log_file=self.log_path, stderr=self._log_to_stderr)
        self.store = await self.disk.retry(lambda: SessionStore.open(self.session_dir / "session.db"))
        await self.disk.retry(lambda: self.store.start_session(
            self.session_id, self._settings_json(), [vars(t) for t in self.tasks],
            profile=str(self.profile.source_path or "")))
        log.info("session %s started: %s", self.session_id, "; ".join(t.describe() for t in self.tasks))
        self._mirror = SessionMirror(self) if self.mirror_enabled else None
        status = "failed"
        message = ""
        try:
            if self._mirror is not None:
                await self._mirror.claim(take_over=self.take_over)
                self._mirror.begin()
            status, message = await self._run_rounds()
        except asyncio.CancelledError:
            status, message = ("cancelled", "cancelled by the user") if self._cancel_requested else (
                "interrupted", "interrupted")
            if not self._cancel_requested:
                raise
        except PreflightError as error:
            status, message = "failed", f"{error.code}: {error}"
            log.error("pre-flight failed: %s", message)
            self._emit_log("error", message)
        except Exception as error:  # noqa: BLE001 - the session must record every crash
            leaf = _first_leaf(error)
            if isinstance(leaf, PreflightError):
                status, message = "failed", f"{leaf.code}: {leaf}"
            else:
                status, message = "failed", f"{type(leaf).__name__}: {redact(str(leaf))}"
            log.exception("migration failed")
            self._emit_log("error", message)
        finally:
            counts = {}
            if self.store is not None:
                current = self.store.current_round()
                counts = self._final_counts(current)
            if self._mirror is not None:
                await self._mirror.stop(status, message)
            if self.store is not None:
                await self._finish_store(status, message)
            self.stats.set_phase(status, message)
            self.sink(PhaseEvent(status, message))
            log.info("session %s ended: %s %s", self.session_id, status, message)
        return MigrationResult(status, counts, self.report_dir, message)

    async def _finish_store(self, status: str, message: str) -> None:
        """Record the final status and write the reports, waiting for disk space when it runs out.

        A cancelled or interrupted run does not wait: it records what it can and stops.
        """
        from spmt_tui.reports.csv_reports import write_reports

        assert self.store is not None
        store = self.store
        may_wait = status not in ("cancelled", "interrupted")

        async def attempt(call: Any, what: str) -> None:
            try:
                if may_wait:
                    await self.disk.retry(call)
                else:
                    call()
            except Exception as error:  # noqa: BLE001 - the session must still be closed
                if is_disk_full(error):
                    log.error("%s failed: the working folder %s is full", what, self.disk.folder)
                else:
                    log.exception("%s failed", what)

        try:
            snapshot = self.stats.snapshot()
            if snapshot.throttled:
                # Throttling is reported as a count in summary.json, never as an item failure.
                await attempt(lambda: (store.add_counter("session", "throttled", snapshot.throttled),
                                       store.add_counter("session", "throttled_seconds",
                                                         round(snapshot.throttled_seconds))),
                              "recording the throttling counts")
            await attempt(lambda: store.finish_session(status, message), "recording the session status")
            await attempt(lambda: write_reports(store, self.report_dir, device_name=DEVICE_NAME),
                          "writing the reports")
        finally:
            store.close()

    def _final_counts(self, round_number: int | None, task_id: int | None = None) -> dict[str, int]:
        """Return the counts of a round (all rounds when None) as the run's result reports them.

        An item that breaks one of SharePoint Online's scan rules is stored as failed with
        category SCAN FAILURE, because SPMT's item report shows it so. The result counts it as
        skipped (``skipped_by_rules``), as summary.json does, so it alone does not fail the run.
        """
        assert self.store is not None
        counts = self.store.counts(round_number=round_number, task_id=task_id)
        rule_skips = self.store.count_failed_in_category(CATEGORY_SCAN_FAILURE, round_number, task_id)
        counts["failed"] = counts.get("failed", 0) - rule_skips
        counts["skipped"] = counts.get("skipped", 0) + rule_skips
        counts["skipped_by_rules"] = rule_skips
        return counts

    async def _run_rounds(self) -> tuple[str, str]:
        assert self.store is not None
        http_session = new_session(self.profile.ca_bundle)
        transport = StorageTransport(self.profile.ca_bundle, limit=self.settings.upload_concurrency + 16)
        try:
            http = SharePointHttp(http_session, self._token, on_throttle=self.stats.throttle)
            await follow_adopted_jobs(self, http)
            rounds = self.store.rounds()
            # An interrupted round is finished first; otherwise a run starts a new round.
            if rounds and rounds[-1]["finished"] is None:
                first = rounds[-1]["round"]
            else:
                first = self.store.next_round()
            scan_first = self.settings.scan_only or not self.settings.start_when_no_issue
            if not scan_first:
                await self._resolve_authors(http)
            for round_number in range(first, first + self.settings.auto_rerun):
                await self.disk.retry(lambda: self.store.begin_round(round_number))
                for task_index, task in enumerate(self.tasks):
                    task_id = self.store.task_id(task_index)
                    await self._run_task(task_id, task, round_number, http, transport,
                                         scan_only=scan_first)
                if scan_first:
                    await self.disk.retry(lambda: self.store.finish_round(round_number))
                    if self.settings.scan_only:
                        return "scan_only", "scan finished; nothing was uploaded"
                    return "stopped_after_scan", (
                        "scan finished; review the scan reports, then resume the session to migrate")
                await self.disk.retry(lambda: self.store.finish_round(round_number))
                counts = self.store.counts(round_number=round_number)
                if round_number > first and counts.get("to_migrate", 0) == 0:
                    break
            counts = self._final_counts(round_number)
            failed = counts.get("failed", 0)
            if failed:
                return "completed_with_failures", f"{failed} item(s) failed or were rejected; see ItemFailureReport"
            if counts.get("skipped_by_rules"):
                return "completed", (f"{counts['skipped_by_rules']} item(s) break SharePoint Online's rules "
                                     "and were skipped; see ItemReport")
            return "completed", ""
        finally:
            await transport.close()
            await http_session.close()

    def settings_for(self, task: MigrationTask) -> Settings:
        """Return the settings ``task`` runs with: the session's, with the task's own on top."""
        return self.settings.with_overrides(task.settings)

    def _settings_json(self) -> dict[str, Any]:
        data = self.settings.to_json()
        if self.sign_in_method:
            data[SIGN_IN_KEY] = self.sign_in_method
        if any(task.settings for task in self.tasks):
            data[TASK_SETTINGS_KEY] = [task_settings_to_json(task.settings) for task in self.tasks]
        return data

    @staticmethod
    def _author_key(task: MigrationTask, settings: Settings) -> tuple[str, str, str]:
        """Tasks with equal keys share one AuthorMap: same site, mapping file and default user."""
        return (task.site_url.rstrip("/").lower(), str(settings.user_mapping_file or ""),
                (settings.default_user or "").lower())

    async def _resolve_authors(self, http: SharePointHttp) -> None:
        """Resolve every task's user mapping before any task runs, so a bad UPN stops them all."""
        app_only = getattr(self.credentials, "kind", "user") == "app"
        signed_in: dict[str, UserInfo | None] = {}
        cache: dict[tuple[str, str], UserInfo] = {}
        for task in self.tasks:
            settings = self.settings_for(task)
            key = self._author_key(task, settings)
            if key in self._authors:
                continue
            client = SharePointClient(task.site_url, http)
            site = key[0]
            if site not in signed_in:
                signed_in[site] = None if app_only else await client.current_user()
            try:
                self._authors[key] = await build_author_map(
                    client, settings.user_mapping_file, settings.default_user, signed_in[site], cache)
            except (UserMappingError, SettingsError) as error:
                raise PreflightError(CODE_USER_MAPPING, str(error)) from error

    async def _token(self) -> str:
        """Return an access token; when silent refresh fails, pause until someone signs in again."""
        from spmt_tui.auth.tokens import SignInRequired

        while True:
            try:
                return await self.credentials.get_token()
            except SignInRequired as error:
                if self.sign_in_handler is None:
                    raise
                log.warning("sign-in required: %s; pausing until it is done", error)
                self.stats.set_phase("sign-in required", str(error))
                self.sink(PhaseEvent("sign-in required", str(error)))
                async with self._sign_in_lock:
                    # Another worker may have signed in while this one waited for the lock.
                    try:
                        return await self.credentials.get_token()
                    except SignInRequired:
                        pass
                    await self.sign_in_handler(self.credentials)
                self.stats.set_phase("migrating")
                self.sink(PhaseEvent("migrating"))

    def _emit_log(self, level: str, message: str) -> None:
        self.sink(LogEvent(level, message))

    # -- one task -----------------------------------------------------------------------------

    async def _run_task(
        self,
        task_id: int,
        task: MigrationTask,
        round_number: int,
        http: SharePointHttp,
        transport: StorageTransport,
        *,
        scan_only: bool,
    ) -> None:
        assert self.store is not None
        self.stats.set_phase("pre-flight", task.describe())
        self.sink(PhaseEvent("pre-flight", task.describe()))
        check_source(task.source)
        settings = self.settings_for(task)
        client = SharePointClient(task.site_url, http)
        app_only = getattr(self.credentials, "kind", "user") == "app"
        target = await resolve_target(client, task.library, task.folder, app_only=app_only)
        user = None if app_only else await client.current_user()
        await self.disk.retry(lambda: self.store.set_task_target(
            task_id, web_id=target.web.id, list_id=target.library.id))
        await self.disk.retry(lambda: self.store.set_task_status(task_id, "running"))
        # Permissions are read only when they can be mapped (preserve on and a mapping file).
        source = FileShareSource(task.source, follow_symlinks=settings.follow_symlinks,
                                 collect_permissions=settings.preserve_permissions
                                 and settings.user_mapping_file is not None)
        authors = self._authors.get(self._author_key(task, settings))
        runner = TaskRunner(self, task_id, task, round_number, target, client, transport, source, user,
                            authors=authors)
        await runner.run(scan_only=scan_only)
        counts = self._final_counts(round_number, task_id)
        final = "completed_with_failures" if counts["failed"] else "completed"
        await self.disk.retry(lambda: self.store.set_task_status(task_id, final))
