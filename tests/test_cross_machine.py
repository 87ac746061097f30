"""Resume from another machine through the session mirror in the tenant.

Working folder A runs a migration and is killed with SIGKILL while jobs are submitted. Working
folder B is empty and plays the other machine: ``sessions`` lists the mirrored session and
``resume`` rebuilds and finishes it. The sandbox's own tables then show what arrived and which job
imported each file.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any, Iterator

import pytest

from harness import REPO, Sandbox, start_sandbox
from spmt_tui.engine import mirror
from spmt_tui.sandbox.export import export_library
from spmt_tui.spo.http import HttpError, SharePointHttp, new_session
from spmt_tui.spo.sharepoint import SharePointClient

FILES = 90


@pytest.fixture
def slow_import_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    # Each job waits 3 s before it starts, so the kill lands while jobs are still running.
    box = start_sandbox(tmp_path / "tenant", "--import-delay", "3")
    try:
        yield box
    finally:
        box.stop()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "spmt_tui", *args]


def _read_only(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)


def _submitted_jobs(db: Path) -> set[str]:
    """Jobs of session database ``db`` whose items are submitted and not yet ended."""
    try:
        with _read_only(db) as connection:
            rows = connection.execute("SELECT DISTINCT job_id FROM items WHERE status = 'submitted' "
                                      "AND job_id IS NOT NULL").fetchall()
    except sqlite3.OperationalError:
        return set()
    return {row[0] for row in rows}


def _mirror_records(tenant_db: Path) -> dict[str, dict[str, Any]]:
    """The mirrored session records, by session id, read from the sandbox's list item table."""
    try:
        with _read_only(tenant_db) as connection:
            rows = connection.execute(
                "SELECT i.fields FROM list_items i JOIN lists l ON l.id = i.list_id WHERE l.title = ?",
                (mirror.LIST_TITLE,)).fetchall()
    except sqlite3.OperationalError:
        return {}
    records = {}
    for (fields,) in rows:
        record = mirror.decode_payload(json.loads(fields)["SpmtSession"])
        records[record["session"]] = record
    return records


def _make_share(root: Path) -> dict[str, bytes]:
    expected: dict[str, bytes] = {}
    for number in range(FILES):
        relative = f"d{number % 3}/f{number:03d}.bin"
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        content = os.urandom(100 + number)
        (root / relative).write_bytes(content)
        expected[relative] = content
    return expected


