"""SPMT CSV reports and summary.json, written from a real session database."""

from __future__ import annotations

import asyncio
import csv
import json
import os
from pathlib import Path

import pytest

from spmt_tui.engine import rules
from spmt_tui.engine.rules import Outcome, ScanRules, ScanSettings
from spmt_tui.engine.source import FileShareSource, SourceBatch
from spmt_tui.reports import csv_reports
from spmt_tui.reports.csv_reports import write_reports, write_user_not_mapped
from spmt_tui.state.store import ReadOnlyStore, SessionStore

LIBRARY = "/sites/s1/Shared Documents"
LONG_FOLDER = "F" * 200
LONG_NAME = "L" * (401 - len(LIBRARY) - 1 - len(LONG_FOLDER) - 1 - len(".txt")) + ".txt"
ITEMS = 11


def build_case21_tree(root: Path) -> None:
    """Six valid files, an invalid name, a 401-character path, a symlink and a hidden file.

    The long path needs a folder (Linux names stop at 255 bytes), so the tree has 11 items and
    the folder is a seventh item that migrates.
    """
    for index in range(6):
        (root / f"ok{index}.txt").write_bytes(b"x" * (index + 1))
    (root / "bad?.txt").write_bytes(b"bad")
    (root / LONG_FOLDER).mkdir()
    (root / LONG_FOLDER / LONG_NAME).write_bytes(b"long")
    (root / "link").symlink_to(root / "ok0.txt")
    (root / ".hidden").write_bytes(b"h")


def scan_into_store(source_root: Path, store: SessionStore, round_number: int = 1) -> list[int]:
    task = store.task_id(0)
    scan = ScanRules(LIBRARY, ScanSettings(include_hidden=False))

    async def run() -> list[int]:
        ids: list[int] = []
        async for batch in FileShareSource(source_root).walk():
            assert isinstance(batch, SourceBatch)
            results = scan.evaluate(batch)
            records = []
            for item, result in zip(batch, results):
                destination = scan.destination_path(item.parent, item.name, result) \
                    if result.outcome is Outcome.PASS else None
                records.append((item, result, destination))
            ids += store.record_scanned(task, round_number, records)
        return ids

    store.begin_round(round_number)
    return asyncio.run(run())


@pytest.fixture
def session(tmp_path: Path) -> tuple[SessionStore, Path]:
    source = tmp_path / "share"
    source.mkdir()
    build_case21_tree(source)
    store = SessionStore.open(tmp_path / "session" / "session.db")
    store.start_session("sess-1", {"include_hidden": False},
                        [{"source": str(source), "site_url": "https://host/sites/s1", "library": "Documents",
                          "folder": ""}])
    store.set_task_target(store.task_id(0), web_id="w", list_id="l",
                          destination_url="https://host/sites/s1/Shared Documents")
    ids = scan_into_store(source, store)
    for row in store.iter_items(store.task_id(0), 1, status="scanned"):
        store.mark(row.id, "migrated", job_id="job-9")
    assert len(ids) == ITEMS
    store.finish_round(1)
    store.finish_session("completed")
    return store, tmp_path / "reports"


def read_csv(path: Path) -> list[list[str]]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), f"{path.name} has no UTF-8 byte order mark"
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return list(csv.reader(handle))


def task_folder(report_dir: Path) -> Path:
    [folder] = [path for path in report_dir.iterdir() if path.name.startswith("TaskReport_")]
    return folder


