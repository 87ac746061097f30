"""Mirror of each session in the tenant, so the same account can resume it from another machine.

SPMT keeps its sessions in a hidden list in the signed-in user's OneDrive. spmt-tui keeps one item
per session in a hidden generic list, ``spmt-tui sessions``, on the tenant profile's site (or the
first task's site when the profile has none). The item's Title is the session id. The JSON in
``SpmtSession`` contains what a rebuild needs: the tasks, the settings, how the session signs in
(method, user name, certificate path and environment variable names, never a secret), the
state, the round, counts, and the jobs that were submitted but had not ended.

The local session database stays authoritative while it exists: a machine that has it never reads
the mirror for that session. A machine without it can list the mirrored sessions and rebuild one:
it follows the mirrored jobs to their end (never submitting them again), then runs the tasks as
an incremental round, which marks files already in the library as migrated and migrates the rest.

The mirror is written when a run starts, when its state, round or set of running jobs changes
(at most every ``MIN_WRITE_GAP_SECONDS``), every ``WRITE_INTERVAL_SECONDS`` otherwise, and when the
run ends; never per item. A failed write is logged and retried at the next occasion; it never
stops the migration.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import os
import socket
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from spmt_tui.engine.jobs import JobLost, follow_job
from spmt_tui.engine.progress import PhaseEvent
from spmt_tui.logs import redact
from spmt_tui.spo.http import HttpError, RetryPolicy, SharePointHttp, new_session
from spmt_tui.spo.sharepoint import SharePointClient
from spmt_tui.state.store import SessionStore, pid_alive

if TYPE_CHECKING:
    from spmt_tui.engine.migration import Migration

log = logging.getLogger("spmt.engine.mirror")

LIST_TITLE = "spmt-tui sessions"
LIST_DESCRIPTION = "Sessions of spmt-tui, so a migration can be resumed from another machine."
RECORD_FORMAT = 1

# SP.FieldType values of the list's fields.
FIELD_TEXT = 2
FIELD_NOTE = 3
FIELD_DATETIME = 4
FIELD_NUMBER = 9
FIELDS = (
    ("SpmtHost", FIELD_TEXT),
    ("SpmtState", FIELD_TEXT),
    ("SpmtRound", FIELD_NUMBER),
    ("SpmtUpdated", FIELD_DATETIME),
    ("SpmtSession", FIELD_NOTE),
)
SELECT = ("Id", "Title", "SpmtHost", "SpmtState", "SpmtRound", "SpmtUpdated", "SpmtSession")

WRITE_INTERVAL_SECONDS = 30.0
MIN_WRITE_GAP_SECONDS = 2.0
CHECK_SECONDS = 1.0
FINAL_WRITE_TIMEOUT_SECONDS = 20.0
STALE_SECONDS = 3 * WRITE_INTERVAL_SECONDS
"""A mirror item in state ``running`` that was not written for this long belongs to a dead run."""

NOTE_MAX_CHARACTERS = 63_999
"""SharePoint's limit for a plain multiple-lines-of-text value; longer records are compressed."""
COMPRESSED_PREFIX = "zlib+base64:"

ADOPTED_EVENT = "AdoptedFromMirror"
"""Last event of a job row that a rebuild took over from the mirror and has not followed yet."""

# Sign-in record keys that may travel: names and paths only, never a secret.
SIGN_IN_KEYS = ("method", "username", "password_env", "certificate", "certificate_passphrase_env",
                "account", "token_cache")
LOCAL_SETTINGS = ("working_folder",)
"""Settings that belong to one machine and are not mirrored."""
SECRET_WORDS = ("key", "password", "passphrase", "secret", "token", "sas", "signature")
"""A setting whose name contains one of these words is never mirrored, should one ever exist."""

RESUMABLE_STATES = ("running", "paused", "interrupted", "failed", "cancelled", "stopped_after_scan")


class MirrorError(Exception):
    """The mirror cannot be read, or a mirrored session cannot be rebuilt here."""


