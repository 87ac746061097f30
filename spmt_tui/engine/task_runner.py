"""One task of a migration round: the stage workers and the queues between them."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from azure.core.exceptions import AzureError

from spmt_tui.auth.tokens import SignInRequired
from spmt_tui.engine import package as pkg
from spmt_tui.engine.crypto import encrypt_blob, new_iv
from spmt_tui.engine.custom_storage import TaskStorage
from spmt_tui.engine.diskspace import is_disk_full
from spmt_tui.engine.jobs import JobLost, JobOutcome, QueueListener, follow_job
from spmt_tui.engine.permissions import (
    UNIQUE_SCOPES_LIMIT,
    UNIQUE_SCOPES_RECOMMENDED,
    ItemPermissions,
    PermissionMapper,
    Principal,
    Scope,
)
from spmt_tui.engine.preflight import Target, folder_object_id
from spmt_tui.engine.progress import ItemEvent, LogEvent, PhaseEvent
from spmt_tui.engine.rules import CATEGORY_SOURCE_MISSING, Outcome, ScanRules, ScanSettings
from spmt_tui.engine.source import Source, SourceItem
from spmt_tui.engine.users import AuthorMap, folder_owner
from spmt_tui.engine.upload import (
    CODE_FILE_CHANGED,
    CODE_SOURCE_UNREADABLE,
    FileChangedError,
    SourceMissingError,
    SourceReadError,
    encrypt_and_upload,
)
from spmt_tui.logs import redact
from spmt_tui.reports.csv_reports import USER_NOT_MAPPED_SCOPE
from spmt_tui.spo.containers import ContainerExpired, StorageTransport, download_log, upload_small
from spmt_tui.spo.http import HttpError
from spmt_tui.spo.sharepoint import FileInfo, ProvisionedContainers, SharePointClient, UserInfo

if TYPE_CHECKING:
    from spmt_tui.engine.migration import Migration, MigrationTask

log = logging.getLogger("spmt.engine.task")

CODE_JOB_FATAL = "0x01710006"
CODE_JOB_ITEM_FAILED = "0x01710009"
CODE_UPLOAD_FAILED = "0x01510001"
CODE_CONTAINER_EXPIRED = "0x01610001"
CODE_SUBMIT_FAILED = "0x01610002"
CODE_DESTINATION_NEWER = "DESTINATION_NEWER"
CODE_UNCHANGED = "UNCHANGED"

# SharePoint Online grants a container SAS for 3 days. A package that is still handed expired
# containers after waiting that long will not recover by waiting more, so it fails and the next
# round or a resume picks its files up.
CONTAINER_RETRY_WINDOW_SECONDS = 72 * 3600.0
CONTAINER_RETRY_FIRST_DELAY = 30.0
CONTAINER_RETRY_MAX_DELAY = 900.0
MAX_SUBMIT_RETRIES = 3
SUBMIT_RETRY_DELAY = 5.0
MAX_UPLOAD_ATTEMPTS = 3
SOURCE_POLL_SECONDS = 5.0
FILE_CHANGED_RETRY_DELAY = 1.0
SCAN_BATCH = 2000


@dataclass
class WorkFile:
    row_id: int
    item: SourceItem
    relative_path: str        # destination path relative to the library root
    object_id: str
    item_id: str
    int_id: int
    parent_id: str
    existing_id: str | None   # id of a file already at this URL (then the package reuses it)
    permissions: ItemPermissions | None = None  # set when preserve_permissions is on


@dataclass
class WorkFolder:
    row_id: int | None
    relative_path: str
    object_id: str
    item_id: str
    int_id: int
    parent_id: str
    created_ts: float | None
    modified_ts: float | None
    permissions: ItemPermissions | None = None  # set when preserve_permissions is on


@dataclass
class Package:
    number: int
    files: list[WorkFile]
    folders: list[WorkFolder]
    bytes: int


_END = object()


def _utc(ts: float | None) -> dt.datetime:
    if ts is None:
        return dt.datetime.now(dt.timezone.utc)
    return dt.datetime.fromtimestamp(int(ts), dt.timezone.utc)


def container_retry_delay(expiry_number: int) -> float:
    """Return the seconds to wait before provisioning new containers after an expired SAS.

    The first expiry of a package provisions new containers at once: a SAS lives for days, so one
    expiry is what a long upload or a paused weekend runs into. Repeated expiries back off from
    ``CONTAINER_RETRY_FIRST_DELAY`` up to ``CONTAINER_RETRY_MAX_DELAY`` with jitter, so that the
    packages of a run do not provision in step. The caller gives up once the waits would pass
    ``CONTAINER_RETRY_WINDOW_SECONDS`` since the first expiry.
    """
    if expiry_number <= 1:
        return 0.0
    ceiling = min(CONTAINER_RETRY_MAX_DELAY, CONTAINER_RETRY_FIRST_DELAY * 2 ** (expiry_number - 2))
    return random.uniform(ceiling / 2, ceiling)


class TaskRunner:
    """Runs scan, package, upload, submit and follow for one task in one round."""

    def __init__(
        self,
        migration: "Migration",
        task_id: int,
        task: "MigrationTask",
        round_number: int,
        target: Target,
        client: SharePointClient,
        transport: StorageTransport,
        source: Source,
        user: UserInfo | None,
        *,
        authors: AuthorMap | None = None,
    ) -> None:
        self.m = migration
        self.settings = migration.settings_for(task)
        self.store = migration.store
        self.stats = migration.stats
        self.sink = migration.sink
        self.task_id = task_id
        self.task = task
        self.round = round_number
        self.target = target
        self.client = client
        self.transport = transport
        self.source = source
        self.user = user
        # Created By and Modified By of each item; without a mapping, the signed-in account.
        self.authors = authors or AuthorMap(user)
        self.folders: dict[str, WorkFolder] = {}          # by destination relative path (lower)
        self.existing_folders: dict[str, str] = {}        # lower relative path -> id at destination
        self.dest_files: dict[str, dict[str, FileInfo]] = {}
        self.upload_slots = asyncio.Semaphore(self.settings.upload_concurrency)
        self.job_slots = asyncio.Semaphore(self.settings.jobs_in_flight)
        self.queue_listener: QueueListener | None = None
        # The customer's storage account when custom Azure storage is on; opened by run().
        self.custom: TaskStorage | None = None
        self.scan_issues = 0
        self.unreadable_folders: set[int] = set()
        self.source_lock = asyncio.Lock()
        self.package_numbers = self.store.next_package_number(task_id)
        # Permissions: the mapper exists only with preserve_permissions and a user mapping file.
        self.permissions: PermissionMapper | None = None
        if self.settings.preserve_permissions and self.authors.mapping is not None:
            self.permissions = PermissionMapper(self.authors.mapping, self.authors.resolved)
        self.folder_scopes: dict[tuple[str, ...], Scope] = {}  # source folder parts -> mapped scope
        self.root_scope: Scope | None = None
        self.unique_scopes = 0

    # -- helpers -------------------------------------------------------------------------------

    def _event(self, row_id: int, path: str, state: str, size: int = 0, code: str = "",
               message: str = "") -> None:
        self.sink(ItemEvent(row_id, self.task_id, path, state, size, code, message))

    def _library_relative(self, relative_destination: str) -> str:
        base = self.target.folder_path
        if not relative_destination:
            return base
        return f"{base}/{relative_destination}" if base else relative_destination

    def _server_relative(self, library_relative: str) -> str:
        root = self.target.library.root_folder_url.rstrip("/")
        return f"{root}/{library_relative}" if library_relative else root

    # -- the run ------------------------------------------------------------------------------

    async def run(self, *, scan_only: bool = False) -> None:
        if self.settings.preserve_permissions and self.permissions is None:
            message = ("preserve_permissions is on but no user mapping file is set, so no source "
                       "principal can be mapped and every item inherits the destination's "
                       "permissions; give --user-mapping-file to migrate them")
            log.warning(message)
            self._emit_log("warning", message)
        for folder in self.target.folder_chain:
            if folder.exists:
                self.existing_folders[folder.relative_path.lower()] = folder.id
        package_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=4 * self.settings.package_max_files)
        self.m.stats.set_phase("scanning" if scan_only else "migrating", self.task.describe())
        self.sink(PhaseEvent("scanning" if scan_only else "migrating", self.task.describe()))
        if scan_only:
            await self._scan(None)
            return
        if self.settings.custom_azure_storage:
            self.custom = TaskStorage.open(
                self.settings, profile=self.m.profile, site_url=self.target.site_url,
                transport=self.transport, session_id=self.m.session_id, task_id=self.task_id,
                round_number=self.round, session_db=self.store.path)
        try:
            await self._run_pipeline(package_queue)
            if self.custom is not None:
                await self.custom.finish()
        finally:
            if self.custom is not None:
                self.custom.close()

    async def _run_pipeline(self, package_queue: asyncio.Queue[Any]) -> None:
        await self._follow_pending_jobs()
        upload_queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=max(1, self.settings.packages_in_flight))
        if self.custom is not None:
            queue_uri, listener_transport = await self.custom.open_queue()
            self.queue_listener = QueueListener(listener_transport, queue_uri)  # type: ignore[arg-type]
        else:
            queue_uri = await self.client.provision_queue()
            self.queue_listener = QueueListener(self.transport, queue_uri)
        self.queue_listener.start()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._scan(package_queue), name="scan")
                group.create_task(self._packager(package_queue, upload_queue), name="packager")
                workers = [group.create_task(self._package_worker(upload_queue), name=f"package-{n}")
                           for n in range(self.settings.packages_in_flight)]
                del workers
        finally:
            await self.queue_listener.stop()

    async def _follow_pending_jobs(self) -> None:
        """Follow jobs submitted before an interruption to their end; never submit them again."""
        pending: dict[str, list[Any]] = {}
        for row in self.store.iter_items(self.task_id, status="submitted"):
            if row.job_id:
                pending.setdefault(row.job_id, []).append(row)
        if self.custom is not None:
            # A run killed between creating a job and recording its items leaves a job that only
            # the custom storage record knows. Its items are planned again; it is followed only
            # so that its containers are deleted once it ends.
            for job_id in self.custom.submitted_jobs() - set(pending):
                pending[job_id] = []
        if not pending:
            return
        log.info("following %d job(s) submitted before the interruption", len(pending))

        async def settle(job_id: str, rows: list[Any]) -> None:
            try:
                # Read the job's events from the start: the run that was killed may have read
                # past JobEnd (a stored token would then wait for events that never come).
                outcome = await follow_job(
                    self.client, job_id, inbox=None, next_token="0",
                    poll_seconds=min(2.0, self.settings.job_poll_seconds),
                    on_token=lambda token: self._save_job_token(job_id, token))
            except JobLost as error:
                log.warning("%s; its items are planned again", error)
                return
            if self.custom is not None:
                await self.custom.job_ended(job_id, succeeded=outcome.fatal is None)
                if not rows:
                    return
            if outcome.fatal is not None:
                log.warning("job %s ended with JobFatalError; its items are planned again", job_id)
                return
            failed = {str(e.get("Id", "")).lower(): e for e in outcome.errors}
            for row in rows:
                event = failed.get((row.object_guid or "").lower())
                if event is not None:
                    self.store.mark(row.id, "failed", code=str(event.get("ErrorCode", CODE_JOB_ITEM_FAILED)),
                                    message=str(event.get("Message", "")))
                else:
                    self.store.mark(row.id, "migrated")
            self.store.job_event(job_id, "JobEnd", status="completed")

        # settle() reads the job from its first event again, so a retry after a full disk is safe.
        await asyncio.gather(*(self.m.disk.retry(lambda j=job_id, r=rows: settle(j, r))
                               for job_id, rows in pending.items()))

    # -- scan ---------------------------------------------------------------------------------

    async def _scan(self, out: asyncio.Queue[Any] | None) -> None:
        settings = self.settings
        rules = ScanRules(
            self.target.server_relative_url,
            ScanSettings(
                include_hidden=settings.include_hidden,
                created_after=settings.created_after,
                modified_after=settings.modified_after,
                skipped_extensions=settings.skip_extensions,
                replacement_char=settings.replace_invalid_char,
            ),
            destination_is_library_root=not self.target.folder_path,
        )
        # Records of earlier rounds, and of this round when a run resumes it.
        previous = self.store.previous_results(self.task_id, self.round + 1)
        has_history = len(previous) > 0
        try:
            async for batch in self.source.walk(SCAN_BATCH):
                await self.m._gate()
                results = rules.evaluate(batch)
                befores = [previous.get(item.relative_path) if has_history else None for item in batch]
                records = []
                ready: list[tuple[int, SourceItem, str, Any]] = []
                for item, result in zip(batch, results):
                    if item.error is not None and item.is_folder:
                        result = rules.record_unreadable_folder(item.parts, item.error)
                    destination = rules.destination_path(item.parent, item.name, result) \
                        if result.outcome is Outcome.PASS else None
                    records.append((item, result, destination))
                row_ids = await self.m.disk.retry(
                    lambda: self.store.record_scanned(self.task_id, self.round, records))
                for (item, result, destination), row_id in zip(records, row_ids):
                    if item.error is not None and item.is_folder:
                        # The folder passed in an earlier record and may already be packaged;
                        # it must not be reported as migrated once its import ends.
                        self.unreadable_folders.add(row_id)
                for (item, result, destination), row_id, before in zip(records, row_ids, befores):
                    self.stats.add("scanned")
                    if result.outcome is not Outcome.PASS:
                        state = "skipped" if result.outcome is Outcome.SKIP else "failed"
                        self.stats.add(state)
                        if state == "failed":
                            self.scan_issues += 1
                        self._event(row_id, item.relative_path, state, item.size, result.code or "",
                                    result.message)
                        continue
                    self._event(row_id, item.relative_path, "scanned", item.size)
                    ready.append((row_id, item, destination, before))
                if out is None:
                    continue
                for row_id, item, destination, before in ready:
                    work = await self.m.disk.retry(
                        lambda: self._plan_item(row_id, item, destination, before))
                    if work is not None:
                        await out.put(work)
        except asyncio.CancelledError:
            # The consumers are being cancelled too; waiting to put the end marker into a full
            # queue here would keep the cancellation from ever finishing.
            raise
        if out is not None:
            await out.put(_END)

    async def _destination_listing(self, library_relative_folder: str) -> dict[str, FileInfo]:
        """Files at the destination in a folder that already existed there (lower-case names)."""
        key = library_relative_folder.lower()
        if key not in self.dest_files:
            url = self._server_relative(library_relative_folder)
            files = await self.client.folder_files(url)
            folders = await self.client.folder_folders(url)
            self.dest_files[key] = {f.name.lower(): f for f in files}
            for folder in folders:
                child = f"{library_relative_folder}/{folder.name}" if library_relative_folder else folder.name
                self.existing_folders[child.lower()] = folder.id
        return self.dest_files[key]

    def _parent_id(self, library_relative: str) -> str:
        parent = library_relative.rpartition("/")[0]
        if not parent:
            return self.target.library.root_folder_id
        existing = self.existing_folders.get(parent.lower())
        if existing:
            return existing
        folder = self.folders.get(parent.lower())
        if folder is not None:
            return folder.object_id
        return folder_object_id(self.target.site_url, self.target.library.id, parent)

    async def _plan_item(
        self, row_id: int, item: SourceItem, destination: str, before: dict[str, Any] | None
    ) -> WorkFile | WorkFolder | None:
        """Decide whether an item that passed the rules must be migrated, and give it its ids."""
        library_relative = self._library_relative(destination)
        parent = library_relative.rpartition("/")[0]
        lib_id = self.target.library.id
        permissions = self._item_permissions(item) if self.permissions is not None else None
        parent_exists = (not parent) or parent.lower() in self.existing_folders
        if item.is_folder:
            if parent_exists:
                await self._destination_listing(parent)
            existing_id = self.existing_folders.get(library_relative.lower())
            if existing_id is not None:
                self.store.mark(row_id, "migrated", code=CODE_UNCHANGED,
                                message="folder already exists at the destination")
                self.stats.add("migrated")
                self._event(row_id, item.relative_path, "migrated")
                return None
            object_id = folder_object_id(self.target.site_url, lib_id, library_relative)
            ids = self.store.assign_ids(row_id, lib_id, object_id, self.target.max_item_id)
            folder = WorkFolder(row_id, library_relative, object_id, ids.item_id, ids.int_id,
                                self._parent_id(library_relative), item.created_ts, item.modified_ts,
                                permissions)
            self.folders[library_relative.lower()] = folder
            return folder
        self.stats.add_bytes(total=item.size)
        existing: FileInfo | None = None
        if parent_exists:
            listing = await self._destination_listing(parent)
            existing = listing.get(item.name.lower() if destination.rpartition("/")[2] == item.name
                                   else destination.rpartition("/")[2].lower())
        if self.settings.incremental:
            unchanged = (before is not None and before.get("status") == "migrated"
                         and before.get("size") == item.size
                         and before.get("modified_ts") == item.modified_ts)
            if unchanged and before is not None and before.get("round") == self.round:
                # Migrated earlier in this same round, before the run was interrupted.
                self.store.mark(row_id, "migrated")
                self.stats.add("migrated")
                self.stats.add_bytes(total=-item.size)
                self._event(row_id, item.relative_path, "migrated", item.size)
                return None
            if unchanged:
                self.store.mark(row_id, "skipped", code=CODE_UNCHANGED,
                                message="unchanged since the last round")
                self.stats.add("skipped")
                self._event(row_id, item.relative_path, "skipped", item.size, CODE_UNCHANGED)
                self.stats.add_bytes(total=-item.size)
                return None
            if existing is not None and item.modified_ts is not None:
                dest_time = _parse_sp_time(existing.time_last_modified)
                ours = existing.id.lower() == str(pkg.object_ids(
                    self.target.site_url, lib_id, library_relative)[0])
                if (ours and dest_time == int(item.modified_ts) and existing.length == item.size
                        and (before is None or before.get("round") == self.round)):
                    # This run's own import, finished before an interruption.
                    self.store.mark(row_id, "migrated", message="already imported before the run was interrupted")
                    self.stats.add("migrated")
                    self._event(row_id, item.relative_path, "migrated", item.size)
                    self.stats.add_bytes(total=-item.size)
                    return None
                if dest_time is not None and dest_time >= int(item.modified_ts):
                    self.store.mark(row_id, "skipped", code=CODE_DESTINATION_NEWER,
                                    message="the destination file is as new or newer; kept")
                    self.stats.add("skipped")
                    self._event(row_id, item.relative_path, "skipped", item.size, CODE_DESTINATION_NEWER)
                    self.stats.add_bytes(total=-item.size)
                    return None
        object_id = existing.id if existing is not None else str(pkg.object_ids(
            self.target.site_url, lib_id, library_relative)[0])
        ids = self.store.assign_ids(row_id, lib_id, object_id, self.target.max_item_id)
        return WorkFile(row_id, item, library_relative, object_id, ids.item_id, ids.int_id,
                        self._parent_id(library_relative), existing.id if existing else None,
                        permissions)

    def _item_permissions(self, item: SourceItem) -> ItemPermissions | None:
        """Map the item's POSIX permissions; unique only when they differ from its parent's.

        Folders are planned before their children (the walk order), so the parent's scope is
        known here. Items without permission data inherit.
        """
        mapper = self.permissions
        if mapper is None or item.access is None:
            return None
        scope, not_mapped = mapper.scope_of(item.access, item.is_folder)
        if item.is_folder:
            self.folder_scopes[item.parts] = scope
        parent = self.folder_scopes.get(item.parent) if item.parent else None
        if parent is None:
            parent = self._root_scope()
        if scope == parent:
            return ItemPermissions(None, not_mapped)
        self.unique_scopes += 1
        if self.unique_scopes in (UNIQUE_SCOPES_RECOMMENDED + 1, UNIQUE_SCOPES_LIMIT + 1):
            # NOTE: counted per task; tasks into the same library add up at the destination.
            limit = ("the limit of" if self.unique_scopes > UNIQUE_SCOPES_LIMIT
                     else "Microsoft's recommended maximum of")
            message = (f"more than {self.unique_scopes - 1:,} items get unique permissions, "
                       f"{limit} unique scopes per library; give folders uniform permissions at "
                       "the source, or turn preserve_permissions off")
            log.warning(message)
            self._emit_log("warning", message)
        return ItemPermissions(scope, not_mapped)

    def _root_scope(self) -> Scope:
        """Return the mapped scope of the source root folder, read once."""
        if self.root_scope is None:
            root_access = getattr(self.source, "root_access", None)
            scope: Scope = ()
            if root_access is not None and self.permissions is not None:
                try:
                    scope = self.permissions.scope_of(root_access(), True)[0]
                except OSError as error:
                    log.warning("cannot read the permissions of the source root: %s", error)
            self.root_scope = scope
        return self.root_scope

    # -- packaging ---------------------------------------------------------------------------

    async def _packager(self, inbox: asyncio.Queue[Any], out: asyncio.Queue[Any]) -> None:
        max_files = self.settings.package_max_files
        max_bytes = self.settings.package_max_mb * 2**20
        files: list[WorkFile] = []
        folders: list[WorkFolder] = []
        size = 0

        async def emit() -> None:
            nonlocal files, folders, size
            if not files and not folders:
                return
            number = self.package_numbers
            self.package_numbers += 1
            with_ancestors = await self.m.disk.retry(lambda: self._with_ancestors(files, folders))
            package = Package(number, files, with_ancestors, size)
            row_ids = [f.row_id for f in files] + [f.row_id for f in folders if f.row_id is not None]
            await self.m.disk.retry(lambda: self.store.assign_package(number, row_ids))
            for work in files:
                self.stats.add("packaged")
                self._event(work.row_id, work.item.relative_path, "packaged", work.item.size)
            await out.put(package)
            files, folders, size = [], [], 0

        while True:
            work = await inbox.get()
            if work is _END:
                break
            if isinstance(work, WorkFolder):
                folders.append(work)
                if len(files) + len(folders) >= max_files:
                    await emit()
                continue
            if work.item.size >= max_bytes:
                # A large file travels alone, with the folders it needs.
                number = self.package_numbers
                self.package_numbers += 1
                alone = await self.m.disk.retry(lambda: self._with_ancestors([work], []))
                package = Package(number, [work], alone, work.item.size)
                await self.m.disk.retry(lambda: self.store.assign_package(number, [work.row_id]))
                self.stats.add("packaged")
                self._event(work.row_id, work.item.relative_path, "packaged", work.item.size)
                await out.put(package)
                continue
            files.append(work)
            size += work.item.size
            if len(files) + len(folders) >= max_files or size >= max_bytes:
                await emit()
        await emit()
        for _ in range(self.settings.packages_in_flight):
            await out.put(_END)

    def _with_ancestors(self, files: list[WorkFile], folders: list[WorkFolder]) -> list[WorkFolder]:
        """Return the package's folders plus every new folder its items are in, parents first."""
        chosen: dict[str, WorkFolder] = {f.relative_path.lower(): f for f in folders}
        for path in [f.relative_path for f in files] + [f.relative_path for f in folders]:
            parent = path.rpartition("/")[0]
            while parent and parent.lower() not in chosen:
                if parent.lower() in self.existing_folders:
                    break
                folder = self.folders.get(parent.lower()) or self._chain_folder(parent)
                if folder is None:
                    break
                chosen[parent.lower()] = folder
                parent = parent.rpartition("/")[0]
        return sorted(chosen.values(), key=lambda f: f.relative_path.count("/"))

    def _chain_folder(self, path: str) -> WorkFolder | None:
        """Return the work item of a ``--folder`` path folder that does not exist yet, or None."""
        for index, folder in enumerate(self.target.folder_chain):
            if folder.relative_path.lower() == path.lower() and not folder.exists:
                parent = self.target.folder_chain[index - 1].id if index else self.target.library.root_folder_id
                ids = self.store.assign_ids(None, self.target.library.id, folder.id, self.target.max_item_id)
                work = WorkFolder(None, folder.relative_path, folder.id, ids.item_id, ids.int_id, parent,
                                  None, None)
                self.folders[path.lower()] = work
                return work
        return None

    # -- upload, submit, follow --------------------------------------------------------------

    async def _package_worker(self, inbox: asyncio.Queue[Any]) -> None:
        while True:
            package = await inbox.get()
            if package is _END:
                return
            await self.m._gate()
            try:
                # A full disk before the job is submitted starts the package again after the wait.
                # Every write after submission retries on its own, so no job is submitted twice.
                await self.m.disk.retry(lambda: self._migrate_package(package))
            except (asyncio.CancelledError, SignInRequired):
                raise
            except Exception as error:  # noqa: BLE001 - one package must not stop the others
                log.exception("package %d failed", package.number)
                message = f"package failed: {type(error).__name__}: {redact(str(error))}"
                await self.m.disk.retry(lambda: self._fail_package(package, CODE_UPLOAD_FAILED, message))

    async def _migrate_package(self, package: Package) -> None:
        fatal_attempts = 0
        container_attempts = 0
        first_expiry: float | None = None
        submit_attempts = 0
        while True:
            try:
                outcome, containers, job_id = await self._upload_and_submit(package)
            except ContainerExpired as error:
                container_attempts += 1
                now = time.monotonic()
                first_expiry = now if first_expiry is None else first_expiry
                delay = container_retry_delay(container_attempts)
                if now + delay - first_expiry > CONTAINER_RETRY_WINDOW_SECONDS:
                    span = now - first_expiry
                    span_text = f"{span / 3600:.1f} h" if span >= 3600 else f"{span:.0f} s"
                    message = (f"the Azure containers expired {container_attempts} times in "
                               f"{span_text}; resume the session later")
                    await self.m.disk.retry(
                        lambda: self._fail_package(package, CODE_CONTAINER_EXPIRED, message))
                    return
                log.warning("package %d: container expired (%s); provisioning new containers in "
                            "%.0f s (expiry %d)", package.number, error, delay, container_attempts)
                if delay > 0:
                    await asyncio.sleep(delay)
                continue
            except HttpError as error:
                submit_attempts += 1
                transient = error.status == 0 or error.status >= 500
                if transient and submit_attempts < MAX_SUBMIT_RETRIES:
                    delay = SUBMIT_RETRY_DELAY * submit_attempts
                    log.warning("package %d: %s; uploading and submitting again in %.0f s",
                                package.number, error, delay)
                    await asyncio.sleep(delay)
                    continue
                message = f"job submission failed: {error}"
                await self.m.disk.retry(lambda: self._fail_package(package, CODE_SUBMIT_FAILED, message))
                return
            if outcome is None:
                return  # every file of the package failed before submission
            if outcome.fatal is not None and fatal_attempts < self.settings.fatal_retries:
                fatal_attempts += 1
                log.warning("package %d job %s: JobFatalError %s; submitting again (%d of %d)",
                            package.number, job_id, outcome.fatal.get("Message"), fatal_attempts,
                            self.settings.fatal_retries)
                self._emit_log("warning", f"package {package.number}: JobFatalError, submitting again")
                continue
            await self.m.disk.retry(lambda: self._apply_outcome(package, outcome, containers, job_id))
            return

    async def _upload_and_submit(
        self, package: Package
    ) -> tuple[JobOutcome | None, ProvisionedContainers, str]:
        if self.custom is not None:
            containers = await self.custom.provision(package.number)
            data, metadata = self.custom.clients(containers)
        else:
            containers = await self.client.provision_containers()
            data = self.transport.container(containers.data_uri)
            metadata = self.transport.container(containers.metadata_uri)
        try:
            results = await asyncio.gather(*(self._upload_file(package, work, data, containers.key)
                                             for work in package.files))
            uploaded = [(work, result) for work, result in zip(package.files, results) if result is not None]
            if not uploaded and not package.folders:
                return None, containers, ""
            package.files = [work for work, _ in uploaded]
            files = self._build_package(package, dict((w.row_id, r) for w, r in uploaded))
            known = set(self.existing_folders.values()) | {self.target.library.root_folder_id}
            pkg.validate_package(files, known_ids=known)
            await self.m.disk.retry(lambda: self._keep_package(package, files))
            for name, content in files.items():
                iv = new_iv()
                cipher = encrypt_blob(containers.key, iv, content)
                import hashlib

                await upload_small(metadata, name, cipher, iv, hashlib.md5(cipher).digest())
            async with self.job_slots:
                await self.m._gate()
                job_id = await self.client.create_migration_job_encrypted(
                    self.target.web.id, containers, self._queue_uri())
                if self.custom is not None:
                    # Recorded first, so a resumed run that follows this job finds its containers.
                    self.custom.submitted(containers, job_id)
                submitted_rows = [w.row_id for w in package.files]
                await self.m.disk.retry(lambda: self.store.package_submitted(
                    package.number, self.task_id, job_id, submitted_rows))
                for work in package.files:
                    self.stats.add("submitted")
                    self._event(work.row_id, work.item.relative_path, "submitted", work.item.size)
                self.stats.job_delta(+1)
                try:
                    inbox = self.queue_listener.watch(job_id, containers.key) if self.queue_listener else None
                    outcome = await follow_job(
                        self.client, job_id, inbox=inbox, poll_seconds=self.settings.job_poll_seconds,
                        on_token=lambda token, j=job_id: self._save_job_token(j, token),
                    )
                except JobLost as error:
                    log.warning("package %d: %s; submitting again", package.number, error)
                    outcome = JobOutcome(job_id, fatal={"Message": str(error)})
                finally:
                    self.stats.job_delta(-1)
                    if self.queue_listener:
                        self.queue_listener.forget(job_id)
            await self._save_import_log(metadata, job_id, containers.key)
            if self.custom is not None:
                await self.custom.job_ended(job_id, succeeded=outcome.fatal is None)
            return outcome, containers, job_id
        finally:
            await data.close()
            await metadata.close()

    def _save_job_token(self, job_id: str, token: str) -> None:
        """Store how far a job's events were read; a full disk only skips this optimisation.

        A resumed run reads a submitted job from its first event, so a lost token costs time only.
        """
        try:
            self.store.job_token(job_id, token)
        except Exception as error:
            if not is_disk_full(error):
                raise
            log.warning("job %s: the event token was not stored because the working folder is full",
                        job_id)

    def _keep_package(self, package: Package, files: dict[str, bytes]) -> None:
        """Keep the package's XML in the working folder, as SPMT keeps its package cache.

        The XML carries names, ids, sizes and hashes, never keys or SAS URIs.
        """
        folder = self.m.session_dir / "packages" / f"task{self.task_id}-{package.number:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, content in files.items():
            (folder / name).write_bytes(content)

    def _queue_uri(self) -> str | None:
        listener = self.queue_listener
        return listener.queue_uri if listener is not None else None

    async def _upload_file(self, package: Package, work: WorkFile, container: Any, key: bytes) -> Any:
        blob_name = f"{work.object_id}.dat"
        changed_retried = False
        for attempt in range(1, MAX_UPLOAD_ATTEMPTS + 1):
            async with self.upload_slots:
                await self.m._gate()
                await self.m.disk.retry(lambda: self.store.add_attempt(work.row_id, "upload"))
                try:
                    result = await encrypt_and_upload(self.source, work.item, container, key, blob_name,
                                                      self.stats)
                except FileChangedError as error:
                    if not changed_retried:
                        changed_retried = True
                        await asyncio.sleep(FILE_CHANGED_RETRY_DELAY)
                        continue
                    message = f"{error}; it will be picked up by the next round"
                    await self.m.disk.retry(lambda: self._fail_item(work, CODE_FILE_CHANGED, message))
                    return None
                except SourceReadError as error:
                    if not await asyncio.to_thread(os.path.isdir, self.task.source):
                        await self._wait_for_source()
                        continue
                    message = str(error)
                    if isinstance(error, SourceMissingError):
                        # Deleted at the source since the scan: nothing to migrate, not a failure.
                        await self.m.disk.retry(lambda: self._skip_missing(work, message))
                        return None
                    await self.m.disk.retry(lambda: self._fail_item(work, CODE_SOURCE_UNREADABLE, message))
                    return None
                except ContainerExpired:
                    raise
                except (AzureError, aiohttp.ClientError, OSError) as error:
                    # The Azure SDK already retried transient errors; try the whole blob again.
                    if attempt < MAX_UPLOAD_ATTEMPTS:
                        log.warning("upload of %s failed (%s); attempt %d of %d", work.item.relative_path,
                                    redact(str(error))[:300], attempt + 1, MAX_UPLOAD_ATTEMPTS)
                        await asyncio.sleep(attempt * 2.0)
                        continue
                    message = f"upload failed: {redact(str(error))[:300]}"
                    await self.m.disk.retry(lambda: self._fail_item(work, CODE_UPLOAD_FAILED, message))
                    return None
            if result.plain_size != work.item.size or result.modified_ts != work.item.modified_ts:
                # Changed after the scan but not while it was read: ship what was read, with
                # its own size and time, and report those.
                await self.m.disk.retry(lambda: self.store.update_source_state(
                    work.row_id, result.plain_size, result.modified_ts))
            self.stats.add("uploaded")
            self._event(work.row_id, work.item.relative_path, "uploaded", work.item.size)
            return result
        return None

    def _build_package(self, package: Package, results: dict[int, Any]) -> dict[str, bytes]:
        return build_package_files(self, package, results)

    async def _apply_outcome(
        self, package: Package, outcome: JobOutcome, containers: ProvisionedContainers, job_id: str
    ) -> None:
        if outcome.fatal is not None:
            message = str(outcome.fatal.get("Message", "JobFatalError"))
            self._fail_package(package, CODE_JOB_FATAL, f"job {job_id} ended with JobFatalError: {message}")
            return
        errors: dict[str, dict[str, Any]] = {}
        for event in outcome.errors:
            for key in (str(event.get("Id", "")).lower(), str(event.get("Url", "")).lower().strip("/")):
                if key:
                    errors[key] = event
        for work in package.files:
            event = errors.get(work.object_id.lower()) or errors.get(work.item_id.lower()) or \
                errors.get(self._server_relative(work.relative_path).lower().strip("/")) or \
                errors.get(work.relative_path.lower())
            if event is not None:
                self._fail_item(work, str(event.get("ErrorCode", CODE_JOB_ITEM_FAILED)),
                                f"{event.get('Message', 'import failed')} (job {job_id})")
                continue
            self.store.mark(work.row_id, "migrated", job_id=job_id)
            self.stats.add("migrated")
            self.stats.add_bytes(migrated=work.item.size)
            self._event(work.row_id, work.item.relative_path, "migrated", work.item.size)
        for folder in package.folders:
            if folder.row_id is not None:
                event = errors.get(folder.object_id.lower())
                if event is not None:
                    self.store.mark(folder.row_id, "failed", code=str(event.get("ErrorCode", "")),
                                    message=str(event.get("Message", "")), job_id=job_id)
                elif folder.row_id in self.unreadable_folders:
                    continue
                elif self.store.mark_if_not(folder.row_id, "migrated", job_id=job_id):
                    self.stats.add("migrated")

    async def _save_import_log(self, metadata: Any, job_id: str, key: bytes) -> None:
        folder = self.m.session_dir / "logs"
        await self.m.disk.retry(lambda: folder.mkdir(parents=True, exist_ok=True))
        for suffix in ("log", "err", "wrn"):
            name = f"Import-{job_id}-1.{suffix}"
            try:
                content = await download_log(metadata, name, key)
            except Exception as error:  # noqa: BLE001 - a missing log must not fail the package
                log.warning("job %s: could not read %s: %s", job_id, name, redact(str(error)))
                continue
            if content is not None:
                await self.m.disk.retry(lambda: (folder / name).write_bytes(content))

    async def _wait_for_source(self) -> None:
        """Pause while the source share is gone (unmounted, network down), then go on."""
        async with self.source_lock:
            if await asyncio.to_thread(os.path.isdir, self.task.source):
                return
            message = (f"the source {self.task.source} is not reachable; the migration waits and "
                       "goes on by itself when it is back")
            log.warning(message)
            self._emit_log("warning", message)
            self.stats.set_phase("waiting for source", message)
            self.sink(PhaseEvent("waiting for source", message))
            while not await asyncio.to_thread(os.path.isdir, self.task.source):
                await asyncio.sleep(SOURCE_POLL_SECONDS)
            log.info("the source %s is back; going on", self.task.source)
            self.stats.set_phase("migrating")
            self.sink(PhaseEvent("migrating"))

    def _end_item(self, work: WorkFile, status: str, code: str, message: str,
                  category: str | None = None) -> None:
        """Record that ``work`` ends as ``status`` (failed or skipped), with its code and reason."""
        self.store.mark(work.row_id, status, code=code, message=message, category=category)
        self.stats.add(status)
        self._event(work.row_id, work.item.relative_path, status, work.item.size, code, message)
        log.warning("%s %s: %s %s", work.item.relative_path, status, code, message)

    def _skip_missing(self, work: WorkFile, message: str) -> None:
        self._end_item(work, "skipped", CODE_SOURCE_UNREADABLE, message, CATEGORY_SOURCE_MISSING)

    def _fail_item(self, work: WorkFile, code: str, message: str) -> None:
        self._end_item(work, "failed", code, message)

    def _fail_package(self, package: Package, code: str, message: str) -> None:
        log.error("package %d failed: %s %s", package.number, code, message)
        self._emit_log("error", f"package {package.number}: {message}")
        for work in package.files:
            self._fail_item(work, code, message)
        for folder in package.folders:
            # A folder carried by another package that succeeded stays migrated.
            if folder.row_id is not None and self.store.get_item(folder.row_id).status != "migrated":
                self.store.mark(folder.row_id, "failed", code=code, message=message)
                self.stats.add("failed")

    def _emit_log(self, level: str, message: str) -> None:
        self.sink(LogEvent(level, message))


