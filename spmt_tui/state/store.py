"""Session database: one SQLite file per migration session.

:class:`SessionStore` is the engine's read-write handle and :class:`ReadOnlyStore` the UI's
read-only one; both share the queries of :class:`_Queries`. The database runs in WAL mode, so
the UI can page through items while the engine writes. Every state change is committed before
the method returns.

Files: the session folder is created with mode 0700 and the database with mode 0600 (SQLite
gives its ``-wal`` and ``-shm`` files the database's mode). Container SAS URIs and the
container key are secrets: they are stored only as ciphertext made by the caller's
:class:`SecretBox`, or not at all when no box is given.

A session whose status is ``running`` but whose process is gone (same host and the pid no
longer exists, or no heartbeat for :data:`HEARTBEAT_STALE_SECONDS`) reads as ``interrupted``.
Write methods refresh the heartbeat at most every :data:`HEARTBEAT_INTERVAL_SECONDS`;
long pauses without writes should call :meth:`SessionStore.heartbeat`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from spmt_tui.state.schema import ITEM_STATUSES, SCHEMA, SCHEMA_VERSION, SESSION_STATUSES

logger = logging.getLogger("spmt.state")

HEARTBEAT_INTERVAL_SECONDS = 5.0
HEARTBEAT_STALE_SECONDS = 600.0
DEFAULT_PAGE_SIZE = 200
MAX_INT_ID = 2**31 - 1  # ListItem/@IntId is an xs:int

_RULE_STATUS = {"pass": "scanned", "skip": "skipped", "fail": "failed"}
_ATTEMPT_COLUMNS = {"read": "read_attempts", "upload": "upload_attempts", "submit": "submit_attempts"}
_SECRET_FIELDS_NOTE = "<hidden>"


class StoreError(Exception):
    """The session database cannot be used as requested."""


class SecretBox(Protocol):
    """Encrypts and decrypts secrets; the key lives outside the database (for example a keyring)."""

    def encrypt(self, plaintext: bytes) -> bytes: ...

    def decrypt(self, ciphertext: bytes) -> bytes: ...


@dataclass(frozen=True)
class AssignedIds:
    """Ids given to one object in a target list."""

    object_id: str
    item_id: str
    int_id: int


@dataclass(frozen=True)
class PackageSecrets:
    """SAS URIs and key of a package's containers; ``repr`` hides every value."""

    data_container_uri: str
    metadata_container_uri: str
    encryption_key: bytes
    queue_uri: str | None = None

    def __repr__(self) -> str:
        return f"PackageSecrets({_SECRET_FIELDS_NOTE})"


@dataclass(frozen=True)
class NewItem:
    """One scanned item to record."""

    path: str
    kind: str  # "file" or "folder"
    size: int
    created: float | None
    modified: float | None
    hidden: bool
    status: str
    category: str | None = None
    code: str | None = None
    message: str | None = None
    new_name: str | None = None
    destination: str | None = None


@dataclass(frozen=True)
class ItemRow:
    """One row of the items table."""

    id: int
    task_id: int
    round: int
    path: str
    kind: str
    size: int
    created: float | None
    modified: float | None
    hidden: bool
    status: str
    category: str | None
    code: str | None
    message: str | None
    new_name: str | None
    destination: str | None
    object_guid: str | None
    item_guid: str | None
    int_id: int | None
    package_number: int | None
    job_id: str | None
    read_attempts: int
    upload_attempts: int
    submit_attempts: int
    scanned_at: float
    updated_at: float

    @property
    def name(self) -> str:
        """Source name of the item (last path segment)."""
        return self.path.rpartition("/")[2]

    @property
    def extension(self) -> str:
        """Extension of the source name without the dot, "" for folders and names without one."""
        if self.kind == "folder":
            return ""
        stem, dot, extension = self.name.rpartition(".")
        return extension if dot and stem else ""


_ITEM_COLUMNS = ", ".join(field.name for field in fields(ItemRow))


@dataclass(frozen=True)
class ItemPage:
    """One page of items; pass ``next_after`` as ``after_id`` to get the next page."""

    rows: list[ItemRow]
    next_after: int | None


def _row_to_item(row: Sequence[Any]) -> ItemRow:
    values = list(row)
    values[8] = bool(values[8])
    return ItemRow(*values)


