"""SQLite schema of a session database (one database file per migration session).

Times are stored as POSIX timestamps in seconds (REAL, UTC). Item paths use "/" separators and
are relative to the task's source root. Secrets never appear in plain text: container URIs are
stored without their SAS query string, and the SAS URIs and the container key only as
ciphertext produced by the caller's secret box.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

SESSION_STATUSES = (
    "running", "paused", "interrupted", "completed", "completed_with_failures", "failed",
    "cancelled", "scan_only", "stopped_after_scan",
)
ITEM_STATUSES = (
    "scanned", "skipped", "failed", "packaged", "uploaded", "submitted", "migrated",
)
PACKAGE_STATUSES = ("planned", "uploading", "submitted", "completed", "failed")

_STATUS_LIST = ", ".join(f"'{status}'" for status in SESSION_STATUSES)
_ITEM_STATUS_LIST = ", ".join(f"'{status}'" for status in ITEM_STATUSES)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS session (
    id          TEXT PRIMARY KEY,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    settings    TEXT NOT NULL,            -- JSON object
    profile     TEXT NOT NULL DEFAULT '', -- path of the tenant profile used
    status      TEXT NOT NULL CHECK (status IN ({_STATUS_LIST})),
    message     TEXT NOT NULL DEFAULT '',
    pid         INTEGER,                  -- process that runs the session
    hostname    TEXT,
    heartbeat   REAL,                     -- last sign of life of that process
    finished    REAL
);

CREATE TABLE IF NOT EXISTS rounds (
    round    INTEGER PRIMARY KEY,
    started  REAL NOT NULL,
    finished REAL
);

CREATE TABLE IF NOT EXISTS tasks (
    id          INTEGER PRIMARY KEY,
    position    INTEGER NOT NULL UNIQUE,  -- order of the task in the session
    task_key    TEXT NOT NULL UNIQUE,     -- GUID used in report folder names
    source      TEXT NOT NULL,
    site_url    TEXT NOT NULL,
    library     TEXT NOT NULL,
    folder      TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL DEFAULT 'pending',
    web_id      TEXT,
    list_id     TEXT,
    destination_url TEXT,                 -- absolute URL of the target folder, once resolved
    started     REAL,
    finished    REAL
);

CREATE TABLE IF NOT EXISTS items (
    id              INTEGER PRIMARY KEY,
    task_id         INTEGER NOT NULL REFERENCES tasks(id),
    round           INTEGER NOT NULL,
    path            TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('file', 'folder')),
    size            INTEGER NOT NULL DEFAULT 0,
    created         REAL,
    modified        REAL,
    hidden          INTEGER NOT NULL DEFAULT 0,
    status          TEXT NOT NULL CHECK (status IN ({_ITEM_STATUS_LIST})),
    category        TEXT,
    code            TEXT,
    message         TEXT,
    new_name        TEXT,
    destination     TEXT,                 -- destination path relative to the target folder
    object_guid     TEXT,
    item_guid       TEXT,
    int_id          INTEGER,
    package_number  INTEGER,
    job_id          TEXT,
    read_attempts   INTEGER NOT NULL DEFAULT 0,
    upload_attempts INTEGER NOT NULL DEFAULT 0,
    submit_attempts INTEGER NOT NULL DEFAULT 0,
    scanned_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    UNIQUE (task_id, round, path)
);
-- Paging in id order within a task and round, optionally by status: (task, round, status, rowid).
CREATE INDEX IF NOT EXISTS items_by_status ON items (task_id, round, status);
-- Incremental rounds look up the latest earlier record of a path.
CREATE INDEX IF NOT EXISTS items_by_path ON items (task_id, path, round);
CREATE INDEX IF NOT EXISTS items_by_package ON items (task_id, package_number);

-- Counts and bytes per (task, round, status, kind), so the UI reads them in constant time however
-- many items there are. Inserts are counted by the store in bulk (a per-row insert trigger halved
-- the insert rate); updates and deletes are counted by the triggers below.
CREATE TABLE IF NOT EXISTS item_counts (
    task_id INTEGER NOT NULL,
    round   INTEGER NOT NULL,
    status  TEXT NOT NULL,
    kind    TEXT NOT NULL,
    count   INTEGER NOT NULL DEFAULT 0,
    bytes   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, round, status, kind)
);

CREATE TRIGGER IF NOT EXISTS items_count_delete AFTER DELETE ON items BEGIN
    UPDATE item_counts SET count = count - 1, bytes = bytes - OLD.size
    WHERE task_id = OLD.task_id AND round = OLD.round AND status = OLD.status AND kind = OLD.kind;
END;

CREATE TRIGGER IF NOT EXISTS items_count_update AFTER UPDATE OF status, size, kind ON items
WHEN OLD.status IS NOT NEW.status OR OLD.size IS NOT NEW.size OR OLD.kind IS NOT NEW.kind BEGIN
    UPDATE item_counts SET count = count - 1, bytes = bytes - OLD.size
    WHERE task_id = OLD.task_id AND round = OLD.round AND status = OLD.status AND kind = OLD.kind;
    INSERT INTO item_counts (task_id, round, status, kind, count, bytes)
    VALUES (NEW.task_id, NEW.round, NEW.status, NEW.kind, 1, NEW.size)
    ON CONFLICT (task_id, round, status, kind)
    DO UPDATE SET count = count + 1, bytes = bytes + NEW.size;
END;

CREATE TABLE IF NOT EXISTS packages (
    id                     INTEGER PRIMARY KEY,
    task_id                INTEGER NOT NULL REFERENCES tasks(id),
    number                 INTEGER NOT NULL,
    round                  INTEGER,
    status                 TEXT NOT NULL DEFAULT 'planned',
    data_container_url     TEXT,          -- without the SAS query string
    metadata_container_url TEXT,          -- without the SAS query string
    secrets                BLOB,          -- secret box ciphertext of the SAS URIs and the key
    job_id                 TEXT,
    created                REAL NOT NULL,
    updated                REAL NOT NULL,
    UNIQUE (task_id, number)
);

CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    package_id      INTEGER REFERENCES packages(id),
    status          TEXT NOT NULL DEFAULT 'submitted',
    next_token      TEXT NOT NULL DEFAULT '0',
    last_event      TEXT,
    last_event_time TEXT,
    created         REAL NOT NULL,
    updated         REAL NOT NULL
);

-- Named counters, for example ('session', 'throttled') or (<job id>, 'JobError').
CREATE TABLE IF NOT EXISTS counters (
    scope TEXT NOT NULL,
    name  TEXT NOT NULL,
    value INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, name)
);

-- IntIds handed out per target list; next_value only grows, so no number is handed out twice.
-- Keyed by the list GUID alone (GUIDs are unique across sites); site_url is for reading.
CREATE TABLE IF NOT EXISTS int_id_allocator (
    list_id    TEXT PRIMARY KEY,
    site_url   TEXT NOT NULL DEFAULT '',
    next_value INTEGER NOT NULL
);

-- Ids given to an object, so a re-import of the same object keeps its list item and IntId.
CREATE TABLE IF NOT EXISTS object_ids (
    list_id     TEXT NOT NULL,
    object_guid TEXT NOT NULL,
    item_guid   TEXT NOT NULL,
    int_id      INTEGER NOT NULL,
    PRIMARY KEY (list_id, object_guid)
);
"""
