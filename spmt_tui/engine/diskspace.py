"""Free space in the working folder: detect a full disk and wait until there is room again.

The engine writes the session database, the kept package XML, its log, the decrypted import logs
and the reports into the working folder. Failing every item when that disk fills up would turn a
full disk into a failed migration, so the engine pauses instead. It pauses before new work
starts when free space is below the ``min_free_space_mb`` setting, and whenever a write fails
with ENOSPC (or a quota or file-size limit). It then checks again every ``DISK_POLL_SECONDS``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

log = logging.getLogger("spmt.engine.disk")

DISK_POLL_SECONDS = 5.0
"""Seconds between free-space checks while the migration waits for room."""

PROBE_INTERVAL_SECONDS = 1.0
"""The free-space check before new work calls statvfs at most this often."""

RESUME_MIN_FREE_BYTES = 4 * 2**20
"""After a failed write, free space needed before the write is tried again, when the
``min_free_space_mb`` setting is lower."""

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
SQLITE_FULL = 13

WAITING_PHASE = "waiting for disk space"

T = TypeVar("T")


class WorkingFolderFull(Exception):
    """A write in the working folder failed because its disk (or quota) is full."""


def is_disk_full(error: BaseException | None) -> bool:
    """Return True when ``error``, or an exception it was raised from, means the disk is full.

    That covers OSError with ENOSPC, EDQUOT or EFBIG (a file-size limit), and SQLite's
    SQLITE_FULL ("database or disk is full"). A failed ROLLBACK after SQLITE_FULL replaces the
    original error, so the chain (``__cause__``, ``__context__``) and exception groups are searched.
    """
    seen: set[int] = set()
    pending: list[BaseException] = [error] if error is not None else []
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, WorkingFolderFull):
            return True
        if isinstance(current, OSError) and current.errno in DISK_FULL_ERRNOS:
            return True
        if isinstance(current, sqlite3.Error):
            code = getattr(current, "sqlite_errorcode", None)
            if code is not None and code & 0xFF == SQLITE_FULL:
                return True
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        for linked in (current.__cause__, current.__context__):
            if linked is not None:
                pending.append(linked)
    return False


def free_bytes(folder: Path) -> int:
    """Return the bytes an unprivileged process may still write on the disk of ``folder``."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _megabytes(count: int) -> str:
    return f"{count / 2**20:.1f} MB"


class DiskSpaceGuard:
    """Pauses the engine while the working folder's disk has too little free space.

    ``on_wait(message)`` and ``on_resume()`` let the engine show the pause in its progress (stats
    phase and a PhaseEvent). ``probe(folder)`` returns the free bytes, and callers may pass
    another probe, for a quota for instance.
    """

    def __init__(
        self,
        folder: Path,
        min_free_bytes: int,
        *,
        on_wait: Callable[[str], None] | None = None,
        on_resume: Callable[[], None] | None = None,
        probe: Callable[[Path], int] = free_bytes,
    ) -> None:
        self.folder = Path(folder)
        self.min_free_bytes = max(0, int(min_free_bytes))
        self.on_wait = on_wait
        self.on_resume = on_resume
        self.probe = probe
        self.waits = 0
        self._last_probe = 0.0
        self._lock = asyncio.Lock()
        self._waits_ended = 0

    def _free(self) -> int | None:
        try:
            return self.probe(self.folder)
        except OSError as error:
            log.warning("could not read the free space of %s: %s", self.folder, error)
            return None

    async def check(self) -> None:
        """Wait here, before new work starts, while free space is below the setting."""
        if self.min_free_bytes <= 0:
            return
        now = time.monotonic()
        if now - self._last_probe < PROBE_INTERVAL_SECONDS:
            return
        self._last_probe = now
        free = await asyncio.to_thread(self._free)
        if free is not None and free < self.min_free_bytes:
            await self.wait_for_space(None)

    async def wait_for_space(self, error: BaseException | None) -> None:
        """Pause until the disk has room again; ``error`` is the failed write, if there was one.

        Concurrent callers share one pause. Without an error the wait ends once free space reaches
        the setting. After a failed write it ends once free space reaches the larger of the setting
        and ``RESUME_MIN_FREE_BYTES``, and the caller then tries the write again. A quota or a
        file-size limit does not show in the free space, so that retry may fail and wait again.
        """
        needed = self.min_free_bytes if error is None else max(self.min_free_bytes, RESUME_MIN_FREE_BYTES)
        ended_before = self._waits_ended
        async with self._lock:
            free = await asyncio.to_thread(self._free)
            room = free is not None and free >= needed
            if room and (error is None or self._waits_ended != ended_before):
                return  # no wait needed, or another worker's wait ended while this one queued
            self.waits += 1
            cause = f" ({_describe(error)})" if error is not None else ""
            message = (f"the working folder {self.folder} is full{cause}: "
                       f"{_megabytes(free or 0)} free, {_megabytes(needed)} needed. Free space "
                       f"there; the migration checks every {DISK_POLL_SECONDS:g} s and goes on by itself")
            log.warning("%s", message)
            if self.on_wait is not None:
                self.on_wait(message)
            try:
                while True:
                    await asyncio.sleep(DISK_POLL_SECONDS)
                    free = await asyncio.to_thread(self._free)
                    if free is None or free >= needed:
                        break
            finally:
                self._last_probe = time.monotonic()
                self._waits_ended += 1
            log.info("the working folder %s has %s free again; going on", self.folder,
                     _megabytes(free or 0))
            if self.on_resume is not None:
                self.on_resume()

    async def retry(self, call: Callable[[], T | Awaitable[T]]) -> T:
        """Run ``call`` (sync or async) until it does not fail with a full disk, pausing between tries.

        ``call`` must be safe to repeat: each session database write is one transaction that a
        failure rolls back, and the file writes replace the whole file.
        """
        while True:
            try:
                result = call()
                if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                    result = await result
                return result  # type: ignore[return-value]
            except Exception as error:
                if not is_disk_full(error):
                    raise
                await self.wait_for_space(error)


def _describe(error: BaseException) -> str:
    leaf: Any = error
    while leaf is not None:
        if isinstance(leaf, OSError) and leaf.errno in DISK_FULL_ERRNOS:
            return f"{os.strerror(leaf.errno)} writing {leaf.filename}" if leaf.filename else \
                os.strerror(leaf.errno)
        if isinstance(leaf, sqlite3.Error):
            return f"session database: {leaf}"
        leaf = leaf.__cause__ or leaf.__context__
    return type(error).__name__
