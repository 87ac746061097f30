"""Bulk task files: SPMT CSV, Migration Manager CSV and JSON, read by ``load_tasks``, and run
through ``spmt-tui migrate --tasks`` into two libraries of the sandbox tenant."""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness import REPO, Sandbox
from parity_kit import arrived, create_library, read_report, run, settings, task, unique, write_tree
from spmt_tui.engine.tasks import TaskFileError, TaskFileIssue, load_tasks

SITE = "https://contoso.example/sites/projects"


@pytest.fixture
def shares(tmp_path: Path) -> Path:
    """A folder with two source shares, ``alpha`` and ``beta``, next to the task files."""
    write_tree(tmp_path / "alpha", {"a.txt": "a"})
    write_tree(tmp_path / "beta", {"b.txt": "b"})
    return tmp_path


def write(path: Path, text: str, *, bom: bool = False, newline: str = "\n") -> Path:
    data = text.replace("\n", newline).encode("utf-8")
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + data)
    return path


def positions(error: pytest.ExceptionInfo[TaskFileError]) -> list[tuple[int, int]]:
    return [(issue.line, issue.column) for issue in error.value.issues]


# -- CSV ----------------------------------------------------------------------------------------


def test_spmt_csv_reads_columns(shares: Path) -> None:
    path = write(shares / "tasks.csv", f"alpha,,,{SITE}/,Documents,Team\\Alpha/,,\n"
                                       f"{shares / 'beta'},,,{SITE},Archive,,,\n")
    tasks = load_tasks(path)
    assert [(t.source, t.site_url, t.library, t.folder, t.settings) for t in tasks] == [
        (str(shares / "alpha"), SITE, "Documents", "Team/Alpha", {}),
        (str(shares / "beta"), SITE, "Archive", "", {}),
    ]


def test_mm_csv_header_bom_crlf(shares: Path) -> None:
    text = ("Source,Source DocLib,Source SubFolder,Target Web,Target DocLib,Target SubFolder\n"
            f"alpha,,,{SITE},Documents,\"Q1, Q2\"\n")
    tasks = load_tasks(write(shares / "mm.csv", text, bom=True, newline="\r\n"))
    assert [(t.library, t.folder) for t in tasks] == [("Documents", "Q1, Q2")]


def test_mm_csv_without_header(shares: Path) -> None:
    tasks = load_tasks(write(shares / "mm.csv", f"alpha,,,{SITE},Documents,\nbeta,,,{SITE},Documents,B\n"))
    assert [t.folder for t in tasks] == ["", "B"]


def test_csv_errors_name_line_and_column(shares: Path) -> None:
    rows = [
        f"alpha,,,{SITE},Documents,ok,,",                     # 1: valid
        f",,,{SITE},Documents,,,",                             # 2: empty source
        f"missing,,,{SITE},Documents,,,",                      # 3: source not found
        f"alpha,Lib,Sub,{SITE},Documents,x,,",                 # 4: SharePoint Server columns
        "alpha,,,contoso.example/sites/x,Documents,y,,",       # 5: not a URL
        f"alpha,,,{SITE},,z,,",                                # 6: empty library
        f"alpha,,,{SITE},Shared Documents,w,,",                # 7: URL name of Documents
        f'alpha,,,{SITE},Documents,"two\nlines",Hub,',          # 8-9: newline in a name, hub column
        f"\\\\fs01\\share,,,{SITE},Documents,v,,",             # 10: UNC path
        f"alpha,,,{SITE},Documents,../up,,",                   # 11: folder leaves the library
        f"alpha,,,{SITE},Documents,u,,{SITE}",                 # 12: hub association
    ]
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "bad.csv", "\n".join(rows) + "\n"))
    assert positions(caught) == [(2, 1), (3, 1), (4, 2), (4, 3), (5, 4), (6, 5), (7, 5), (8, 6), (8, 7),
                                 (10, 1), (11, 6), (12, 8)]
    issues = {(issue.line, issue.column): issue for issue in caught.value.issues}
    assert issues[(5, 4)].field == "Target Web"
    assert "Documents" in issues[(7, 5)].message
    assert "mount" in issues[(10, 1)].message
    assert "line 5, column 4 (Target Web)" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_csv_column_counts(shares: Path) -> None:
    rows = [f"alpha,,,{SITE},Documents,,,", f"beta,,,{SITE},Documents,", f"beta,,,{SITE},Documents,x,,,"]
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "width.csv", "\n".join(rows)))
    assert positions(caught) == [(2, 7), (3, 9)]
    assert "like line 1" in caught.value.issues[0].message
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "short.csv", f"alpha,,,{SITE}\n"))
    assert positions(caught) == [(1, 5)]