@dataclass(frozen=True)
class RemoteSession:
    """A session found in the tenant's mirror list."""

    id: str
    host: str
    state: str
    round: int
    updated: dt.datetime | None
    record: dict[str, Any]
    item_id: int

    @property
    def counts(self) -> dict[str, int]:
        return dict(self.record.get("counts") or {})

    @property
    def tasks(self) -> list[str]:
        return [f"{t['source']} -> {t['site_url']}/{t['library']}" + (f"/{t['folder']}" if t.get("folder") else "")
                for t in self.record.get("tasks") or []]

    def seconds_since_update(self) -> float | None:
        if self.updated is None:
            return None
        return (dt.datetime.now(dt.timezone.utc) - self.updated).total_seconds()


# -- the record ---------------------------------------------------------------------------------


def encode_payload(record: dict[str, Any]) -> str:
    """Return the record as JSON text, compressed when it would not fit a note field."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if len(text) <= NOTE_MAX_CHARACTERS:
        return text
    packed = COMPRESSED_PREFIX + base64.b64encode(zlib.compress(text.encode("utf-8"), 9)).decode("ascii")
    if len(packed) > NOTE_MAX_CHARACTERS:
        raise MirrorError(f"the session record is {len(text)} characters even compressed "
                          f"({len(packed)}); the mirror holds at most {NOTE_MAX_CHARACTERS}")
    return packed


def decode_payload(text: str) -> dict[str, Any]:
    """Parse a record written by :func:`encode_payload`."""
    if text.startswith(COMPRESSED_PREFIX):
        text = zlib.decompress(base64.b64decode(text[len(COMPRESSED_PREFIX):])).decode("utf-8")
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the mirrored session is not a JSON object")
    return data


def safe_sign_in(record: dict[str, Any]) -> dict[str, Any]:
    """Return the sign-in record with only the keys that carry no secret."""
    return {key: str(record[key]) for key in SIGN_IN_KEYS if record.get(key) not in (None, "")}


def _utc_text(moment: float) -> str:
    return dt.datetime.fromtimestamp(moment, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pending_jobs(store: SessionStore) -> list[dict[str, Any]]:
    """Return the jobs of the current round that were submitted and have not ended.

    Each entry has ``job_id``, ``task`` (0-based position) and ``package`` (its number). Jobs that
    a rebuild took over and has not followed yet count too.
    """
    round_number = store.current_round()
    found: dict[str, dict[str, Any]] = {}
    positions = {task["id"]: task["position"] for task in store.tasks()}
    if round_number is not None:
        for task_id, position in positions.items():
            for row in store.iter_items(task_id, round_number, status="submitted"):
                if row.job_id and row.job_id not in found:
                    found[row.job_id] = {"job_id": row.job_id, "task": position, "package": row.package_number}
    adopted = {job["job_id"] for job in store.jobs() if job["last_event"] == ADOPTED_EVENT}
    if adopted:
        for package in store.packages():
            if package["job_id"] in adopted and package["job_id"] not in found:
                found[package["job_id"]] = {"job_id": package["job_id"], "task": positions[package["task_id"]],
                                            "package": package["number"]}
    return sorted(found.values(), key=lambda job: (job["task"], job["package"] or 0))


def build_record(migration: "Migration", state: str, message: str = "") -> dict[str, Any]:
    """Return what the mirror stores about ``migration`` now."""
    from spmt_tui.engine.settings import task_settings_to_json

    store = migration.store
    assert store is not None
    round_number = store.current_round() or 0
    rounds = store.rounds()
    round_finished = bool(rounds and rounds[-1]["finished"] is not None)
    settings = {key: value for key, value in migration.settings.to_json().items()
                if key not in LOCAL_SETTINGS and not _secret_name(key)}
    now = time.time()
    return {
        "format": RECORD_FORMAT,
        "session": migration.session_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "copy": store.mirror_copy_id(),
        "state": state,
        "message": redact(message),
        # The last phase of a run that has ended is its final status, not the phase it ended in.
        "phase": migration.stats.snapshot().phase if state in ("running", "paused") else state,
        "round": round_number,
        "round_finished": round_finished,
        "updated": _utc_text(now),
        "tasks": [{"source": task.source, "site_url": task.site_url, "library": task.library,
                   "folder": task.folder,
                   "settings": {key: value for key, value in task_settings_to_json(task.settings).items()
                                if not _secret_name(key)}}
                  for task in migration.tasks],
        "settings": settings,
        "sign_in": safe_sign_in(migration.sign_in_method),
        "account": _account_name(migration.credentials),
        "counts": store.counts(round_number=round_number) if round_number else {},
        "pending_jobs": pending_jobs(store),
    }


def _secret_name(name: str) -> bool:
    return any(word in name.lower() for word in SECRET_WORDS)


def _account_name(credentials: Any) -> str:
    """Return the signed-in user or app id, or "" before the first sign-in."""
    whoami = getattr(credentials, "whoami", None)
    return str(whoami() or "") if callable(whoami) else ""


# -- the list -----------------------------------------------------------------------------------


class MirrorList:
    """The hidden list on one site: created with its fields on first write, read by listings."""

    def __init__(self, client: SharePointClient) -> None:
        self.client = client
        self.entity_type: str | None = None

    async def exists(self) -> bool:
        info = await self.client.list_by_title(LIST_TITLE)
        if info is not None:
            self.entity_type = str(info.get("ListItemEntityTypeFullName") or "")
        return info is not None

    async def ensure(self) -> None:
        """Create the list and any missing field."""
        if self.entity_type:
            return
        if not await self.exists():
            info = await self.client.create_generic_list(LIST_TITLE, hidden=True, description=LIST_DESCRIPTION)
            self.entity_type = str(info.get("ListItemEntityTypeFullName") or "")
            log.info("created the hidden list %r on %s", LIST_TITLE, self.client.site_url)
        present = await self.client.list_field_names(LIST_TITLE)
        for name, kind in FIELDS:
            if name not in present:
                await self.client.create_field(LIST_TITLE, name, kind)
        if not self.entity_type:
            raise MirrorError(f"the list {LIST_TITLE!r} on {self.client.site_url} reports no item type")

    async def sessions(self, session_id: str | None = None) -> list[RemoteSession]:
        """Return the mirrored sessions (one, when ``session_id`` is given); [] without the list."""
        if not await self.exists():
            return []
        query = f"Title eq '{session_id.replace(chr(39), chr(39) * 2)}'" if session_id else None
        items = await self.client.list_items(LIST_TITLE, filter=query, select=SELECT, top=500)
        found: dict[str, RemoteSession] = {}
        for item in items:
            session = _remote_session(item)
            if session is None:
                continue
            # Two items for one session can exist after a write whose answer was lost; keep the newest.
            known = found.get(session.id)
            if known is None or (session.updated or _EPOCH) > (known.updated or _EPOCH):
                found[session.id] = session
        return sorted(found.values(), key=lambda s: s.updated or _EPOCH, reverse=True)

    async def write(self, record: dict[str, Any], item_id: int | None) -> int:
        """Add or update the session's item; returns its id."""
        await self.ensure()
        assert self.entity_type
        values = {
            "Title": record["session"],
            "SpmtHost": record["host"][:255],
            "SpmtState": record["state"][:255],
            "SpmtRound": record["round"],
            "SpmtUpdated": record["updated"],
            "SpmtSession": encode_payload(record),
        }
        if item_id is None:
            existing = await self.sessions(record["session"])
            item_id = existing[0].item_id if existing else None
        if item_id is None:
            created = await self.client.add_list_item(LIST_TITLE, self.entity_type, values)
            return int(created["Id"])
        # The local database is authoritative, so this run's record replaces any stored version.
        await self.client.update_list_item(LIST_TITLE, item_id, self.entity_type, values, etag="*")
        return item_id


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _remote_session(item: dict[str, Any]) -> RemoteSession | None:
    try:
        record = decode_payload(str(item.get("SpmtSession") or ""))
    except (ValueError, zlib.error) as error:
        log.warning("skipped mirror item %s (%s): its session record cannot be read: %s",
                    item.get("Id"), item.get("Title"), error)
        return None
    updated = None
    text = item.get("SpmtUpdated") or record.get("updated")
    if text:
        try:
            updated = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
        except ValueError:
            updated = None
    return RemoteSession(id=str(record.get("session") or item.get("Title")), host=str(record.get("host", "")),
                         state=str(record.get("state", "")), round=int(record.get("round") or 0),
                         updated=updated, record=record, item_id=int(item["Id"]))