def test_layout_and_headers(session: tuple[SessionStore, Path]) -> None:
    store, report_dir = session
    write_reports(store, report_dir, device_name="host1")
    folder = task_folder(report_dir)
    assert folder.name == f"TaskReport_{store.tasks()[0]['task_key']}"
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["FailureSummaryReport.csv", "ItemFailureReport_R1.csv", "ItemReport_R1.csv",
                     "ItemSummary_R1.csv", "ScanSummary_R1.csv"]
    assert read_csv(report_dir / "SummaryReport.csv")[0] == csv_reports.SUMMARY_COLUMNS
    assert len(csv_reports.SUMMARY_COLUMNS) == 22
    item_header = read_csv(folder / "ItemReport_R1.csv")[0]
    assert item_header[:16] == csv_reports.ITEM_COLUMNS
    assert len(csv_reports.ITEM_COLUMNS) == 16
    assert read_csv(folder / "ItemFailureReport_R1.csv")[0] == csv_reports.ITEM_FAILURE_COLUMNS
    assert len(csv_reports.ITEM_FAILURE_COLUMNS) == 17
    assert read_csv(folder / "ScanSummary_R1.csv")[0] == csv_reports.SCAN_SUMMARY_COLUMNS
    assert len(csv_reports.SCAN_SUMMARY_COLUMNS) == 12
    assert read_csv(folder / "ItemSummary_R1.csv")[0] == csv_reports.ITEM_SUMMARY_COLUMNS
    assert len(csv_reports.ITEM_SUMMARY_COLUMNS) == 18
    assert read_csv(folder / "FailureSummaryReport.csv")[0] == csv_reports.FAILURE_SUMMARY_COLUMNS
    assert len(csv_reports.FAILURE_SUMMARY_COLUMNS) == 15


# CASE-21: one row per item
def test_every_item_accounted_for(session: tuple[SessionStore, Path]) -> None:
    store, report_dir = session
    write_reports(store, report_dir, device_name="host1")
    rows = read_csv(task_folder(report_dir) / "ItemReport_R1.csv")[1:]
    assert len(rows) == ITEMS
    names = [row[2] for row in rows]
    assert len(set(names)) == ITEMS
    assert f"{LIBRARY}/{LONG_FOLDER}/{LONG_NAME}".__len__() == 401
    by_name = {row[2]: row for row in rows}
    assert by_name["ok0.txt"][6] == "Migrated"
    assert by_name["ok0.txt"][12] == "job-9"
    assert by_name["ok0.txt"][1] == "https://host/sites/s1/Shared Documents/ok0.txt"
    assert by_name["ok0.txt"][0] == os.path.join(store.tasks()[0]["source"], "ok0.txt")
    assert by_name["ok0.txt"][3] == "txt"
    assert by_name["ok0.txt"][15] == "host1"
    bad = by_name["bad?.txt"]
    assert bad[6] == "Failed"
    assert bad[7] == "SCAN FAILURE"
    assert bad[16] == "0x01110010"
    assert "invalid characters" in bad[8]
    assert by_name["link"][6] == "Skipped"
    assert by_name[".hidden"][7] == "FILTERED OUT"
    for row in rows:
        if row[6] != "Migrated":
            assert row[8], f"{row[2]} has no message"
            assert row[16] in csv_reports.ERROR_CODES, f"{row[16]} is not in the error-code table"


def test_failure_report_lists_only_failed(session: tuple[SessionStore, Path]) -> None:
    store, report_dir = session
    write_reports(store, report_dir, device_name="host1")
    failures = read_csv(task_folder(report_dir) / "ItemFailureReport_R1.csv")[1:]
    assert sorted(row[2] for row in failures) == sorted(["bad?.txt", LONG_NAME])
    assert {row[9] for row in failures} == {"0x01110010", "0x0111000B"}


# CASE-21: scanned = migrated + skipped + failed + pending
def test_summary_json_adds_up(session: tuple[SessionStore, Path]) -> None:
    store, report_dir = session
    write_reports(store, report_dir, device_name="host1")
    summary = json.loads((report_dir / "summary.json").read_text())
    [task] = summary["tasks"]
    [round_one] = task["rounds"]
    assert round_one["scanned"] == ITEMS
    assert round_one["migrated"] == 7
    assert round_one["skipped"] == 4
    assert round_one["failed"] == 0
    assert round_one["pending"] == 0
    assert round_one["skipped_breakdown"]["scan_failure"] == 2
    assert round_one["skipped_breakdown"]["filtered_or_unsupported"] == 2
    byte_totals = round_one["bytes"]
    assert byte_totals["migrated"] == sum(range(1, 7))
    assert byte_totals["scanned"] == byte_totals["migrated"] + byte_totals["skipped"] + byte_totals["failed"] \
        + byte_totals["pending"]
    assert summary["totals_latest_round"]["scanned"] == ITEMS
    assert summary["session_id"] == "sess-1"
    assert summary["status"] == "completed"


