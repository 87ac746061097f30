"""Progress reporting from the engine to its front ends: counters, rates, and item events.

Two channels, as rclone's accounting does: continuous numbers that a front end reads with
``Stats.snapshot()`` at its own pace (thread-safe, a copy), and discrete events pushed to an
``EventSink`` callable. The engine never waits for a front end.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

STAGES = ("scanned", "packaged", "uploaded", "submitted", "migrated", "skipped", "failed")


@dataclass(frozen=True)
class ItemEvent:
    """An item changed state: scanned, skipped, failed, packaged, uploaded, submitted, migrated."""

    item_id: int
    task_id: int
    path: str
    state: str
    size: int = 0
    code: str = ""
    message: str = ""


@dataclass(frozen=True)
class LogEvent:
    level: str
    message: str


@dataclass(frozen=True)
class PhaseEvent:
    """The migration entered a phase (pre-flight, scanning, migrating, paused, finished ...)."""

    phase: str
    detail: str = ""


EngineEvent = ItemEvent | LogEvent | PhaseEvent
EventSink = Callable[[EngineEvent], None]


@dataclass(frozen=True)
class StatsSnapshot:
    phase: str
    counts: dict[str, int]
    bytes_total: int          # bytes of the files to migrate
    bytes_uploaded: int
    bytes_migrated: int
    rate_bytes: float         # bytes per second over the last few seconds
    rate_files: float
    eta_seconds: float | None
    elapsed: float
    throttled: int
    throttled_seconds: float
    jobs_running: int
    history: tuple[float, ...]  # upload rate samples, one per second, newest last
    message: str = ""


class Stats:
    """Counters updated by the engine and copied under a lock for readers in other threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.phase = "starting"
        self.message = ""
        self.counts: dict[str, int] = {stage: 0 for stage in STAGES}
        self.bytes_total = 0
        self.bytes_uploaded = 0
        self.bytes_migrated = 0
        self.throttled = 0
        self.throttled_seconds = 0.0
        self.jobs_running = 0
        self._samples: collections.deque[tuple[float, int, int]] = collections.deque(maxlen=64)
        self._history: collections.deque[float] = collections.deque(maxlen=120)
        self._last_sample = 0.0

    def add(self, stage: str, count: int = 1) -> None:
        with self._lock:
            self.counts[stage] = self.counts.get(stage, 0) + count

    def set_phase(self, phase: str, message: str = "") -> None:
        with self._lock:
            self.phase = phase
            self.message = message

    def add_bytes(self, *, total: int = 0, uploaded: int = 0, migrated: int = 0) -> None:
        with self._lock:
            self.bytes_total += total
            self.bytes_uploaded += uploaded
            self.bytes_migrated += migrated

    def throttle(self, delay: float, status: int) -> None:
        with self._lock:
            self.throttled += 1
            self.throttled_seconds += delay

    def job_delta(self, delta: int) -> None:
        with self._lock:
            self.jobs_running += delta

    def _sample(self, now: float) -> None:
        if now - self._last_sample >= 1.0:
            previous = self._samples[-1] if self._samples else None
            self._samples.append((now, self.bytes_uploaded, self.counts["uploaded"]))
            if previous is not None:
                span = now - previous[0]
                self._history.append((self.bytes_uploaded - previous[1]) / span if span else 0.0)
            self._last_sample = now

    def snapshot(self) -> StatsSnapshot:
        now = time.monotonic()
        with self._lock:
            self._sample(now)
            rate_bytes = rate_files = 0.0
            window = [s for s in self._samples if now - s[0] <= 10.0]
            if len(window) >= 2:
                span = window[-1][0] - window[0][0]
                if span > 0:
                    rate_bytes = (window[-1][1] - window[0][1]) / span
                    rate_files = (window[-1][2] - window[0][2]) / span
            remaining = max(0, self.bytes_total - self.bytes_uploaded)
            eta = remaining / rate_bytes if rate_bytes > 0 else None
            return StatsSnapshot(
                phase=self.phase,
                counts=dict(self.counts),
                bytes_total=self.bytes_total,
                bytes_uploaded=self.bytes_uploaded,
                bytes_migrated=self.bytes_migrated,
                rate_bytes=rate_bytes,
                rate_files=rate_files,
                eta_seconds=eta,
                elapsed=now - self.started,
                throttled=self.throttled,
                throttled_seconds=self.throttled_seconds,
                jobs_running=self.jobs_running,
                history=tuple(self._history),
                message=self.message,
            )


def null_sink(event: EngineEvent) -> None:
    """Discard events (the default when no front end listens)."""


def describe(snapshot: StatsSnapshot) -> dict[str, Any]:
    return {
        "phase": snapshot.phase,
        **snapshot.counts,
        "bytes_uploaded": snapshot.bytes_uploaded,
        "bytes_total": snapshot.bytes_total,
    }
