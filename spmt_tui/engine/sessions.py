"""Sessions in a working folder: list them with their state, for ``spmt-tui sessions`` and the TUI."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spmt_tui.state.store import ReadOnlyStore, StoreError

log = logging.getLogger("spmt.engine.sessions")


@dataclass(frozen=True)
class SessionInfo:
    id: str
    created: dt.datetime
    status: str
    tasks: list[str]
    counts: dict[str, int]
    db_path: Path
    report_dir: Path
    profile_path: str
    pid: int | None = None
    message: str = ""
    settings: dict[str, Any] = field(default_factory=dict)


def sessions_folder(working_folder: Path) -> Path:
    return Path(working_folder) / "sessions"


def list_sessions(working_folder: Path) -> list[SessionInfo]:
    """Return every session in ``working_folder``, newest first; unreadable ones are logged and skipped."""
    folder = sessions_folder(working_folder)
    if not folder.is_dir():
        return []
    found: list[SessionInfo] = []
    for db_path in folder.glob("*/session.db"):
        try:
            store = ReadOnlyStore.open(db_path)
        except (StoreError, sqlite3.Error) as error:
            log.warning("skipped session database %s: %s", db_path, error)
            continue
        try:
            info = store.session_info()
            tasks = store.tasks()
            counts = store.counts()
        except (StoreError, sqlite3.Error) as error:
            log.warning("skipped session database %s: %s", db_path, error)
            continue
        finally:
            store.close()
        found.append(SessionInfo(
            id=info["id"],
            created=dt.datetime.fromtimestamp(info["created"]),
            status=info["status"],
            tasks=[f"{t['source']} -> {t['site_url']}/{t['library']}"
                   + (f"/{t['folder']}" if t["folder"] else "") for t in tasks],
            counts=counts,
            db_path=db_path,
            report_dir=db_path.parent / "reports",
            profile_path=info.get("profile") or "",
            pid=info.get("pid"),
            message=info.get("message") or "",
            settings=info.get("settings") or {},
        ))
    found.sort(key=lambda s: s.created, reverse=True)
    return found