def strip_sas(uri: str) -> str:
    """Return ``uri`` without its query string (the SAS signature) and fragment."""
    parts = urlsplit(uri)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def pid_alive(pid: int) -> bool:
    """Return whether process ``pid`` of this machine still exists."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _like_pattern(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


class _Queries:
    """Read queries shared by the read-write and the read-only store."""

    _connection: sqlite3.Connection
    _lock: threading.RLock

    # -- session and tasks --------------------------------------------------------------------

    def session_info(self) -> dict[str, Any]:
        """Return the session row as a dict; ``settings`` is parsed JSON.

        ``status`` is ``interrupted`` when the stored status is ``running`` but the process is
        gone; ``stored_status`` keeps the stored value.
        Raises StoreError when the session was never started.
        """
        with self._lock:
            row = self._connection.execute(
                "SELECT id, created, updated, settings, profile, status, message, pid, hostname, "
                "heartbeat, finished FROM session LIMIT 1"
            ).fetchone()
        if row is None:
            raise StoreError("the session database has no session yet; start_session was never called")
        keys = ("id", "created", "updated", "settings", "profile", "status", "message", "pid",
                "hostname", "heartbeat", "finished")
        info = dict(zip(keys, row))
        info["settings"] = json.loads(info["settings"])
        info["stored_status"] = info["status"]
        if info["status"] == "running" and self._process_gone(info):
            info["status"] = "interrupted"
        return info

    @staticmethod
    def _process_gone(info: Mapping[str, Any]) -> bool:
        heartbeat = info.get("heartbeat") or 0.0
        if time.time() - heartbeat > HEARTBEAT_STALE_SECONDS:
            return True
        pid = info.get("pid")
        if pid and info.get("hostname") == socket.gethostname():
            return not pid_alive(int(pid))
        return False

    def tasks(self) -> list[dict[str, Any]]:
        """Return all tasks in session order."""
        with self._lock:
            cursor = self._connection.execute(
                "SELECT id, position, task_key, source, site_url, library, folder, status, web_id, "
                "list_id, destination_url, started, finished FROM tasks ORDER BY position"
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def task_id(self, position: int) -> int:
        """Return the database id of the task at ``position`` (0-based session order)."""
        with self._lock:
            row = self._connection.execute(
                "SELECT id FROM tasks WHERE position = ?", (position,)
            ).fetchone()
        if row is None:
            raise StoreError(f"task number {position} not found in the session")
        return int(row[0])

    def rounds(self) -> list[dict[str, Any]]:
        """Return the rounds begun so far, oldest first."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT round, started, finished FROM rounds ORDER BY round"
            ).fetchall()
        return [{"round": row[0], "started": row[1], "finished": row[2]} for row in rows]

    def current_round(self) -> int | None:
        """Return the newest round begun, or None before the first."""
        with self._lock:
            row = self._connection.execute("SELECT max(round) FROM rounds").fetchone()
        return row[0]

    # -- counts -------------------------------------------------------------------------------

    def count_by_status(
        self, task_id: int | None = None, round_number: int | None = None
    ) -> dict[str, dict[str, int]]:
        """Return ``{status: {"files", "folders", "bytes"}}`` from the trigger-kept counters."""
        clauses, parameters = self._scope(task_id, round_number)
        with self._lock:
            rows = self._connection.execute(
                f"SELECT status, kind, sum(count), sum(bytes) FROM item_counts {clauses} "
                "GROUP BY status, kind", parameters
            ).fetchall()
        result: dict[str, dict[str, int]] = {}
        for status, kind, count, size in rows:
            entry = result.setdefault(status, {"files": 0, "folders": 0, "bytes": 0})
            entry["files" if kind == "file" else "folders"] += count
            entry["bytes"] += size
        return result

    def counts(self, round_number: int | None = None, task_id: int | None = None) -> dict[str, int]:
        """Return item counts for a round (all rounds added up when None).

        Keys: ``scanned`` (all items scanned), one key per item status except ``scanned``,
        ``waiting`` (passed the scan, not packaged yet), ``to_migrate`` (items put into a
        package), ``files``, ``folders``, ``bytes`` (all files) and ``migrated_bytes``.
        """
        by_status = self.count_by_status(task_id, round_number)
        result = {status: 0 for status in ITEM_STATUSES if status != "scanned"}
        result.update(scanned=0, waiting=0, files=0, folders=0, bytes=0, migrated_bytes=0)
        for status, entry in by_status.items():
            total = entry["files"] + entry["folders"]
            result["scanned"] += total
            result["files"] += entry["files"]
            result["folders"] += entry["folders"]
            result["bytes"] += entry["bytes"]
            if status == "scanned":
                result["waiting"] += total
            else:
                result[status] = result.get(status, 0) + total
            if status == "migrated":
                result["migrated_bytes"] += entry["bytes"]
        clauses, parameters = self._scope(task_id, round_number)
        with self._lock:
            row = self._connection.execute(
                f"SELECT count(*) FROM items {clauses} "
                f"{'AND' if clauses else 'WHERE'} package_number IS NOT NULL", parameters
            ).fetchone()
        result["to_migrate"] = int(row[0])
        return result

    def count_failed_in_category(self, category: str, round_number: int | None = None,
                                 task_id: int | None = None) -> int:
        """Return how many failed items of a round (all rounds when None) have ``category``."""
        clauses, parameters = self._scope(task_id, round_number)
        with self._lock:
            row = self._connection.execute(
                f"SELECT count(*) FROM items {clauses} {'AND' if clauses else 'WHERE'} "
                "status = 'failed' AND category = ?", [*parameters, category]
            ).fetchone()
        return int(row[0])

    @staticmethod
    def _scope(task_id: int | None, round_number: int | None) -> tuple[str, list[Any]]:
        clauses = []
        parameters: list[Any] = []
        if task_id is not None:
            clauses.append("task_id = ?")
            parameters.append(task_id)
        if round_number is not None:
            clauses.append("round = ?")
            parameters.append(round_number)
        return ("WHERE " + " AND ".join(clauses)) if clauses else "", parameters

    # -- items --------------------------------------------------------------------------------

    def page_items(
        self,
        task_id: int | None = None,
        round_number: int | None = None,
        *,
        status: str | Sequence[str] | None = None,
        search: str | None = None,
        after_id: int = 0,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> ItemPage:
        """Return up to ``limit`` items with an id above ``after_id``, in id (scan) order.

        ``status`` filters by one status or several; ``search`` keeps paths that contain the
        text, ignoring ASCII letter case. Paging is by key, so each page costs the same however
        deep it is. NOTE: a search that matches few items scans the table in id order until the
        page is full (about a second per million rows scanned on the project machine).
        """
        clauses, parameters = self._scope(task_id, round_number)
        conditions = [clauses[len("WHERE "):]] if clauses else []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
            parameters.extend(statuses)
        if search:
            conditions.append("path LIKE ? ESCAPE '\\'")
            parameters.append(_like_pattern(search))
        conditions.append("id > ?")
        parameters.append(after_id)
        # Without a status filter, walk the table in id order from after_id. Otherwise SQLite
        # picks items_by_status for task_id and round, then collects and sorts every row of the
        # round for each page. Reading a round that way is quadratic in its size: 80 ms per
        # 1,000-row page of a 100,000-item round, against 9 ms in id order.
        table = "items" if status is not None else "items NOT INDEXED"
        sql = (f"SELECT {_ITEM_COLUMNS} FROM {table} WHERE {' AND '.join(conditions)} "
               "ORDER BY id LIMIT ?")
        parameters.append(limit)
        with self._lock:
            rows = [_row_to_item(row) for row in self._connection.execute(sql, parameters)]
        next_after = rows[-1].id if len(rows) == limit else None
        return ItemPage(rows, next_after)

    def count_items(
        self,
        task_id: int | None = None,
        round_number: int | None = None,
        *,
        status: str | Sequence[str] | None = None,
        search: str | None = None,
    ) -> int:
        """Return the number of items matching the same filters as :meth:`page_items`."""
        if not search:
            by_status = self.count_by_status(task_id, round_number)
            if status is None:
                wanted = set(by_status)
            elif isinstance(status, str):
                wanted = {status}
            else:
                wanted = set(status)
            return sum(entry["files"] + entry["folders"] for key, entry in by_status.items()
                       if key in wanted)
        clauses, parameters = self._scope(task_id, round_number)
        conditions = [clauses[len("WHERE "):]] if clauses else []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(status)
            conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
            parameters.extend(statuses)
        conditions.append("path LIKE ? ESCAPE '\\'")
        parameters.append(_like_pattern(search))
        with self._lock:
            row = self._connection.execute(
                f"SELECT count(*) FROM items WHERE {' AND '.join(conditions)}", parameters
            ).fetchone()
        return int(row[0])

    def iter_items(
        self,
        task_id: int | None = None,
        round_number: int | None = None,
        *,
        status: str | Sequence[str] | None = None,
        page_size: int = 1000,
    ) -> Iterator[ItemRow]:
        """Yield matching items in id order, one page at a time, so memory stays flat."""
        after = 0
        while True:
            page = self.page_items(task_id, round_number, status=status, after_id=after, limit=page_size)
            yield from page.rows
            if page.next_after is None:
                return
            after = page.next_after

    def get_item(self, row_id: int) -> ItemRow | None:
        """Return one item by id."""
        with self._lock:
            row = self._connection.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items WHERE id = ?", (row_id,)
            ).fetchone()
        return _row_to_item(row) if row else None

    def item_rounds(self, task_id: int) -> list[int]:
        """Return the rounds that have items for a task."""
        with self._lock:
            rows = self._connection.execute(
                "SELECT DISTINCT round FROM item_counts WHERE task_id = ? AND count > 0 ORDER BY round",
                (task_id,),
            ).fetchall()
        return [row[0] for row in rows]

    def items_not_in_source(self, task_id: int, round_number: int, *, after_path: str = "",
                            limit: int = 1000) -> list[ItemRow]:
        """Items an earlier round left in the destination that round ``round_number`` did not scan.

        Each row is the item's latest record before that round, when it ended migrated or
        skipped as unchanged or older than the destination. Deletions and moves at the source
        are never propagated, so the reports list these rows as copies kept in the destination.
        Rows come in path order, ``limit`` at a time: pass the last path as ``after_path``.
        """
        with self._lock:
            rows = self._connection.execute(
                f"SELECT {_ITEM_COLUMNS} FROM items AS prev WHERE prev.task_id = ? AND prev.round < ? "
                "AND prev.path > ? "
                "AND (prev.status = 'migrated' OR prev.code IN ('UNCHANGED', 'DESTINATION_NEWER')) "
                "AND prev.round = (SELECT max(p2.round) FROM items AS p2 WHERE p2.task_id = prev.task_id "
                "                  AND p2.path = prev.path AND p2.round < ?) "
                "AND NOT EXISTS (SELECT 1 FROM items AS cur WHERE cur.task_id = prev.task_id "
                "                AND cur.round = ? AND cur.path = prev.path) "
                "ORDER BY prev.path LIMIT ?",
                (task_id, round_number, after_path, round_number, round_number, limit),
            ).fetchall()
        return [_row_to_item(row) for row in rows]

    def item_breakdown(self, task_id: int, round_number: int) -> list[dict[str, Any]]:
        """Return item counts and bytes of one task and round, grouped for reports.

        Each row has ``kind``, ``status``, ``category``, ``code`` ("" when unset),
        ``packaged``, ``submitted`` (has a job id), ``reuploaded``, ``resubmitted``, ``read``
        (booleans), ``count`` and ``bytes``.
        """
        with self._lock:
            rows = self._connection.execute(
                "SELECT kind, status, COALESCE(category, ''), COALESCE(code, ''), "
                "package_number IS NOT NULL, job_id IS NOT NULL, upload_attempts > 1, "
                "submit_attempts > 1, read_attempts > 0, count(*), COALESCE(sum(size), 0) "
                "FROM items WHERE task_id = ? AND round = ? GROUP BY 1, 2, 3, 4, 5, 6, 7, 8, 9",
                (task_id, round_number),
            ).fetchall()
        keys = ("kind", "status", "category", "code", "packaged", "submitted", "reuploaded",
                "resubmitted", "read", "count", "bytes")
        result = []
        for row in rows:
            entry = dict(zip(keys, row))
            for flag in ("packaged", "submitted", "reuploaded", "resubmitted", "read"):
                entry[flag] = bool(entry[flag])
            result.append(entry)
        return result

    # -- packages and jobs --------------------------------------------------------------------

    def packages(self, task_id: int | None = None) -> list[dict[str, Any]]:
        """Return package rows without the secrets column."""
        clause = "WHERE task_id = ?" if task_id is not None else ""
        with self._lock:
            cursor = self._connection.execute(
                "SELECT id, task_id, number, round, status, data_container_url, "
                f"metadata_container_url, job_id, created, updated FROM packages {clause} "
                "ORDER BY task_id, number", (task_id,) if task_id is not None else ()
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def jobs(self) -> list[dict[str, Any]]:
        """Return all job rows."""
        with self._lock:
            cursor = self._connection.execute(
                "SELECT job_id, package_id, status, next_token, last_event, last_event_time, "
                "created, updated FROM jobs ORDER BY created"
            )
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

    def counters(self, scope: str | None = None) -> dict[tuple[str, str], int]:
        """Return counters as ``{(scope, name): value}``."""
        with self._lock:
            if scope is None:
                rows = self._connection.execute("SELECT scope, name, value FROM counters").fetchall()
            else:
                rows = self._connection.execute(
                    "SELECT scope, name, value FROM counters WHERE scope = ?", (scope,)
                ).fetchall()
        return {(row[0], row[1]): row[2] for row in rows}


StoreReader = _Queries
"""Read interface shared by :class:`SessionStore` and :class:`ReadOnlyStore`."""


class PreviousResults(Mapping[str, dict[str, Any]]):
    """Latest record of each path in earlier rounds of a task, read from the database on demand.

    The record of the newest earlier round in which the path was migrated wins; a path that was
    never migrated gives its newest record. Nothing is loaded up front.
    """

    def __init__(self, store: _Queries, task_id: int, round_number: int) -> None:
        self._store = store
        self._task_id = task_id
        self._round = round_number

    def __getitem__(self, path: str) -> dict[str, Any]:
        with self._store._lock:
            row = self._store._connection.execute(
                "SELECT status, size, modified, created, round, code, object_guid, item_guid, "
                "int_id, destination FROM items WHERE task_id = ? AND path = ? AND round < ? "
                "ORDER BY (status = 'migrated') DESC, round DESC LIMIT 1",
                (self._task_id, path, self._round),
            ).fetchone()
        if row is None:
            raise KeyError(path)
        keys = ("status", "size", "modified_ts", "created_ts", "round", "code", "object_guid",
                "item_guid", "int_id", "destination")
        return dict(zip(keys, row))

    def __iter__(self) -> Iterator[str]:
        with self._store._lock:
            rows = self._store._connection.execute(
                "SELECT DISTINCT path FROM items WHERE task_id = ? AND round < ?",
                (self._task_id, self._round),
            )
            for (path,) in rows:
                yield path

    def __len__(self) -> int:
        with self._store._lock:
            row = self._store._connection.execute(
                "SELECT count(DISTINCT path) FROM items WHERE task_id = ? AND round < ?",
                (self._task_id, self._round),
            ).fetchone()
        return int(row[0])


def _prepare_folder(path: Path) -> None:
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o700)
    if not path.exists():
        descriptor = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(descriptor)
    os.chmod(path, 0o600)


