"""The import timer job of the sandbox tenant.

``Importer(tenant)`` polls the job table, and for each queued job whose pick-up time has come it
runs one import in a worker thread (at most ``TenantSettings.import_workers`` at once):

1. JobPostponed (fault "postpone") or JobLogFileCreate and JobStart; state Processing (4).
2. Read the latest snapshot of every blob and decrypt it with the job key and the blob's ``IV``
   metadata. Validate each package XML file against the constrained schemas. A schema violation
   ends the job with JobFatalError.
3. Plan every object against the target web and library without changing anything: ids, parent
   folders, names and paths, IntIds, users, and the content of each file version (hashes are
   checked and the plain bytes written to new content files). Per-object problems become
   JobError/JobWarning events.
4. When the package has more errors than ``max_errors_per_package``, it is blocked and nothing is
   applied. Otherwise the plan is applied object by object, each in its own transaction.
5. Write ``Import-<JobId>-1.log`` (and ``.err``/``.wrn``) to the manifest container, post JobEnd
   with the counters, set the state to None (0) and discard the key.

Applying is keyed by object id and URL, so a job interrupted by a restart is simply run again
from the start when the sandbox comes back.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from spmt_tui.sandbox.import_apply import Applier
from spmt_tui.sandbox.import_package import (
    SP_EXCEPTION,
    ContainerView,
    JobFatal,
    JobInterrupted,
    PackageFiles,
)
from spmt_tui.sandbox.import_plan import FATAL_ERROR, SYSTEM_ACCOUNT_ID, Planner
from spmt_tui.sandbox.jobs import (
    EventPublisher,
    JobState,
    JobStore,
    MigrationJob,
    aes_encrypt,
    event_time,
    redact_sas,
    server_ids,
)
from spmt_tui.sandbox.store import Site, TenantStore

log = logging.getLogger("spmt.sandbox.importer")

POLL_INTERVAL = 0.2
PURGE_INTERVAL = 60.0
STOP_TIMEOUT = 30.0
# A job postponed by the "postpone" fault is picked up at the latest after this many postponements,
# so a fault rate of 1.0 cannot keep a job waiting forever.
MAX_POSTPONEMENTS = 3


@dataclass
class Counters:
    files_created: int = 0
    files_created_all_versions: int = 0
    bytes_processed: int = 0
    bytes_current_version: int = 0
    objects_processed: int = 0
    expected_objects: int = 0
    expected_bytes: int = 0
    errors: int = 0
    warnings: int = 0
    sql_queries: int = 0
    sql_ms: float = 0.0
    by_size: dict[str, dict[str, int]] = field(default_factory=dict)
    by_type: dict[str, dict[str, int]] = field(default_factory=dict)

    def count_type(self, object_type: str, *, versions: int = 0) -> None:
        stats = self.by_type.setdefault(
            object_type, {"Count": 0, "TotalTime": 0, "AccumulatedVersions": 0, "ObjectsWithVersions": 0}
        )
        stats["Count"] += 1
        if versions > 1:
            stats["AccumulatedVersions"] += versions
            stats["ObjectsWithVersions"] += 1


class ImportRun:
    """One run of one job, executed synchronously in a worker thread."""

    def __init__(self, importer: "Importer", job: MigrationJob) -> None:
        self.importer = importer
        self.tenant = importer.tenant
        self.store: TenantStore = importer.tenant.store
        self.jobs = importer.jobs
        self.publisher = importer.publisher
        self.settings = importer.tenant.settings
        self.job = job
        self.counters = Counters()
        self.log_lines: list[str] = []
        self.error_lines: list[str] = []
        self.warning_lines: list[str] = []
        self.new_content: list[str] = []
        self.started = time.monotonic()
        self.cpu_started = time.process_time()
        self.next_progress = max(1, self.settings.progress_every)
        self.ids = server_ids(job.site_id)
        self.site: Site | None = None
        self.user_map: dict[str, int] = {}
        self.unknown_users: set[str] = set()
        self.system_user_id = SYSTEM_ACCOUNT_ID

    # events

    def publish(self, name: str, fields: dict[str, Any] | None = None) -> dict[str, str]:
        event = self.publisher.publish(self.job, name, fields)
        detail = " ".join(
            f"{key}={value}" for key, value in event.items() if key not in ("Event", "JobId", "Time")
        )
        self.log_lines.append(f"{event['Time']} {name} {detail}".rstrip())
        return event

    def object_error(
        self, object_type: str, url: str, object_id: str, code: int, message: str, *, warning: bool = False,
        int_id: int | None = None,
    ) -> None:
        fields: dict[str, Any] = {
            "ObjectType": object_type,
            "Url": url,
            "Id": object_id,
            "ErrorCode": str(code),
            "ErrorType": SP_EXCEPTION,
            "Message": message,
        }
        if int_id is not None:
            fields["SourceListItemIntId"] = str(int_id)
            fields["TargetListItemIntId"] = str(int_id)
        if warning:
            self.counters.warnings += 1
            self.publish("JobWarning", fields)
            self.warning_lines.append(self.log_lines[-1])
        else:
            self.counters.errors += 1
            self.publish("JobError", fields)
            self.error_lines.append(self.log_lines[-1])
            log.info("job %s: %s %s: %s", self.job.id, object_type, url or object_id, message)

    def warn(self, message: str, *, object_type: str = "", url: str = "", object_id: str = "") -> None:
        self.object_error(object_type, url, object_id, 0, message, warning=True)

    def count_objects(self, count: int) -> None:
        """Add processed objects; post one JobProgress each time a multiple of progress_every is passed."""
        self.counters.objects_processed += count
        if self.counters.objects_processed >= self.next_progress:
            every = max(1, self.settings.progress_every)
            self.next_progress = (self.counters.objects_processed // every + 1) * every
            self.publish("JobProgress", self.progress_fields())

    def progress_fields(self) -> dict[str, Any]:
        counters = self.counters
        return {
            "FilesCreated": counters.files_created,
            "BytesProcessed": counters.bytes_processed,
            "ObjectsProcessed": counters.objects_processed,
            "TotalExpectedSPObjects": counters.expected_objects,
            "TotalErrors": counters.errors,
            "TotalWarnings": counters.warnings,
            "WaitTimeOnSqlThrottlingMilliseconds": 0,
            "TotalDurationInMs": int((time.monotonic() - self.started) * 1000),
            "CpuDurationInMs": int((time.process_time() - self.cpu_started) * 1000),
            "SqlDurationInMs": int(counters.sql_ms),
            "SqlQueryCount": counters.sql_queries,
            "CreatedOrUpdatedFileStatsBySize": counters.by_size,
            "ObjectsStatsByType": counters.by_type,
            "TotalExpectedBytes": counters.expected_bytes,
        }

    def checkpoint(self) -> None:
        if self.importer.stopping.is_set():
            raise JobInterrupted()

    # the run

    def run(self) -> None:
        job = self.job
        latest = self.jobs.job(job.id)
        if latest is None or latest.state != JobState.QUEUED:
            return  # deleted by DeleteMigrationJob after it was picked up
        if self._postpone():
            return
        self.jobs.mark_processing(job.id)
        self.publish("JobLogFileCreate", {"FileName": self.log_name(".log")})
        self.publish(
            "JobStart",
            {
                "SiteId": job.site_id,
                "WebId": job.web_id,
                "DBId": self.ids["DbId"],
                "FarmId": self.ids["FarmId"],
                "ServerId": self.ids["ServerId"],
                "SubscriptionId": self.ids["SubscriptionId"],
            },
        )
        log.info("job %s: started", job.id)

        cancelled = False
        try:
            faults = getattr(self.tenant, "faults", None)
            if faults is not None and faults.roll("fatal"):
                raise JobFatal("The import job failed because of an injected fault.")
            cancelled = self._import()
        except JobInterrupted:
            self._discard_content()
            log.info("job %s: interrupted by shutdown; it runs again after a restart", job.id)
            return
        except JobFatal as fatal:
            self._discard_content()
            self._fatal(fatal)
        except Exception as failure:  # noqa: BLE001 - a broken job must still end cleanly
            self._discard_content()
            log.exception("job %s: import failed", job.id)
            self._fatal(JobFatal(f"The import job failed: {redact_sas(str(failure))}"))

        if cancelled:
            self.publish("JobCancelled", {"CancelledByUser": True})
        end_fields = {
            **self.progress_fields(),
            "IsShallowCopy": False,
            "FilesCreatedIrrespectiveOfVersions": self.counters.files_created_all_versions,
            "BytesProcessedOnlyCurrentVersion": self.counters.bytes_current_version,
        }
        # The logs are complete before JobEnd is posted, so a client that sees JobEnd can read them.
        summary_keys = ("FilesCreated", "ObjectsProcessed", "TotalErrors", "TotalWarnings")
        summary = " ".join(f"{key}={end_fields[key]}" for key in summary_keys)
        self.log_lines.append(f"{event_time()} JobEnd {summary}")
        self._write_logs()
        self.publish("JobEnd", end_fields)
        self.jobs.finish(job.id)
        log.info(
            "job %s: ended with %d files created, %d errors, %d warnings",
            job.id, self.counters.files_created_all_versions, self.counters.errors,
            self.counters.warnings,
        )

    def _postpone(self) -> bool:
        faults = getattr(self.tenant, "faults", None)
        if self.job.postponements >= MAX_POSTPONEMENTS or faults is None or not faults.roll("postpone"):
            return False
        pickup = time.time() + self.settings.import_delay
        self.jobs.postpone(self.job.id, pickup)
        self.publish(
            "JobPostponed",
            {
                "NextPickupTime": event_time(pickup),
                "SiteId": self.job.site_id,
                "DbId": self.ids["DbId"],
                "JobsInQueue": self.jobs.queued_count(),
            },
        )
        log.info("job %s: postponed", self.job.id)
        return True

    def _fatal(self, fatal: JobFatal) -> None:
        self.counters.errors += 1
        self.publish(
            "JobFatalError",
            {
                "ObjectType": "",
                "Url": "",
                "Id": "",
                "ErrorCode": str(FATAL_ERROR),
                "ErrorType": fatal.error_type,
                "Message": fatal.message,
            },
        )
        line = self.log_lines[-1]
        if fatal.detail:
            line += f" ({fatal.detail})"
        self.error_lines.append(line)
        log.warning("job %s: fatal error: %s %s", self.job.id, fatal.message, fatal.detail)

    def _import(self) -> bool:
        """Read, plan and apply the package; return True when the job was cancelled."""
        site = next((site for site in self.store.sites() if site.id == self.job.site_id), None)
        if site is None or site.web_id.lower() != self.job.web_id.lower():
            raise JobFatal("The parent web of the job was not found.")
        self.site = site

        service = self.tenant.storage.blob_service()
        try:
            manifest_view = ContainerView(service, self.job.manifest_container)
            data_view = ContainerView(service, self.job.source_container)
        except Exception as failure:  # noqa: BLE001 - the storage error text goes to the client
            raise JobFatal(f"The package containers could not be read: {redact_sas(str(failure))}") from None

        package = PackageFiles(self, manifest_view)
        package.load()
        self.checkpoint()
        if self.jobs.cancel_requested(self.job.id):
            return True

        planner = Planner(self, package, data_view)
        steps = planner.plan()
        self.checkpoint()
        if self.jobs.cancel_requested(self.job.id):
            self._discard_content()
            return True

        limit = self.settings.max_errors_per_package
        if self.counters.errors > limit:
            self._discard_content()
            raise JobFatal(
                f"The package has {self.counters.errors} errors, more than the limit of {limit}; "
                "it was blocked and nothing was imported."
            )
        Applier(self).apply(steps)
        return False

    def _discard_content(self) -> None:
        for name in self.new_content:
            self.store.remove_content(name)
        self.new_content.clear()

    # logs

    def log_name(self, suffix: str) -> str:
        return f"Import-{self.job.id}-1{suffix}"

    def _write_logs(self) -> None:
        files = {self.log_name(".log"): self.log_lines}
        if self.error_lines:
            files[self.log_name(".err")] = self.error_lines
        if self.warning_lines:
            files[self.log_name(".wrn")] = self.warning_lines
        try:
            container = self.tenant.storage.blob_service().get_container_client(self.job.manifest_container)
            for name, lines in files.items():
                data = ("\r\n".join(lines) + "\r\n").encode()
                metadata: dict[str, str] = {}
                if self.job.encrypted and self.job.key is not None:
                    iv, data = aes_encrypt(self.job.key, data)
                    metadata["IV"] = base64.b64encode(iv).decode()
                container.upload_blob(name, data, overwrite=True, metadata=metadata)
        except Exception as failure:  # noqa: BLE001 - losing the log must not lose JobEnd
            log.error("job %s: writing the import logs failed: %s", self.job.id, redact_sas(str(failure)))


# -- the timer job ----------------------------------------------------------------------------


class Importer:
    """The sandbox's import timer job: picks queued jobs up and runs them in worker threads."""

    def __init__(self, tenant: Any) -> None:
        self.tenant = tenant
        self.jobs = JobStore(tenant.store)
        self.publisher = EventPublisher(tenant, self.jobs)
        self.stopping = threading.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last_purge = 0.0
        # Import runs get their own threads, so long jobs never occupy the event loop's default
        # executor that request handlers use for short blocking calls.
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        if self._task is not None:
            return
        self.stopping.clear()
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.tenant.settings.import_workers), thread_name_prefix="spmt-import"
        )
        resumed = await asyncio.to_thread(self.jobs.requeue_processing)
        for job_id in resumed:
            log.info("job %s: was processing when the sandbox stopped; queued again", job_id)
        self._task = asyncio.create_task(self._loop(), name="spmt-sandbox-importer")
        log.info("import timer job started (%d workers)", self.tenant.settings.import_workers)

    async def stop(self) -> None:
        if self._task is None:
            return
        self.stopping.set()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None
        running = list(self._running.values())
        if running:
            done, pending = await asyncio.wait(running, timeout=STOP_TIMEOUT)
            if pending:
                log.warning("%d import jobs did not stop within %.0f s", len(pending), STOP_TIMEOUT)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        log.info("import timer job stopped")

    async def _loop(self) -> None:
        while True:
            try:
                await self._tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - the timer job keeps running after a bad tick
                log.exception("import timer tick failed")
            await asyncio.sleep(POLL_INTERVAL)

    async def _tick(self) -> None:
        now = time.time()
        if now - self._last_purge > PURGE_INTERVAL:
            self._last_purge = now
            purged = await asyncio.to_thread(
                self.jobs.purge_expired_events, self.tenant.settings.event_retention
            )
            if purged:
                log.info("deleted the events of %d expired migration jobs", purged)
            removed = await asyncio.to_thread(self._purge_containers)
            if removed:
                log.info("purged %d migration containers older than the retention", removed)
        free = max(1, self.tenant.settings.import_workers) - len(self._running)
        if free <= 0:
            return
        due = await asyncio.to_thread(self.jobs.due_jobs, now, free + len(self._running))
        for job in due:
            if job.id in self._running or free <= 0:
                continue
            free -= 1
            task = asyncio.create_task(self._run(job), name=f"spmt-import-{job.id}")
            self._running[job.id] = task
            task.add_done_callback(lambda _task, job_id=job.id: self._running.pop(job_id, None))

    def _purge_containers(self) -> int:
        """Delete provisioned containers past their retention, as SharePoint purges them."""
        from azure.core.exceptions import ResourceNotFoundError

        names = self.jobs.containers_to_purge(self.tenant.settings.container_retention)
        if not names:
            return 0
        service = self.tenant.storage.blob_service()
        for name in names:
            try:
                service.delete_container(name)
            except ResourceNotFoundError:
                pass
            self.jobs.forget_container(name)
        return len(names)

    async def _run(self, job: MigrationJob) -> None:
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, ImportRun(self, job).run)
        except Exception:  # noqa: BLE001 - logged with the job id; the job row shows its state
            log.exception("job %s: the import run crashed", job.id)
            if job.state != JobState.NONE:
                await asyncio.to_thread(self.jobs.finish, job.id)
