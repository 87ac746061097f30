"""Custom Azure storage for a task: its access key, its containers and queue, and their record.

The access key of the customer's storage account is a secret. It is never a setting, so it is
never stored with the session, in a config file, a log or a report. :func:`find_key` looks for it
in this order:

1. keys held in this process's memory (:func:`remember_key`): a key read from a JSON task
   file's ``CustomAzureAccessKey``, or one typed at the CLI's prompt;
2. the environment variable ``SPMT_TUI_AZURE_STORAGE_KEY_<ACCOUNT>`` (account name in upper
   case), then ``SPMT_TUI_AZURE_STORAGE_KEY``;
3. the OS keyring, or the passphrase-encrypted file of ``spmt_tui.auth.cache`` when
   ``SPMT_TUI_CACHE_PASSPHRASE`` is set (entry ``azure-storage-key-<account>``, written by
   :func:`save_key`).

Containers and the queue are recorded in the session database (table
``custom_storage_resources``) by account and name, without SAS, so a resumed run can delete the
containers of jobs that ended while it was stopped. SAS URIs are signed again from the key
whenever they are needed.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import logging
import os
import re
import secrets
import sqlite3
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spmt_tui.auth.cache import CacheStoreError, choose_store
from spmt_tui.engine.preflight import PreflightError
from spmt_tui.engine.settings import Settings, SettingsError
from spmt_tui.logs import redact
from spmt_tui.profile import TenantProfile
from spmt_tui.spo.containers import StorageTransport
from spmt_tui.spo.custom_storage import (
    MANIFEST_PERMISSIONS,
    SOURCE_PERMISSIONS,
    CustomStorageAccount,
    KeyedQueueTransport,
    StorageEndpoints,
    resource_name,
)
from spmt_tui.spo.sharepoint import ProvisionedContainers

log = logging.getLogger("spmt.engine.custom_storage")

ACCESS_KEY_ENV = "SPMT_TUI_AZURE_STORAGE_KEY"
CODE_CUSTOM_STORAGE = "CUSTOM_STORAGE"
"""Error code of a task whose custom storage cannot be used (SPMT publishes none for this)."""

_memory_keys: dict[str, str] = {}


class MissingAccessKey(SettingsError):
    """No access key was found for a storage account."""

    def __init__(self, account: str) -> None:
        super().__init__(
            f"no access key for storage account {account!r}: set {key_env_names(account)[0]} or "
            f"{ACCESS_KEY_ENV}, save it with `spmt-tui migrate ... --remember-custom-azure-key` "
            "(asked once on a terminal), or give CustomAzureAccessKey in the task file")
        self.account = account


def key_env_names(account: str) -> list[str]:
    """Return the environment variables that may contain ``account``'s key, most specific first."""
    return [f"{ACCESS_KEY_ENV}_{account.upper()}", ACCESS_KEY_ENV]


def check_key(account: str, key: Any) -> str:
    """Return ``key`` stripped; raise SettingsError (without the key) when it is not base64."""
    if not isinstance(key, str):
        raise SettingsError(f"the access key of storage account {account!r} must be a string")
    if not key.strip():
        raise SettingsError(f"the access key of storage account {account!r} is empty: copy key1 "
                            "or key2 from the account's Access keys page")
    text = key.strip()
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SettingsError(
            f"the access key of storage account {account!r} is not valid base64: copy key1 or "
            "key2 from the account's Access keys page (the key, not the connection string)"
        ) from None
    return text


def remember_key(account: str, key: str) -> None:
    """Hold ``account``'s key in this process's memory for the migrations it runs."""
    _memory_keys[account] = check_key(account, key)


def forget_keys() -> None:
    """Drop every key held in memory."""
    _memory_keys.clear()


def _store_name(account: str) -> str:
    return f"azure-storage-key-{account}"


def load_saved_key(account: str) -> str | None:
    """Return the key saved by :func:`save_key`, or None when there is no usable store or entry."""
    try:
        store = choose_store("auto", name=_store_name(account))
        value = store.load()
    except CacheStoreError as error:
        log.debug("no saved key for storage account %s: %s", account, error)
        return None
    return value or None


def save_key(account: str, key: str, prefer: str = "auto") -> str:
    """Save ``account``'s key in the keyring or the encrypted file; return where it went."""
    try:
        store = choose_store(prefer, name=_store_name(account))
    except CacheStoreError as error:
        raise SettingsError(f"cannot save the access key of storage account {account!r}: {error}") from None
    if store.kind not in ("keyring", "encrypted-file"):
        raise SettingsError(
            f"cannot save the access key of storage account {account!r} in {store.description}: "
            "use the keyring or an encrypted file (set SPMT_TUI_CACHE_PASSPHRASE)")
    store.save(check_key(account, key))
    return store.description


