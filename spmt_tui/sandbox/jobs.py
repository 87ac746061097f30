"""Migration job records, their events and the queue messages the service posts for them.

Everything lives in tables of the tenant database (``tenant.db``), created here:

- ``migration_containers``: containers handed out by ProvisionMigrationContainers, with the
  SHA-256 of the key issued for them (the key itself is not kept, as SharePoint does not keep it)
  and the SAS expiry;
- ``migration_queues``: queues handed out by ProvisionMigrationQueue;
- ``migration_jobs``: one row per job. The job's AES key is stored while the job is queued or
  processing and cleared when the job ends, because Microsoft documents that it discards the key
  then;
- ``migration_events``: the events of each job, in order, for GetMigrationJobProgress.

Events are JSON objects whose values are all strings. ``EventPublisher`` stores an event and,
when the job has a report queue, posts it there (encrypted when the job is encrypted).
"""

from __future__ import annotations

import base64
import datetime as dt
import enum
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
import uuid
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from spmt_tui.sandbox.store import TenantStore

log = logging.getLogger("spmt.sandbox.jobs")

JOB_TABLES = (
    """CREATE TABLE IF NOT EXISTS migration_containers (
        name TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        key_sha256 TEXT NOT NULL,
        expires REAL NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS migration_queues (
        name TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        expires REAL NOT NULL,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS migration_jobs (
        id TEXT PRIMARY KEY,
        site_id TEXT NOT NULL,
        web_id TEXT NOT NULL,
        source_container TEXT NOT NULL,
        manifest_container TEXT NOT NULL,
        queue_name TEXT,
        encrypted INTEGER NOT NULL,
        key TEXT,
        state INTEGER NOT NULL,
        correlation_id TEXT NOT NULL,
        created REAL NOT NULL,
        not_before REAL NOT NULL,
        postponements INTEGER NOT NULL DEFAULT 0,
        started REAL,
        ended REAL,
        cancel_requested INTEGER NOT NULL DEFAULT 0,
        events_purged INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS migration_jobs_state ON migration_jobs(state, not_before)",
    """CREATE TABLE IF NOT EXISTS migration_events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    )""",
)

EVENT_TIME_FORMAT = "%m/%d/%Y %H:%M:%S"
AES_KEY_BYTES = 32
AES_BLOCK_BYTES = 16

_SAS_SIGNATURE = re.compile(r"(sig=)[^&\s\"']+", re.IGNORECASE)


def redact_sas(text: str) -> str:
    """Return ``text`` with every SAS signature value replaced, safe to log."""
    return _SAS_SIGNATURE.sub(r"\1REDACTED", text)


class JobState(enum.IntEnum):
    """SPMigrationJobState: a job in the timer-job queue is Queued or Processing, else None."""

    NONE = 0
    QUEUED = 2
    PROCESSING = 4


@dataclass(frozen=True)
class ProvisionedContainer:
    name: str
    site_id: str
    key_sha256: str
    expires: float


@dataclass(frozen=True)
class MigrationJob:
    id: str
    site_id: str
    web_id: str
    source_container: str
    manifest_container: str
    queue_name: str | None
    encrypted: bool
    key: bytes | None
    state: JobState
    correlation_id: str
    created: float
    not_before: float
    postponements: int
    started: float | None
    ended: float | None
    cancel_requested: bool
    events_purged: bool


def key_fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()


def event_time(moment: float | None = None) -> str:
    """Format a time as events carry it: ``MM/dd/yyyy HH:mm:ss.fff`` in UTC."""
    when = dt.datetime.fromtimestamp(time.time() if moment is None else moment, dt.timezone.utc)
    return f"{when.strftime(EVENT_TIME_FORMAT)}.{when.microsecond // 1000:03d}"


# -- AES-256-CBC with PKCS7 padding -----------------------------------------------------------


def aes_encrypt(key: bytes, plain: bytes, iv: bytes | None = None) -> tuple[bytes, bytes]:
    """Encrypt ``plain`` with a fresh random IV (unless given); return ``(iv, ciphertext)``."""
    iv = iv or os.urandom(AES_BLOCK_BYTES)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv, encryptor.update(padded) + encryptor.finalize()


class AesDecryptor:
    """Streaming AES-256-CBC decryption that removes PKCS7 padding at the end.

    ``finalize`` raises ValueError when the padding is invalid, which is what a wrong key or
    a wrong IV almost always produces.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._unpadder = padding.PKCS7(128).unpadder()

    def update(self, data: bytes) -> bytes:
        return self._unpadder.update(self._decryptor.update(data))

    def finalize(self) -> bytes:
        return self._unpadder.update(self._decryptor.finalize()) + self._unpadder.finalize()


