"""Each migration setting changes what arrives in the sandbox library, globally and per task.

Every test runs real migrations in this process against the session's sandbox tenant, then
exports the library and reads the reports. Tasks that set their own value run next to tasks
that use the session's value, so one run shows both.
"""

from __future__ import annotations

import argparse

import pytest
import datetime as dt
import os
from pathlib import Path
from typing import Any

from harness import Sandbox
from parity_kit import (
    arrived,
    by_name,
    read_report,
    rerun,
    run,
    settings,
    task,
    unique,
    write_tree,
)
from spmt_tui.engine.progress import ItemEvent
from spmt_tui.engine.sessions import list_sessions
from spmt_tui.engine.settings import Settings, add_arguments, load_config, settings_from_args


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


async def test_scan_only_uploads_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a", "sub/b.txt": "b", "bad?.txt": "c"})
    folder = unique("scan-only")
    migration, result = await run(sandbox, [task(sandbox, source, folder)],
                                  settings(tmp_path / "work", scan_only=True))
    assert result.status == "scan_only", result.message
    assert arrived(sandbox, tmp_path / "out", folder) == {}
    rows = by_name(read_report(migration, "ItemReport_R1.csv"))
    assert rows["a.txt"]["Status"] == "Scan Finished"
    assert rows["bad?.txt"]["Result category"] == "SCAN FAILURE"
    [scan] = read_report(migration, "ScanSummary_R1.csv")
    assert scan["Items to be migrated"] == "2"
    assert scan["Items with issues"] == "1"