def test_csv_duplicate_task(shares: Path) -> None:
    rows = [f"alpha,,,{SITE},Documents,A,,", f"beta,,,{SITE},Documents,A,,",
            f"{shares / 'alpha'},,,{SITE}/,documents,a/,,"]
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "dup.csv", "\n".join(rows)))
    [issue] = caught.value.issues
    assert (issue.line, issue.column) == (3, 1)
    assert "duplicate task" in issue.message
    assert "line 1" in issue.message


def test_csv_not_utf8(shares: Path) -> None:
    path = shares / "latin1.csv"
    valid = f"alpha,,,{SITE},Documents,Ünïcode,,\n"
    before_bad_byte = f"alpha,,,{SITE},Documents,Ünïcode,Caf"
    # A byte order mark, then a valid line, then a line with one Latin-1 byte after UTF-8 text.
    path.write_bytes(b"\xef\xbb\xbf" + valid.encode() + before_bad_byte.encode() + b"\xe9,\n")
    with pytest.raises(TaskFileError) as caught:
        load_tasks(path)
    assert positions(caught) == [(2, len(before_bad_byte) + 1)]


def test_empty_file(shares: Path) -> None:
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "empty.csv", "\n\n"))
    assert "no tasks" in str(caught.value)


# -- JSON ---------------------------------------------------------------------------------------


def test_json_tasks_and_settings(shares: Path) -> None:
    (shares / "map.csv").write_text("root,jane@contoso.example,FALSE\n")
    document = {"Tasks": [
        {"SourcePath": "alpha", "TargetPath": SITE, "TargetList": "Documents",
         "TargetListRelativePath": "Finance/2024",
         "Settings": {"MigrateHiddenItems": False, "SkipFilesWithExtensions": "tmp:bak",
                      "MigrateItemsModifiedAfter": "2019-01-01",
                      "MigrateItemsCreatedAfter": "2019-01-01T08:00:00+02:00",
                      "EnableIncremental": "false", "ReplacementOfInvalidChar": "-",
                      "UserMappingCSVFile": "map.csv", "default_user": "ops@contoso.example",
                      "MigrateFileVersionHistory": True, "PreservePermission": False}},
        {"sourcepath": "beta", "targetpath": SITE, "targetlist": "Archive", "MigrationType": "Content"},
    ]}
    tasks = load_tasks(write(shares / "tasks.json", json.dumps(document, indent=2)))
    assert [(t.source, t.library, t.folder) for t in tasks] == [
        (str(shares / "alpha"), "Documents", "Finance/2024"), (str(shares / "beta"), "Archive", "")]
    assert tasks[0].settings == {
        "include_hidden": False,
        "skip_extensions": "tmp:bak",
        "modified_after": dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc),
        "created_after": dt.datetime(2019, 1, 1, 6, tzinfo=dt.timezone.utc),
        "incremental": False,
        "replace_invalid_char": "-",
        "user_mapping_file": shares / "map.csv",
        "default_user": "ops@contoso.example",
        "preserve_permissions": False,
    }
    assert tasks[1].settings == {}


def test_json_errors_name_line_and_column(shares: Path) -> None:
    text = """{
  "Tasks": [
    {"SourcePath": "alpha", "TargetPath": "https://contoso.example/sites/x",
     "TargetList": "Documents", "Extra": 1},
    {"SourcePath": "missing", "TargetPath": 5, "TargetList": "Documents"},
    {"SourcePath": "alpha", "TargetPath": "https://contoso.example/sites/x"},
    {"SourcePath": "beta", "TargetPath": "https://contoso.example/sites/x", "TargetList": "Documents",
     "Settings": {"MigrateHiddenItems": "sometimes", "PreservePermission": "maybe",
                  "MigrateItemsCreatedAfter": "01/02/2019", "ReplacementOfInvalidChar": "?",
                  "ScanOnly": true, "FilterOutPathSpecialCharacters": false}},
    {"SourcePath": "beta", "TargetPath": "https://contoso.example/sites/x", "TargetList": "Documents",
     "Items": {"Lists": []}}
  ]
}
"""
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "bad.json", text))
    found = {(issue.line, issue.field) for issue in caught.value.issues}
    assert found == {
        (4, "Extra"),
        (5, "Tasks[1].SourcePath"),
        (5, "Tasks[1].TargetPath"),
        (6, "Tasks[2].TargetList"),
        (8, "Tasks[3].Settings.MigrateHiddenItems"),
        (8, "Tasks[3].Settings.PreservePermission"),
        (9, "Tasks[3].Settings.MigrateItemsCreatedAfter"),
        (9, "Tasks[3].Settings.ReplacementOfInvalidChar"),
        (10, "Tasks[3].Settings.ScanOnly"),
        (10, "Tasks[3].Settings.FilterOutPathSpecialCharacters"),
        (12, "Tasks[4].Items"),
    }
    issues = {issue.field: issue for issue in caught.value.issues}
    assert issues["Extra"].column == len('     "TargetList": "Documents", ') + 1
    assert issues["Tasks[2].TargetList"].column == 5  # the task object's "{"
    assert "replacement character" in issues["Tasks[3].Settings.ReplacementOfInvalidChar"].message