def aes_decrypt(key: bytes, iv: bytes, cipher: bytes) -> bytes:
    decryptor = AesDecryptor(key, iv)
    return decryptor.update(cipher) + decryptor.finalize()


# -- persistence ------------------------------------------------------------------------------


class JobStore:
    """Access to the migration tables of the tenant database (thread-safe through the store)."""

    def __init__(self, store: TenantStore) -> None:
        self.store = store
        for statement in JOB_TABLES:
            store.execute(statement)

    # containers and queues

    def add_container(self, name: str, site_id: str, key: bytes, expires: float) -> None:
        self.store.execute(
            "INSERT INTO migration_containers VALUES (?, ?, ?, ?, ?)",
            (name, site_id, key_fingerprint(key), expires, time.time()),
        )

    def container(self, name: str) -> ProvisionedContainer | None:
        rows = self.store.query("SELECT * FROM migration_containers WHERE name = ?", (name,))
        if not rows:
            return None
        row = rows[0]
        return ProvisionedContainer(row["name"], row["site_id"], row["key_sha256"], row["expires"])

    def add_queue(self, name: str, site_id: str, expires: float) -> None:
        self.store.execute(
            "INSERT INTO migration_queues VALUES (?, ?, ?, ?)", (name, site_id, expires, time.time())
        )

    def queue_exists(self, name: str) -> bool:
        """Return whether ProvisionMigrationQueue created the queue ``name``."""
        return bool(self.store.query("SELECT 1 FROM migration_queues WHERE name = ?", (name,)))

    # jobs

    def create_job(
        self,
        *,
        site_id: str,
        web_id: str,
        source_container: str,
        manifest_container: str,
        queue_name: str | None,
        key: bytes | None,
        delay: float,
    ) -> MigrationJob:
        job_id = str(uuid.uuid4())
        now = time.time()
        encoded_key = base64.b64encode(key).decode() if key is not None else None
        self.store.execute(
            "INSERT INTO migration_jobs (id, site_id, web_id, source_container, "
            "manifest_container, queue_name, encrypted, key, state, correlation_id, created, "
            "not_before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                job_id, site_id, web_id, source_container, manifest_container, queue_name,
                int(key is not None), encoded_key, int(JobState.QUEUED), str(uuid.uuid4()), now,
                now + delay,
            ),
        )
        job = self.job(job_id)
        assert job is not None
        return job

    def job(self, job_id: str) -> MigrationJob | None:
        rows = self.store.query("SELECT * FROM migration_jobs WHERE id = ?", (job_id.lower(),))
        return _job(rows[0]) if rows else None

    def jobs_for_site(self, site_id: str) -> list[MigrationJob]:
        rows = self.store.query(
            "SELECT * FROM migration_jobs WHERE site_id = ? ORDER BY created", (site_id,)
        )
        return [_job(row) for row in rows]

    def active_jobs_using(self, container: str) -> list[str]:
        """Return the ids of queued or processing jobs that read or write ``container``."""
        rows = self.store.query(
            "SELECT id FROM migration_jobs WHERE state != 0 AND "
            "(source_container = ? OR manifest_container = ?)",
            (container, container),
        )
        return [row["id"] for row in rows]

    def due_jobs(self, now: float, limit: int) -> list[MigrationJob]:
        """Return up to ``limit`` queued jobs whose pick-up time has come, oldest first."""
        rows = self.store.query(
            "SELECT * FROM migration_jobs WHERE state = ? AND not_before <= ? "
            "ORDER BY created LIMIT ?",
            (int(JobState.QUEUED), now, limit),
        )
        return [_job(row) for row in rows]

    def queued_count(self) -> int:
        rows = self.store.query(
            "SELECT COUNT(*) FROM migration_jobs WHERE state = ?", (int(JobState.QUEUED),)
        )
        return int(rows[0][0])

    def postpone(self, job_id: str, not_before: float) -> None:
        self.store.execute(
            "UPDATE migration_jobs SET not_before = ?, postponements = postponements + 1 "
            "WHERE id = ?",
            (not_before, job_id),
        )

    def mark_processing(self, job_id: str) -> None:
        self.store.execute(
            "UPDATE migration_jobs SET state = ?, started = ? WHERE id = ?",
            (int(JobState.PROCESSING), time.time(), job_id),
        )

    def requeue_processing(self) -> list[str]:
        """Put jobs left in Processing by a stopped sandbox back in the queue; return their ids."""
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id FROM migration_jobs WHERE state = ?", (int(JobState.PROCESSING),)
            ).fetchall()
            db.execute(
                "UPDATE migration_jobs SET state = ?, not_before = ? WHERE state = ?",
                (int(JobState.QUEUED), time.time(), int(JobState.PROCESSING)),
            )
        return [row["id"] for row in rows]

    def finish(self, job_id: str) -> None:
        """Take the job out of the queue (state None) and discard its key."""
        self.store.execute(
            "UPDATE migration_jobs SET state = ?, ended = ?, key = NULL WHERE id = ?",
            (int(JobState.NONE), time.time(), job_id),
        )

    def request_cancel(self, job_id: str) -> None:
        self.store.execute("UPDATE migration_jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))

    def cancel_requested(self, job_id: str) -> bool:
        rows = self.store.query("SELECT cancel_requested FROM migration_jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    # events

    def append_event(self, job_id: str, event: dict[str, str]) -> int:
        body = json.dumps(event, separators=(",", ":"))
        with self.store.transaction() as db:
            seq = db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM migration_events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            db.execute("INSERT INTO migration_events VALUES (?, ?, ?)", (job_id, seq, body))
        return int(seq)

    def events_after(self, job_id: str, seq: int, limit: int) -> list[tuple[int, str]]:
        rows = self.store.query(
            "SELECT seq, body FROM migration_events WHERE job_id = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (job_id, seq, limit),
        )
        return [(int(row["seq"]), row["body"]) for row in rows]

    def events(self, job_id: str) -> list[dict[str, str]]:
        return [json.loads(body) for _seq, body in self.events_after(job_id, 0, 1_000_000)]

    def containers_to_purge(self, retention: dt.timedelta) -> list[str]:
        """Containers created more than ``retention`` ago that no unfinished job still reads."""
        cutoff = time.time() - retention.total_seconds()
        rows = self.store.query(
            "SELECT name FROM migration_containers WHERE created < ? AND name NOT IN ("
            "SELECT source_container FROM migration_jobs WHERE ended IS NULL UNION "
            "SELECT manifest_container FROM migration_jobs WHERE ended IS NULL)",
            (cutoff,),
        )
        return [row["name"] for row in rows]

    def forget_container(self, name: str) -> None:
        self.store.execute("DELETE FROM migration_containers WHERE name = ?", (name,))

    def purge_expired_events(self, retention: dt.timedelta) -> int:
        """Delete the events of jobs that ended more than ``retention`` ago; return the job count."""
        cutoff = time.time() - retention.total_seconds()
        with self.store.transaction() as db:
            rows = db.execute(
                "SELECT id FROM migration_jobs WHERE ended IS NOT NULL AND ended < ? "
                "AND events_purged = 0",
                (cutoff,),
            ).fetchall()
            for row in rows:
                db.execute("DELETE FROM migration_events WHERE job_id = ?", (row["id"],))
                db.execute("UPDATE migration_jobs SET events_purged = 1 WHERE id = ?", (row["id"],))
        return len(rows)


def _job(row: sqlite3.Row) -> MigrationJob:
    return MigrationJob(
        id=row["id"],
        site_id=row["site_id"],
        web_id=row["web_id"],
        source_container=row["source_container"],
        manifest_container=row["manifest_container"],
        queue_name=row["queue_name"],
        encrypted=bool(row["encrypted"]),
        key=base64.b64decode(row["key"]) if row["key"] else None,
        state=JobState(row["state"]),
        correlation_id=row["correlation_id"],
        created=row["created"],
        not_before=row["not_before"],
        postponements=row["postponements"],
        started=row["started"],
        ended=row["ended"],
        cancel_requested=bool(row["cancel_requested"]),
        events_purged=bool(row["events_purged"]),
    )


# -- events -----------------------------------------------------------------------------------


def server_ids(site_id: str) -> dict[str, str]:
    """Return stable stand-ins for the farm, database, server and subscription ids of a site."""
    base = uuid.UUID(site_id) if _is_guid(site_id) else uuid.uuid5(uuid.NAMESPACE_URL, site_id)
    return {
        "DbId": str(uuid.uuid5(base, "content-database")),
        "FarmId": str(uuid.uuid5(base, "farm")),
        "ServerId": str(uuid.uuid5(base, "server")),
        "SubscriptionId": str(uuid.uuid5(base, "subscription")),
    }


def _is_guid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def build_event(job: MigrationJob, name: str, fields: dict[str, Any]) -> dict[str, str]:
    """Build one event: common fields first, every value turned into a string."""
    event: dict[str, str] = {"Event": name, "JobId": job.id, "Time": event_time()}
    for key, value in fields.items():
        event[key] = _event_value(value)
    event.setdefault("TotalRetryCount", "0")
    event.setdefault("MigrationType", "None")
    event.setdefault("MigrationDirection", "Import")
    event.setdefault("CorrelationId", job.correlation_id)
    return event


def _event_value(value: Any) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    if value is None:
        return ""
    return str(value)


class EventPublisher:
    """Store job events and post them to the job's report queue.

    Methods are synchronous because SQLite and the Azure SDK's clients block, so async callers
    run them in a thread. A failed queue post is logged and dropped, because
    GetMigrationJobProgress still serves the event.
    """

    def __init__(self, tenant: Any, jobs: JobStore) -> None:
        self.tenant = tenant
        self.jobs = jobs
        self._queue_service: Any = None

    def publish(self, job: MigrationJob, name: str, fields: dict[str, Any] | None = None) -> dict[str, str]:
        event = build_event(job, name, fields or {})
        self.jobs.append_event(job.id, event)
        if job.queue_name:
            self._post_to_queue(job, event)
        return event

    def _post_to_queue(self, job: MigrationJob, event: dict[str, str]) -> None:
        faults = getattr(self.tenant, "faults", None)
        if faults is not None and faults.roll("lost_queue"):
            log.info("job %s: dropped %s from the report queue (fault)", job.id, event["Event"])
            return
        payload = json.dumps(event, separators=(",", ":")).encode()
        if job.encrypted:
            if job.key is None:
                log.warning("job %s: no key left to encrypt %s; not posted", job.id, event["Event"])
                return
            iv, cipher = aes_encrypt(job.key, payload)
            envelope = {
                "Label": "Encrypted",
                "JobId": job.id,
                "IV": base64.b64encode(iv).decode(),
                "Content": base64.b64encode(cipher).decode(),
            }
            payload = json.dumps(envelope, separators=(",", ":")).encode()
        message = base64.b64encode(payload).decode()
        try:
            if self._queue_service is None:
                self._queue_service = self.tenant.storage.queue_service()
            self._queue_service.get_queue_client(job.queue_name).send_message(message)
        except Exception as error:  # noqa: BLE001 - any storage failure only loses the queue copy
            log.error(
                "job %s: posting %s to queue %s failed: %s",
                job.id, event["Event"], job.queue_name, redact_sas(str(error)),
            )