class SessionStore(_Queries):
    """Read-write handle on one session database; open it with :meth:`open`."""

    def __init__(self, path: Path, connection: sqlite3.Connection, secret_box: SecretBox | None) -> None:
        self.path = path
        self._connection = connection
        self._lock = threading.RLock()
        self._secret_box = secret_box
        self._last_heartbeat = 0.0
        self._fresh_rounds: set[tuple[int, int]] = set()

    @classmethod
    def open(cls, path: str | os.PathLike[str], secret_box: SecretBox | None = None) -> SessionStore:
        """Open or create the database at ``path`` (folder mode 0700, file mode 0600)."""
        database = Path(path)
        _prepare_folder(database)
        connection = sqlite3.connect(database, isolation_level=None, check_same_thread=False,
                                     timeout=30.0)
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA foreign_keys=ON")
            connection.executescript(SCHEMA)
            version = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None:
                connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                                   (str(SCHEMA_VERSION),))
            elif int(version[0]) != SCHEMA_VERSION:
                raise StoreError(
                    f"session database {database} has schema version {version[0]}, this program "
                    f"reads version {SCHEMA_VERSION}; use a matching version of spmt-tui"
                )
        except Exception:
            connection.close()
            raise
        for suffix in ("-wal", "-shm"):
            sidecar = Path(f"{database}{suffix}")
            if sidecar.exists():
                os.chmod(sidecar, 0o600)
        logger.debug("session database opened: %s", database)
        return cls(database, connection, secret_box)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def mirror_copy_id(self) -> str:
        """Return the random id of this copy of the session, created on first use.

        The tenant's mirror records which copy wrote it last, so a copy on another machine (or an
        older copy here) can tell that the session has moved on without it.
        """
        with self._transaction() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'mirror_copy'").fetchone()
            if row is not None:
                return str(row[0])
            value = uuid.uuid4().hex
            connection.execute("INSERT INTO meta (key, value) VALUES ('mirror_copy', ?)", (value,))
            return value

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection, self._lock)

    # -- session ------------------------------------------------------------------------------

    def start_session(
        self,
        session_id: str,
        settings: Mapping[str, Any] | str,
        tasks: Sequence[Mapping[str, Any]] = (),
        profile: str = "",
    ) -> None:
        """Create the session (or take over an existing one) and mark it running by this process.

        ``tasks`` are dicts with ``source``, ``site_url``, ``library`` and ``folder``. They are
        inserted the first time; on a later start they must match the stored ones.
        """
        settings_json = settings if isinstance(settings, str) else json.dumps(settings, sort_keys=True)
        now = time.time()
        with self._transaction() as connection:
            existing = connection.execute("SELECT id FROM session").fetchone()
            if existing is not None and existing[0] != session_id:
                raise StoreError(
                    f"database {self.path} belongs to session {existing[0]!r}, not {session_id!r}"
                )
            if existing is None:
                connection.execute(
                    "INSERT INTO session (id, created, updated, settings, profile, status, pid, "
                    "hostname, heartbeat) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                    (session_id, now, now, settings_json, profile, os.getpid(), socket.gethostname(), now),
                )
            else:
                connection.execute(
                    "UPDATE session SET updated = ?, settings = ?, status = 'running', message = '', "
                    "pid = ?, hostname = ?, heartbeat = ?, finished = NULL",
                    (now, settings_json, os.getpid(), socket.gethostname(), now),
                )
            stored = connection.execute("SELECT source, site_url, library, folder FROM tasks "
                                        "ORDER BY position").fetchall()
            wanted = [(task["source"], task["site_url"], task.get("library", "Documents"),
                       task.get("folder", "") or "") for task in tasks]
            if not stored:
                for position, values in enumerate(wanted):
                    connection.execute(
                        "INSERT INTO tasks (position, task_key, source, site_url, library, folder) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (position, str(uuid.uuid4()), *values),
                    )
            elif wanted and [tuple(row) for row in stored] != wanted:
                raise StoreError(
                    f"session {session_id} was started with other tasks; resume it without "
                    "changing sources or destinations"
                )
        self._last_heartbeat = now
        logger.info("session %s running (pid %d)", session_id, os.getpid())

    def set_status(self, status: str, message: str = "") -> None:
        """Set the session status, for example ``paused``."""
        if status not in SESSION_STATUSES:
            raise StoreError(f"invalid session status {status!r}: use one of {', '.join(SESSION_STATUSES)}")
        now = time.time()
        finished = now if status not in ("running", "paused") else None
        with self._transaction() as connection:
            connection.execute(
                "UPDATE session SET status = ?, message = ?, updated = ?, heartbeat = ?, finished = ?",
                (status, message, now, now, finished),
            )

    def finish_session(self, status: str, message: str = "") -> None:
        """Record the final status of this run of the session."""
        self.set_status(status, message)
        logger.info("session finished: %s %s", status, message)

    def heartbeat(self) -> None:
        """Record that the running process is alive."""
        now = time.time()
        with self._transaction() as connection:
            connection.execute("UPDATE session SET heartbeat = ? WHERE pid = ?", (now, os.getpid()))
        self._last_heartbeat = now

    def _maybe_heartbeat(self, connection: sqlite3.Connection) -> None:
        now = time.time()
        if now - self._last_heartbeat >= HEARTBEAT_INTERVAL_SECONDS:
            connection.execute("UPDATE session SET heartbeat = ? WHERE pid = ?", (now, os.getpid()))
            self._last_heartbeat = now

    # -- rounds and tasks ---------------------------------------------------------------------

    def next_round(self) -> int:
        """Return the number the next round gets: 1 for a new session, else the newest + 1."""
        current = self.current_round()
        return 1 if current is None else current + 1

    def begin_round(self, round_number: int) -> None:
        """Record the start of a round (again, when a run resumes it)."""
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO rounds (round, started) VALUES (?, ?) "
                "ON CONFLICT (round) DO UPDATE SET finished = NULL", (round_number, time.time()),
            )

    def finish_round(self, round_number: int) -> None:
        """Record the end of a round."""
        with self._transaction() as connection:
            connection.execute("UPDATE rounds SET finished = ? WHERE round = ?", (time.time(), round_number))

    def set_task_target(
        self, task_id: int, *, web_id: str, list_id: str, destination_url: str | None = None
    ) -> None:
        """Store the resolved target ids of a task, and the target folder's absolute URL."""
        with self._transaction() as connection:
            connection.execute(
                "UPDATE tasks SET web_id = ?, list_id = ?, "
                "destination_url = COALESCE(?, destination_url) WHERE id = ?",
                (web_id, list_id, destination_url, task_id),
            )

    def set_task_status(self, task_id: int, status: str) -> None:
        """Set a task's status (free text, for example ``running`` or ``completed``)."""
        now = time.time()
        with self._transaction() as connection:
            connection.execute(
                "UPDATE tasks SET status = ?, started = COALESCE(started, ?), "
                "finished = CASE WHEN ? IN ('completed', 'completed_with_failures', 'failed', 'cancelled') THEN ? ELSE NULL END "
                "WHERE id = ?", (status, now, status, now, task_id),
            )

    # -- items --------------------------------------------------------------------------------

    def record_scanned(
        self, task_id: int, round_number: int, records: Sequence[tuple[Any, Any, str | None]]
    ) -> list[int]:
        """Record scan results; returns the row id of each record, in order.

        ``records`` are ``(source item, rule result, destination path or None)`` tuples, as the
        scanner produces them. A path already recorded in this round is updated in place, so a
        folder reported again as unreadable keeps its row.
        """
        now = time.time()
        values = []
        for item, result, destination in records:
            outcome = getattr(result.outcome, "value", result.outcome)
            # Tuples in the column order of add_items, because building a NewItem per row took
            # about 6 % of a 100,000-item scan-only session (py-spy).
            values.append((
                task_id, round_number, item.relative_path, "folder" if item.is_folder else "file",
                item.size, item.created_ts, item.modified_ts, int(bool(item.hidden)),
                _RULE_STATUS[outcome], result.category, result.code, result.message or None,
                result.new_name, destination, now, now,
            ))
        return self._add_values(task_id, round_number, values)

    def add_items(self, task_id: int, round_number: int, items: Sequence[NewItem]) -> list[int]:
        """Insert or update items of one round in one transaction; returns their row ids."""
        now = time.time()
        values = [
            (task_id, round_number, item.path, item.kind, item.size, item.created, item.modified,
             int(item.hidden), item.status, item.category, item.code, item.message, item.new_name,
             item.destination, now, now)
            for item in items
        ]
        return self._add_values(task_id, round_number, values)

    def _add_values(self, task_id: int, round_number: int, values: list[tuple[Any, ...]]) -> list[int]:
        """Insert or update rows in ``items`` column order (see add_items); returns their ids."""
        if not values:
            return []
        key = (task_id, round_number)
        with self._transaction() as connection:
            self._maybe_heartbeat(connection)
            if key not in self._fresh_rounds:
                used = connection.execute(
                    "SELECT 1 FROM items WHERE task_id = ? AND round = ? LIMIT 1", key
                ).fetchone()
                if used is None:
                    self._fresh_rounds.add(key)
            if key in self._fresh_rounds and len({row[2] for row in values}) == len(values):
                ids = self._insert_new(connection, values)
                if ids is not None:
                    _count_inserted(connection, task_id, round_number, values)
                    return ids
            return [self._upsert(connection, row) for row in values]

    def _insert_new(self, connection: sqlite3.Connection, values: list[tuple[Any, ...]]) -> list[int] | None:
        """Insert rows with consecutive explicit ids; returns None if a path already exists."""
        start = connection.execute("SELECT COALESCE(max(id), 0) + 1 FROM items").fetchone()[0]
        ids = list(range(start, start + len(values)))
        connection.execute("SAVEPOINT new_items")
        try:
            connection.executemany(
                "INSERT INTO items (id, task_id, round, path, kind, size, created, modified, hidden, "
                "status, category, code, message, new_name, destination, scanned_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(row_id, *row) for row_id, row in zip(ids, values)],
            )
        except sqlite3.IntegrityError:
            connection.execute("ROLLBACK TO new_items")
            connection.execute("RELEASE new_items")
            return None
        connection.execute("RELEASE new_items")
        return ids

    @staticmethod
    def _upsert(connection: sqlite3.Connection, row: tuple[Any, ...]) -> int:
        """Insert one row, or update the row of the same (task, round, path); returns its id."""
        task_id, round_number, path = row[0], row[1], row[2]
        existing = connection.execute(
            "SELECT id FROM items WHERE task_id = ? AND round = ? AND path = ?", (task_id, round_number, path)
        ).fetchone()
        if existing is not None:
            # The update trigger moves the item between the status counters.
            connection.execute(
                "UPDATE items SET kind = ?, size = ?, created = ?, modified = ?, hidden = ?, status = ?, "
                "category = ?, code = ?, message = ?, new_name = ?, destination = ?, updated_at = ? "
                "WHERE id = ?", (*row[3:14], row[15], existing[0]),
            )
            return int(existing[0])
        cursor = connection.execute(
            "INSERT INTO items (task_id, round, path, kind, size, created, modified, hidden, status, "
            "category, code, message, new_name, destination, scanned_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row,
        )
        _add_count(connection, task_id, round_number, row[8], row[3], 1, row[4])
        return int(cursor.lastrowid)  # type: ignore[arg-type]

    def previous_results(self, task_id: int, round_number: int) -> PreviousResults:
        """Return a lazy mapping ``path -> latest record`` of the task's earlier rounds."""
        return PreviousResults(self, task_id, round_number)

    def mark(
        self,
        row_id: int,
        status: str,
        *,
        code: str | None = None,
        message: str | None = None,
        category: str | None = None,
        job_id: str | None = None,
    ) -> None:
        """Set an item's status; code, message, category and job id change only when given."""
        self._check_item_status(status)
        with self._transaction() as connection:
            self._maybe_heartbeat(connection)
            connection.execute(
                "UPDATE items SET status = ?, code = COALESCE(?, code), message = COALESCE(?, message), "
                "category = COALESCE(?, category), job_id = COALESCE(?, job_id), updated_at = ? "
                "WHERE id = ?", (status, code, message, category, job_id, time.time(), row_id),
            )

    def update_source_state(self, row_id: int, size: int, modified: float) -> None:
        """Record the size and modified time a file had when it was read for upload."""
        with self._transaction() as connection:
            connection.execute("UPDATE items SET size = ?, modified = ?, updated_at = ? WHERE id = ?",
                               (size, modified, time.time(), row_id))

    def mark_many(self, row_ids: Iterable[int], status: str, *, job_id: str | None = None) -> None:
        """Set the status of several items in one transaction."""
        self._check_item_status(status)
        now = time.time()
        with self._transaction() as connection:
            self._maybe_heartbeat(connection)
            connection.executemany(
                "UPDATE items SET status = ?, job_id = COALESCE(?, job_id), updated_at = ? WHERE id = ?",
                [(status, job_id, now, row_id) for row_id in row_ids],
            )

    def mark_if_not(self, row_id: int, status: str, *, job_id: str | None = None) -> bool:
        """Set an item's status unless it already has it; returns True if it changed."""
        self._check_item_status(status)
        with self._transaction() as connection:
            cursor = connection.execute(
                "UPDATE items SET status = ?, job_id = COALESCE(?, job_id), updated_at = ? "
                "WHERE id = ? AND status != ?", (status, job_id, time.time(), row_id, status),
            )
            return cursor.rowcount > 0

    def add_attempt(self, row_id: int, stage: str) -> None:
        """Count one more read, upload or submit attempt of an item."""
        column = _ATTEMPT_COLUMNS.get(stage)
        if column is None:
            raise StoreError(f"invalid attempt stage {stage!r}: use read, upload or submit")
        with self._transaction() as connection:
            connection.execute(f"UPDATE items SET {column} = {column} + 1 WHERE id = ?", (row_id,))

    @staticmethod
    def _check_item_status(status: str) -> None:
        if status not in ITEM_STATUSES:
            raise StoreError(f"invalid item status {status!r}: use one of {', '.join(ITEM_STATUSES)}")

    # -- ids ----------------------------------------------------------------------------------

    def allocate_int_ids(self, list_id: str, count: int = 1, floor: int = 1, site_url: str = "") -> int:
        """Reserve ``count`` consecutive IntIds in a target list; returns the first.

        Numbers start at ``floor`` at the earliest (pass the target list's highest item id + 1)
        and are never handed out twice by this database.
        """
        if count < 1:
            raise StoreError(f"invalid IntId count {count}: must be at least 1")
        key = list_id.lower()
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT next_value FROM int_id_allocator WHERE list_id = ?", (key,)
            ).fetchone()
            first = max(floor, row[0] if row else 1)
            if first + count - 1 > MAX_INT_ID:
                raise StoreError(f"IntId range exhausted for list {list_id}: {first + count - 1} > {MAX_INT_ID}")
            connection.execute(
                "INSERT INTO int_id_allocator (list_id, site_url, next_value) VALUES (?, ?, ?) "
                "ON CONFLICT (list_id) DO UPDATE SET next_value = excluded.next_value",
                (key, site_url, first + count),
            )
        return first

    def assign_ids(
        self, row_id: int | None, list_id: str, object_id: str, max_item_id: int = 0, site_url: str = ""
    ) -> AssignedIds:
        """Give an object its list-item GUID and IntId, reusing earlier ones for the same object.

        The list-item GUID is derived from the object GUID (name-based UUID), and a new IntId
        comes from :meth:`allocate_int_ids` above ``max_item_id``. When ``row_id`` is given,
        the item row records the ids.
        """
        list_key = list_id.lower()
        object_key = object_id.lower()
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT item_guid, int_id FROM object_ids WHERE list_id = ? AND object_guid = ?",
                (list_key, object_key),
            ).fetchone()
        if row is not None:
            assigned = AssignedIds(object_key, row[0], int(row[1]))
        else:
            int_id = self.allocate_int_ids(list_key, 1, floor=max_item_id + 1, site_url=site_url)
            item_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{list_key}|{object_key}|item"))
            with self._transaction() as connection:
                connection.execute(
                    "INSERT INTO object_ids (list_id, object_guid, item_guid, int_id) VALUES (?, ?, ?, ?)",
                    (list_key, object_key, item_id, int_id),
                )
            assigned = AssignedIds(object_key, item_id, int_id)
        if row_id is not None:
            with self._transaction() as connection:
                connection.execute(
                    "UPDATE items SET object_guid = ?, item_guid = ?, int_id = ?, updated_at = ? "
                    "WHERE id = ?", (assigned.object_id, assigned.item_id, assigned.int_id, time.time(), row_id),
                )
        return assigned

    # -- packages and jobs --------------------------------------------------------------------

    def next_package_number(self, task_id: int) -> int:
        """Return the next unused package number of a task (numbers start at 1)."""
        with self._lock:
            row = self._connection.execute(
                "SELECT max(number) FROM (SELECT max(number) AS number FROM packages WHERE task_id = ? "
                "UNION ALL SELECT max(package_number) FROM items WHERE task_id = ?)", (task_id, task_id),
            ).fetchone()
        return (row[0] or 0) + 1

    def assign_package(self, number: int, row_ids: Sequence[int], task_id: int | None = None) -> None:
        """Put items into package ``number``; items still ``scanned`` become ``packaged``."""
        if not row_ids:
            return
        now = time.time()
        with self._transaction() as connection:
            if task_id is None:
                found = connection.execute("SELECT task_id, round FROM items WHERE id = ?",
                                           (row_ids[0],)).fetchone()
                if found is None:
                    raise StoreError(f"item {row_ids[0]} not found; cannot assign package {number}")
                task_id, round_number = found
            else:
                round_number = None
            connection.execute(
                "INSERT INTO packages (task_id, number, round, status, created, updated) "
                "VALUES (?, ?, ?, 'planned', ?, ?) ON CONFLICT (task_id, number) DO NOTHING",
                (task_id, number, round_number, now, now),
            )
            connection.executemany(
                "UPDATE items SET package_number = ?, updated_at = ?, "
                "status = CASE WHEN status = 'scanned' THEN 'packaged' ELSE status END WHERE id = ?",
                [(number, now, row_id) for row_id in row_ids],
            )

    def save_package_containers(self, task_id: int, number: int, secrets: PackageSecrets) -> None:
        """Store a package's container URLs (without SAS) and, with a secret box, the secrets.

        Without a secret box the SAS URIs and the key are not stored at all, so a restart
        cannot follow a job submitted before it.
        """
        ciphertext = None
        if self._secret_box is not None:
            payload = json.dumps({
                "data": secrets.data_container_uri,
                "metadata": secrets.metadata_container_uri,
                "key": secrets.encryption_key.hex(),
                "queue": secrets.queue_uri,
            }).encode()
            ciphertext = self._secret_box.encrypt(payload)
        now = time.time()
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO packages (task_id, number, status, data_container_url, metadata_container_url, "
                "secrets, created, updated) VALUES (?, ?, 'uploading', ?, ?, ?, ?, ?) "
                "ON CONFLICT (task_id, number) DO UPDATE SET status = 'uploading', "
                "data_container_url = excluded.data_container_url, "
                "metadata_container_url = excluded.metadata_container_url, secrets = excluded.secrets, "
                "updated = excluded.updated",
                (task_id, number, strip_sas(secrets.data_container_uri),
                 strip_sas(secrets.metadata_container_uri), ciphertext, now, now),
            )

    def load_package_secrets(self, task_id: int, number: int) -> PackageSecrets | None:
        """Return a package's decrypted secrets, or None when none were stored."""
        with self._lock:
            row = self._connection.execute(
                "SELECT secrets FROM packages WHERE task_id = ? AND number = ?", (task_id, number)
            ).fetchone()
        if row is None or row[0] is None:
            return None
        if self._secret_box is None:
            raise StoreError("package secrets are stored encrypted; open the store with its secret box")
        data = json.loads(self._secret_box.decrypt(bytes(row[0])))
        return PackageSecrets(data["data"], data["metadata"], bytes.fromhex(data["key"]), data.get("queue"))

    def set_package_status(self, task_id: int, number: int, status: str) -> None:
        """Set a package's status (planned, uploading, submitted, completed, failed)."""
        with self._transaction() as connection:
            connection.execute("UPDATE packages SET status = ?, updated = ? WHERE task_id = ? AND number = ?",
                               (status, time.time(), task_id, number))

    def package_submitted(self, number: int, task_id: int, job_id: str, row_ids: Sequence[int]) -> None:
        """Record a submitted job: package, job row and items (which become ``submitted``)."""
        now = time.time()
        with self._transaction() as connection:
            self._maybe_heartbeat(connection)
            connection.execute(
                "INSERT INTO packages (task_id, number, status, job_id, created, updated) "
                "VALUES (?, ?, 'submitted', ?, ?, ?) ON CONFLICT (task_id, number) DO UPDATE SET "
                "status = 'submitted', job_id = excluded.job_id, updated = excluded.updated",
                (task_id, number, job_id, now, now),
            )
            package_id = connection.execute(
                "SELECT id FROM packages WHERE task_id = ? AND number = ?", (task_id, number)
            ).fetchone()[0]
            connection.execute(
                "INSERT INTO jobs (job_id, package_id, status, created, updated) VALUES (?, ?, 'submitted', ?, ?) "
                "ON CONFLICT (job_id) DO UPDATE SET package_id = excluded.package_id, updated = excluded.updated",
                (job_id, package_id, now, now),
            )
            connection.executemany(
                "UPDATE items SET job_id = ?, package_number = ?, submit_attempts = submit_attempts + 1, "
                "updated_at = ?, status = CASE WHEN status IN ('scanned', 'packaged', 'uploaded') "
                "THEN 'submitted' ELSE status END WHERE id = ?",
                [(job_id, number, now, row_id) for row_id in row_ids],
            )

    def job_token(self, job_id: str, token: str) -> None:
        """Store the next progress token of a job, so polling resumes where it stopped."""
        with self._transaction() as connection:
            connection.execute("UPDATE jobs SET next_token = ?, updated = ? WHERE job_id = ?",
                               (token, time.time(), job_id))

    def job_event(self, job_id: str, event: str, event_time: str | None = None,
                  status: str | None = None) -> None:
        """Record one job event: counts it per job and keeps it as the job's last event."""
        now = time.time()
        with self._transaction() as connection:
            connection.execute(
                "UPDATE jobs SET last_event = ?, last_event_time = ?, status = COALESCE(?, status), "
                "updated = ? WHERE job_id = ?", (event, event_time, status, now, job_id),
            )
            connection.execute(
                "INSERT INTO counters (scope, name, value) VALUES (?, ?, 1) "
                "ON CONFLICT (scope, name) DO UPDATE SET value = value + 1", (job_id, event),
            )

    def add_counter(self, scope: str, name: str, delta: int = 1) -> None:
        """Add ``delta`` to a named counter, for example ``("session", "throttled")``."""
        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO counters (scope, name, value) VALUES (?, ?, ?) "
                "ON CONFLICT (scope, name) DO UPDATE SET value = value + excluded.value",
                (scope, name, delta),
            )