def test_scan_and_item_summary_values(session: tuple[SessionStore, Path]) -> None:
    store, report_dir = session
    write_reports(store, report_dir, device_name="host1")
    folder = task_folder(report_dir)
    scan = dict(zip(*read_csv(folder / "ScanSummary_R1.csv")))
    assert scan["Total scanned items"] == "11"
    assert scan["Total scanned folders"] == "1"
    assert scan["Items with issues"] == "2"
    assert scan["Items filtered out"] == "2"
    assert scan["Items to be migrated"] == "6"
    assert scan["Folders to be migrated"] == "1"
    item_summary = dict(zip(*read_csv(folder / "ItemSummary_R1.csv")))
    assert item_summary["Migrated"] == "7"
    assert item_summary["Item scan failures"] == "2"
    summary = dict(zip(*read_csv(report_dir / "SummaryReport.csv")))
    assert summary["Total scanned items"] == "11"
    assert summary["Migrated items in current round"] == "7"
    assert summary["Round number"] == "1"
    assert summary["Workflow ID"] == "sess-1"


def test_no_failure_summary_without_failures(tmp_path: Path) -> None:
    source = tmp_path / "share"
    source.mkdir()
    (source / "a.txt").write_bytes(b"a")
    store = SessionStore.open(tmp_path / "s" / "session.db")
    store.start_session("s", {}, [{"source": str(source), "site_url": "https://h/sites/x", "library": "Documents"}])
    scan_into_store(source, store)
    report_dir = write_reports(store, tmp_path / "reports", device_name="d")
    folder = task_folder(report_dir)
    assert not (folder / "FailureSummaryReport.csv").exists()
    assert len(read_csv(folder / "ItemFailureReport_R1.csv")) == 1
    row = read_csv(folder / "ItemReport_R1.csv")[1]
    assert row[6] == "Scan Finished"
    assert row[1] == "https://h/sites/x/Documents/a.txt"


def test_reports_from_read_only_store(session: tuple[SessionStore, Path]) -> None:
    store, report_dir = session
    reader = ReadOnlyStore.open(store.path)
    write_reports(reader, report_dir, device_name="ro")
    assert len(read_csv(task_folder(report_dir) / "ItemReport_R1.csv")) == ITEMS + 1


def test_rounds_get_own_files(session: tuple[SessionStore, Path], tmp_path: Path) -> None:
    store, report_dir = session
    scan_into_store(Path(store.tasks()[0]["source"]), store, round_number=2)
    write_reports(store, report_dir, device_name="host1")
    folder = task_folder(report_dir)
    assert (folder / "ItemReport_R2.csv").exists()
    assert len(read_csv(report_dir / "SummaryReport.csv")) == 3


def test_user_not_mapped_hook(tmp_path: Path) -> None:
    path = write_user_not_mapped(tmp_path, [("DOMAIN\\bob", "not found in the mapping file", 3)])
    assert path == tmp_path / "details" / "UserNotMapped.csv"
    assert read_csv(path)[1] == ["DOMAIN\\bob", "not found in the mapping file", "3"]


# CASE-21: every scan code has an entry in ERROR_CODES
def test_every_rules_code_has_description() -> None:
    codes = [value for name, value in vars(rules).items() if name.startswith("CODE_")]
    assert codes
    for code in codes:
        assert code in csv_reports.ERROR_CODES, f"{code} has no entry in ERROR_CODES"


def test_item_report_streams_large_session(tmp_path: Path) -> None:
    from spmt_tui.state.store import NewItem

    store = SessionStore.open(tmp_path / "s" / "session.db")
    store.start_session("big", {}, [{"source": "/src", "site_url": "https://h/sites/x", "library": "Documents"}])
    task = store.task_id(0)
    store.begin_round(1)
    for start in range(0, 30_000, 10_000):
        store.add_items(task, 1, [NewItem(f"d/f{index}.txt", "file", 1, 1.0, 1.0, False, "scanned",
                                          destination=f"d/f{index}.txt") for index in range(start, start + 10_000)])
    report_dir = write_reports(store, tmp_path / "reports", device_name="d")
    with (task_folder(report_dir) / "ItemReport_R1.csv").open(encoding="utf-8-sig") as handle:
        assert sum(1 for _ in handle) == 30_001
