"""Follow migration jobs to their end through the job queue and GetMigrationJobProgress.

The queue gives events within a second or two; GetMigrationJobProgress is the record that the
service keeps for about five days and the only source after a restart (the queue's SAS and the
job key are not persisted). Every event is keyed so one that arrives both ways counts once, and a
job is finished only when GetMigrationJobProgress has shown its JobEnd, so events lost from the
queue are always made up.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from azure.core.exceptions import ResourceNotFoundError

from spmt_tui.spo.containers import StorageTransport, receive_events
from spmt_tui.spo.http import HttpError
from spmt_tui.spo.sharepoint import (
    JOB_NOT_FOUND,
    JOB_STATE_NONE,
    JOB_STATUS_EXPIRED,
    SharePointClient,
)

log = logging.getLogger("spmt.engine.jobs")

# Progress polls without a new event before the job's state is checked with GetMigrationJobStatus.
QUIET_POLLS_BEFORE_STATUS = 12


def event_key(event: dict[str, Any]) -> str:
    """Return a key that is equal for the same event from the queue and from the progress API."""
    normalized = {str(k): str(v) for k, v in event.items()}
    return json.dumps(normalized, sort_keys=True)


class JobLost(Exception):
    """The service no longer has the job (not found, or its status expired)."""


@dataclass
class JobOutcome:
    job_id: str
    end: dict[str, Any] | None = None
    fatal: dict[str, Any] | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    next_token: str = "0"
    events: int = 0


class QueueListener:
    """Reads the session's job queue and hands each event to the job that waits for it."""

    def __init__(self, transport: StorageTransport, queue_uri: str) -> None:
        self.queue_uri = queue_uri
        self.queue = transport.queue(queue_uri)
        self.keys: dict[str, bytes] = {}
        self.inboxes: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.broken = False

    def watch(self, job_id: str, key: bytes) -> asyncio.Queue[dict[str, Any]]:
        job_id = job_id.lower()
        self.keys[job_id] = key
        return self.inboxes.setdefault(job_id, asyncio.Queue())

    def forget(self, job_id: str) -> None:
        job_id = job_id.lower()
        self.keys.pop(job_id, None)
        self.inboxes.pop(job_id, None)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="job-queue-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await self.queue.close()

    async def _run(self) -> None:
        idle = 0.5
        while True:
            if not self.inboxes:
                await asyncio.sleep(0.5)
                continue
            try:
                events = await receive_events(self.queue, self.keys)
            except ResourceNotFoundError:
                self.broken = True
                return
            for event in events:
                inbox = self.inboxes.get(str(event.get("JobId", "")).lower())
                if inbox is not None:
                    inbox.put_nowait(event)
            idle = 0.2 if events else min(2.0, idle * 2)
            await asyncio.sleep(idle)


EventCallback = Callable[[dict[str, Any]], None]


async def follow_job(
    client: SharePointClient,
    job_id: str,
    *,
    inbox: asyncio.Queue[dict[str, Any]] | None,
    next_token: str = "0",
    poll_seconds: float = 5.0,
    on_event: EventCallback | None = None,
    on_token: Callable[[str], None] | None = None,
) -> JobOutcome:
    """Wait for the job's JobEnd and collect its errors and warnings."""
    outcome = JobOutcome(job_id, next_token=next_token)
    seen: set[str] = set()
    end_from_queue = False
    quiet_polls = 0
    not_queued = False

    def take(event: dict[str, Any], source: str) -> None:
        nonlocal end_from_queue
        key = event_key(event)
        if key in seen:
            return
        seen.add(key)
        outcome.events += 1
        name = str(event.get("Event", ""))
        if name == "JobEnd" and source == "queue":
            end_from_queue = True
        if name == "JobError":
            outcome.errors.append(event)
        elif name == "JobWarning":
            outcome.warnings.append(event)
        elif name == "JobFatalError":
            outcome.fatal = event
        if on_event is not None:
            on_event(event)

    while True:
        # Wait for queue events, or until it is time to ask the progress API.
        if inbox is not None:
            try:
                event = await asyncio.wait_for(inbox.get(), timeout=poll_seconds)
                take(event, "queue")
                while not inbox.empty():
                    take(inbox.get_nowait(), "queue")
                if not end_from_queue:
                    continue
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(poll_seconds)
        try:
            events, token = await client.job_progress(job_id, outcome.next_token)
        except HttpError as error:
            if JOB_NOT_FOUND in error.code or JOB_STATUS_EXPIRED in error.code:
                raise JobLost(f"job {job_id}: {error.message}") from error
            log.warning("job %s: GetMigrationJobProgress failed (%s); trying again", job_id, error)
            continue
        for event in events:
            take(event, "progress")
            if str(event.get("Event")) == "JobEnd":
                outcome.end = {str(k): v for k, v in event.items()}
        quiet_polls = 0 if events else quiet_polls + 1
        if outcome.end is None and not_queued:
            # The service had already dropped the job from its queue, and one more poll showed
            # no JobEnd: the job's outcome is lost.
            raise JobLost(f"job {job_id} is no longer queued and reported no JobEnd")
        if outcome.end is None and quiet_polls >= QUIET_POLLS_BEFORE_STATUS:
            quiet_polls = 0
            try:
                not_queued = await client.job_status(job_id) == JOB_STATE_NONE
            except HttpError as error:
                # Microsoft plans to retire GetMigrationJobStatus; keep polling without it.
                log.info("job %s: GetMigrationJobStatus failed (%s)", job_id, error)
        if token != outcome.next_token:
            outcome.next_token = token
            if on_token is not None:
                on_token(token)
        if outcome.end is not None:
            return outcome
        if end_from_queue:
            # The queue delivered JobEnd before the progress API has it, so poll again soon.
            await asyncio.sleep(min(1.0, poll_seconds))
