"""SPMT-compatible CSV reports and a JSON summary, written from the session database.

On-disk layout under the report folder (``report_dir``)::

    SummaryReport.csv                   one row per task and round
    summary.json                        session totals and throttling counts for scripts (not an SPMT file)
    details/UserNotMapped.csv           owners that got the default user, when any did
    TaskReport_<task id>/
        ItemReport_R<n>.csv             one row per scanned item of round n
        ItemFailureReport_R<n>.csv      failed items of round n only
        ScanSummary_R<n>.csv            scan totals of round n
        ItemSummary_R<n>.csv            pipeline stage totals of round n
        NotInSource_R<n>.csv            items an earlier round migrated that round n no longer
                                        found at the source (kept in the destination), n > 1
        FailureSummaryReport.csv        failed items of every round, only when any failed

``<task id>`` is the task's GUID. File names, column names and column order follow SPMT's
reports; columns of our own come only after SPMT's. Files are UTF-8 with a byte order mark
(as Excel expects for CSV), and times are UTC as ``yyyy-MM-dd HH:mm:ss``. Item rows are streamed
from the database page by page, so memory does not grow with the number of items.

Counting rules: an item that fails a scan rule has status ``Failed`` and result category
``SCAN FAILURE`` in the item reports, as in SPMT. ``summary.json`` counts such items as
*skipped* (not migrated on purpose, with a reason) and keeps *failed* for items that went wrong
during migration, so ``scanned = migrated + skipped + failed + pending``.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from spmt_tui.state.store import ItemRow, StoreReader

USER_NOT_MAPPED_SCOPE = "user_not_mapped"
"""Counter scope the user mapping writes; each name is a JSON ``[owner, reason]``."""

logger = logging.getLogger("spmt.reports")

GIB = 2**30

SUMMARY_COLUMNS = [
    "Source", "Destination", "Status", "Total bytes", "Total GB", "Count of files", "Migrated bytes",
    "Migrated GB in current round", "GB not migrated in current round", "Total scanned items",
    "Total to be migrated in current round", "Migrated items in current round",
    "Items not migrated in current round", "Warning count in current round", "Start time", "End time",
    "Duration (minutes)", "GB/hour", "Round number", "Workflow ID", "Task ID", "Log Path",
]
ITEM_COLUMNS = [
    "Source", "Destination", "File name", "Extension", "File size", "Content type", "Status",
    "Result category", "Message", "Source item ID", "Destination item ID", "Package number",
    "Migration job ID", "Incremental round", "Task ID", "Device name",
]
ITEM_EXTRA_COLUMNS = ["Error code", "New name"]
ITEM_FAILURE_COLUMNS = [
    "Source", "Destination", "Item name", "Extension", "Item size", "Content type", "Status",
    "Result category", "Message", "Error code", "Source item ID", "Destination item ID",
    "Package number", "Migration job ID", "Incremental round", "Task ID", "Device name",
]
FAILURE_SUMMARY_COLUMNS = [
    "Source", "Destination", "File name", "Extension", "File size", "Content type", "Status",
    "Result category", "Message", "Error code", "Package number", "Migration job ID",
    "Incremental round", "Task ID", "Device name",
]
SCAN_SUMMARY_COLUMNS = [
    "Incremental round", "Total scanned items", "Total scanned folders", "Total scanned list items",
    "Total scanned files", "Folders with issues", "Items with issues", "Items filtered out",
    "Folders to be migrated", "Items to be migrated", "Total items to be migrated", "Device name",
]
ITEM_SUMMARY_COLUMNS = [
    "Incremental round", "Scanned", "Item scan failures", "Filtered out items",
    "Expected migrated file count", "Read", "Packaged", "Uploaded", "ReUploaded", "Submitted",
    "ReSubmitted", "Migrated", "Failed reading", "Failed packing", "Failed uploading",
    "Failed submitting", "Failed querying", "Device name",
]
# NOTE: SPMT's column names for UserNotMapped.csv are not documented; these are our own.
USER_NOT_MAPPED_COLUMNS = ["Source user", "Reason", "Items"]
NOT_IN_SOURCE_COLUMNS = [
    "Source", "Destination", "File name", "Extension", "File size", "Content type", "Status",
    "Message", "Last round", "Incremental round", "Task ID", "Device name",
]
NOT_IN_SOURCE_MESSAGE = ("in the destination, no longer in the source; kept, because deletions and "
                         "moves at the source are not propagated")

STATUS_TEXT = {
    "scanned": "Scan Finished",
    "packaged": "Packaged",
    "uploaded": "Uploaded",
    "submitted": "Submitted",
    "migrated": "Migrated",
    "skipped": "Skipped",
    "failed": "Failed",
}
SCAN_FAILURE = "SCAN FAILURE"
FILTERED_CATEGORIES = frozenset({"FILTERED OUT", "NOT SUPPORTED"})
MIGRATION_FAILURE = "MIGRATION FAILURE"

# Codes by the pipeline stage that fails with them; used for the ItemSummary stage columns.
READ_FAILURE_CODES = frozenset({"0x01110003", "0x02080001", "0x0131000F"})
UPLOAD_FAILURE_CODES = frozenset({"0x01510001", "0x01610001", "0x02070009"})
SUBMIT_FAILURE_CODES = frozenset({"0x01610002"})

ERROR_CODES: dict[str, str] = {
    "0x0111000A": "File size exceeds limit.",
    "0x0111000B": "Target path is too long.",
    "0x0111000F": "Parent folder was not migrated.",
    "0x01110010": "Name contains invalid characters.",
    "0x01110011": "Created or modified time is not supported.",
    "0x01110003": "Cannot read the source item.",
    "0x0131000F": "Failed to read the file; it is checked out or locked.",
    "0x02080001": "The file changed or was deleted while it was being migrated.",
    "0x01510001": "Package upload failed.",
    "0x02070009": "Several packages failed to upload; check the network.",
    "0x01610001": "The Azure container expired.",
    "0x01610002": "Job submission failed.",
    "0x01710006": "The import job ended with a fatal error.",
    "0x01710009": "The job ended with items not migrated.",
    "THICKET_FOLDER_UNSUPPORTED": "Folder names ending in _files or _file cannot be created.",
    "NAME_LEADING_TRAILING_SPACE": "Name has a leading or trailing space.",
    "NAME_TRAILING_DOT": "Name ends with a dot.",
    "NAME_RESERVED": "Name is reserved in SharePoint.",
    "NAME_CONTAINS_VTI": "Name contains _vti_.",
    "FORMS_FOLDER_AT_LIBRARY_ROOT": "A folder named forms is not allowed at the library root.",
    "FOLDER_NAME_STARTS_WITH_TILDE": "Folder name starts with ~.",
    "NAME_CONFLICT_IGNORING_CASE": "Another item in the folder has the same name ignoring case.",
    "SYSTEM_FILE_UNSUPPORTED": "Windows system file, not migrated.",
    "OFFICE_OWNER_FILE_UNSUPPORTED": "Temporary Office owner file, not migrated.",
    "SYMLINK_UNSUPPORTED": "Symbolic link, not followed.",
    "FILTERED_HIDDEN": "Hidden item, filtered out by the hidden-files setting.",
    "FILTERED_CREATED_BEFORE": "Created before the created-after filter date.",
    "FILTERED_MODIFIED_BEFORE": "Modified before the modified-after filter date.",
    "FILTERED_EXTENSION": "Extension is in the skipped-extensions list.",
    "UNCHANGED": "Unchanged since the previous round, not migrated again.",
    "DESTINATION_NEWER": "The destination copy is as new or newer; kept.",
}
"""Description of every code the scanner and the pipeline write to the reports."""


def _format_time(value: float | None) -> str:
    if value is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))


def _gigabytes(size: int) -> str:
    return f"{size / GIB:.3f}"


def _open_csv(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("w", encoding="utf-8-sig", newline="")


def _task_destination(task: dict[str, Any]) -> str:
    if task.get("destination_url"):
        return str(task["destination_url"]).rstrip("/")
    parts = [task["site_url"].rstrip("/"), task["library"].strip("/")]
    if task.get("folder"):
        parts.append(task["folder"].strip("/"))
    return "/".join(parts)


def _source_path(task: dict[str, Any], relative: str) -> str:
    return os.path.join(task["source"], *relative.split("/"))


def _destination_url(task: dict[str, Any], row: ItemRow) -> str:
    if not row.destination:
        return ""
    return f"{_task_destination(task)}/{row.destination}"


def _category(row: ItemRow) -> str:
    if row.category:
        return row.category
    if row.status == "failed":
        return MIGRATION_FAILURE
    return ""


class _Totals:
    """Numbers of one task and round, computed from :meth:`item_breakdown` rows."""

    def __init__(self, breakdown: list[dict[str, Any]]) -> None:
        self.scanned = self.folders = self.files = 0
        self.folders_with_issues = self.items_with_issues = self.filtered = 0
        self.folders_to_migrate = self.files_to_migrate = 0
        self.bytes_total = self.bytes_migrated = self.bytes_skipped = self.bytes_failed = 0
        self.migrated = self.migrated_files = self.failed = self.warnings = 0
        self.read = self.packaged = self.uploaded = self.reuploaded = 0
        self.submitted = self.resubmitted = 0
        self.failed_reading = self.failed_packing = self.failed_uploading = 0
        self.failed_submitting = self.failed_querying = 0
        for entry in breakdown:
            self._add(entry)

    def _add(self, entry: dict[str, Any]) -> None:
        count, size = entry["count"], entry["bytes"]
        is_folder = entry["kind"] == "folder"
        status, category, code = entry["status"], entry["category"], entry["code"]
        self.scanned += count
        self.folders += count if is_folder else 0
        self.files += 0 if is_folder else count
        self.bytes_total += 0 if is_folder else size

        scan_failure = category == SCAN_FAILURE
        filtered = status == "skipped" and category in FILTERED_CATEGORIES
        if scan_failure:
            if is_folder:
                self.folders_with_issues += count
            else:
                self.items_with_issues += count
        elif filtered:
            self.filtered += count
        elif status != "skipped":
            if is_folder:
                self.folders_to_migrate += count
            else:
                self.files_to_migrate += count

        if scan_failure or status == "skipped":
            self.bytes_skipped += 0 if is_folder else size
        if category == "RENAMED":
            self.warnings += count
        if status == "migrated":
            self.migrated += count
            self.migrated_files += 0 if is_folder else count
            self.bytes_migrated += 0 if is_folder else size
        if status == "failed" and not scan_failure:
            self.failed += count
            self.bytes_failed += 0 if is_folder else size
            self._add_stage_failure(entry)

        self.read += count if entry["read"] or entry["packaged"] else 0
        self.packaged += count if entry["packaged"] else 0
        uploaded = entry["submitted"] or status in ("uploaded", "submitted", "migrated")
        self.uploaded += count if uploaded and not is_folder else 0
        self.reuploaded += count if entry["reuploaded"] else 0
        self.submitted += count if entry["submitted"] else 0
        self.resubmitted += count if entry["resubmitted"] else 0

    def _add_stage_failure(self, entry: dict[str, Any]) -> None:
        count, code = entry["count"], entry["code"]
        if code in READ_FAILURE_CODES:
            self.failed_reading += count
        elif code in UPLOAD_FAILURE_CODES:
            self.failed_uploading += count
        elif code in SUBMIT_FAILURE_CODES:
            self.failed_submitting += count
        elif entry["submitted"]:
            self.failed_querying += count
        else:
            self.failed_packing += count


def write_reports(
    store: StoreReader,
    report_dir: str | os.PathLike[str],
    *,
    device_name: str | None = None,
    log_path: str = "",
) -> Path:
    """Write every report of the session to ``report_dir``; returns the folder.

    Works with a read-write or a read-only store, during a run or after it.
    """
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    device = device_name or socket.gethostname()
    info = store.session_info()
    rounds = {entry["round"]: entry for entry in store.rounds()}
    summary_rows: list[list[Any]] = []
    summary_tasks: list[dict[str, Any]] = []
    for task in store.tasks():
        task_folder = folder / f"TaskReport_{task['task_key']}"
        task_rounds = store.item_rounds(task["id"])
        task_summary: dict[str, Any] = {
            "task_id": task["task_key"], "source": task["source"],
            "destination": _task_destination(task), "rounds": [],
        }
        any_failed = False
        for round_number in task_rounds:
            totals = _Totals(store.item_breakdown(task["id"], round_number))
            _write_item_reports(store, task, round_number, task_folder, device)
            _write_scan_summary(task_folder, round_number, totals, device)
            _write_item_summary(task_folder, round_number, totals, device)
            not_in_source = _write_not_in_source(store, task, round_number, rounds.get(round_number, {}),
                                                 task_folder, device)
            any_failed = any_failed or totals.failed > 0 or totals.items_with_issues > 0 \
                or totals.folders_with_issues > 0
            summary_rows.append(_summary_row(task, info, rounds.get(round_number, {}), round_number,
                                             totals, log_path or str(folder)))
            task_summary["rounds"].append({**_round_json(round_number, totals), "not_in_source": not_in_source})
        failure_path = task_folder / "FailureSummaryReport.csv"
        if any_failed:
            _write_failure_summary(store, task, task_rounds, failure_path, device)
        elif failure_path.exists():
            failure_path.unlink()
        summary_tasks.append(task_summary)
    with _open_csv(folder / "SummaryReport.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        writer.writerows(summary_rows)
    not_mapped = _users_not_mapped(store)
    if not_mapped:
        write_user_not_mapped(folder, not_mapped)
    session_counters = store.counters("session")
    throttling = {"responses": session_counters.get(("session", "throttled"), 0),
                  "seconds_waited": session_counters.get(("session", "throttled_seconds"), 0)}
    _write_summary_json(folder / "summary.json", info, summary_tasks, device, not_mapped, throttling)
    logger.info("reports written to %s", folder)
    return folder


def _item_values(task: dict[str, Any], row: ItemRow, device: str) -> dict[str, Any]:
    is_folder = row.kind == "folder"
    return {
        "source": _source_path(task, row.path),
        "destination": _destination_url(task, row),
        "name": row.name,
        "extension": row.extension,
        "size": row.size if not is_folder else "",
        "content_type": "Folder" if is_folder else "Document",
        "status": STATUS_TEXT.get(row.status, row.status),
        "category": _category(row),
        "message": row.message or "",
        "code": row.code or "",
        "source_id": "",
        "destination_id": row.item_guid or "",
        "package": row.package_number if row.package_number is not None else "",
        "job": row.job_id or "",
        "round": row.round,
        "task": task["task_key"],
        "device": device,
    }


def _write_item_reports(store: StoreReader, task: dict[str, Any], round_number: int, task_folder: Path,
                        device: str) -> None:
    item_path = task_folder / f"ItemReport_R{round_number}.csv"
    failure_path = task_folder / f"ItemFailureReport_R{round_number}.csv"
    with _open_csv(item_path) as items_handle, _open_csv(failure_path) as failures_handle:
        items = csv.writer(items_handle)
        failures = csv.writer(failures_handle)
        items.writerow(ITEM_COLUMNS + ITEM_EXTRA_COLUMNS)
        failures.writerow(ITEM_FAILURE_COLUMNS)
        # The same fields as _item_values, with the per-task parts computed once, because this
        # loop runs once per scanned item and _item_values took about half of it in cProfile.
        source_prefix = os.path.join(task["source"], "")
        destination_prefix = _task_destination(task) + "/"
        task_key = task["task_key"]
        for row in store.iter_items(task["id"], round_number):
            is_folder = row.kind == "folder"
            source = source_prefix + row.path.replace("/", os.sep)
            destination = destination_prefix + row.destination if row.destination else ""
            size = "" if is_folder else row.size
            content_type = "Folder" if is_folder else "Document"
            status = STATUS_TEXT.get(row.status, row.status)
            category = _category(row)
            message = row.message or ""
            code = row.code or ""
            destination_id = row.item_guid or ""
            package = row.package_number if row.package_number is not None else ""
            job = row.job_id or ""
            name = row.name
            extension = row.extension
            items.writerow((
                source, destination, name, extension, size, content_type, status, category,
                message, "", destination_id, package, job, row.round, task_key, device,
                code, row.new_name or "",
            ))
            if row.status == "failed":
                failures.writerow((
                    source, destination, name, extension, size, content_type, status, category,
                    message, code, "", destination_id, package, job, row.round, task_key, device,
                ))


def _write_not_in_source(store: StoreReader, task: dict[str, Any], round_number: int, round_info: dict[str, Any],
                         task_folder: Path, device: str) -> int:
    """Write ``NotInSource_R<n>.csv`` once round n has finished its scan, and return its row count."""
    path = task_folder / f"NotInSource_R{round_number}.csv"
    if round_number <= 1 or not round_info.get("finished"):
        return 0  # an unfinished scan has not seen every source item yet
    count = 0
    with _open_csv(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(NOT_IN_SOURCE_COLUMNS)
        after = ""
        while rows := store.items_not_in_source(task["id"], round_number, after_path=after):
            for row in rows:
                values = _item_values(task, row, device)
                writer.writerow([
                    values["source"], values["destination"], values["name"], values["extension"],
                    values["size"], values["content_type"], "Kept at destination", NOT_IN_SOURCE_MESSAGE,
                    row.round, round_number, values["task"], device,
                ])
            count += len(rows)
            after = rows[-1].path
    return count


def _write_failure_summary(store: StoreReader, task: dict[str, Any], rounds: list[int], path: Path,
                           device: str) -> None:
    with _open_csv(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(FAILURE_SUMMARY_COLUMNS)
        for round_number in rounds:
            for row in store.iter_items(task["id"], round_number, status="failed"):
                values = _item_values(task, row, device)
                writer.writerow([
                    values["source"], values["destination"], values["name"], values["extension"],
                    values["size"], values["content_type"], values["status"], values["category"],
                    values["message"], values["code"], values["package"], values["job"],
                    values["round"], values["task"], values["device"],
                ])


def _write_scan_summary(task_folder: Path, round_number: int, totals: _Totals, device: str) -> None:
    with _open_csv(task_folder / f"ScanSummary_R{round_number}.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(SCAN_SUMMARY_COLUMNS)
        writer.writerow([
            round_number, totals.scanned, totals.folders, 0, totals.files,
            totals.folders_with_issues, totals.items_with_issues, totals.filtered,
            totals.folders_to_migrate, totals.files_to_migrate,
            totals.folders_to_migrate + totals.files_to_migrate, device,
        ])


def _write_item_summary(task_folder: Path, round_number: int, totals: _Totals, device: str) -> None:
    # NOTE: the store keeps each item's latest status, not a log of stage transitions, so the
    # stage columns count items that reached a stage and are derived from status, package, job
    # id, attempt counters and the failure code.
    with _open_csv(task_folder / f"ItemSummary_R{round_number}.csv") as handle:
        writer = csv.writer(handle)
        writer.writerow(ITEM_SUMMARY_COLUMNS)
        writer.writerow([
            round_number, totals.scanned, totals.folders_with_issues + totals.items_with_issues,
            totals.filtered, totals.files_to_migrate, totals.read, totals.packaged, totals.uploaded,
            totals.reuploaded, totals.submitted, totals.resubmitted, totals.migrated,
            totals.failed_reading, totals.failed_packing, totals.failed_uploading,
            totals.failed_submitting, totals.failed_querying, device,
        ])


def _summary_row(task: dict[str, Any], info: dict[str, Any], round_info: dict[str, Any],
                 round_number: int, totals: _Totals, log_path: str) -> list[Any]:
    started = round_info.get("started") or task.get("started")
    finished = round_info.get("finished") or task.get("finished")
    duration = ((finished - started) / 60.0) if started and finished else None
    gb_per_hour = (totals.bytes_migrated / GIB) / (duration / 60.0) if duration else None
    to_migrate = totals.folders_to_migrate + totals.files_to_migrate
    status = task.get("status") if task.get("status") not in (None, "pending") else info["status"]
    return [
        task["source"], _task_destination(task), status, totals.bytes_total,
        _gigabytes(totals.bytes_total), totals.files, totals.bytes_migrated,
        _gigabytes(totals.bytes_migrated), _gigabytes(totals.bytes_total - totals.bytes_migrated),
        totals.scanned, to_migrate, totals.migrated, totals.scanned - totals.migrated, totals.warnings,
        _format_time(started), _format_time(finished),
        f"{duration:.2f}" if duration is not None else "",
        f"{gb_per_hour:.3f}" if gb_per_hour is not None else "",
        round_number, info["id"], task["task_key"], log_path,
    ]


def _round_json(round_number: int, totals: _Totals) -> dict[str, Any]:
    scan_failures = totals.folders_with_issues + totals.items_with_issues
    skipped_other = totals.scanned - scan_failures - totals.folders_to_migrate - totals.files_to_migrate
    pending = totals.folders_to_migrate + totals.files_to_migrate - totals.migrated - totals.failed
    return {
        "round": round_number,
        "scanned": totals.scanned,
        "migrated": totals.migrated,
        "skipped": scan_failures + skipped_other,
        "failed": totals.failed,
        "pending": max(pending, 0),
        "skipped_breakdown": {
            "scan_failure": scan_failures,
            "filtered_or_unsupported": totals.filtered,
            "other": skipped_other - totals.filtered,
        },
        "bytes": {
            "scanned": totals.bytes_total,
            "migrated": totals.bytes_migrated,
            "skipped": totals.bytes_skipped,
            "failed": totals.bytes_failed,
            "pending": totals.bytes_total - totals.bytes_migrated - totals.bytes_skipped - totals.bytes_failed,
        },
        "files": totals.files,
        "folders": totals.folders,
        "warnings": totals.warnings,
    }


def _users_not_mapped(store: StoreReader) -> list[tuple[str, str, int]]:
    """Return ``(owner, reason, items)`` rows from the counters the user mapping keeps."""
    rows = []
    for (_, name), count in store.counters(USER_NOT_MAPPED_SCOPE).items():
        owner, reason = json.loads(name)
        rows.append((owner, reason, count))
    return sorted(rows)


def _write_summary_json(path: Path, info: dict[str, Any], tasks: list[dict[str, Any]], device: str,
                        not_mapped: list[tuple[str, str, int]],
                        throttling: dict[str, int] | None = None) -> None:
    totals: dict[str, int] = {"scanned": 0, "migrated": 0, "skipped": 0, "failed": 0, "pending": 0,
                              "bytes_scanned": 0, "bytes_migrated": 0}
    for task in tasks:
        if not task["rounds"]:
            continue
        latest = task["rounds"][-1]
        for key in ("scanned", "migrated", "skipped", "failed", "pending"):
            totals[key] += latest[key]
        totals["bytes_scanned"] += latest["bytes"]["scanned"]
        totals["bytes_migrated"] += latest["bytes"]["migrated"]
    document = {
        "session_id": info["id"],
        "status": info["status"],
        "message": info.get("message", ""),
        "created": _format_time(info.get("created")),
        "finished": _format_time(info.get("finished")),
        "device_name": device,
        "totals_latest_round": totals,
        "throttling": throttling or {"responses": 0, "seconds_waited": 0},
        "tasks": tasks,
        "users_not_mapped": [{"source_user": owner, "reason": reason, "items": items}
                             for owner, reason, items in not_mapped],
    }
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def write_user_not_mapped(report_dir: str | os.PathLike[str],
                          users: Iterable[tuple[str, str, int]]) -> Path:
    """Write ``details/UserNotMapped.csv`` with ``(source user, reason, item count)`` rows."""
    path = Path(report_dir) / "details" / "UserNotMapped.csv"
    with _open_csv(path) as handle:
        writer = csv.writer(handle)
        writer.writerow(USER_NOT_MAPPED_COLUMNS)
        writer.writerows(users)
    return path
