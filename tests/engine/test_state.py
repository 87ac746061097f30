"""Session database: real SQLite files in tmp_path."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from spmt_tui.engine.rules import Outcome, RuleResult, Finding
from spmt_tui.state import store as store_module
from spmt_tui.state.store import (
    NewItem,
    PackageSecrets,
    ReadOnlyStore,
    SessionStore,
    StoreError,
    strip_sas,
)

TASKS = [{"source": "/srv/share", "site_url": "https://host/sites/demo", "library": "Documents", "folder": ""}]
SETTINGS = {"include_hidden": False, "skip_extensions": "tmp"}


class XorBox:
    """Stand-in secret box for tests (not a real cipher)."""

    def encrypt(self, plaintext: bytes) -> bytes:
        return bytes(byte ^ 0x5A for byte in plaintext)

    def decrypt(self, ciphertext: bytes) -> bytes:
        return bytes(byte ^ 0x5A for byte in ciphertext)


def new_store(tmp_path: Path, secret_box: object | None = None) -> SessionStore:
    store = SessionStore.open(tmp_path / "sessions" / "s1" / "session.db", secret_box=secret_box)  # type: ignore[arg-type]
    store.start_session("s1", SETTINGS, TASKS, profile="/p/tenant.json")
    return store


def item(path: str, size: int = 10, folder: bool = False) -> SimpleNamespace:
    return SimpleNamespace(relative_path=path, is_folder=folder, size=size, created_ts=1.7e9,
                           modified_ts=1.7e9, hidden=False)


def test_file_and_folder_modes(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store.close()
    database = tmp_path / "sessions" / "s1" / "session.db"
    assert stat.S_IMODE(database.stat().st_mode) == 0o600
    assert stat.S_IMODE(database.parent.stat().st_mode) == 0o700
    for sidecar in database.parent.glob("session.db-*"):
        assert stat.S_IMODE(sidecar.stat().st_mode) == 0o600


def test_wal_mode(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert store._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_session_round_trip(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    info = store.session_info()
    assert info["id"] == "s1"
    assert info["settings"] == SETTINGS
    assert info["status"] == "running"
    assert info["pid"] == os.getpid()
    assert store.tasks()[0]["source"] == "/srv/share"
    assert store.task_id(0) == store.tasks()[0]["id"]
    store.finish_session("completed", "done")
    assert store.session_info()["status"] == "completed"
    store.close()
    reopened = SessionStore.open(tmp_path / "sessions" / "s1" / "session.db")
    reopened.start_session("s1", SETTINGS, TASKS)
    assert len(reopened.tasks()) == 1


def test_resume_with_other_tasks_rejected(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    with pytest.raises(StoreError, match="other tasks"):
        store.start_session("s1", SETTINGS, [dict(TASKS[0], library="Other")])
    with pytest.raises(StoreError, match="belongs to session"):
        store.start_session("s2", SETTINGS, TASKS)


def test_dead_process_reads_interrupted(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(child.stdout)
    store._connection.execute("UPDATE session SET pid = ?", (dead_pid,))
    assert store.session_info()["status"] == "interrupted"
    assert store.session_info()["stored_status"] == "running"


def test_stale_heartbeat_reads_interrupted(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    store._connection.execute("UPDATE session SET heartbeat = ?",
                              (time.time() - store_module.HEARTBEAT_STALE_SECONDS - 1,))
    assert store.session_info()["status"] == "interrupted"
    store.heartbeat()
    assert store.session_info()["status"] == "running"


def test_invalid_session_status_rejected(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="invalid session status"):
        new_store(tmp_path).set_status("bogus")


def test_record_scanned_statuses_and_counts(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    store.begin_round(1)
    fail = RuleResult(Outcome.FAIL, (Finding("0x01110010", "SCAN FAILURE", "bad name"),))
    skip = RuleResult(Outcome.SKIP, (Finding("FILTERED_HIDDEN", "FILTERED OUT", "hidden"),))
    renamed = RuleResult(Outcome.PASS, (Finding("0x01110010", "RENAMED", "renamed"),), "a_b.txt")
    records = [
        (item("A", 0, True), RuleResult(Outcome.PASS), "A"),
        (item("A/x.txt", 100), RuleResult(Outcome.PASS), "A/x.txt"),
        (item("a?b.txt", 5), renamed, "a_b.txt"),
        (item("bad?.txt", 7), fail, None),
        (item(".env", 3), skip, None),
    ]
    ids = store.record_scanned(task, 1, records)
    assert len(ids) == 5
    assert len(set(ids)) == 5
    counts = store.counts(round_number=1)
    assert counts["scanned"] == 5
    assert counts["waiting"] == 3
    assert counts["failed"] == 1
    assert counts["skipped"] == 1
    assert counts["folders"] == 1
    assert counts["bytes"] == 115
    row = store.get_item(ids[2])
    assert row is not None
    assert row.new_name == "a_b.txt"
    assert row.category == "RENAMED"
    assert row.destination == "a_b.txt"
    assert store.get_item(ids[3]).code == "0x01110010"  # type: ignore[union-attr]


def test_rescan_same_path_updates_row(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    first = store.record_scanned(task, 1, [(item("locked", 0, True), RuleResult(Outcome.PASS), "locked")])
    unreadable = RuleResult(Outcome.FAIL, (Finding("0x01110003", "SCAN FAILURE", "denied"),))
    second = store.record_scanned(task, 1, [(item("locked", 0, True), unreadable, None),
                                            (item("other.txt"), RuleResult(Outcome.PASS), "other.txt")])
    assert second[0] == first[0]
    counts = store.counts(round_number=1)
    assert counts["scanned"] == 2
    assert counts["failed"] == 1
    assert counts["waiting"] == 1


def test_mark_and_package_flow(tmp_path: Path) -> None:
    store = new_store(tmp_path, XorBox())
    task = store.task_id(0)
    ids = store.add_items(task, 1, [NewItem(f"f{index}.txt", "file", 10, 1.0, 1.0, False, "scanned")
                                    for index in range(4)])
    number = store.next_package_number(task)
    assert number == 1
    store.assign_package(number, ids[:3])
    assert store.counts(round_number=1)["packaged"] == 3
    assert store.counts(round_number=1)["to_migrate"] == 3
    assert store.next_package_number(task) == 2
    store.package_submitted(number, task, "job-1", ids[:3])
    assert store.counts(round_number=1)["submitted"] == 3
    store.job_token("job-1", "1764")
    store.job_event("job-1", "JobError")
    store.job_event("job-1", "JobError")
    assert store.jobs()[0]["next_token"] == "1764"
    assert store.counters("job-1")[("job-1", "JobError")] == 2
    store.mark(ids[0], "migrated", job_id="job-1")
    store.mark(ids[1], "failed", code="0x01710009", message="item failed")
    assert store.mark_if_not(ids[0], "migrated") is False
    assert store.mark_if_not(ids[2], "migrated") is True
    counts = store.counts(round_number=1)
    assert counts["migrated"] == 2
    assert counts["failed"] == 1
    assert counts["migrated_bytes"] == 20
    with pytest.raises(StoreError, match="invalid item status"):
        store.mark(ids[0], "done")


def test_secrets_stored_only_encrypted(tmp_path: Path) -> None:
    store = new_store(tmp_path, XorBox())
    task = store.task_id(0)
    secrets = PackageSecrets("https://acct.blob/data?sv=1&sig=SECRETSIG", "https://acct.blob/meta?sig=SECRETSIG",
                             b"K" * 32, "https://acct.queue/q?sig=SECRETSIG")
    store.save_package_containers(task, 1, secrets)
    store.close()
    raw = (tmp_path / "sessions" / "s1" / "session.db").read_bytes()
    wal = tmp_path / "sessions" / "s1" / "session.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert b"SECRETSIG" not in raw
    assert b"K" * 32 not in raw
    assert "SECRETSIG" not in repr(secrets)
    reopened = SessionStore.open(tmp_path / "sessions" / "s1" / "session.db", secret_box=XorBox())
    assert reopened.load_package_secrets(task, 1) == secrets
    assert reopened.packages(task)[0]["data_container_url"] == "https://acct.blob/data"


def test_secrets_not_stored_without_box(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    store.save_package_containers(task, 1, PackageSecrets("https://a/d?sig=X", "https://a/m?sig=X", b"k" * 32))
    assert store.load_package_secrets(task, 1) is None
    assert strip_sas("https://a:443/c?sv=1&sig=2#frag") == "https://a:443/c"


def test_int_ids_never_reused(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    first = store.allocate_int_ids("LIST-1", 5, floor=100)
    second = store.allocate_int_ids("list-1", 1, floor=50)
    third = store.allocate_int_ids("list-1", 1, floor=1000)
    assert first == 100
    assert second == 105
    assert third == 1000
    assert store.allocate_int_ids("list-2") == 1


def test_assign_ids_stable_per_object(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    [row] = store.add_items(task, 1, [NewItem("f.txt", "file", 1, 1.0, 1.0, False, "scanned")])
    first = store.assign_ids(row, "list-1", "OBJ-1", max_item_id=41)
    again = store.assign_ids(None, "list-1", "obj-1", max_item_id=500)
    other = store.assign_ids(None, "list-1", "obj-2", max_item_id=41)
    assert first.int_id == 42
    assert again == first
    assert other.int_id == 43
    assert first.item_id != first.object_id
    stored = store.get_item(row)
    assert stored is not None
    assert stored.int_id == 42
    assert stored.item_guid == first.item_id


def test_previous_results_prefers_last_migrated(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    [round1] = store.add_items(task, 1, [NewItem("y.txt", "file", 5, 1.0, 2.0, False, "scanned")])
    store.mark(round1, "migrated")
    [round2] = store.add_items(task, 2, [NewItem("y.txt", "file", 5, 1.0, 2.0, False, "scanned")])
    store.mark(round2, "skipped", code="UNCHANGED")
    previous = store.previous_results(task, 3)
    record = previous.get("y.txt")
    assert record is not None
    assert record["status"] == "migrated"
    assert record["round"] == 1
    assert record["modified_ts"] == 2.0
    assert previous.get("missing.txt") is None
    assert "y.txt" in previous
    assert len(previous) == 1
    assert store.previous_results(task, 1).get("y.txt") is None


def test_rounds(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    assert store.next_round() == 1
    store.begin_round(1)
    store.finish_round(1)
    assert store.next_round() == 2
    assert store.rounds()[0]["finished"] is not None


def test_paging_filters_and_search(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    items = [NewItem(f"dir/file_{index:04d}.txt", "file", index, 1.0, 1.0, False,
                     "failed" if index % 10 == 0 else "scanned") for index in range(1000)]
    items.append(NewItem("dir/100%_sure.txt", "file", 1, 1.0, 1.0, False, "scanned"))
    store.add_items(task, 1, items)
    seen = []
    after = 0
    while True:
        page = store.page_items(task, 1, after_id=after, limit=128)
        seen.extend(row.path for row in page.rows)
        if page.next_after is None:
            break
        after = page.next_after
    assert len(seen) == 1001
    assert seen[:2] == ["dir/file_0000.txt", "dir/file_0001.txt"]
    failed = store.page_items(task, 1, status="failed", limit=1000)
    assert len(failed.rows) == 100
    assert all(row.status == "failed" for row in failed.rows)
    found = store.page_items(task, 1, search="FILE_099", limit=100)
    assert [row.path for row in found.rows] == [f"dir/file_{index:04d}.txt" for index in range(990, 1000)]
    assert [row.path for row in store.page_items(task, 1, search="100%").rows] == ["dir/100%_sure.txt"]
    assert store.count_items(task, 1, status="failed") == 100
    assert store.count_items(task, 1, search="file_09") == 100
    assert sum(1 for _ in store.iter_items(task, 1, page_size=77)) == 1001


def test_read_only_store_sees_writes(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    reader = ReadOnlyStore.open(store.path)
    store.add_items(task, 1, [NewItem("a.txt", "file", 1, 1.0, 1.0, False, "scanned")])
    assert reader.counts()["scanned"] == 1
    assert reader.session_info()["id"] == "s1"
    with pytest.raises(Exception):
        reader._connection.execute("DELETE FROM items")
    store.close()
    assert reader.page_items().rows[0].path == "a.txt"
    reader.close()
    with pytest.raises(StoreError, match="not found"):
        ReadOnlyStore.open(tmp_path / "missing.db")


def test_million_items_paging_stays_fast(tmp_path: Path) -> None:
    store = new_store(tmp_path)
    task = store.task_id(0)
    batch = 50_000
    for start in range(0, 1_000_000, batch):
        store.add_items(task, 1, [NewItem(f"d{index // 1000}/f{index}.txt", "file", 1, 1.0, 1.0, False,
                                          "failed" if index % 1000 == 0 else "scanned")
                                  for index in range(start, start + batch)])
    begin = time.perf_counter()
    counts = store.counts(round_number=1)
    deep = store.page_items(task, 1, after_id=990_000, limit=200)
    failed = store.page_items(task, 1, status="failed", after_id=900_000, limit=50)
    elapsed = time.perf_counter() - begin
    assert counts["scanned"] == 1_000_000
    assert counts["failed"] == 1000
    assert len(deep.rows) == 200
    assert len(failed.rows) == 50
    assert elapsed < 1.0