def mirror_site(profile: Any, tasks: list[Any]) -> str:
    """Return the URL of the site that holds the mirror list."""
    site = getattr(profile, "site_url", "") or (tasks[0].site_url if tasks else "")
    if not site:
        raise MirrorError("no site for the session mirror: the tenant profile has no site_url")
    return site.rstrip("/")


# -- writing while a session runs -----------------------------------------------------------------


class SessionMirror:
    """Keeps the session's item in the tenant up to date while ``Migration.run`` runs."""

    def __init__(self, migration: "Migration") -> None:
        self.m = migration
        self._session: aiohttp.ClientSession | None = None
        self._list: MirrorList | None = None
        self._item_id: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_write = 0.0
        self._last_signature: tuple[Any, ...] | None = None
        self._failures = 0
        self.disabled = False
        self.writes = 0

    def begin(self) -> None:
        """Start the periodic writes (the first one at once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="session-mirror")

    def _client(self) -> MirrorList:
        if self._list is None:
            self._session = new_session(self.m.profile.ca_bundle, limit=4)
            # A mirror write must not hold up the migration: few retries, a short throttling budget.
            http = SharePointHttp(self._session, self.m._token,
                                  policy=RetryPolicy(max_attempts=3, max_throttle_wait=120.0))
            self._list = MirrorList(SharePointClient(mirror_site(self.m.profile, self.m.tasks), http))
        return self._list

    def _state(self) -> str:
        return "running" if self.m._running.is_set() else "paused"

    async def claim(self, *, take_over: bool) -> None:
        """Raise MirrorError when another copy of this session wrote the mirror last.

        That copy (a rebuild on another machine, or this session's database copied elsewhere)
        may have run or be running the same tasks: running this one too would import its files
        a second time. ``take_over`` accepts it, and the next write makes this copy the owner.
        A tenant that cannot be read does not stop the run: the mirror is a convenience.
        """
        if self.disabled or self.m.store is None:
            return
        try:
            found = await self._client().sessions(self.m.session_id)
        except Exception as error:  # noqa: BLE001 - see the docstring
            self._log_failure(error)
            return
        if not found:
            return
        remote = found[0]
        self._item_id = remote.item_id
        other = remote.record.get("copy")
        if other is None or other == self.m.store.mirror_copy_id() or take_over:
            return
        # Refused: leave the other copy's record as it is.
        self.disabled = True
        age = remote.seconds_since_update()
        age_text = "at an unknown time" if age is None else f"{age:.0f} s ago"
        raise MirrorError(
            f"session {remote.id} was last run from another copy on {remote.host or 'another machine'} "
            f"(state {remote.state}, mirror written {age_text}): running this copy as well would import "
            "its files again. Continue it there, or, if this copy should take over, add --take-over")

    def _signature(self) -> tuple[Any, ...]:
        snapshot = self.m.stats.snapshot()
        store = self.m.store
        round_number = store.current_round() if store is not None else None
        return (self._state(), round_number, snapshot.counts.get("submitted", 0), snapshot.jobs_running)

    async def _loop(self) -> None:
        await self.write(self._state())
        while not self.disabled:
            await asyncio.sleep(CHECK_SECONDS)
            since = time.monotonic() - self._last_write
            signature = self._signature()
            changed = signature != self._last_signature
            if (changed and since >= MIN_WRITE_GAP_SECONDS) or since >= WRITE_INTERVAL_SECONDS:
                await self.write(self._state(), signature=signature)

    async def write(self, state: str, message: str = "", *, signature: tuple[Any, ...] | None = None) -> bool:
        """Write the record now; returns False (after logging) when the tenant did not take it."""
        if self.disabled or self.m.store is None:
            return False
        self._last_write = time.monotonic()
        self._last_signature = signature if signature is not None else self._signature()
        try:
            record = build_record(self.m, state, message)
            self._item_id = await self._client().write(record, self._item_id)
        except asyncio.CancelledError:
            raise
        except HttpError as error:
            if error.status in (401, 403):
                self.disabled = True
                log.warning("the session is not mirrored to the tenant, so it cannot be resumed from "
                            "another machine: %s (creating the list %r needs site owner rights)",
                            error, LIST_TITLE)
                return False
            self._log_failure(error)
            return False
        except Exception as error:  # noqa: BLE001 - a mirror failure must never stop the migration
            self._log_failure(error)
            return False
        self._failures = 0
        self.writes += 1
        return True

    def _log_failure(self, error: BaseException) -> None:
        self._failures += 1
        # The first failure and then one in ten, so an outage does not flood the log.
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning("writing the session mirror failed (%d in a row): %s: %s", self._failures,
                        type(error).__name__, redact(str(error))[:300])

    async def stop(self, status: str, message: str = "") -> None:
        """Stop the periodic writes and write the final state (unless the run was interrupted)."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - the loop logs its own errors
                pass
        try:
            if status != "interrupted":
                await asyncio.wait_for(self.write(status, message), FINAL_WRITE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            log.warning("the final session mirror write timed out after %.0f s", FINAL_WRITE_TIMEOUT_SECONDS)
        finally:
            if self._session is not None:
                await self._session.close()


# -- reading, and rebuilding on another machine ----------------------------------------------------


async def fetch_sessions(profile: Any, credentials: Any, session_id: str | None = None) -> list[RemoteSession]:
    """Sign in and return the sessions mirrored on the profile's site (newest first)."""
    session = new_session(profile.ca_bundle, limit=4)
    try:
        http = SharePointHttp(session, credentials.get_token)
        return await MirrorList(SharePointClient(mirror_site(profile, []), http)).sessions(session_id)
    except HttpError as error:
        raise MirrorError(f"reading the session mirror on {profile.site_url} failed: {error}") from None
    finally:
        await session.close()


def parse_source_map(values: list[str] | None) -> list[tuple[str, str]]:
    """Parse ``--source-map OLD=NEW`` values into (old prefix, new prefix) pairs."""
    pairs = []
    for value in values or []:
        old, sep, new = value.partition("=")
        if not sep or not old or not new or not os.path.isabs(old) or not os.path.isabs(new):
            raise MirrorError(f"invalid --source-map {value!r}: use OLD=NEW with two absolute paths, "
                              "e.g. --source-map /mnt/share=/srv/share")
        pairs.append((old.rstrip("/") or "/", new.rstrip("/") or "/"))
    return pairs


def map_source(source: str, pairs: list[tuple[str, str]]) -> str:
    """Return ``source`` with the longest matching OLD prefix replaced by its NEW prefix."""
    for old, new in sorted(pairs, key=lambda pair: len(pair[0]), reverse=True):
        if source == old or source.startswith(old.rstrip("/") + "/"):
            return new + source[len(old):] if old != "/" else new.rstrip("/") + source
    return source


def check_resumable(remote: RemoteSession, *, take_over: bool) -> None:
    """Raise MirrorError when the mirror records the session as still running elsewhere."""
    if remote.state not in RESUMABLE_STATES:
        if remote.state in ("completed", "completed_with_failures", "scan_only"):
            return  # a finished session runs another incremental round, as a local resume does
        raise MirrorError(f"session {remote.id} has state {remote.state!r} in the mirror, which this "
                          "version cannot resume")
    age = remote.seconds_since_update()
    if _writer_gone(remote):
        return  # written by a process of this machine that no longer runs
    if remote.state in ("running", "paused") and not take_over and (age is None or age < STALE_SECONDS):
        age_text = "an unknown time" if age is None else f"{age:.0f} s"
        raise MirrorError(
            f"session {remote.id} is {remote.state} on {remote.host or 'another machine'} (mirror written "
            f"{age_text} ago): stop it there first, or, if that machine is down, add --take-over (or wait "
            f"{STALE_SECONDS:.0f} s after its last write)")


def _writer_gone(remote: RemoteSession) -> bool:
    """Return True when the mirror was written by a process of this machine that has ended."""
    pid = remote.record.get("pid")
    if not isinstance(pid, int) or remote.host != socket.gethostname():
        return False
    return not pid_alive(pid)


def rebuild_session(remote: RemoteSession, working_folder: Path, profile_path: Path | None,
                    source_map: list[tuple[str, str]]) -> Path:
    """Create a local session database from a mirrored session; returns its folder.

    Sources must exist here at their mirrored path, or at the path ``source_map`` gives.
    """
    from spmt_tui.engine.migration import SIGN_IN_KEY, TASK_SETTINGS_KEY

    record = remote.record
    if int(record.get("format", 0)) != RECORD_FORMAT:
        raise MirrorError(f"session {remote.id} was mirrored in format {record.get('format')!r}; this "
                          f"version reads format {RECORD_FORMAT}")
    tasks = []
    for task in record.get("tasks") or []:
        source = map_source(str(task["source"]), source_map)
        if not os.path.isdir(source):
            mapped = "" if source == task["source"] else f" (mapped from {task['source']})"
            raise MirrorError(
                f"the source folder {source}{mapped} of session {remote.id} does not exist on this machine: "
                f"mount the share at that path, or give --source-map {task['source']}=/path/on/this/machine")
        tasks.append({"source": source, "site_url": task["site_url"], "library": task["library"],
                      "folder": task.get("folder", ""), "settings": task.get("settings") or {}})
    if not tasks:
        raise MirrorError(f"session {remote.id} has no tasks in the mirror")
    session_dir = Path(working_folder) / "sessions" / remote.id
    if (session_dir / "session.db").exists():
        raise MirrorError(f"session {remote.id} already exists in {working_folder}; resume it from there")
    session_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(session_dir, 0o700)
    settings = dict(record.get("settings") or {})
    settings[SIGN_IN_KEY] = safe_sign_in(record.get("sign_in") or {})
    if any(task["settings"] for task in tasks):
        settings[TASK_SETTINGS_KEY] = [task["settings"] for task in tasks]
    store = SessionStore.open(session_dir / "session.db")
    try:
        store.start_session(remote.id, settings, [{k: t[k] for k in ("source", "site_url", "library", "folder")}
                                                  for t in tasks], profile=str(profile_path or ""))
        if remote.round:
            # A round the other machine had not finished is finished here, in place.
            store.begin_round(remote.round)
            if record.get("round_finished"):
                store.finish_round(remote.round)
        for job in record.get("pending_jobs") or []:
            task_id = store.task_id(int(job["task"]))
            number = int(job["package"]) if job.get("package") is not None else store.next_package_number(task_id)
            store.package_submitted(number, task_id, str(job["job_id"]), [])
            store.job_event(str(job["job_id"]), ADOPTED_EVENT)
        store.set_status("interrupted", f"rebuilt from the tenant's mirror; last run on {remote.host}")
    finally:
        store.close()
    log.info("session %s rebuilt from the mirror (round %d, %d job(s) to follow, last run on %s)",
             remote.id, remote.round, len(record.get("pending_jobs") or []), remote.host)
    return session_dir


async def follow_adopted_jobs(migration: "Migration", http: SharePointHttp) -> None:
    """Follow the jobs a rebuild took over to their end; never submit them again.

    Their items are not known here, so their outcome is not applied to items: the incremental
    round that follows finds what they imported in the library and migrates the rest.
    """
    store = migration.store
    assert store is not None
    adopted = {job["job_id"] for job in store.jobs() if job["last_event"] == ADOPTED_EVENT}
    if not adopted:
        return
    sites = {task["id"]: task["site_url"] for task in store.tasks()}
    jobs = [(package["job_id"], sites[package["task_id"]]) for package in store.packages()
            if package["job_id"] in adopted]
    message = f"following {len(jobs)} job(s) submitted before the session moved to this machine"
    log.info(message)
    migration.stats.set_phase("following jobs", message)
    migration.sink(PhaseEvent("following jobs", message))
    poll = min(2.0, migration.settings.job_poll_seconds)

    async def settle(job_id: str, site_url: str) -> None:
        client = SharePointClient(site_url, http)
        try:
            outcome = await follow_job(client, job_id, inbox=None, next_token="0", poll_seconds=poll)
        except JobLost as error:
            log.warning("%s; the incremental round migrates its files again", error)
            store.job_event(job_id, "JobLost", status="lost")
            return
        status = "failed" if outcome.fatal is not None else "completed"
        log.info("job %s ended (%s, %d error(s)); submitted before the move, not submitted again",
                 job_id, status, len(outcome.errors))
        store.job_event(job_id, "JobEnd", status=status)

    await asyncio.gather(*(settle(job_id, site) for job_id, site in jobs))