def find_key(account: str) -> tuple[str, str] | None:
    """Return ``(key, where it came from)`` for ``account``, or None."""
    if account in _memory_keys:
        return _memory_keys[account], "memory"
    for name in key_env_names(account):
        value = os.environ.get(name)
        if value:
            return check_key(account, value), f"environment variable {name}"
    saved = load_saved_key(account)
    if saved:
        return check_key(account, saved), "saved key"
    return None


def accounts_needing_keys(settings: Settings, task_overrides: list[dict[str, Any]]) -> list[str]:
    """Return the storage accounts that the session's tasks upload to, in order, once each."""
    accounts: list[str] = []
    for overrides in task_overrides or [{}]:
        merged = settings.with_overrides(overrides)
        if merged.custom_azure_storage and merged.custom_azure_account not in accounts:
            accounts.append(merged.custom_azure_account)
    return accounts


# -- endpoints --------------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _sandbox_storage(profile: TenantProfile | None) -> dict[str, Any]:
    """Return the ``sandbox.customer_storage`` entry of a sandbox tenant profile, or {}."""
    if profile is None or profile.source_path is None:
        return {}
    try:
        data = json.loads(Path(profile.source_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    entry = (data.get("sandbox") or {}).get("customer_storage") or {}
    return entry if isinstance(entry, dict) else {}


def resolve_endpoints(settings: Settings, profile: TenantProfile | None, site_url: str) -> StorageEndpoints:
    """Return the account's blob and queue endpoints; raise SettingsError when they are unusable.

    Empty endpoints default to Azure's public ones, except with a sandbox tenant profile that
    describes the same account, whose Azurite endpoints are taken instead. A tenant on this
    machine (a loopback site URL) never gets a storage endpoint elsewhere, so a test or the demo
    cannot reach a real host by accident.
    """
    account = settings.custom_azure_account
    blob, queue = settings.custom_azure_blob_endpoint, settings.custom_azure_queue_endpoint
    sandbox = _sandbox_storage(profile)
    if sandbox.get("account") == account:
        blob = blob or str(sandbox.get("blob_endpoint", ""))
        queue = queue or str(sandbox.get("queue_endpoint", ""))
    endpoints = StorageEndpoints.for_account(account, blob, queue)
    site_host = urlsplit(site_url).hostname or ""
    if _is_loopback(site_host):
        outside = sorted(host for host in endpoints.hosts if not _is_loopback(host))
        if outside:
            raise SettingsError(
                f"custom Azure storage endpoint host {outside[0]} is not on this machine, but the "
                f"tenant {site_url} is: set custom_azure_blob_endpoint and "
                "custom_azure_queue_endpoint to the emulator's URLs (the sandbox lists them in "
                "tenant.json under sandbox.customer_storage)")
    return endpoints


# -- names ------------------------------------------------------------------------------------

_NAME_CHARACTERS = re.compile(r"[^a-z0-9-]+")


def _name_part(text: str, limit: int) -> str:
    cleaned = re.sub(r"-{2,}", "-", _NAME_CHARACTERS.sub("-", text.lower())).strip("-")
    return cleaned[:limit].strip("-") or "s"


def queue_name(session_id: str, task_id: int, round_number: int) -> str:
    """Return the report queue of one task and round (3 to 63 lower-case letters, digits, hyphens).

    Each task and round gets its own queue, because Azure rejects creating a queue again for
    a while after it was deleted, and a finished task's queue is deleted when deletion is on.
    """
    return f"spmt-{_name_part(session_id, 40)}-t{task_id}-r{round_number}"


def container_prefix(session_id: str, task_id: int) -> str:
    return f"spmt-{_name_part(session_id, 30)}-t{task_id}-"


# -- the record in the session database ------------------------------------------------------

LEDGER_TABLE = """CREATE TABLE IF NOT EXISTS custom_storage_resources (
    account  TEXT NOT NULL,
    name     TEXT NOT NULL,
    role     TEXT NOT NULL,      -- data, manifest or queue
    task_id  INTEGER,
    package  INTEGER,
    job_id   TEXT,
    status   TEXT NOT NULL,      -- created, submitted, succeeded, failed, kept or deleted
    created  REAL NOT NULL,
    updated  REAL NOT NULL,
    PRIMARY KEY (account, name)
)"""


class StorageLedger:
    """Containers and queues created in customer accounts, kept in the session database.

    It uses its own connection to ``session.db`` (WAL mode, so it does not block the session
    store), and each call is one committed statement. No SAS or key is ever written.
    """

    def __init__(self, database: Path) -> None:
        self._connection = sqlite3.connect(database, timeout=30.0, isolation_level=None,
                                           check_same_thread=False)
        self._connection.execute(LEDGER_TABLE)

    def close(self) -> None:
        self._connection.close()

    def add(self, account: str, name: str, role: str, task_id: int, package: int | None) -> None:
        now = time.time()
        self._connection.execute(
            "INSERT INTO custom_storage_resources VALUES (?, ?, ?, ?, ?, NULL, 'created', ?, ?) "
            "ON CONFLICT (account, name) DO UPDATE SET updated = excluded.updated",
            (account, name, role, task_id, package, now, now))

    def set_job(self, account: str, names: list[str], job_id: str) -> None:
        self._connection.executemany(
            "UPDATE custom_storage_resources SET job_id = ?, status = 'submitted', updated = ? "
            "WHERE account = ? AND name = ?", [(job_id, time.time(), account, name) for name in names])

    def set_status(self, account: str, names: list[str], status: str) -> None:
        self._connection.executemany(
            "UPDATE custom_storage_resources SET status = ?, updated = ? WHERE account = ? AND name = ?",
            [(status, time.time(), account, name) for name in names])

    def containers_of_job(self, account: str, job_id: str) -> list[str]:
        rows = self._connection.execute(
            "SELECT name FROM custom_storage_resources WHERE account = ? AND job_id = ? "
            "AND role != 'queue' AND status != 'deleted'", (account, job_id)).fetchall()
        return [row[0] for row in rows]

    def submitted_jobs(self, account: str, task_id: int) -> set[str]:
        """Return the jobs of a task whose containers are recorded as submitted, not yet ended."""
        rows = self._connection.execute(
            "SELECT DISTINCT job_id FROM custom_storage_resources WHERE account = ? AND task_id = ? "
            "AND role != 'queue' AND status = 'submitted'", (account, task_id)).fetchall()
        return {row[0] for row in rows if row[0]}

    def unsubmitted(self, account: str, task_id: int) -> list[str]:
        rows = self._connection.execute(
            "SELECT name FROM custom_storage_resources WHERE account = ? AND task_id = ? "
            "AND role != 'queue' AND status = 'created'", (account, task_id)).fetchall()
        return [row[0] for row in rows]

    def rows(self) -> list[dict[str, Any]]:
        cursor = self._connection.execute("SELECT * FROM custom_storage_resources ORDER BY created")
        names = [column[0] for column in cursor.description]
        return [dict(zip(names, row)) for row in cursor.fetchall()]


# -- one task's storage ----------------------------------------------------------------------


class TaskStorage:
    """The containers and the report queue of one task in the customer's account.

    Containers are created per package attempt, because a container may serve only one job at a
    time, and named ``spmt-<session>-t<task>-<package>-<random>-data`` (or ``-manifest``) so a person
    can see in the account which session, task and package each one belongs to.
    """

    def __init__(self, settings: Settings, account: CustomStorageAccount, *, session_id: str,
                 task_id: int, round_number: int, session_db: Path) -> None:
        self.account = account
        self.delete_after = settings.custom_azure_delete_after
        self.session_id = session_id
        self.task_id = task_id
        self.ledger = StorageLedger(session_db)
        self.queue_name = queue_name(session_id, task_id, round_number)
        self.prefix = container_prefix(session_id, task_id)

    @classmethod
    def open(cls, settings: Settings, *, profile: TenantProfile | None, site_url: str,
             transport: StorageTransport, session_id: str, task_id: int, round_number: int,
             session_db: Path) -> "TaskStorage":
        """Return the task's storage; raise PreflightError when the account cannot be used."""
        try:
            endpoints = resolve_endpoints(settings, profile, site_url)
            found = find_key(settings.custom_azure_account)
            if found is None:
                raise MissingAccessKey(settings.custom_azure_account)
        except SettingsError as error:
            raise PreflightError(CODE_CUSTOM_STORAGE, str(error)) from None
        key, where = found
        log.info("custom Azure storage: account %s (blob %s, queue %s), key from %s",
                 endpoints.account, endpoints.blob, endpoints.queue, where)
        account = CustomStorageAccount(endpoints, key, transport)
        return cls(settings, account, session_id=session_id, task_id=task_id,
                   round_number=round_number, session_db=session_db)

    def close(self) -> None:
        self.ledger.close()

    async def open_queue(self) -> tuple[str, KeyedQueueTransport]:
        """Create the session's report queue if needed; return its SAS URI and a reader transport."""
        try:
            await self.account.ensure_queue(self.queue_name)
        except Exception as error:  # noqa: BLE001 - any storage failure stops the task with a reason
            raise PreflightError(
                CODE_CUSTOM_STORAGE,
                f"cannot create the queue {self.queue_name} in storage account "
                f"{self.account.account} at {self.account.endpoints.queue}: "
                f"{redact(str(error)).splitlines()[0]}; check the account name, its access key "
                "and that the account has the queue service (a General Purpose account)") from None
        self.ledger.add(self.account.account, self.queue_name, "queue", self.task_id, None)
        return self.account.queue_sas_uri(self.queue_name), KeyedQueueTransport(self.account)

    async def provision(self, package: int) -> ProvisionedContainers:
        """Create a data and a manifest container for one attempt of ``package``.

        Returns SharePoint's SAS URIs for them and a new random AES-256 key, because with
        custom storage the client chooses the key (encryption stays on).
        """
        token = secrets.token_hex(3)
        names = [f"{self.prefix}{package}-{token}-data", f"{self.prefix}{package}-{token}-manifest"]
        for name, role in zip(names, ("data", "manifest")):
            self.ledger.add(self.account.account, name, role, self.task_id, package)
            await self.account.create_container(name)
        log.info("package %d: created containers %s and %s in storage account %s", package,
                 names[0], names[1], self.account.account)
        return ProvisionedContainers(
            self.account.container_sas_uri(names[0], SOURCE_PERMISSIONS),
            self.account.container_sas_uri(names[1], MANIFEST_PERMISSIONS),
            os.urandom(32))

    def clients(self, containers: ProvisionedContainers) -> tuple[Any, Any]:
        """Return key-authorized clients of the data and manifest containers, for uploads."""
        return (self.account.container_client(resource_name(containers.data_uri)),
                self.account.container_client(resource_name(containers.metadata_uri)))

    def submitted_jobs(self) -> set[str]:
        return self.ledger.submitted_jobs(self.account.account, self.task_id)

    def submitted(self, containers: ProvisionedContainers, job_id: str) -> None:
        names = [resource_name(containers.data_uri), resource_name(containers.metadata_uri)]
        self.ledger.set_job(self.account.account, names, job_id)

    async def job_ended(self, job_id: str, *, succeeded: bool) -> None:
        """Record a job's end; with deletion on, delete its containers when it succeeded.

        The containers of a job that ended with JobFatalError are kept, because the import log
        in the manifest container contains the reason.
        """
        names = self.ledger.containers_of_job(self.account.account, job_id)
        if not succeeded:
            self.ledger.set_status(self.account.account, names, "failed")
            log.info("job %s failed; its containers %s are kept in storage account %s", job_id,
                     ", ".join(names), self.account.account)
            return
        self.ledger.set_status(self.account.account, names, "succeeded")
        if self.delete_after:
            await self._delete(names, f"job {job_id} ended")

    async def finish(self) -> None:
        """With deletion on, delete the containers no job used and the task's queue.

        Called when the task's round ended normally, so no job of it is still running.
        """
        if not self.delete_after:
            return
        leftovers = self.ledger.unsubmitted(self.account.account, self.task_id)
        if leftovers:
            await self._delete(leftovers, "no job used them")
        await self.delete_queue()

    async def delete_queue(self) -> None:
        try:
            await self.account.delete_queue(self.queue_name)
        except Exception as error:  # noqa: BLE001 - a queue left behind is reported, not fatal
            log.warning("could not delete the queue %s from storage account %s: %s",
                        self.queue_name, self.account.account, redact(str(error)).splitlines()[0])
            return
        self.ledger.set_status(self.account.account, [self.queue_name], "deleted")
        log.info("deleted the queue %s from storage account %s", self.queue_name, self.account.account)

    async def _delete(self, names: list[str], reason: str) -> None:
        for name in names:
            try:
                await self.account.delete_container(name)
            except Exception as error:  # noqa: BLE001 - a container left behind is reported, not fatal
                log.warning("could not delete container %s from storage account %s: %s", name,
                            self.account.account, redact(str(error)).splitlines()[0])
                continue
            self.ledger.set_status(self.account.account, [name], "deleted")
        log.info("deleted containers %s from storage account %s (%s)", ", ".join(names),
                 self.account.account, reason)