def test_json_syntax_error(shares: Path) -> None:
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "broken.json", '{\n  "Tasks": [\n    {"SourcePath": "alpha",}\n  ]\n}\n'))
    [issue] = caught.value.issues
    assert (issue.line, issue.column) == (3, 28)
    assert "invalid JSON" in issue.message


def test_json_shape_errors(shares: Path) -> None:
    cases = {
        '{"tasks": {}}': (1, 2, '"Tasks" must be a list'),
        '{"Jobs": []}': (1, 2, "unknown key"),
        '{"Tasks": []}': (1, 1, "no tasks"),
        '{"Tasks": [3]}': (1, 2, "not an object"),
        '{"Tasks": []} {}': (1, 15, "Extra data"),
        '[{"SourcePath": "alpha"}]': (1, 1, "must contain an object"),
    }
    for index, (text, (line, column, message)) in enumerate(cases.items()):
        with pytest.raises(TaskFileError) as caught:
            load_tasks(write(shares / f"shape{index}.json", text))
        matching = [issue for issue in caught.value.issues if message in issue.message]
        assert matching, f"{text}: no issue says {message!r}: {caught.value}"
        assert (text, matching[0].line, matching[0].column) == (text, line, column)


def test_json_mapping_file_errors(shares: Path) -> None:
    (shares / "map.csv").write_text("root,jane@contoso.example,FALSE\nbob,bob,FALSE\n")
    text = json.dumps({"Tasks": [{"SourcePath": "alpha", "TargetPath": SITE, "TargetList": "Documents",
                                  "Settings": {"UserMappingCSVFile": "map.csv"}}]}, indent=1)
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "tasks.json", text))
    [issue] = caught.value.issues
    assert issue.field == "Tasks[0].Settings.UserMappingCSVFile"
    assert "line 2, column 2" in issue.message


def test_json_duplicate_task(shares: Path) -> None:
    entry = {"SourcePath": "alpha", "TargetPath": SITE, "TargetList": "Documents"}
    with pytest.raises(TaskFileError) as caught:
        load_tasks(write(shares / "dup.json", json.dumps({"Tasks": [entry, entry]}, indent=1)))
    assert [issue.message for issue in caught.value.issues] == [
        "duplicate task: the same source and destination as line 3"]


def test_issue_text() -> None:
    issue = TaskFileIssue(3, 4, "Target Web", "invalid target site URL")
    assert str(issue) == "line 3, column 4 (Target Web): invalid target site URL"


# -- through the command line into the sandbox --------------------------------------------------


def migrate_cli(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "spmt_tui", "migrate", "--tenant-profile", str(sandbox.profile_path),
         "--auth", "password", *args], capture_output=True, text=True, timeout=600, cwd=REPO)


async def test_bulk_csv_rejected_then_migrated(sandbox: Sandbox, tmp_path: Path) -> None:
    write_tree(tmp_path / "alpha", {"a.txt": "a", "docs/b.txt": "b", "scratch.tmp": "t", "keep.bak": "k"})
    write_tree(tmp_path / "beta", {"c.txt": "c", "d/e.txt": "e"})
    archive = unique("Archive")
    await create_library(sandbox, archive)
    first_folder = unique("bulk")
    site = sandbox.site_url
    rows = [f"alpha,,,{site},Documents,{first_folder},,",
            f"beta,,,{site},{archive},,,",
            f"alpha,,,{site.replace('https://', '')},{archive},from-alpha,,"]
    tasks_file = tmp_path / "tasks.csv"
    tasks_file.write_text("\n".join(rows) + "\n")
    # The config file sets a default and a command-line flag replaces it.
    config = tmp_path / "config.toml"
    config.write_text('[settings]\nskip_extensions = "bak"\n')
    work = tmp_path / "work"
    options = ["--tasks", str(tasks_file), "--working-folder", str(work), "--config", str(config),
               "--skip-extensions", "tmp", "--job-poll-seconds", "0.5"]

    rejected = migrate_cli(sandbox, *options)
    assert rejected.returncode == 2, rejected.stdout + rejected.stderr
    assert "line 3, column 4 (Target Web)" in rejected.stderr
    assert not (work / "sessions").exists(), "a session started although the task file is invalid"

    rows[2] = f"alpha,,,{site},{archive},from-alpha,,"
    tasks_file.write_text("\n".join(rows) + "\n")
    done = migrate_cli(sandbox, *options)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("completed")
    expected_alpha = {"a.txt": b"a", "docs/b.txt": b"b", "keep.bak": b"k"}
    assert arrived(sandbox, tmp_path / "out1", first_folder) == expected_alpha
    in_archive = arrived(sandbox, tmp_path / "out2", library=archive)
    assert in_archive == {"c.txt": b"c", "d/e.txt": b"e",
                          **{f"from-alpha/{name}": data for name, data in expected_alpha.items()}}
    [session] = (work / "sessions").iterdir()
    with open(session / "reports" / "SummaryReport.csv", encoding="utf-8-sig", newline="") as handle:
        summary = list(csv.DictReader(handle))
    assert len(summary) == 3
    assert {row["Status"] for row in summary} == {"completed"}


