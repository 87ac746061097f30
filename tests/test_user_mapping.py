"""User mapping: file owners become Created By and Modified By in the sandbox library.

The end-to-end tests give source files different POSIX owners with ``chown``, so they need
root. They check the imported items' Author and ModifiedBy through the sandbox's REST API for
files and its database for folders. They also check the UserNotMapped report and the packages'
UserGroup.xml.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness import REPO, Sandbox
from parity_kit import arrived, file_users, run, settings, task, unique, user_email, write_tree
from spmt_tui.engine.tasks import load_tasks
from spmt_tui.engine.users import MappingIssue, UserMappingError, load_user_mapping
from spmt_tui.reports.csv_reports import USER_NOT_MAPPED_COLUMNS

UNNAMED_UID = 4242  # a uid without a passwd entry: its owner name is "4242"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving files other owners needs root")


def write_mapping(path: Path, rows: list[str], bom: bool = False) -> Path:
    path.write_text(("\ufeff" if bom else "") + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def named_user(uid: int) -> str:
    import pwd

    return pwd.getpwuid(uid).pw_name


def other_users() -> tuple[int, int]:
    """Return two uids other than root that have names on this machine."""
    import pwd

    uids = sorted({entry.pw_uid for entry in pwd.getpwall() if entry.pw_uid != 0})
    if len(uids) < 2:
        pytest.skip("this machine has fewer than two named users besides root")
    return uids[0], uids[1]


def library_url(sandbox: Sandbox, folder: str, relative: str) -> str:
    return f"/sites/demo/Shared Documents/{folder}/{relative}"


def folder_author(sandbox: Sandbox, folder: str, relative: str) -> tuple[str, str]:
    """Return the emails of a folder's author and editor, read from the sandbox database."""
    connection = sqlite3.connect(f"file:{sandbox.data_dir / 'tenant.db'}?mode=ro", uri=True)
    try:
        row = connection.execute(
            "SELECT a.email, e.email FROM folders f "
            "JOIN lists l ON l.id = f.list_id "
            "JOIN users a ON a.site_id = l.site_id AND a.id = f.author_id "
            "JOIN users e ON e.site_id = l.site_id AND e.id = f.editor_id WHERE f.url = ?",
            (library_url(sandbox, folder, relative),),
        ).fetchone()
    finally:
        connection.close()
    assert row is not None, f"folder {folder}/{relative} not found in the sandbox"
    return row[0], row[1]


def kept_user_groups(work: Path) -> list[list[str]]:
    """Return the logins of each kept package's UserGroup.xml."""
    found = []
    for path in sorted(work.glob("sessions/*/packages/*/UserGroup.xml")):
        root = ET.parse(path).getroot()
        found.append([user.get("Login", "") for user in root.iter() if user.tag.endswith("}User")])
    return found


# -- the mapping file ---------------------------------------------------------------------------


def test_mapping_file_rows(tmp_path: Path) -> None:
    path = write_mapping(tmp_path / "map.csv", ["CORP\\jdoe,jane.doe@contoso.com,FALSE", "",
                                                 "staff,Staff Group,true", '"CORP\\a b",ab@contoso.com,False'],
                         bom=True)
    mapping = load_user_mapping(path)
    assert [(row.line, row.source_login, row.target, row.is_group) for row in mapping.rows] == [
        (1, "CORP\\jdoe", "jane.doe@contoso.com", False),
        (3, "staff", "Staff Group", True),
        (4, "CORP\\a b", "ab@contoso.com", False),
    ]
    assert [row.target for row in mapping.user_rows()] == ["jane.doe@contoso.com", "ab@contoso.com"]


# CASE-18: a malformed mapping file is rejected naming the line
def test_mapping_file_errors_name_lines(tmp_path: Path) -> None:
    path = write_mapping(tmp_path / "map.csv", [
        "Source,Target,IsGroup",
        "alice,alice@contoso.com",
        "bob,,FALSE",
        "carol,carol.contoso.com,FALSE",
        "dave,dave@contoso.com,MAYBE",
        "erin,erin@contoso.com,FALSE",
        "ERIN,erin2@contoso.com,FALSE",
    ])
    with pytest.raises(UserMappingError) as caught:
        load_user_mapping(path)
    issues = {(issue.line, issue.column) for issue in caught.value.issues}
    assert issues == {(1, 3), (2, 3), (3, 2), (4, 2), (5, 3), (7, 1)}
    assert "header" in str(caught.value.issues[0])
    assert isinstance(caught.value, ValueError)
    assert "line 7, column 1" in str(caught.value)