def _add_count(connection: sqlite3.Connection, task_id: int, round_number: int, status: str,
               kind: str, count: int, size: int) -> None:
    connection.execute(
        "INSERT INTO item_counts (task_id, round, status, kind, count, bytes) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (task_id, round, status, kind) DO UPDATE SET count = count + excluded.count, "
        "bytes = bytes + excluded.bytes", (task_id, round_number, status, kind, count, size),
    )


def _count_inserted(connection: sqlite3.Connection, task_id: int, round_number: int,
                    values: Sequence[tuple[Any, ...]]) -> None:
    """Add newly inserted rows (add_items column order) to the status counters.

    One statement per (status, kind).
    """
    totals: dict[tuple[str, str], list[int]] = {}
    for row in values:
        entry = totals.setdefault((row[8], row[3]), [0, 0])
        entry[0] += 1
        entry[1] += row[4]
    for (status, kind), (count, size) in totals.items():
        _add_count(connection, task_id, round_number, status, kind, count, size)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) under the store's lock."""

    def __init__(self, connection: sqlite3.Connection, lock: threading.RLock) -> None:
        self._connection = connection
        self._lock = lock
        self._outer = False

    def __enter__(self) -> sqlite3.Connection:
        self._lock.acquire()
        self._outer = not self._connection.in_transaction
        if self._outer:
            self._connection.execute("BEGIN IMMEDIATE")
        return self._connection

    def __exit__(self, exc_type: object, exc: object, traceback: object) -> None:
        try:
            if self._outer:
                if exc_type is None:
                    self._connection.execute("COMMIT")
                else:
                    self._connection.execute("ROLLBACK")
        finally:
            self._lock.release()


class ReadOnlyStore(_Queries):
    """Read-only handle for the UI, opened with ``mode=ro`` and ``query_only``.

    In WAL mode readers do not block the writer, so the UI cannot stall the engine.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection) -> None:
        self.path = path
        self._connection = connection
        self._lock = threading.RLock()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> ReadOnlyStore:
        """Open an existing session database read-only; raises StoreError if it does not exist."""
        database = Path(path)
        if not database.is_file():
            raise StoreError(f"session database not found: {database}")
        uri = f"{database.resolve().as_uri()}?mode=ro"
        connection = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30.0)
        connection.execute("PRAGMA query_only=ON")
        return cls(database, connection)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> ReadOnlyStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