# SPMT's report column names, written out here rather than imported from csv_reports, so a change
# to the module's lists fails this test.
SPMT_SUMMARY = [
    "Source", "Destination", "Status", "Total bytes", "Total GB", "Count of files", "Migrated bytes",
    "Migrated GB in current round", "GB not migrated in current round", "Total scanned items",
    "Total to be migrated in current round", "Migrated items in current round",
    "Items not migrated in current round", "Warning count in current round", "Start time", "End time",
    "Duration (minutes)", "GB/hour", "Round number", "Workflow ID", "Task ID", "Log Path",
]
SPMT_ITEM = [
    "Source", "Destination", "File name", "Extension", "File size", "Content type", "Status",
    "Result category", "Message", "Source item ID", "Destination item ID", "Package number",
    "Migration job ID", "Incremental round", "Task ID", "Device name",
]
SPMT_ITEM_FAILURE = [
    "Source", "Destination", "Item name", "Extension", "Item size", "Content type", "Status",
    "Result category", "Message", "Error code", "Source item ID", "Destination item ID",
    "Package number", "Migration job ID", "Incremental round", "Task ID", "Device name",
]
SPMT_FAILURE_SUMMARY = [
    "Source", "Destination", "File name", "Extension", "File size", "Content type", "Status",
    "Result category", "Message", "Error code", "Package number", "Migration job ID",
    "Incremental round", "Task ID", "Device name",
]
SPMT_SCAN_SUMMARY = [
    "Incremental round", "Total scanned items", "Total scanned folders", "Total scanned list items",
    "Total scanned files", "Folders with issues", "Items with issues", "Items filtered out",
    "Folders to be migrated", "Items to be migrated", "Total items to be migrated", "Device name",
]
SPMT_ITEM_SUMMARY = [
    "Incremental round", "Scanned", "Item scan failures", "Filtered out items",
    "Expected migrated file count", "Read", "Packaged", "Uploaded", "ReUploaded", "Submitted",
    "ReSubmitted", "Migrated", "Failed reading", "Failed packing", "Failed uploading",
    "Failed submitting", "Failed querying", "Device name",
]


def read_header(path: Path) -> list[str]:
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf"), f"{path.name} is not UTF-8 with a byte order mark"
    return next(csv.reader(raw.decode("utf-8-sig").splitlines()))


async def test_report_headers_match_spmt(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"ok.txt": "ok", "bad?.txt": "bad"})
    migration, result = await run(sandbox, [task(sandbox, source, unique("reports"))],
                                  settings(tmp_path / "work"))
    assert result.status == "completed", result.message
    folder = migration.report_dir
    [task_folder] = folder.glob("TaskReport_*")
    assert sorted(path.name for path in task_folder.iterdir()) == [
        "FailureSummaryReport.csv", "ItemFailureReport_R1.csv", "ItemReport_R1.csv",
        "ItemSummary_R1.csv", "ScanSummary_R1.csv"]
    assert read_header(folder / "SummaryReport.csv") == SPMT_SUMMARY
    # ItemReport adds "Error code" and "New name" after SPMT's 16 columns.
    assert read_header(task_folder / "ItemReport_R1.csv")[:16] == SPMT_ITEM
    assert read_header(task_folder / "ItemFailureReport_R1.csv") == SPMT_ITEM_FAILURE
    assert read_header(task_folder / "FailureSummaryReport.csv") == SPMT_FAILURE_SUMMARY
    assert read_header(task_folder / "ScanSummary_R1.csv") == SPMT_SCAN_SUMMARY
    assert read_header(task_folder / "ItemSummary_R1.csv") == SPMT_ITEM_SUMMARY
    [failure] = read_report(migration, "ItemFailureReport_R1.csv")
    assert failure["Item name"] == "bad?.txt"
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["session_id"] == migration.session_id
    assert summary["tasks"][0]["rounds"][0]["migrated"] == 1