def test_mapping_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "map.csv"
    path.write_bytes(b"alice,alice@contoso.com,FALSE\nb\xe9b,bob@contoso.com,FALSE\n")
    with pytest.raises(UserMappingError) as caught:
        load_user_mapping(path)
    assert caught.value.issues == [MappingIssue(2, 2, caught.value.issues[0].message)]


def test_owner_matching(tmp_path: Path) -> None:
    path = write_mapping(tmp_path / "map.csv", [
        "CORP\\jdoe,jane@contoso.com,FALSE",
        "svc@corp.example,svc@contoso.com,FALSE",
        "CORP\\kim,kim1@contoso.com,FALSE",
        "LAB\\kim,kim2@contoso.com,FALSE",
        "root,Admins,TRUE",
    ])
    mapping = load_user_mapping(path)
    assert mapping.find("corp\\JDOE")[0].line == 1
    assert mapping.find("jdoe")[0].line == 1
    assert mapping.find("svc")[0].line == 2
    assert mapping.find("LAB\\kim")[0].line == 4
    row, reason = mapping.find("kim")
    assert row is None
    assert "lines 3, 4" in reason
    assert mapping.find("root")[0].is_group
    assert mapping.find("nobody") == (None, "not in the user mapping file")


# CASE-18: rejected before any upload
def test_cli_rejects_bad_mapping_file(sandbox: Sandbox, tmp_path: Path) -> None:
    mapping = write_mapping(tmp_path / "map.csv", ["root,jane.doe@sandbox.example,FALSE", "bob,bob,FALSE"])
    source = write_tree(tmp_path / "share", {"a.txt": "a"})
    result = subprocess.run(
        [sys.executable, "-m", "spmt_tui", "migrate", str(source), "--tenant-profile", str(sandbox.profile_path),
         "--auth", "password", "--working-folder", str(tmp_path / "work"), "--user-mapping-file", str(mapping)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "line 2, column 2" in result.stderr
    assert not (tmp_path / "work" / "sessions").exists()


# -- end to end ---------------------------------------------------------------------------------


# CASE-18: mapped, unmapped and group owners; UserNotMapped lists each once
@needs_root
async def test_mapped_owners_are_author_and_editor(sandbox: Sandbox, tmp_path: Path) -> None:
    first_uid, second_uid = other_users()
    mapped_name, group_name = named_user(first_uid), named_user(second_uid)
    source = write_tree(tmp_path / "share", {"by_root.txt": "r", "by_mapped.txt": "m", "by_uid.txt": "u",
                                             "by_group.txt": "g", "owned/inner.txt": "i"})
    os.chown(source / "by_mapped.txt", first_uid, -1)
    os.chown(source / "by_uid.txt", UNNAMED_UID, -1)
    os.chown(source / "by_group.txt", second_uid, -1)
    os.chown(source / "owned", first_uid, -1)
    jane, john = user_email(sandbox, "jane.doe"), user_email(sandbox, "john.roe")
    member = user_email(sandbox, "member")
    mapping = write_mapping(tmp_path / "map.csv", [
        f"root,{jane},FALSE",
        f"CORP\\{mapped_name},{john},FALSE",  # matched by its account name
        f"{group_name},Migration Staff,TRUE",
        f"CORP\\unused,{jane.upper()},FALSE",
    ])
    folder = unique("mapped")
    work = tmp_path / "work"
    migration, result = await run(sandbox, [task(sandbox, source, folder)],
                                  settings(work, user_mapping_file=mapping, default_user=member))
    assert result.status == "completed", result.message
    assert sorted(arrived(sandbox, tmp_path / "out", folder)) == \
        ["by_group.txt", "by_mapped.txt", "by_root.txt", "by_uid.txt", "owned/inner.txt"]

    expected = {"by_root.txt": jane, "by_mapped.txt": john, "by_uid.txt": member, "by_group.txt": member,
                "owned/inner.txt": jane}
    for relative, email in expected.items():
        author, editor = await file_users(sandbox, library_url(sandbox, folder, relative))
        assert (relative, author) == (relative, email)
        assert (relative, editor) == (relative, email)
    assert folder_author(sandbox, folder, "owned") == (john, john)

    report = migration.report_dir / "details" / "UserNotMapped.csv"
    assert report.read_bytes().startswith(b"\xef\xbb\xbf")
    with open(report, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == USER_NOT_MAPPED_COLUMNS
    by_owner = {row[0]: row for row in rows[1:]}
    assert sorted(by_owner) == sorted([str(UNNAMED_UID), group_name])
    assert by_owner[str(UNNAMED_UID)][2] == "1"
    assert "not in the user mapping file" in by_owner[str(UNNAMED_UID)][1]
    assert member in by_owner[str(UNNAMED_UID)][1]
    assert "group" in by_owner[group_name][1]
    summary = json.loads((migration.report_dir / "summary.json").read_text())
    assert {entry["source_user"] for entry in summary["users_not_mapped"]} == set(by_owner)

    groups = kept_user_groups(work)
    assert groups, "no package was kept"
    for logins in groups:
        assert len(logins) == len({login.lower() for login in logins}), f"a person is listed twice: {logins}"
    used = {login.rpartition("|")[2].lower() for logins in groups for login in logins}
    assert used == {jane, john, member}


# CASE-18: fallback to the migration account
@needs_root
async def test_unmapped_owner_gets_signed_in_user(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"mine.txt": "r", "theirs.txt": "u"})
    os.chown(source / "theirs.txt", UNNAMED_UID, -1)
    jane, admin = user_email(sandbox, "jane.doe"), user_email(sandbox, "admin")
    mapping = write_mapping(tmp_path / "map.csv", [f"root,{jane},FALSE"])
    folder = unique("default-signed-in")
    _, result = await run(sandbox, [task(sandbox, source, folder)],
                          settings(tmp_path / "work", user_mapping_file=mapping))
    assert result.status == "completed", result.message
    assert await file_users(sandbox, library_url(sandbox, folder, "mine.txt")) == (jane, jane)
    assert await file_users(sandbox, library_url(sandbox, folder, "theirs.txt")) == (admin, admin)


async def test_without_mapping_signed_in_user_is_author(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a"})
    folder = unique("no-mapping")
    migration, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    assert result.status == "completed", result.message
    admin = user_email(sandbox, "admin")
    assert await file_users(sandbox, library_url(sandbox, folder, "a.txt")) == (admin, admin)
    assert not (migration.report_dir / "details" / "UserNotMapped.csv").exists()


async def test_unknown_upn_stops_before_upload(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a"})
    jane = user_email(sandbox, "jane.doe")
    mapping = write_mapping(tmp_path / "map.csv", [f"root,{jane},FALSE", "bob,ghost@sandbox.example,FALSE"])
    folder = unique("unknown-upn")
    work = tmp_path / "work"
    _, result = await run(sandbox, [task(sandbox, source, folder)], settings(work, user_mapping_file=mapping))
    assert result.status == "failed"
    assert "0x02010008" in result.message
    assert "line 2, column 2" in result.message
    assert "ghost@sandbox.example" in result.message
    assert arrived(sandbox, tmp_path / "out", folder) == {}
    assert kept_user_groups(work) == []


async def test_unknown_default_user_stops(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a"})
    _, result = await run(sandbox, [task(sandbox, source, unique("unknown-default"))],
                          settings(tmp_path / "work", default_user="nobody@sandbox.example"))
    assert result.status == "failed"
    assert "nobody@sandbox.example" in result.message


@needs_root
async def test_mapping_file_per_task(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a"})
    jane, john = user_email(sandbox, "jane.doe"), user_email(sandbox, "john.roe")
    to_jane = write_mapping(tmp_path / "jane.csv", [f"root,{jane},FALSE"])
    to_john = write_mapping(tmp_path / "john.csv", [f"root,{john},FALSE"])
    first, second = unique("per-task-jane"), unique("per-task-john")
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(json.dumps({"Tasks": [
        {"SourcePath": str(source), "TargetPath": sandbox.site_url, "TargetList": "Documents",
         "TargetListRelativePath": first},
        {"SourcePath": str(source), "TargetPath": sandbox.site_url, "TargetList": "Documents",
         "TargetListRelativePath": second, "Settings": {"UserMappingCSVFile": "john.csv"}},
    ]}))
    tasks = load_tasks(tasks_file)
    assert tasks[1].settings == {"user_mapping_file": to_john}
    _, result = await run(sandbox, tasks, settings(tmp_path / "work", user_mapping_file=to_jane))
    assert result.status == "completed", result.message
    assert await file_users(sandbox, library_url(sandbox, first, "a.txt")) == (jane, jane)
    assert await file_users(sandbox, library_url(sandbox, second, "a.txt")) == (john, john)