def test_resume_on_other_machine(slow_import_sandbox: Sandbox, tmp_path: Path) -> None:
    box = slow_import_sandbox
    tenant_db = box.data_dir / "tenant.db"
    source = tmp_path / "share"
    expected = _make_share(source)
    work_a = tmp_path / "machine-a"
    work_b = tmp_path / "machine-b"
    common = ["--tenant-profile", str(box.profile_path), "--auth", "password"]
    process = subprocess.Popen(
        _cli("migrate", str(source), *common, "--working-folder", str(work_a), "--folder", "moved",
             "--package-max-files", "10", "--jobs-in-flight", "3"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    # Kill once jobs are running and the mirror lists every one of them. The process is stopped
    # while that is checked, so no job is recorded between the check and the kill. The pause lets
    # requests it had already sent reach the sandbox.
    deadline = time.monotonic() + 180
    db = None
    while time.monotonic() < deadline:
        found = list(work_a.glob("sessions/*/session.db"))
        if found and len(_submitted_jobs(found[0])) >= 2:
            db = found[0]
            process.send_signal(signal.SIGSTOP)
            time.sleep(1.0)
            running = _submitted_jobs(db)
            record = _mirror_records(tenant_db).get(db.parent.name)
            mirrored = {job["job_id"] for job in record["pending_jobs"]} if record else set()
            if running and running <= mirrored:
                break
            process.send_signal(signal.SIGCONT)
        if process.poll() is not None:
            pytest.fail(f"the migration ended before it could be killed: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    else:
        pytest.fail("the migration never had running jobs that the mirror listed")
    # A stays stopped, not killed, until B has been refused: a mirror written by a process of
    # this host that has ended would not stop B, and both "machines" are this host here.
    assert db is not None
    session_id = db.parent.name

    with _read_only(db) as connection:
        a_items = {row[0]: row[1] for row in connection.execute(
            "SELECT path, job_id FROM items WHERE job_id IS NOT NULL AND kind = 'file'")}
        a_migrated = connection.execute("SELECT count(*) FROM items WHERE status = 'migrated' "
                                        "AND kind = 'file'").fetchone()[0]
    a_jobs = set(a_items.values())
    running_at_kill = _submitted_jobs(db)
    record = _mirror_records(tenant_db)[session_id]
    assert a_migrated < FILES, "the migration finished before the kill"
    assert running_at_kill, "no job was running at the kill"
    assert running_at_kill <= {job["job_id"] for job in record["pending_jobs"]}
    assert record["state"] == "running"
    assert record["host"] == socket.gethostname()

    # Machine B: another working folder, and the share mounted at another path.
    moved = tmp_path / "share-on-b"
    shutil.move(str(source), str(moved))
    listing = subprocess.run(_cli("sessions", "--working-folder", str(work_b), *common), cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0, listing.stderr
    line = next((text for text in listing.stdout.splitlines() if text.startswith(session_id)), "")
    assert "(remote, on " + socket.gethostname() + ")" in line, listing.stdout
    assert "running" in line

    refused = subprocess.run(_cli("resume", session_id, *common, "--working-folder", str(work_b)),
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "--take-over" in refused.stderr
    process.send_signal(signal.SIGKILL)
    process.wait()
    missing = subprocess.run(_cli("resume", session_id, *common, "--working-folder", str(work_b),
                                  "--take-over"), cwd=REPO, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert str(source) in missing.stderr
    assert f"--source-map {source}=" in missing.stderr
    assert not (work_b / "sessions" / session_id).exists(), "a failed rebuild left a session behind"

    b_started = time.time()
    resumed = subprocess.run(_cli("resume", session_id, *common, "--working-folder", str(work_b),
                                  "--take-over", "--source-map", f"{source}={moved}"),
                             cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert resumed.stdout.startswith("completed"), resumed.stdout

    out = tmp_path / "export"
    export_library(box.data_dir, "Documents", out)
    arrived = {str(p.relative_to(out / "moved")): p.read_bytes()
               for p in (out / "moved").rglob("*") if p.is_file()}
    assert sorted(arrived) == sorted(expected)
    for name, content in expected.items():
        assert arrived[name] == content, f"{name} differs from the source"

    with sqlite3.connect(tenant_db) as tenant:
        rows = tenant.execute("SELECT url, int_id, job_id FROM files WHERE url LIKE '%/moved/%'").fetchall()
        jobs_since_b = {row[0] for row in tenant.execute("SELECT id FROM migration_jobs WHERE created >= ?",
                                                         (b_started,))}
        jobs_before_b = {row[0] for row in tenant.execute("SELECT id FROM migration_jobs WHERE created < ?",
                                                          (b_started,))}
    urls = [row[0].lower() for row in rows]
    assert len(urls) == len(set(urls)) == FILES, "a file is duplicated"
    assert len({row[1] for row in rows}) == FILES, "two files share a list item id"

    # Every file a job from A carried was imported by that job and never again by B.
    job_of_file = {row[0].rsplit("/moved/", 1)[1]: row[2] for row in rows}
    for path, job_id in a_items.items():
        assert job_of_file[path] == job_id, f"{path} was imported again after job {job_id} from A"

    b_db = work_b / "sessions" / session_id / "session.db"
    with _read_only(b_db) as connection:
        b_jobs = {row[0]: (row[1], row[2]) for row in connection.execute(
            "SELECT job_id, status, last_event FROM jobs")}
        b_items = {row[0]: row[1] for row in connection.execute(
            "SELECT path, job_id FROM items WHERE kind = 'file' AND job_id IS NOT NULL")}
    for job_id in running_at_kill:
        assert b_jobs[job_id] == ("completed", "JobEnd"), f"job {job_id} from A was not followed on B"
    submitted_by_b = set(b_items.values()) - a_jobs
    assert submitted_by_b, "B submitted nothing, so the test proves nothing about new jobs"
    assert a_jobs <= jobs_before_b
    assert jobs_since_b == submitted_by_b, "the service has jobs since B started that B did not record"
    carried_again = sorted(path for path, job_id in b_items.items() if job_id in submitted_by_b and path in a_items)
    assert not carried_again, f"B submitted files that jobs from A carried: {carried_again[:5]}"

    reports = list((work_b / "sessions" / session_id / "reports").glob("**/ItemReport_R1.csv"))
    assert len(reports) == 1
    with open(reports[0], encoding="utf-8-sig", newline="") as handle:
        statuses = [row["Status"] for row in csv.DictReader(handle)]
    assert len(statuses) == FILES + 3
    assert set(statuses) == {"Migrated"}

    final = _mirror_records(tenant_db)[session_id]
    assert final["state"] == "completed"
    assert final["pending_jobs"] == []
    assert all(task["source"] == str(moved) for task in final["tasks"])

    again = subprocess.run(_cli("sessions", "--working-folder", str(work_b), *common), cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "(remote" not in next(t for t in again.stdout.splitlines() if t.startswith(session_id)), \
        "a session in the local working folder is also listed as remote"

    # A's own copy of the session is now out of date: resuming it there would import B's files
    # again, so it is refused and the mirror keeps B's record.
    stale = subprocess.run(_cli("resume", session_id, *common, "--working-folder", str(work_a)),
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert stale.returncode != 0, stale.stdout
    assert "another copy" in stale.stdout + stale.stderr
    assert "--take-over" in stale.stdout + stale.stderr
    assert _mirror_records(tenant_db)[session_id]["copy"] == final["copy"]


# -- the mirror item contains no secret --------------------------------------------------------------


def _forms(secret: bytes | str) -> set[bytes]:
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {raw, base64.b64encode(raw), raw.hex().encode(), raw.hex().upper().encode(),
             urllib.parse.quote(raw.decode("latin-1"), safe="").encode()}
    return {form for form in forms if len(form) >= 12}


async def test_mirror_item_has_no_secret(sandbox: Sandbox, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
    from spmt_tui.engine.migration import Migration, MigrationTask
    from spmt_tui.engine.settings import Settings
    from spmt_tui.profile import load_profile
    from spmt_tui.spo import sharepoint

    recorded: list[bytes | str] = []
    tokens: set[str] = set()
    original_containers = sharepoint.SharePointClient.provision_containers
    original_queue = sharepoint.SharePointClient.provision_queue

    async def provision_containers(self: Any) -> Any:
        result = await original_containers(self)
        recorded.append(result.key)
        for uri in (result.data_uri, result.metadata_uri):
            recorded.append(urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["sig"][0])
        return result

    async def provision_queue(self: Any) -> str:
        uri = await original_queue(self)
        recorded.append(urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["sig"][0])
        return uri

    class RecordingProvider(UsernamePasswordProvider):
        async def get_token(self) -> str:
            token = await super().get_token()
            tokens.add(token)
            return token

    monkeypatch.setattr(sharepoint.SharePointClient, "provision_containers", provision_containers)
    monkeypatch.setattr(sharepoint.SharePointClient, "provision_queue", provision_queue)
    source = tmp_path / "share"
    for number in range(20):
        (source / f"d{number % 2}").mkdir(parents=True, exist_ok=True)
        (source / f"d{number % 2}" / f"f{number}.txt").write_text(f"file {number}\n" * 20)
    profile_data = json.loads(sandbox.profile_path.read_text())
    profile = load_profile(sandbox.profile_path)
    password = profile_data["user"]["password"]
    provider = RecordingProvider(AuthSettings.from_profile(profile_data), profile_data["user"]["username"],
                                 password)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "mirror-secrets")],
                          Settings(working_folder=tmp_path / "work", package_max_files=5), profile, provider)
    migration.sign_in_method = {"method": "password", "username": profile_data["user"]["username"],
                                "password_env": "SANDBOX_PASSWORD", "token_cache": "memory"}
    result = await migration.run()
    assert result.status == "completed", result.message
    assert tokens and len(recorded) >= 4

    # Read the item back the way another machine would: through REST, every field.
    session = new_session(profile.ca_bundle)
    try:
        client = SharePointClient(profile.site_url, SharePointHttp(session, provider.get_token))
        items = await client.list_items(mirror.LIST_TITLE, filter=f"Title eq '{migration.session_id}'")
        info = await client.list_by_title(mirror.LIST_TITLE)
    finally:
        await session.close()
    assert info is not None and info["Hidden"] is True
    assert info["BaseTemplate"] == 100
    assert len(items) == 1
    raw = json.dumps(items[0]).encode()
    record = mirror.decode_payload(items[0]["SpmtSession"])
    assert record["session"] == migration.session_id
    assert record["state"] == "completed"
    assert record["sign_in"] == {"method": "password", "username": profile_data["user"]["username"],
                                 "password_env": "SANDBOX_PASSWORD", "token_cache": "memory"}
    assert record["tasks"][0]["source"] == str(source)
    assert "working_folder" not in record["settings"]

    secrets: set[bytes] = set()
    for token in tokens:
        secrets |= _forms(token)
        secrets.add(token.split(".")[2].encode())
    for value in recorded:
        secrets |= _forms(value)
    secrets |= _forms(password)
    for secret in secrets:
        assert secret not in raw, f"the mirror item contains a secret ({secret[:6]!r}...)"
    assert b"sig=" not in raw


# -- the sandbox's list REST, as SharePoint Online shapes it -----------------------------------------


async def test_generic_list_rest(sandbox: Sandbox) -> None:
    from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider

    profile = json.loads(sandbox.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(profile), profile["user"]["username"],
                                        profile["user"]["password"])
    session = new_session(profile["ca_bundle"])
    title = f"rest check {time.time_ns()}"
    try:
        http = SharePointHttp(session, provider.get_token)
        client = SharePointClient(profile["site_url"], http)
        assert await client.list_by_title(title) is None
        created = await client.create_generic_list(title, hidden=True)
        assert created["BaseTemplate"] == 100
        assert created["Hidden"] is True
        entity = created["ListItemEntityTypeFullName"]
        assert entity.startswith("SP.Data.")
        assert entity.endswith("ListItem")
        await client.create_field(title, "Host", mirror.FIELD_TEXT)
        await client.create_field(title, "Round", mirror.FIELD_NUMBER)
        with pytest.raises(HttpError) as duplicate:
            await client.create_field(title, "Host", mirror.FIELD_TEXT)
        assert duplicate.value.status == 400
        assert {"Title", "Host", "Round"} <= await client.list_field_names(title)

        for number in range(7):
            await client.add_list_item(title, entity, {"Title": f"item {number}", "Host": "h" + str(number % 2),
                                                       "Round": number})
        # Pages of 3: the client follows __next until every item is read.
        everything = await client.list_items(title, top=3)
        assert [item["Title"] for item in everything] == [f"item {n}" for n in range(7)]
        odd = await client.list_items(title, filter="Host eq 'h1' and Round ge 3", select=("Id", "Title"), top=1)
        assert [item["Title"] for item in odd] == ["item 3", "item 5"]
        assert set(odd[0]) == {"__metadata", "Id", "Title"}
        first = everything[0]
        assert first["__metadata"]["etag"] == '"1"'

        await client.update_list_item(title, first["Id"], entity, {"Round": 40}, etag='"1"')
        with pytest.raises(HttpError) as stale:
            await client.update_list_item(title, first["Id"], entity, {"Round": 41}, etag='"1"')
        assert stale.value.status == 412
        await client.update_list_item(title, first["Id"], entity, {"Round": 42}, etag="*")
        url = f"{client.api}/web/lists/getbytitle('{urllib.parse.quote(title)}')/items({first['Id']})"
        with pytest.raises(HttpError) as no_etag:
            await http.request("POST", url, json_body={"Round": 43}, headers={"X-HTTP-Method": "MERGE"})
        assert no_etag.value.status == 412
        reread = (await http.request("GET", url)).data["d"]
        assert reread["Round"] == 42
        assert reread["__metadata"]["etag"] == '"3"'
        await http.request("PATCH", url, json_body={"Round": 44}, headers={"IF-MATCH": '"3"'})
        assert (await http.request("GET", url)).data["d"]["Round"] == 44

        with pytest.raises(HttpError) as wrong_type:
            await client.add_list_item(title, "SP.Data.SomethingElseListItem", {"Title": "x"})
        assert wrong_type.value.status == 400
        with pytest.raises(HttpError) as unknown:
            await client.add_list_item(title, entity, {"Nope": "x"})
        assert unknown.value.status == 400
        assert "Nope" in unknown.value.message
    finally:
        await session.close()


# -- rebuilding: sources, source maps, the running check --------------------------------------------


def _remote(record: dict[str, Any], state: str = "interrupted", age: float = 3600.0) -> mirror.RemoteSession:
    import datetime as dt

    updated = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=age)
    return mirror.RemoteSession(id=record["session"], host="machine-a", state=state, round=record["round"],
                                updated=updated, record=record, item_id=1)


def _record(source: str) -> dict[str, Any]:
    return {"format": mirror.RECORD_FORMAT, "session": "20260101-000000-abcdef", "host": "machine-a",
            "state": "interrupted", "round": 1, "round_finished": False,
            "tasks": [{"source": source, "site_url": "https://127.0.0.1:1/sites/demo", "library": "Documents",
                       "folder": "x", "settings": {}}],
            "settings": {"package_max_files": 7}, "sign_in": {"method": "password", "password": "leak"},
            "pending_jobs": [{"job_id": "11111111-2222-3333-4444-555555555555", "task": 0, "package": 4}]}


def test_rebuild_missing_source_names_fix(tmp_path: Path) -> None:
    record = _record("/srv/share-that-is-not-here")
    with pytest.raises(mirror.MirrorError) as error:
        mirror.rebuild_session(_remote(record), tmp_path / "work", None, [])
    assert "/srv/share-that-is-not-here" in str(error.value)
    assert "--source-map /srv/share-that-is-not-here=" in str(error.value)
    assert not (tmp_path / "work" / "sessions").exists()


def test_rebuild_creates_session_with_jobs(tmp_path: Path) -> None:
    from spmt_tui.state.store import SessionStore

    share = tmp_path / "new-place" / "share"
    share.mkdir(parents=True)
    record = _record("/old/place/share")
    mirror.rebuild_session(_remote(record), tmp_path / "work", None,
                           mirror.parse_source_map([f"/old/place={tmp_path / 'new-place'}"]))
    store = SessionStore.open(tmp_path / "work" / "sessions" / record["session"] / "session.db")
    try:
        info = store.session_info()
        assert info["status"] == "interrupted"
        assert info["settings"]["package_max_files"] == 7
        assert info["settings"]["_sign_in"] == {"method": "password"}, "a secret-looking key was kept"
        assert store.tasks()[0]["source"] == str(share)
        assert store.rounds() == [{"round": 1, "started": store.rounds()[0]["started"], "finished": None}]
        assert mirror.pending_jobs(store) == [{"job_id": "11111111-2222-3333-4444-555555555555",
                                               "task": 0, "package": 4}]
        assert store.next_package_number(store.task_id(0)) == 5
    finally:
        store.close()
    with pytest.raises(mirror.MirrorError, match="already exists"):
        mirror.rebuild_session(_remote(record), tmp_path / "work", None,
                               mirror.parse_source_map([f"/old/place={tmp_path / 'new-place'}"]))


@pytest.mark.parametrize("value", ["relative=/x", "/x", "/x=", "=/y", "/x=relative"])
def test_source_map_invalid(value: str) -> None:
    with pytest.raises(mirror.MirrorError, match="--source-map"):
        mirror.parse_source_map([value])


def test_source_map_longest_prefix() -> None:
    pairs = mirror.parse_source_map(["/mnt=/a", "/mnt/share=/b"])
    assert mirror.map_source("/mnt/share/x", pairs) == "/b/x"
    assert mirror.map_source("/mnt/other", pairs) == "/a/other"
    assert mirror.map_source("/mnt/shared", pairs) == "/a/shared"
    assert mirror.map_source("/elsewhere", pairs) == "/elsewhere"


def test_running_elsewhere_needs_take_over() -> None:
    record = _record("/x")
    fresh = _remote(record, state="running", age=5)
    with pytest.raises(mirror.MirrorError, match="--take-over"):
        mirror.check_resumable(fresh, take_over=False)
    mirror.check_resumable(fresh, take_over=True)
    mirror.check_resumable(_remote(record, state="running", age=mirror.STALE_SECONDS + 5), take_over=False)
    mirror.check_resumable(_remote(record, state="interrupted", age=5), take_over=False)


def test_large_record_is_compressed() -> None:
    record = {"session": "s", "tasks": [{"source": f"/share/{n:06d}" * 4} for n in range(4000)]}
    text = mirror.encode_payload(record)
    assert len(text) <= mirror.NOTE_MAX_CHARACTERS
    assert text.startswith(mirror.COMPRESSED_PREFIX)
    assert mirror.decode_payload(text) == record



def test_same_host_dead_writer_is_resumable() -> None:
    """A mirror written by a process of this host that has ended does not need --take-over."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {**_record("/x"), "pid": dead.pid}
    here = mirror.RemoteSession("s1", socket.gethostname(), "running", 1,
                                dt.datetime.now(dt.timezone.utc), record, 1)
    mirror.check_resumable(here, take_over=False)
    alive = {**record, "pid": os.getpid()}
    with pytest.raises(mirror.MirrorError, match="--take-over"):
        mirror.check_resumable(mirror.RemoteSession("s1", socket.gethostname(), "running", 1,
                                                    dt.datetime.now(dt.timezone.utc), alive, 1),
                               take_over=False)
    elsewhere = mirror.RemoteSession("s1", "other-host", "running", 1, dt.datetime.now(dt.timezone.utc),
                                     record, 1)
    with pytest.raises(mirror.MirrorError, match="--take-over"):
        mirror.check_resumable(elsewhere, take_over=False)