def _parse_sp_time(text: str) -> int | None:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return int(value.timestamp())


def build_package_files(runner: TaskRunner, package: Package, results: dict[int, Any]) -> dict[str, bytes]:
    """Build the package XML files for ``package`` from the uploaded blobs' results."""
    import uuid

    target = runner.target
    ids = pkg.TargetIds(
        site_url=target.site_url,
        web_id=uuid.UUID(target.web.id),
        web_url=target.web.server_relative_url,
        web_root_folder_id=uuid.UUID(target.web.root_folder_id),
        list_id=uuid.UUID(target.library.id),
        list_title=target.library.title,
        list_root_folder_id=uuid.UUID(target.library.root_folder_id),
        list_root_folder_url=target.library.root_folder_url,
    )
    users: list[pkg.PackageUser] = []
    package_user_ids: dict[str, int] = {}

    def user_id(owner: str | None) -> int:
        """Return the package's id for the owner's user, adding the user once per package."""
        person = runner.authors.person_for(owner)
        if person is None:
            return pkg.SYSTEM_ACCOUNT_USER_ID
        key = person.login.lower()
        if key not in package_user_ids:
            package_user_ids[key] = len(users) + 1
            users.append(pkg.PackageUser(package_user_ids[key], person.title, person.login,
                                         person.email, is_site_admin=person.is_site_admin))
        return package_user_ids[key]

    mapper = runner.permissions
    roles: dict[int, pkg.PackageRole] = {}

    def principal_id(principal: Principal) -> int:
        """Return the package's id for a permission principal, adding it once per package."""
        key = principal.login.lower()
        if key not in package_user_ids:
            package_user_ids[key] = len(users) + 1
            users.append(pkg.PackageUser(package_user_ids[key], principal.title, principal.login,
                                         principal.email, is_domain_group=principal.is_group))
        return package_user_ids[key]

    def role_assignments(permissions: ItemPermissions | None) -> tuple[pkg.PackageRoleAssignment, ...] | None:
        """Return an item's unique role assignments (None when it inherits); count unmapped principals."""
        if permissions is None or mapper is None:
            return None
        mapper.count_not_mapped(permissions.not_mapped)
        if permissions.scope is None:
            return None
        assignments = []
        for principal, role in permissions.scope:
            roles[role.id] = pkg.PackageRole(role.id, role.title, role.perm_mask, role.order)
            assignments.append(pkg.PackageRoleAssignment(principal_id(principal), role.id))
        return tuple(assignments)

    items: list[pkg.PackageItem] = []
    for folder in package.folders:
        row = runner.store.get_item(folder.row_id) if folder.row_id is not None else None
        author = user_id(folder_owner(runner.source, row.path) if row else None)
        items.append(pkg.PackageFolder(
            object_id=uuid.UUID(folder.object_id),
            item_id=uuid.UUID(folder.item_id),
            int_id=folder.int_id,
            name=folder.relative_path.rpartition("/")[2],
            path=folder.relative_path,
            parent_id=uuid.UUID(folder.parent_id),
            created=_utc(folder.created_ts),
            modified=_utc(folder.modified_ts),
            author_id=author,
            editor_id=author,
            role_assignments=role_assignments(folder.permissions),
        ))
    for work in package.files:
        result = results[work.row_id]
        author = user_id(work.item.owner)
        items.append(pkg.PackageFile(
            object_id=uuid.UUID(work.object_id),
            item_id=uuid.UUID(work.item_id),
            int_id=work.int_id,
            name=work.relative_path.rpartition("/")[2],
            path=work.relative_path,
            parent_id=uuid.UUID(work.parent_id),
            size=result.plain_size,
            created=_utc(work.item.created_ts),
            modified=_utc(result.modified_ts),
            author_id=author,
            editor_id=author,
            blob_name=result.blob_name,
            md5_base64=result.md5_base64,
            checksum_base64=result.checksum_base64 or None,
            role_assignments=role_assignments(work.permissions),
        ))
    runner.authors.flush_not_mapped(runner.store, (runner.task_id, package.number))
    if mapper is not None:
        mapper.flush_not_mapped(runner.store, (runner.task_id, package.number), USER_NOT_MAPPED_SCOPE)
    return pkg.build_package(ids, items, users, list(roles.values()))
