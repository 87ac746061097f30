"""Persistent state of the sandbox tenant: sites, users, libraries, folders, files, versions.

One SQLite database (``DIR/tenant.db``) plus one content file per stored file version under
``DIR/content``. The REST handlers read it and the import timer job writes it. All methods are
synchronous and short; async callers run them directly (they are fast) or in a thread for bulk work.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from spmt_tui.sandbox.roles import ROLES_SCHEMA

SCHEMA = """
CREATE TABLE IF NOT EXISTS sites (
    id TEXT PRIMARY KEY,              -- site collection id
    url TEXT NOT NULL UNIQUE,         -- server-relative, e.g. /sites/demo
    title TEXT NOT NULL,
    web_id TEXT NOT NULL UNIQUE,
    web_root_folder_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    site_id TEXT NOT NULL,
    id INTEGER NOT NULL,              -- per-site integer user id, as in SharePoint
    login TEXT NOT NULL,              -- claims login, i:0#.f|membership|upn
    email TEXT NOT NULL,
    title TEXT NOT NULL,
    is_site_admin INTEGER NOT NULL DEFAULT 0,
    is_deleted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (site_id, id),
    UNIQUE (site_id, login)
);
CREATE TABLE IF NOT EXISTS lists (
    id TEXT PRIMARY KEY,
    site_id TEXT NOT NULL,
    title TEXT NOT NULL,
    root_folder_id TEXT NOT NULL,
    root_folder_url TEXT NOT NULL,    -- server-relative, e.g. /sites/demo/Shared Documents
    base_template INTEGER NOT NULL DEFAULT 101,
    versioning INTEGER NOT NULL DEFAULT 1,
    created TEXT NOT NULL,
    UNIQUE (site_id, title)
);
CREATE TABLE IF NOT EXISTS folders (
    id TEXT PRIMARY KEY,
    list_id TEXT NOT NULL,
    url TEXT NOT NULL UNIQUE,         -- server-relative
    name TEXT NOT NULL,
    parent_id TEXT,
    item_id TEXT,                     -- list item GUID
    int_id INTEGER,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    author_id INTEGER,
    editor_id INTEGER
);
CREATE INDEX IF NOT EXISTS folders_parent ON folders(parent_id);
CREATE INDEX IF NOT EXISTS folders_list ON folders(list_id);
CREATE INDEX IF NOT EXISTS folders_url_nocase ON folders(lower(url));
CREATE INDEX IF NOT EXISTS folders_id_nocase ON folders(lower(id));
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    list_id TEXT NOT NULL,
    folder_id TEXT NOT NULL,
    url TEXT NOT NULL UNIQUE,         -- server-relative
    name TEXT NOT NULL,
    length INTEGER NOT NULL,
    item_id TEXT,
    int_id INTEGER,
    version TEXT NOT NULL DEFAULT '1.0',
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    author_id INTEGER,
    editor_id INTEGER,
    content TEXT NOT NULL,            -- file name under DIR/content
    job_id TEXT
);
CREATE INDEX IF NOT EXISTS files_folder ON files(folder_id);
CREATE INDEX IF NOT EXISTS files_list ON files(list_id);
-- Look-ups compare URLs and GUIDs ignoring case (lower(x) = lower(?)); without these
-- expression indexes each one scans the table and an import gets slower with every file.
CREATE INDEX IF NOT EXISTS files_url_nocase ON files(lower(url));
CREATE INDEX IF NOT EXISTS files_id_nocase ON files(lower(id));
CREATE TABLE IF NOT EXISTS file_versions (
    file_id TEXT NOT NULL,
    version TEXT NOT NULL,
    length INTEGER NOT NULL,
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    author_id INTEGER,
    editor_id INTEGER,
    content TEXT NOT NULL,
    PRIMARY KEY (file_id, version)
);
CREATE TABLE IF NOT EXISTS item_ids (
    list_id TEXT NOT NULL,
    int_id INTEGER NOT NULL,
    object_id TEXT NOT NULL,          -- the file or folder GUID that owns this IntId
    PRIMARY KEY (list_id, int_id)
);
CREATE INDEX IF NOT EXISTS item_ids_list_nocase ON item_ids(lower(list_id), int_id);
-- Re-importing an object frees its old IntId by object id; unindexed, that scanned the table.
CREATE INDEX IF NOT EXISTS item_ids_object ON item_ids(object_id);
"""

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def now_text() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime(TIME_FORMAT)


def time_text(value: dt.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc).strftime(TIME_FORMAT)


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.strptime(text, TIME_FORMAT).replace(tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Site:
    id: str
    url: str
    title: str
    web_id: str
    web_root_folder_id: str


@dataclass(frozen=True)
class Library:
    id: str
    site_id: str
    title: str
    root_folder_id: str
    root_folder_url: str
    base_template: int
    versioning: bool
    created: str


@dataclass(frozen=True)
class SiteUser:
    site_id: str
    id: int
    login: str
    email: str
    title: str
    is_site_admin: bool


class TenantStore:
    """Thread-safe access to the tenant database and content files."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.content_dir = data_dir / "content"
        self.content_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            data_dir / "tenant.db", check_same_thread=False, isolation_level=None
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._db.executescript(ROLES_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- low level -------------------------------------------------------------------------

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        with self._lock:
            self._db.execute(sql, params)

    def transaction(self) -> "_Transaction":
        """Return a context manager that runs its statements in one transaction."""
        return _Transaction(self)

    # -- sites, users, libraries -----------------------------------------------------------

    def create_site(self, url: str, title: str) -> Site:
        url = "/" + url.strip("/")
        site = Site(str(uuid.uuid4()), url, title, str(uuid.uuid4()), str(uuid.uuid4()))
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sites VALUES (?, ?, ?, ?, ?)",
                (site.id, site.url, site.title, site.web_id, site.web_root_folder_id),
            )
        return site

    def sites(self) -> list[Site]:
        return [Site(**dict(row)) for row in self.query("SELECT * FROM sites ORDER BY url")]

    def site_by_url(self, url: str) -> Site | None:
        rows = self.query("SELECT * FROM sites WHERE lower(url) = lower(?)", ("/" + url.strip("/"),))
        return Site(**dict(rows[0])) if rows else None

    def site_by_web_id(self, web_id: str) -> Site | None:
        rows = self.query("SELECT * FROM sites WHERE lower(web_id) = lower(?)", (web_id,))
        return Site(**dict(rows[0])) if rows else None

    def ensure_user(
        self, site_id: str, login: str, email: str, title: str, *, is_site_admin: bool = False
    ) -> SiteUser:
        with self.transaction() as db:
            row = db.execute(
                "SELECT * FROM users WHERE site_id = ? AND lower(login) = lower(?)", (site_id, login)
            ).fetchone()
            if row is None:
                next_id = db.execute(
                    "SELECT COALESCE(MAX(id), 6) + 1 FROM users WHERE site_id = ?", (site_id,)
                ).fetchone()[0]
                db.execute(
                    "INSERT INTO users (site_id, id, login, email, title, is_site_admin) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (site_id, next_id, login, email, title, int(is_site_admin)),
                )
            elif is_site_admin and not row["is_site_admin"]:
                db.execute(
                    "UPDATE users SET is_site_admin = 1 WHERE site_id = ? AND id = ?",
                    (site_id, row["id"]),
                )
            row = db.execute(
                "SELECT * FROM users WHERE site_id = ? AND lower(login) = lower(?)", (site_id, login)
            ).fetchone()
        return _user(row)

    def user_by_login(self, site_id: str, login: str) -> SiteUser | None:
        rows = self.query(
            "SELECT * FROM users WHERE site_id = ? AND lower(login) = lower(?)", (site_id, login)
        )
        return _user(rows[0]) if rows else None

    def user_by_id(self, site_id: str, user_id: int) -> SiteUser | None:
        rows = self.query("SELECT * FROM users WHERE site_id = ? AND id = ?", (site_id, user_id))
        return _user(rows[0]) if rows else None

    def users(self, site_id: str) -> list[SiteUser]:
        rows = self.query("SELECT * FROM users WHERE site_id = ? ORDER BY id", (site_id,))
        return [_user(row) for row in rows]

    def create_library(
        self, site: Site, title: str, url_name: str | None = None, *, versioning: bool = True
    ) -> Library:
        url_name = url_name or title
        root_url = f"{site.url.rstrip('/')}/{url_name}"
        library = Library(
            id=str(uuid.uuid4()),
            site_id=site.id,
            title=title,
            root_folder_id=str(uuid.uuid4()),
            root_folder_url=root_url,
            base_template=101,
            versioning=versioning,
            created=now_text(),
        )
        with self.transaction() as db:
            db.execute(
                "INSERT INTO lists VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    library.id, library.site_id, library.title, library.root_folder_id,
                    library.root_folder_url, library.base_template, int(library.versioning),
                    library.created,
                ),
            )
            db.execute(
                "INSERT INTO folders (id, list_id, url, name, parent_id, created, modified) "
                "VALUES (?, ?, ?, ?, NULL, ?, ?)",
                (library.root_folder_id, library.id, root_url, url_name, library.created,
                 library.created),
            )
        return library

    def libraries(self, site_id: str) -> list[Library]:
        rows = self.query("SELECT * FROM lists WHERE site_id = ? ORDER BY title", (site_id,))
        return [_library(row) for row in rows]

    def library(self, list_id: str) -> Library | None:
        rows = self.query("SELECT * FROM lists WHERE lower(id) = lower(?)", (list_id,))
        return _library(rows[0]) if rows else None

    def library_by_title(self, site_id: str, title: str) -> Library | None:
        rows = self.query(
            "SELECT * FROM lists WHERE site_id = ? AND lower(title) = lower(?)", (site_id, title)
        )
        return _library(rows[0]) if rows else None

    def set_versioning(self, list_id: str, enabled: bool) -> None:
        self.execute("UPDATE lists SET versioning = ? WHERE id = ?", (int(enabled), list_id))

    # -- folders and files -----------------------------------------------------------------

    def folder_by_url(self, url: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM folders WHERE lower(url) = lower(?)", (url,))
        return rows[0] if rows else None

    def folder_by_id(self, folder_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM folders WHERE lower(id) = lower(?)", (folder_id,))
        return rows[0] if rows else None

    def child_folders(self, folder_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM folders WHERE parent_id = ? ORDER BY name", (folder_id,))

    def child_files(self, folder_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM files WHERE folder_id = ? ORDER BY name", (folder_id,))

    def file_by_url(self, url: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM files WHERE lower(url) = lower(?)", (url,))
        return rows[0] if rows else None

    def file_by_id(self, file_id: str) -> sqlite3.Row | None:
        rows = self.query("SELECT * FROM files WHERE lower(id) = lower(?)", (file_id,))
        return rows[0] if rows else None

    def files_in_library(self, list_id: str) -> Iterator[sqlite3.Row]:
        yield from self.query("SELECT * FROM files WHERE list_id = ? ORDER BY url", (list_id,))

    def folders_in_library(self, list_id: str) -> list[sqlite3.Row]:
        return self.query("SELECT * FROM folders WHERE list_id = ? ORDER BY url", (list_id,))

    def content_path(self, content: str) -> Path:
        return self.content_dir / content

    def new_content_path(self) -> tuple[str, Path]:
        """Return a fresh content name and its path; the caller writes the bytes there."""
        name = uuid.uuid4().hex
        return name, self.content_dir / name

    def remove_content(self, content: str) -> None:
        try:
            os.unlink(self.content_dir / content)
        except FileNotFoundError:
            pass

    def wipe(self) -> None:
        """Delete every file, folder and library content (used by tests that reset the tenant)."""
        with self.transaction() as db:
            for table in ("files", "file_versions", "item_ids", "unique_scopes", "role_assignments"):
                db.execute(f"DELETE FROM {table}")
            db.execute("DELETE FROM folders WHERE parent_id IS NOT NULL")
        shutil.rmtree(self.content_dir, ignore_errors=True)
        self.content_dir.mkdir(parents=True, exist_ok=True)

    # -- users created by the import timer job ---------------------------------------------

    def ensure_deleted_user(self, site_id: str, login: str, email: str, title: str) -> SiteUser:
        """Return the user with ``login``, creating it marked as deleted when it does not exist.

        Imports use this for departed users, whose documents keep their name as author.
        """
        with self.transaction() as db:
            row = db.execute(
                "SELECT * FROM users WHERE site_id = ? AND lower(login) = lower(?)", (site_id, login)
            ).fetchone()
            if row is None:
                next_id = db.execute(
                    "SELECT COALESCE(MAX(id), 6) + 1 FROM users WHERE site_id = ?", (site_id,)
                ).fetchone()[0]
                db.execute(
                    "INSERT INTO users (site_id, id, login, email, title, is_site_admin, is_deleted) "
                    "VALUES (?, ?, ?, ?, ?, 0, 1)",
                    (site_id, next_id, login, email, title),
                )
                row = db.execute(
                    "SELECT * FROM users WHERE site_id = ? AND id = ?", (site_id, next_id)
                ).fetchone()
        return _user(row)


class _Transaction:
    def __init__(self, store: TenantStore) -> None:
        self._store = store

    def __enter__(self) -> sqlite3.Connection:
        self._store._lock.acquire()
        self._store._db.execute("BEGIN IMMEDIATE")
        return self._store._db

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                self._store._db.execute("COMMIT")
            else:
                self._store._db.execute("ROLLBACK")
        finally:
            self._store._lock.release()


def _user(row: sqlite3.Row) -> SiteUser:
    return SiteUser(
        site_id=row["site_id"],
        id=row["id"],
        login=row["login"],
        email=row["email"],
        title=row["title"],
        is_site_admin=bool(row["is_site_admin"]),
    )


def _library(row: sqlite3.Row) -> Library:
    return Library(
        id=row["id"],
        site_id=row["site_id"],
        title=row["title"],
        root_folder_id=row["root_folder_id"],
        root_folder_url=row["root_folder_url"],
        base_template=row["base_template"],
        versioning=bool(row["versioning"]),
        created=row["created"],
    )
