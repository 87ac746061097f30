"""Row sources for the per-file list: paged queries, so no widget keeps every file.

``RowSource`` is what ``FileList`` reads. ``StoreRowSource`` pages through a session's SQLite
database. ``MemoryRowSource`` keeps the latest state of each item from engine events, for
tests and for engines that keep no database. Queries run in a worker thread.
"""

from __future__ import annotations

import bisect
import sqlite3
from pathlib import Path
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Protocol

from spmt_tui.engine.progress import ItemEvent

FILTER_STATES = ("all", "active", "migrated", "skipped", "failed")
"""Choices of the state filter; ``active`` covers every state before a final one."""

FINAL_STATES = frozenset({"migrated", "skipped", "failed"})


@dataclass(frozen=True)
class FileRow:
    item_id: int
    path: str
    state: str
    size: int = 0
    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class Page:
    """Result of one query: rows from ``offset`` on, and how many rows match in total."""

    total: int
    offset: int
    rows: tuple[FileRow, ...]


class RowSource(Protocol):
    def page(self, state: str, search: str, offset: int, limit: int) -> Page:
        """Return up to ``limit`` rows from ``offset`` that match the filter, oldest item first.

        ``offset`` below 0 counts from the end (``-limit`` gives the last rows).
        """
        ...

    def counts(self) -> dict[str, int]:
        """Return the number of items per state."""
        ...

    def apply(self, events: Iterable[ItemEvent]) -> None:
        """Take item events (sources that read a database ignore them)."""
        ...


def matches_state(state: str, state_filter: str) -> bool:
    if state_filter == "all":
        return True
    if state_filter == "active":
        return state not in FINAL_STATES
    return state == state_filter


def resolve_offset(offset: int, limit: int, total: int) -> int:
    """Turn a negative (from the end) offset into a row index within ``0 .. total``."""
    if offset < 0:
        return max(0, total + offset)
    return min(offset, max(0, total - limit)) if total else 0


class MemoryRowSource:
    """Latest state per item, fed with ``ItemEvent`` objects from the UI thread."""

    def __init__(self, rows: Iterable[FileRow] = ()) -> None:
        self._lock = threading.Lock()
        self._rows: dict[int, FileRow] = {}
        self._ids: list[int] = []
        for row in rows:
            self._put(row)

    def _put(self, row: FileRow) -> None:
        if row.item_id not in self._rows:
            bisect.insort(self._ids, row.item_id)
        self._rows[row.item_id] = row

    def apply(self, events: Iterable[ItemEvent]) -> None:
        with self._lock:
            for event in events:
                previous = self._rows.get(event.item_id)
                size = event.size or (previous.size if previous else 0)
                self._put(FileRow(event.item_id, event.path, event.state, size, event.code, event.message))

    def page(self, state: str, search: str, offset: int, limit: int) -> Page:
        needle = search.casefold()
        with self._lock:
            if state == "all" and not needle:
                ids = self._ids
            else:
                ids = [item_id for item_id in self._ids
                       if matches_state(self._rows[item_id].state, state)
                       and needle in self._rows[item_id].path.casefold()]
            start = resolve_offset(offset, limit, len(ids))
            rows = tuple(self._rows[item_id] for item_id in ids[start:start + limit])
            return Page(total=len(ids), offset=start, rows=rows)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self._lock:
            for row in self._rows.values():
                counts[row.state] = counts.get(row.state, 0) + 1
        return counts


STATUSES_OF_FILTER = {
    "all": None,
    "active": ("scanned", "packaged", "uploaded", "submitted"),
    "migrated": ("migrated",),
    "skipped": ("skipped",),
    "failed": ("failed",),
}
"""Session database item statuses that each state filter shows."""


class StoreRowSource:
    """Pages of a session database, opened read-only on first use.

    Until the database file exists (the engine creates it when the run starts), and for
    engines that keep no database, pages come from ``fallback``, which is fed with the item
    events.
    """

    def __init__(self, db_path: Path, fallback: MemoryRowSource | None = None) -> None:
        self.db_path = Path(db_path)
        self.fallback = fallback or MemoryRowSource()
        self._store: Any = None
        self._anchor: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> Any:
        if self._store is None and self.db_path.is_file():
            from spmt_tui.state.store import ReadOnlyStore

            self._store = ReadOnlyStore.open(self.db_path)
            uri = f"{self.db_path.resolve().as_uri()}?mode=ro"
            self._anchor = sqlite3.connect(uri, uri=True, check_same_thread=False, timeout=30.0)
        return self._store

    def apply(self, events: Iterable[ItemEvent]) -> None:
        if self._store is None:
            self.fallback.apply(events)

    def page(self, state: str, search: str, offset: int, limit: int) -> Page:
        with self._lock:
            store = self._open()
            if store is None:
                return self.fallback.page(state, search, offset, limit)
            statuses = STATUSES_OF_FILTER.get(state)
            status = list(statuses) if statuses else None
            total = store.count_items(status=status, search=search or None)
            start = resolve_offset(offset, limit, total)
            anchor = self._id_before(start, statuses, search)
            found = store.page_items(status=status, search=search or None, after_id=anchor, limit=limit)
            rows = tuple(FileRow(row.id, row.path + ("/" if row.kind == "folder" else ""), row.status,
                                 row.size, row.code or "", row.message or "") for row in found.rows)
            return Page(total=total, offset=start, rows=rows)

    def _id_before(self, offset: int, statuses: tuple[str, ...] | None, search: str) -> int:
        """Return the id just before the ``offset``-th matching item (0 for the first)."""
        if offset <= 0 or self._anchor is None:
            return 0
        # NOTE: this reads the items table of spmt_tui/state/schema.py directly, because the
        # store pages by key (after_id) and a scroll bar needs a position (offset) instead.
        conditions = []
        parameters: list[Any] = []
        if statuses:
            conditions.append(f"status IN ({', '.join('?' * len(statuses))})")
            parameters.extend(statuses)
        if search:
            escaped = search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            conditions.append("path LIKE ? ESCAPE '\\'")
            parameters.append(f"%{escaped}%")
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        row = self._anchor.execute(
            f"SELECT id FROM items {where} ORDER BY id LIMIT 1 OFFSET ?", [*parameters, offset - 1]
        ).fetchone()
        return int(row[0]) if row else 0

    def counts(self) -> dict[str, int]:
        with self._lock:
            store = self._open()
            if store is None:
                return self.fallback.counts()
            return {status: entry["files"] + entry["folders"]
                    for status, entry in store.count_by_status().items()}

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._anchor is not None:
                self._anchor.close()
                self._anchor = None