async def test_start_after_scan_waits_for_resume(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a", ".hidden.txt": "h"})
    first, second = unique("wait-a"), unique("wait-b")
    tasks = [task(sandbox, source, first), task(sandbox, source, second, include_hidden=False)]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", start_when_no_issue=False))
    assert result.status == "stopped_after_scan", result.message
    assert arrived(sandbox, tmp_path / "out1", first) == {}

    # Resuming migrates, and the second task keeps its own setting from the stored session.
    resumed, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    assert resumed.tasks[1].settings == {"include_hidden": False}
    assert sorted(arrived(sandbox, tmp_path / "out2", first)) == [".hidden.txt", "a.txt"]
    assert sorted(arrived(sandbox, tmp_path / "out3", second)) == ["a.txt"]


async def test_start_without_wait_migrates_in_one_run(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a", "bad?.txt": "b"})
    folder = unique("no-wait")
    _, result = await run(sandbox, [task(sandbox, source, folder)],
                          settings(tmp_path / "work", start_when_no_issue=True))
    assert result.status == "completed", result.message
    assert sorted(arrived(sandbox, tmp_path / "out", folder)) == ["a.txt"]


# CASE-20: include-hidden off and on, globally and per task
async def test_include_hidden(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"plain.txt": "p", ".hidden.txt": "h", ".dir/inner.txt": "i"})
    global_off, task_on = unique("hidden-off"), unique("hidden-on")
    tasks = [task(sandbox, source, global_off), task(sandbox, source, task_on, include_hidden=True)]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", include_hidden=False))
    assert result.status == "completed", result.message
    assert sorted(arrived(sandbox, tmp_path / "out1", global_off)) == ["plain.txt"]
    assert sorted(arrived(sandbox, tmp_path / "out2", task_on)) == [".dir/inner.txt", ".hidden.txt", "plain.txt"]
    rows = by_name(read_report(migration, "ItemReport_R1.csv", 0))
    assert rows[".hidden.txt"]["Result category"] == "FILTERED OUT"
    assert rows[".dir"]["Status"] == "Skipped"


async def test_date_filters_use_time_zone(sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "share"
    times = {"early.txt": "2024-01-01T08:00:00+00:00", "middle.txt": "2024-01-01T10:00:00+00:00",
             "late.txt": "2024-01-01T12:00:00+00:00"}
    for name, when in times.items():
        write_tree(source, {name: name}, mtime=utc(when))
    # 11:00 at UTC+2 is 09:00 UTC, so "middle" passes; 11:00 at UTC does not let it pass.
    plus_two, utc_zone, created = unique("mod-plus2"), unique("mod-utc"), unique("created")
    tasks = [
        task(sandbox, source, plus_two),
        task(sandbox, source, utc_zone, modified_after=dt.datetime.fromisoformat("2024-01-01T11:00:00+00:00")),
        # Linux reports no creation time, so the created filter compares the modified time.
        task(sandbox, source, created, modified_after=None,
             created_after=dt.datetime.fromisoformat("2024-01-01T13:00:00+02:00")),
    ]
    run_settings = settings(tmp_path / "work",
                            modified_after=dt.datetime.fromisoformat("2024-01-01T11:00:00+02:00"))
    migration, result = await run(sandbox, tasks, run_settings)
    assert result.status == "completed", result.message
    assert sorted(arrived(sandbox, tmp_path / "out1", plus_two)) == ["late.txt", "middle.txt"]
    assert sorted(arrived(sandbox, tmp_path / "out2", utc_zone)) == ["late.txt"]
    assert sorted(arrived(sandbox, tmp_path / "out3", created)) == ["late.txt"]
    rows = by_name(read_report(migration, "ItemReport_R1.csv", 1))
    assert rows["middle.txt"]["Result category"] == "FILTERED OUT"
    assert "modified" in rows["middle.txt"]["Message"]


async def test_skip_extensions_last_only(sandbox: Sandbox, tmp_path: Path) -> None:
    files = {"a.tmp": "a", "b.BAK": "b", "c.tar.gz": "c", "d.gz.txt": "d", "noext": "e",
             "folder.tmp/inside.txt": "f"}
    source = write_tree(tmp_path / "share", files)
    global_list, task_list = unique("ext-global"), unique("ext-task")
    tasks = [task(sandbox, source, global_list), task(sandbox, source, task_list, skip_extensions="txt")]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", skip_extensions="tmp:bak:gz"))
    assert result.status == "completed", result.message
    assert sorted(arrived(sandbox, tmp_path / "out1", global_list)) == \
        ["d.gz.txt", "folder.tmp/inside.txt", "noext"]
    assert sorted(arrived(sandbox, tmp_path / "out2", task_list)) == ["a.tmp", "b.BAK", "c.tar.gz", "noext"]
    rows = by_name(read_report(migration, "ItemReport_R1.csv", 0))
    assert rows["c.tar.gz"]["Result category"] == "FILTERED OUT"
    assert rows["folder.tmp"]["Status"] == "Migrated"


# CASE-03: replace invalid characters on and off; renamed files keep their destination in the next round
async def test_replace_invalid_char_and_next_round(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a?b.txt": "renamed", "a_b.txt": "original", "c:d.txt": "c",
                                             "dir*/x.txt": "x"}, mtime=utc("2024-03-01T00:00:00+00:00"))
    replaced, skipped = unique("replace"), unique("no-replace")
    tasks = [task(sandbox, source, replaced), task(sandbox, source, skipped, replace_invalid_char=None)]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", replace_invalid_char="_"))
    assert result.status == "completed", result.message
    first = arrived(sandbox, tmp_path / "out1", replaced)
    assert first == {"a_b (1).txt": b"renamed", "a_b.txt": b"original", "c_d.txt": b"c", "dir_/x.txt": b"x"}
    assert arrived(sandbox, tmp_path / "out2", skipped) == {"a_b.txt": b"original"}
    rows = by_name(read_report(migration, "ItemReport_R1.csv", 0))
    assert rows["a?b.txt"]["Destination"].endswith(f"/{replaced}/a_b (1).txt")
    assert rows["a?b.txt"]["New name"] == "a_b (1).txt"
    assert rows["a?b.txt"]["Result category"] == "RENAMED"

    # The next round finds the renamed file under its source name: unchanged is skipped, and a
    # changed file replaces the same destination file instead of adding "a_b (2).txt".
    (source / "c:d.txt").write_text("changed")
    os.utime(source / "c:d.txt", (utc("2024-03-02T00:00:00+00:00"),) * 2)
    again, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    second = by_name(read_report(again, "ItemReport_R2.csv", 0))
    assert second["a?b.txt"]["Status"] == "Skipped"
    assert second["a?b.txt"]["Error code"] == "UNCHANGED"
    assert second["c:d.txt"]["Status"] == "Migrated"
    final = arrived(sandbox, tmp_path / "out3", replaced)
    assert final == {**first, "c_d.txt": b"changed"}


# CASE-19: unchanged files are skipped in round 2; incremental off copies again
async def test_incremental(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a", "sub/b.txt": "b"})
    on, off = unique("incr-on"), unique("incr-off")
    tasks = [task(sandbox, source, on), task(sandbox, source, off, incremental=False)]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", incremental=True))
    assert result.status == "completed", result.message
    again, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    skipped = by_name(read_report(again, "ItemReport_R2.csv", 0))
    copied = by_name(read_report(again, "ItemReport_R2.csv", 1))
    assert skipped["a.txt"]["Status"] == "Skipped"
    assert skipped["b.txt"]["Error code"] == "UNCHANGED"
    assert copied["a.txt"]["Status"] == "Migrated"
    assert copied["b.txt"]["Migration job ID"], "the second round did not import b.txt again"
    assert sorted(arrived(sandbox, tmp_path / "out", off)) == ["a.txt", "sub/b.txt"]


# CASE-19: auto rerun takes files added during round 1
async def test_auto_rerun_catches_late_files(sandbox: Sandbox, tmp_path: Path) -> None:
    results: dict[int, dict[str, bytes]] = {}
    for rounds in (1, 2):
        source = write_tree(tmp_path / f"share{rounds}", {"a.txt": "a", "b.txt": "b"})
        folder = unique(f"rerun-{rounds}")
        added: list[str] = []

        def add_late_file(event: Any, source: Path = source, added: list[str] = added) -> None:
            # The root folder is listed first, so a file added after the first import is
            # invisible to round 1's scan.
            if isinstance(event, ItemEvent) and event.state == "migrated" and not added:
                (source / "late.txt").write_text("late")
                added.append("late.txt")

        migration, result = await run(sandbox, [task(sandbox, source, folder)],
                                      settings(tmp_path / f"work{rounds}", auto_rerun=rounds),
                                      sink=add_late_file)
        assert result.status == "completed", result.message
        assert added, "no item was migrated, so the late file was never added"
        results[rounds] = arrived(sandbox, tmp_path / f"out{rounds}", folder)
        if rounds == 2:
            late = by_name(read_report(migration, "ItemReport_R2.csv"))["late.txt"]
            assert late["Status"] == "Migrated"
    assert sorted(results[1]) == ["a.txt", "b.txt"]
    assert sorted(results[2]) == ["a.txt", "b.txt", "late.txt"]


async def test_working_folder_keeps_session(sandbox: Sandbox, tmp_path: Path) -> None:
    source = write_tree(tmp_path / "share", {"a.txt": "a"})
    work = tmp_path / "chosen"
    migration, result = await run(sandbox, [task(sandbox, source, unique("workdir"))], settings(work))
    assert result.status == "completed", result.message
    session = work / "sessions" / migration.session_id
    assert (session / "session.db").is_file()
    assert (session / "reports" / "SummaryReport.csv").is_file()
    assert (session / "logs" / "spmt-tui.log").is_file()
    assert list((session / "packages").iterdir()), "no package was kept in the working folder"
    assert [info.id for info in list_sessions(work)] == [migration.session_id]
    assert list_sessions(Settings().working_folder) == []
    assert not Settings().working_folder.exists()

    # A later run in the same working folder continues the session's rounds: nothing changed.
    again, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    assert by_name(read_report(again, "ItemReport_R2.csv"))["a.txt"]["Status"] == "Skipped"


def test_config_file_then_flags(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[settings]\nskip_extensions = "tmp"\ninclude_hidden = false\n'
                      'modified_after = "2024-01-01T08:00:00+02:00"\nauto_rerun = 3\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    base = load_config(config)
    assert base.skip_extensions == "tmp"
    assert base.modified_after == dt.datetime(2024, 1, 1, 6, tzinfo=dt.timezone.utc)
    merged = settings_from_args(parser.parse_args(["--skip-extensions", "bak", "--include-hidden"]), base)
    assert merged.skip_extensions == "bak"
    assert merged.include_hidden is True
    assert merged.auto_rerun == 3
    assert merged.modified_after == base.modified_after
    untouched = settings_from_args(parser.parse_args([]), load_config(config))
    assert untouched.include_hidden is False
    assert untouched.skip_extensions == "tmp"


@pytest.mark.parametrize(("flags", "expected"), [
    (["--custom-azure-account", "customer"], "add --custom-azure-storage"),
    (["--preserve-permissions"], "--preserve-permissions needs --user-mapping-file"),
])
def test_flags_without_effect_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       flags: list[str], expected: str) -> None:
    from spmt_tui.cli import main

    (tmp_path / "share").mkdir()
    code = main(["migrate", str(tmp_path / "share"), "--working-folder", str(tmp_path / "work"), *flags])
    assert code == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "work" / "sessions").exists()
