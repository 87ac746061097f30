"""End-to-end migrations from the command line into a real sandbox tenant.

Each test runs ``spmt-tui migrate`` as a user would, then exports the library with
``spmt-tui sandbox export`` and compares it with the source: every file that passed the scan
must arrive with the same bytes and the same Modified time (to the second), and every other item
must be in ItemReport with its reason.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from harness import REPO, Sandbox, validate_kept_packages


def run_cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "spmt_tui", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def migrate(sandbox: Sandbox, source: Path, work: Path, folder: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", str(source), "--tenant-profile", str(sandbox.profile_path),
                   "--auth", "password", "--working-folder", str(work), "--folder", folder, *extra)


def export(sandbox: Sandbox, out: Path) -> Path:
    result = run_cli("sandbox", "export", "--data", str(sandbox.data_dir), "--library", "Documents", str(out))
    assert result.returncode == 0, result.stderr
    return out


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_entries(root: Path) -> dict[str, os.stat_result]:
    """Every file and folder under ``root`` (symbolic links included, not followed)."""
    found: dict[str, os.stat_result] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                relative = os.path.relpath(entry.path, root).replace(os.sep, "/")
                found[relative] = entry.stat(follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return found


def read_item_report(work: Path) -> list[dict[str, str]]:
    reports = sorted(work.glob("sessions/*/reports/**/ItemReport_R*.csv"))
    assert reports, f"no ItemReport under {work}"
    rows: list[dict[str, str]] = []
    for report in reports:
        with open(report, encoding="utf-8-sig", newline="") as handle:
            rows.extend(csv.DictReader(handle))
    return rows


def check_migration(source: Path, work: Path, exported: Path) -> dict[str, int]:
    """Compare the export with the source and the ItemReport; return counts."""
    assert validate_kept_packages(work) > 0, "the migration kept no package"
    entries = source_entries(source)
    rows = read_item_report(work)
    by_source: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        relative = os.path.relpath(row["Source"], source).replace(os.sep, "/")
        by_source.setdefault(relative, []).append(row)
    duplicates = {path: len(found) for path, found in by_source.items() if len(found) != 1}
    assert not duplicates, f"items reported more than once: {list(duplicates.items())[:5]}"
    missing = sorted(set(entries) - set(by_source))
    assert not missing, f"scanned items missing from ItemReport: {missing[:10]}"
    extra = sorted(set(by_source) - set(entries))
    assert not extra, f"ItemReport rows for items that are not in the source: {extra[:10]}"
    counts = {"migrated": 0, "not_migrated": 0}
    for relative, stat in entries.items():
        row = by_source[relative][0]
        status = row["Status"]
        target = exported / relative
        is_file = not os.path.islink(source / relative) and (source / relative).is_file()
        if status == "Migrated":
            counts["migrated"] += 1
            if is_file:
                assert target.is_file(), f"{relative} reported migrated but not in the library"
                assert file_digest(target) == file_digest(source / relative), f"{relative}: bytes differ"
                assert int(target.stat().st_mtime) == int(stat.st_mtime), f"{relative}: Modified differs"
            else:
                assert target.is_dir(), f"folder {relative} reported migrated but not in the library"
        else:
            counts["not_migrated"] += 1
            assert row["Message"], f"{relative} not migrated ({status}) without a reason"
            assert not (is_file and target.exists()), f"{relative} is {status} but arrived anyway"
    return counts


# CASE-21: one ItemReport row per item, exit status 1 with rule failures (also CASE-03, CASE-06, CASE-09)
def test_sample_tree_arrives_intact(sandbox: Sandbox, tmp_path: Path) -> None:
    source = tmp_path / "share"
    files = {
        "plain.txt": b"hello\n",
        "empty.txt": b"",
        "Docs/report.csv": b"a,b\n1,2\n",
        "Docs/nested/deeper/file.bin": os.urandom(5 * 2**20 + 7),
        "Docs/nested/sp ace.txt": b"spaces are fine\n",
        "bad?.txt": b"invalid character\n",
        "CON.txt": b"reserved name\n",
        "thicket_files/x.txt": b"thicket folder\n",
    }
    for relative, content in files.items():
        path = source / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    os.utime(source / "plain.txt", (1_600_000_000, 1_600_000_000))
    os.symlink(source / "plain.txt", source / "link.txt")
    work = tmp_path / "work"
    result = migrate(sandbox, source, work, "sample")
    # Some items break SharePoint's rules: they are skipped with their reason, and alone they do
    # not fail the run (exit 0, failed 0).
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("completed: "), result.stdout
    assert "failed 0" in result.stdout
    assert "break SharePoint Online's rules" in result.stdout
    exported = export(sandbox, tmp_path / "export") / "sample"
    counts = check_migration(source, work, exported)
    assert (exported / "Docs/nested/deeper/file.bin").stat().st_size == 5 * 2**20 + 7
    assert counts["not_migrated"] == 5  # bad?.txt, CON.txt, thicket_files and its child, link.txt


@pytest.mark.slow
def test_usr_share_doc_migrates(sandbox: Sandbox, tmp_path: Path) -> None:
    source = Path("/usr/share/doc")
    if not source.is_dir():
        pytest.skip("/usr/share/doc is missing on this machine")
    work = tmp_path / "work"
    result = migrate(sandbox, source, work, "usr-share-doc")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    exported = export(sandbox, tmp_path / "export") / "usr-share-doc"
    counts = check_migration(source, work, exported)
    assert counts["migrated"] > 1000


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@pytest.mark.slow
def test_python_stdlib_migrates(sandbox: Sandbox, tmp_path: Path) -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    source = tmp_path / "stdlib"
    # Hard links keep bytes and times without copying; site-packages is not part of the stdlib.
    shutil.copytree(stdlib, source, symlinks=True, copy_function=_link_or_copy,
                    ignore=shutil.ignore_patterns("site-packages", "__pycache__"))
    work = tmp_path / "work"
    result = migrate(sandbox, source, work, "stdlib")
    assert result.returncode in (0, 1), result.stderr[-2000:]
    exported = export(sandbox, tmp_path / "export") / "stdlib"
    counts = check_migration(source, work, exported)
    assert counts["migrated"] > 1000
