"""Real-world migration failure cases (CASE-01 to CASE-22), end to end against the sandbox.

Each test runs real migrations in this process (the sandbox over HTTPS, Azurite, SQLite), then
exports the library and reads the reports. Rule-level tests of the same cases, with both sides
of every uncertain constant, are in tests/engine/test_rules.py; docs/cases.md maps every case to
its tests.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import hashlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from aiohttp import web
from azure.storage.blob import BlobServiceClient
from harness import REPO, Sandbox, start_sandbox
from parity_kit import (
    arrived,
    read_report,
    rerun,
    run,
    settings,
    task,
    unique,
    write_tree,
)

from spmt_tui.engine import rules, task_runner
from spmt_tui.engine.rules import MAX_FILE_SIZE, MAX_PATH_LENGTH
from spmt_tui.engine.source import FileShareSource
from spmt_tui.reports.csv_reports import ERROR_CODES
from spmt_tui.sandbox.context import AZURITE_KEY
from spmt_tui.spo.http import (
    USER_AGENT,
    HttpError,
    RetryPolicy,
    SharePointHttp,
    new_session,
)

LIBRARY_URL = "Shared Documents"


def utc(text: str) -> float:
    return dt.datetime.fromisoformat(text).timestamp()


def rows_by_path(rows: list[dict[str, str]], source: Path) -> dict[str, dict[str, str]]:
    """Index ItemReport rows by source path relative to ``source``; fail on a duplicate row."""
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        relative = os.path.relpath(row["Source"], source).replace(os.sep, "/")
        assert relative not in found, f"{relative} is reported twice"
        found[relative] = row
    return found


def assert_codes_known(rows: dict[str, dict[str, str]]) -> None:
    """Every code a report row carries has an entry in the error-code table (CASE-21)."""
    unknown = {row["Error code"] for row in rows.values() if row["Error code"]} - set(ERROR_CODES)
    assert not unknown, f"codes without an entry in ERROR_CODES: {sorted(unknown)}"


def destination_prefix(sandbox: Sandbox, folder: str) -> str:
    """The decoded server-relative URL of ``folder`` in the demo site's Documents library."""
    site_path = "/" + sandbox.site_url.split("://", 1)[1].split("/", 1)[1]
    return f"{site_path}/{LIBRARY_URL}/{folder}"


def padded_path(prefix: str, total: int, name: str) -> str:
    """A relative path (folders of at most 100 characters, then ``name``) whose URL under
    ``prefix`` has exactly ``total`` characters."""
    remaining = total - len(prefix) - 1 - len(name)
    assert remaining >= 2, "the prefix is too long for this length"
    parts = []
    while remaining > 0:
        chunk = min(remaining - 1, 100)
        if remaining - (chunk + 1) == 1:  # a folder of 0 characters cannot follow
            chunk -= 1
        parts.append("p" * chunk)
        remaining -= chunk + 1
    relative = "/".join(parts + [name])
    assert len(f"{prefix}/{relative}") == total
    return relative


# -- CASE-01: path length ---------------------------------------------------------------------


async def test_case01_path_length(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-01: paths of 399, 400 and 395 characters (over 400 when URL-encoded) migrate. The
    401-character file and the deep files are reported once, with the length and the limit.
    250 nested folders do not crash the scan."""
    folder = unique("c01")
    prefix = destination_prefix(sandbox, folder)
    by_length = {length: padded_path(prefix, length, f"f{length}.txt") for length in (399, 400, 401)}
    files: dict[str, bytes | str] = {path: str(length) for length, path in by_length.items()}
    spaced = padded_path(prefix, 395, "s p a c e s a r e h e r e.txt")
    assert len(f"{prefix}/{spaced}".replace(" ", "%20")) > MAX_PATH_LENGTH
    files[spaced] = "spaces"
    deep = "/".join(["a"] * 250) + "/deep.txt"
    files[deep] = "deep"
    source = write_tree(tmp_path / "share", files)

    migration, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    assert result.status == "completed", result.message
    got = arrived(sandbox, tmp_path / "out", folder)
    assert by_length[399] in got
    assert by_length[400] in got  # exactly MAX_PATH_LENGTH passes
    assert spaced in got
    assert by_length[401] not in got
    assert deep not in got

    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv"), source)
    long_row = rows[by_length[401]]
    assert long_row["Status"] == "Failed"
    assert long_row["Error code"] == rules.CODE_PATH_TOO_LONG
    assert "401" in long_row["Message"]
    assert str(MAX_PATH_LENGTH) in long_row["Message"]
    assert rows[deep]["Status"] == "Failed"
    assert rows[deep]["Error code"] == rules.CODE_PARENT_NOT_MIGRATED
    # Only the 401-character file and the first folder over the limit carry the length code.
    # Everything below that folder names it as the parent that was not migrated.
    too_long = sorted(path for path, row in rows.items() if row["Error code"] == rules.CODE_PATH_TOO_LONG)
    assert len(too_long) == 2
    assert by_length[401] in too_long
    first_deep = next(path for path in too_long if path.startswith("a/"))
    assert first_deep in rows[deep]["Message"]
    assert len(f"{prefix}/{first_deep}") in (MAX_PATH_LENGTH + 1, MAX_PATH_LENGTH + 2)  # "a/" steps by 2


# -- CASE-02 to CASE-08: names ----------------------------------------------------------------

NAME_TREE: dict[str, bytes | str] = {
    # CASE-02
    " Minutes/a.txt": "a", " Minutes/b.txt": "b", "Agenda/c.txt": "c",
    # CASE-03
    'a"b.txt': "1", "c*d.txt": "2", "e:f.txt": "3", "g<h>.txt": "4", "i?j.txt": "5", "k|l.txt": "6",
    "ok.txt": "ok",
    **{f"stress/bad?{number:03d}.txt": f"bad {number}" for number in range(150)},
    **{f"stress/good{number:02d}.txt": f"good {number}" for number in range(10)},
    # CASE-04 (" report.docx" and "report.docx " both trim to "report.docx")
    " report.docx": "leading", "report.docx ": "trailing", "Drafts /d.txt": "d",
    "\u3000memo.txt": "ideographic", "report .docx": "legal",
    # CASE-05
    "Images../x.jpg": "x", "notes.": "n", "v1./v.txt": "v", "v1.2": "control",
    # CASE-06
    "CON": "1", "con.txt": "2", "NUL.tar.gz": "3", "COM1.dat": "4", "LPT0.log": "5", "AUX.": "6",
    ".lock": "7", "desktop.ini": "8", "~$budget.xlsx": "9", "~tmp/t.txt": "t",
    "CONTRACT.txt": "c1", "console.log": "c2", "COM10.txt": "c3", "my.lock.txt": "c4",
    # CASE-07
    "cacti_vti_export.xml": "v1", "a_VtI_b.txt": "v2", "x_vti_y/z.txt": "z", "vti.txt": "v3",
    # CASE-08 (A.txt sorts before a.txt in ordinal order)
    "a.txt": "1", "A.txt": "2", "Docs/x.txt": "Docs x", "docs/x.txt": "docs x", "docs/y.txt": "docs y",
}

CONTROLS = {"Agenda/c.txt", "ok.txt", "\u3000memo.txt", "report .docx", "v1.2", "CONTRACT.txt",
            "console.log", "COM10.txt", "my.lock.txt", "vti.txt", "A.txt", "Docs/x.txt"}
GOOD_STRESS = {f"stress/good{number:02d}.txt" for number in range(10)}

# Destination of each item when the replacement character is "_".
RENAMED = {
    " Minutes/a.txt": "Minutes/a.txt", " Minutes/b.txt": "Minutes/b.txt",
    'a"b.txt': "a_b.txt", "c*d.txt": "c_d.txt", "e:f.txt": "e_f.txt", "g<h>.txt": "g_h_.txt",
    "i?j.txt": "i_j.txt", "k|l.txt": "k_l.txt",
    **{f"stress/bad?{number:03d}.txt": f"stress/bad_{number:03d}.txt" for number in range(150)},
    " report.docx": "report.docx", "report.docx ": "report (1).docx", "Drafts /d.txt": "Drafts/d.txt",
    "Images../x.jpg": "Images/x.jpg", "notes.": "notes", "v1./v.txt": "v1/v.txt",
    "CON": "CON_", "con.txt": "con_.txt", "NUL.tar.gz": "NUL_.tar.gz", "COM1.dat": "COM1_.dat",
    "LPT0.log": "LPT0_.log", "AUX.": "AUX_", "~tmp/t.txt": "_tmp/t.txt",
    "cacti_vti_export.xml": "cacti_vti-export.xml", "a_VtI_b.txt": "a_VtI-b.txt",
    "x_vti_y/z.txt": "x_vti-y/z.txt",
    "a.txt": "a (1).txt", "docs/x.txt": "docs (1)/x.txt", "docs/y.txt": "docs (1)/y.txt",
}
NEVER_MIGRATE = {".lock", "desktop.ini", "~$budget.xlsx"}


async def test_case02_08_invalid_names(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-02, CASE-03, CASE-04, CASE-05, CASE-06, CASE-07, CASE-08: every invalid name is
    reported once. Without a replacement character the item and the children of a folder are
    never packaged, so no package reaches the service's 100-error block. With "_" the item
    migrates under its new name, recorded old -> new. The controls migrate unchanged."""
    source = write_tree(tmp_path / "share", NAME_TREE)
    strict, replacing = unique("names-off"), unique("names-on")
    tasks = [task(sandbox, source, strict), task(sandbox, source, replacing, replace_invalid_char="_")]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", include_hidden=True))
    assert result.status == "completed", result.message

    # Replacement off: only the controls and the good files arrive, unchanged.
    got = arrived(sandbox, tmp_path / "out1", strict)
    expected = {path: NAME_TREE[path] for path in CONTROLS | GOOD_STRESS}
    assert got == {path: content.encode() for path, content in expected.items()}
    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv", 0), source)
    assert set(rows) >= set(NAME_TREE), "an item is missing from ItemReport"
    for path in set(NAME_TREE) - CONTROLS - GOOD_STRESS:
        row = rows[path]
        assert row["Status"] in ("Failed", "Skipped"), (path, row["Status"])
        assert row["Error code"], path
        assert row["Message"], path
        assert not row["Migration job ID"], f"{path} was packaged although it failed the scan"
    assert rows[" Minutes"]["Error code"] == rules.CODE_LEADING_TRAILING_SPACE
    for child in (" Minutes/a.txt", " Minutes/b.txt"):
        assert rows[child]["Error code"] == rules.CODE_PARENT_NOT_MIGRATED
        assert "' Minutes'" in rows[child]["Message"]
    assert rows["i?j.txt"]["Error code"] == rules.CODE_INVALID_CHARACTERS
    assert rows[" report.docx"]["Error code"] == rules.CODE_LEADING_TRAILING_SPACE
    assert rows["notes."]["Error code"] == rules.CODE_TRAILING_DOT
    assert rows["v1."]["Error code"] == rules.CODE_TRAILING_DOT
    for device in ("CON", "con.txt", "NUL.tar.gz", "COM1.dat", "LPT0.log"):
        assert rows[device]["Error code"] == rules.CODE_RESERVED_NAME, device
    assert "Office owner" in rows["~$budget.xlsx"]["Message"]
    assert rows["desktop.ini"]["Status"] == "Skipped"
    assert rows["desktop.ini"]["Message"]
    assert rows["~tmp"]["Error code"] == rules.CODE_TILDE_FOLDER
    assert rows["a_VtI_b.txt"]["Error code"] == rules.CODE_VTI_IN_NAME
    assert rows["a.txt"]["Error code"] == rules.CODE_NAME_CONFLICT
    assert "'A.txt'" in rows["a.txt"]["Message"]
    assert rows["docs"]["Error code"] == rules.CODE_NAME_CONFLICT
    assert rows["docs/y.txt"]["Error code"] == rules.CODE_PARENT_NOT_MIGRATED

    # Replacement "_": renamed items arrive under their new names with the source bytes.
    got = arrived(sandbox, tmp_path / "out2", replacing)
    expected = {path: NAME_TREE[path] for path in CONTROLS | GOOD_STRESS}
    expected.update({new: NAME_TREE[old] for old, new in RENAMED.items()})
    assert got == {path: content.encode() for path, content in expected.items()}
    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv", 1), source)
    for old, new in RENAMED.items():
        if old.rsplit("/", 1)[-1] != new.rsplit("/", 1)[-1]:
            row = rows[old]
            assert row["Result category"] == "RENAMED", old
            assert row["New name"] == new.rsplit("/", 1)[-1], old
            assert old.rsplit("/", 1)[-1] in row["Message"], old
            assert row["New name"] in row["Message"], old
    for path in NEVER_MIGRATE:
        assert rows[path]["Status"] in ("Failed", "Skipped"), path


# -- CASE-09, CASE-10, CASE-11, CASE-22: content, sizes, IVs ----------------------------------

BLOCK = 4 * 2**20  # spmt_tui.spo.containers.BLOCK_SIZE: files from here on go up as blocks
CONTENT_SIZES = {
    "empty.txt": 0, "empty.docx": 0, "a.txt": 1024, "b.bin": 5 * 2**20,
    "mib-1.bin": 2**20 - 1, "mib.bin": 2**20, "mib+1.bin": 2**20 + 1, "graph3.bin": 3 * 327_680,
    "block-1.bin": BLOCK - 1, "block.bin": BLOCK, "block+1.bin": BLOCK + 1,
}


def package_blobs(sandbox: Sandbox, admin: BlobServiceClient, work: Path) -> list[tuple[str, str, Any]]:
    """Every blob of every job the sessions under ``work`` submitted: (container, name, properties).

    The session keeps job ids; the sandbox's database names each job's two containers."""
    job_ids: list[str] = []
    for db in work.glob("sessions/*/session.db"):
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
            job_ids += [row[0] for row in connection.execute("SELECT job_id FROM packages WHERE job_id IS NOT NULL")]
    assert job_ids, "the session recorded no job"
    with sqlite3.connect(f"file:{sandbox.data_dir / 'tenant.db'}?mode=ro", uri=True, timeout=10) as tenant:
        pairs = [tenant.execute("SELECT source_container, manifest_container FROM migration_jobs WHERE id = ?",
                                (job_id,)).fetchone() for job_id in job_ids]
    found = []
    for pair in pairs:
        assert pair is not None, "a job of the session is unknown to the sandbox"
        for url in pair:
            name = url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
            for blob in admin.get_container_client(name).list_blobs(include=["metadata"]):
                found.append((name, blob.name, blob))
    return found


async def test_case09_sizes_ivs_manifest(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-09 (0-byte files), CASE-10 (block boundaries), CASE-11 (250 GB limit, sparse),
    CASE-22 (a fresh IV per blob and per manifest file, MD5Hash of the stored bytes, no list)."""
    source = tmp_path / "share"
    source.mkdir()
    expected: dict[str, bytes] = {}
    for name, size in CONTENT_SIZES.items():
        expected[name] = os.urandom(size)
        (source / name).write_bytes(expected[name])
    os.truncate(write_tree(source, {"huge.bin": b""}) / "huge.bin", MAX_FILE_SIZE + 1)  # sparse
    folder = unique("c09")
    work = tmp_path / "work"
    migration, result = await run(sandbox, [task(sandbox, source, folder)],
                                  settings(work, package_max_files=4))
    assert result.status == "completed", result.message
    assert arrived(sandbox, tmp_path / "out", folder) == expected

    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv"), source)
    assert {rows[name]["Status"] for name in CONTENT_SIZES} == {"Migrated"}
    assert rows["empty.txt"]["File size"] == "0"
    huge = rows["huge.bin"]
    assert huge["Status"] == "Failed"
    assert huge["Error code"] == rules.CODE_FILE_TOO_BIG
    assert str(MAX_FILE_SIZE + 1) in huge["Message"]
    assert not huge["Migration job ID"]

    # Every blob, content and package XML alike, has its own 16-byte IV.
    admin = BlobServiceClient(sandbox.profile["sandbox"]["azurite_blob"], credential={
        "account_name": "devstoreaccount1", "account_key": AZURITE_KEY}, connection_verify=sandbox.ca_bundle)
    blobs = package_blobs(sandbox, admin, work)
    ivs = [base64.b64decode(blob.metadata["IV"]) for _, _, blob in blobs]
    assert all(len(iv) == 16 for iv in ivs)
    assert len(set(ivs)) == len(ivs), "an IV was used twice in one job"
    assert sum(name == "Manifest.xml" for _, name, _ in blobs) >= 3  # 11 files in packages of 4
    stored = {name: (container, blob) for container, name, blob in blobs if name.endswith(".dat")}

    # The manifest records size 0 for empty files and the MD5 of the stored (encrypted) bytes.
    manifests = list(work.glob("sessions/*/packages/*/Manifest.xml"))
    checked = 0
    for manifest in manifests:
        for element in ElementTree.parse(manifest).getroot().iter():
            if not element.tag.endswith("}File") or "FileValue" not in element.attrib:
                continue
            name = element.attrib["Url"].rsplit("/", 1)[1]
            container, _ = stored[element.attrib["FileValue"]]
            cipher = admin.get_blob_client(container, element.attrib["FileValue"]).download_blob().readall()
            assert element.attrib["MD5Hash"] == base64.b64encode(hashlib.md5(cipher).digest()).decode()
            assert element.attrib["FileSize"] == str(CONTENT_SIZES[name])
            assert len(cipher) == (CONTENT_SIZES[name] // 16 + 1) * 16  # PKCS7: one block when empty
            checked += 1
    assert checked == len(CONTENT_SIZES)


# -- CASE-13: throttling ----------------------------------------------------------------------


class ScriptedEndpoint:
    """A loopback HTTP endpoint that returns the next scripted (status, headers) for each call."""

    def __init__(self, script: list[tuple[int, dict[str, str]]], then: tuple[int, dict[str, str]]) -> None:
        self.script = list(script)
        self.then = then
        self.calls: list[tuple[float, str]] = []  # (monotonic time, User-Agent)

    async def handle(self, request: web.Request) -> web.Response:
        self.calls.append((time.monotonic(), request.headers.get("User-Agent", "")))
        status, headers = self.script.pop(0) if self.script else self.then
        body = {"d": {"ok": True}} if status < 300 else {"error": {"code": "throttled", "message": "busy"}}
        return web.json_response(body, status=status, headers=headers)


async def call_scripted(endpoint: ScriptedEndpoint, calls: int, policy: RetryPolicy,
                        delays: list[tuple[float, int]]) -> None:
    app = web.Application()
    app.router.add_route("GET", "/_api/web", endpoint.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = new_session(None)

    async def token() -> str:
        return "not-a-real-token"

    http = SharePointHttp(session, token, policy=policy, on_throttle=lambda delay, status: delays.append((delay, status)))
    try:
        for _ in range(calls):
            response = await http.request("GET", f"http://127.0.0.1:{port}/_api/web")
            assert response.data == {"d": {"ok": True}}
    finally:
        await session.close()
        await runner.cleanup()


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


async def test_case13_retry_after_honoured(no_proxy: None) -> None:
    """CASE-13: a 429 with Retry-After: 7 on the third call is retried no sooner than 7 s later,
    counted as throttling, and every request carries the decorated User-Agent."""
    endpoint = ScriptedEndpoint([(200, {}), (200, {}), (429, {"Retry-After": "7"})], (200, {}))
    delays: list[tuple[float, int]] = []
    await call_scripted(endpoint, 3, RetryPolicy(), delays)
    assert len(endpoint.calls) == 4
    assert endpoint.calls[3][0] - endpoint.calls[2][0] >= 7.0
    assert delays == [(7.0, 429)]
    assert {agent for _, agent in endpoint.calls} == {USER_AGENT}
    assert USER_AGENT.startswith("NONISV|")
    assert USER_AGENT.count("|") == 2


async def test_case13_503_backoff_jitter(no_proxy: None) -> None:
    """CASE-13: 503 without Retry-After twice, then 200: bounded exponential backoff with jitter."""

    endpoint = ScriptedEndpoint([(503, {}), (503, {})], (200, {}))
    delays: list[tuple[float, int]] = []
    policy = RetryPolicy(base_delay=0.05, max_delay=0.08, random=random.Random(3))
    await call_scripted(endpoint, 1, policy, delays)
    assert len(endpoint.calls) == 3
    assert [status for _, status in delays] == [503, 503]
    assert 0 <= delays[0][0] <= 0.05  # base * 2**(n-1), capped at max_delay
    assert 0 <= delays[1][0] <= 0.08
    assert delays[0][0] != delays[1][0]


async def test_case13_throttle_storm_error(no_proxy: None) -> None:
    """CASE-13: a permanent 429 storm stops after the policy's total wait with a named reason."""
    endpoint = ScriptedEndpoint([], (429, {"Retry-After": "1"}))
    with pytest.raises(HttpError) as caught:
        await call_scripted(endpoint, 1, RetryPolicy(max_throttle_wait=2.5), [])
    assert caught.value.status == 429
    assert caught.value.code == "throttled"
    assert "still throttled" in str(caught.value)
    assert len(endpoint.calls) == 3


async def test_case13_migration_counts_throttling(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-13: when a third of the REST calls get 429 (Retry-After: 1), the job completes with
    no failure, and summary.json counts the throttling instead of reporting errors."""

    files = {f"f{number}.txt": f"file {number}" for number in range(5)}
    source = write_tree(tmp_path / "share", files)
    folder = unique("c13")
    sandbox.set_faults("429=0.33")
    try:
        migration, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    finally:
        sandbox.set_faults("")
    assert result.status == "completed", result.message
    assert arrived(sandbox, tmp_path / "out", folder) == {name: text.encode() for name, text in files.items()}
    throttling = json.loads((migration.report_dir / "summary.json").read_text())["throttling"]
    assert throttling["responses"] > 0, "no call was throttled, so the test proved nothing"
    assert throttling["seconds_waited"] >= throttling["responses"]  # each waited its Retry-After
    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv"), source)
    assert not any("429" in row["Message"] or "throttl" in row["Message"].lower() for row in rows.values())


# -- CASE-15, CASE-16: files that change, vanish or cannot be read ----------------------------


async def test_case15_changed_gone_locked(sandbox: Sandbox, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """CASE-15: a file that keeps changing while it is read is tried twice, then reported for the
    next round. A file deleted after the scan is reported as missing. CASE-16: a file that cannot
    be opened is reported with the reason. The others migrate, and the next round takes the
    changed and the locked file."""
    source = write_tree(tmp_path / "share", {"growing.log": b"x" * 20_000, "gone.txt": "soon gone",
                                             "stable.txt": "stable", "locked.xlsx": "locked", "free.txt": "free"})
    monkeypatch.setattr(task_runner, "FILE_CHANGED_RETRY_DELAY", 0.1)
    growing_stats: list[int] = []
    original_stat, original_open = FileShareSource.stat, FileShareSource.open

    def stat(self: FileShareSource, item: Any) -> Any:
        path = Path(self.path_of(item))
        if item.name == "gone.txt" and path.exists():
            path.unlink()
        result = original_stat(self, item)
        if item.name == "growing.log":  # a writer appends between every two looks
            growing_stats.append(1)
            with open(path, "ab") as handle:
                handle.write(b"appended line\n")
        return result

    def locked_open(self: FileShareSource, item: Any) -> Any:
        if item.name == "locked.xlsx":
            raise PermissionError(13, "Permission denied", str(self.path_of(item)))
        return original_open(self, item)

    monkeypatch.setattr(FileShareSource, "stat", stat)
    monkeypatch.setattr(FileShareSource, "open", locked_open)
    folder = unique("c15")
    migration, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    assert result.status == "completed_with_failures", result.message
    assert arrived(sandbox, tmp_path / "out1", folder) == {"stable.txt": b"stable", "free.txt": b"free"}
    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv"), source)
    assert_codes_known(rows)
    assert rows["growing.log"]["Error code"] == "0x02080001"
    assert "changed while it was read" in rows["growing.log"]["Message"]
    assert "next round" in rows["growing.log"]["Message"]
    assert len(growing_stats) == 4, "the changed file was not read exactly twice (once more after a delay)"
    assert "no longer exists" in rows["gone.txt"]["Message"]
    assert rows["gone.txt"]["Status"] == "Skipped"  # a warning, not a failure
    assert rows["locked.xlsx"]["Status"] == "Failed"
    assert "Permission denied" in rows["locked.xlsx"]["Message"]

    # The writer stopped and the lock is gone: the next round migrates both, the rest is unchanged.
    monkeypatch.setattr(FileShareSource, "stat", original_stat)
    monkeypatch.setattr(FileShareSource, "open", original_open)
    again, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    second = rows_by_path(read_report(again, "ItemReport_R2.csv"), source)
    assert second["growing.log"]["Status"] == "Migrated"
    assert second["locked.xlsx"]["Status"] == "Migrated"
    assert second["stable.txt"]["Error code"] == "UNCHANGED"
    final = arrived(sandbox, tmp_path / "out2", folder)
    assert final["growing.log"] == (source / "growing.log").read_bytes()
    assert sorted(final) == ["free.txt", "growing.log", "locked.xlsx", "stable.txt"]


# -- CASE-17: timestamps ----------------------------------------------------------------------


async def test_case17_timestamps_kept(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-17: Modified equals the source mtime to the second (UTC) across a DST change, the
    epoch and 2099; Created falls back to the modified time where Linux has no birth time.
    Times outside rules.EARLIEST_TIMESTAMP..LATEST_TIMESTAMP cannot be set on this file system
    (ext4 clamps them), so both sides of that range are tested in tests/engine/test_rules.py."""
    times = {"dst.txt": "2021-03-28T01:30:00+00:00", "epoch.txt": "1970-01-01T00:00:00+00:00",
             "future.txt": "2099-01-01T00:00:00+00:00"}
    source = tmp_path / "share"
    for name, when in times.items():
        write_tree(source, {name: name}, mtime=utc(when))
    folder = unique("c17")
    _, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    assert result.status == "completed", result.message
    out = tmp_path / "out"
    got = arrived(sandbox, out, folder)
    assert sorted(got) == sorted(times)
    for name in got:
        assert int((out / folder / name).stat().st_mtime) == int(utc(times[name])), name
    with sqlite3.connect(f"file:{sandbox.data_dir / 'tenant.db'}?mode=ro", uri=True, timeout=10) as tenant:
        for name, when in times.items():
            created, modified = tenant.execute("SELECT created, modified FROM files WHERE url LIKE ?",
                                               (f"%/{folder}/{name}",)).fetchone()
            assert created == modified, (name, created, modified)
            assert created.startswith(when[:19]), (name, created, modified)


# -- CASE-12, CASE-19: incremental rounds -----------------------------------------------------


async def test_case19_incremental_rerun(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-19: round 2 copies the moved and the modified file, keeps the destination copy that is
    newer than the source, leaves the old copy of the moved file in place and reports it, and
    uploads nothing unchanged. A first run into a folder whose copy is newer keeps it too (R-INCR)."""
    base = utc("2024-03-01T00:00:00+00:00")
    source = write_tree(tmp_path / "share", {"A/x.txt": "x", "y.txt": "y1", "z.txt": "z1", "same.txt": "s"},
                        mtime=base)
    folder = unique("c19")
    migration, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    assert result.status == "completed", result.message

    # Someone edits z.txt in the destination: another migration puts a newer copy there.
    other = write_tree(tmp_path / "other", {"z.txt": "z edited in SharePoint"}, mtime=base + 7200)
    _, result = await run(sandbox, [task(sandbox, other, folder)], settings(tmp_path / "work-other"))
    assert result.status == "completed", result.message

    (source / "B").mkdir()
    (source / "A/x.txt").rename(source / "B/x.txt")
    (source / "y.txt").write_text("y2")
    os.utime(source / "y.txt", (base + 3600, base + 3600))
    os.utime(source / "z.txt", (base + 60, base + 60))  # newer than round 1, older than the edit
    again, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    got = arrived(sandbox, tmp_path / "out", folder)
    assert got == {"A/x.txt": b"x", "B/x.txt": b"x", "y.txt": b"y2", "z.txt": b"z edited in SharePoint",
                   "same.txt": b"s"}
    rows = rows_by_path(read_report(again, "ItemReport_R2.csv"), source)
    assert_codes_known(rows)
    assert rows["B/x.txt"]["Status"] == "Migrated"
    assert rows["y.txt"]["Status"] == "Migrated"
    assert rows["z.txt"]["Status"] == "Skipped"
    assert rows["z.txt"]["Error code"] == "DESTINATION_NEWER"
    assert rows["same.txt"]["Error code"] == "UNCHANGED"
    assert not rows["same.txt"]["Migration job ID"]
    assert "A/x.txt" not in rows  # ItemReport has one row per scanned item, and it was not scanned
    kept = rows_by_path(read_report(again, "NotInSource_R2.csv"), source)
    assert sorted(kept) == ["A/x.txt"]
    assert kept["A/x.txt"]["Status"] == "Kept at destination"
    assert "no longer in the source" in kept["A/x.txt"]["Message"]
    assert kept["A/x.txt"]["Destination"].endswith(f"/{folder}/A/x.txt")
    assert kept["A/x.txt"]["Last round"] == "1"


async def test_case12_server_rewrite_no_upload(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-12: SharePoint changes the size of Office and PDF files after import. The next round
    decides on the source state it recorded, so it uploads nothing and reports nothing as failed."""
    files = {"props.docx": b"PK\x03\x04 docx with a title", "slides.pptx": b"PK\x03\x04 pptx",
             "doc.pdf": b"%PDF-1.7 body", "plain.txt": b"plain"}
    source = write_tree(tmp_path / "share", files, mtime=utc("2024-03-01T00:00:00+00:00"))
    folder = unique("c12")
    migration, result = await run(sandbox, [task(sandbox, source, folder)], settings(tmp_path / "work"))
    assert result.status == "completed", result.message
    # Property demotion: the server's copies of the Office and PDF files grow.
    with sqlite3.connect(sandbox.data_dir / "tenant.db", timeout=30) as tenant:
        changed = tenant.execute("UPDATE files SET length = length + 517 WHERE url LIKE ? AND name != 'plain.txt'",
                                 (f"%/{folder}/%",)).rowcount
    assert changed == 3
    again, result = await rerun(sandbox, migration)
    assert result.status == "completed", result.message
    rows = rows_by_path(read_report(again, "ItemReport_R2.csv"), source)
    assert {rows[name]["Error code"] for name in files} == {"UNCHANGED"}
    assert not any(rows[name]["Migration job ID"] for name in files)


# -- CASE-20, CASE-21: filters and accounting ---------------------------------------------------


async def test_case21_items_accounted_for(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-21: 6 valid files, an invalid name, a 401-character path, a symbolic link and a hidden
    file (CASE-20, hidden off): the summary adds up, one row per item with a code and a reason."""
    folder = unique("c21")
    prefix = destination_prefix(sandbox, folder)
    long_path = padded_path(prefix, 401, "long.txt")
    files: dict[str, bytes | str] = {f"ok{number}.txt": "v" * (number + 1) for number in range(6)}
    files.update({"bad?.txt": "bad", long_path: "long", ".hidden": "hidden", "desktop.ini": "ini"})
    source = write_tree(tmp_path / "share", files)
    os.symlink(source / "ok0.txt", source / "link.txt")
    tasks = [task(sandbox, source, folder), task(sandbox, source, unique("c20-on"), include_hidden=True)]
    migration, result = await run(sandbox, tasks, settings(tmp_path / "work", include_hidden=False))
    assert result.status == "completed", result.message
    assert result.exit_code == 0  # failed 0: items skipped by the rules alone do not fail the run
    assert "item(s) break SharePoint Online's rules" in result.message
    assert sorted(arrived(sandbox, tmp_path / "out", folder)) == [f"ok{number}.txt" for number in range(6)]

    rows = rows_by_path(read_report(migration, "ItemReport_R1.csv"), source)
    assert_codes_known(rows)
    assert set(rows) == {path for path in files} | {"link.txt"} | {
        "/".join(long_path.split("/")[:depth]) for depth in range(1, long_path.count("/") + 1)}
    for path in ("bad?.txt", long_path, "link.txt", ".hidden", "desktop.ini"):
        assert rows[path]["Status"] != "Migrated", path
        assert rows[path]["Error code"], path
        assert rows[path]["Message"], path
    assert rows[".hidden"]["Result category"] == "FILTERED OUT"
    assert rows["link.txt"]["Error code"] == rules.CODE_SYMLINK


    summary = json.loads((migration.report_dir / "summary.json").read_text())
    first = summary["tasks"][0]["rounds"][-1]
    assert first["scanned"] == len(rows)
    assert first["scanned"] == first["migrated"] + first["skipped"] + first["failed"] + first["pending"]
    assert first["failed"] == 0
    assert first["pending"] == 0
    migrated_files = sum(row["Status"] == "Migrated" and row["Content type"] != "Folder" for row in rows.values())
    assert migrated_files == 6
    assert first["bytes"]["migrated"] == sum(number + 1 for number in range(6))

    # Hidden on: the hidden file migrates, desktop.ini is still not allowed.
    on_rows = rows_by_path(read_report(migration, "ItemReport_R1.csv", 1), source)
    assert on_rows[".hidden"]["Status"] == "Migrated"
    assert on_rows["desktop.ini"]["Status"] == "Skipped"
    assert on_rows["desktop.ini"]["Error code"] == rules.CODE_SYSTEM_FILE


# -- CASE-14, CASE-22: expired containers -----------------------------------------------------


async def test_case22_expired_container_reprovisioned(tmp_path: Path) -> None:
    """CASE-14 and CASE-22 (R-MMERR 0x01610001): containers whose SAS has expired are replaced by
    new ones and the package is uploaded again; the job does not fail and nothing is duplicated."""
    box = start_sandbox(tmp_path / "tenant", "--faults", "sas_expired=0.5", "--fault-seed", "11")
    try:
        files = {f"d{number % 2}/f{number}.txt": os.urandom(300 + number) for number in range(8)}
        source = write_tree(tmp_path / "share", files)
        folder = unique("c22")
        migration, result = await run(box, [task(box, source, folder)],
                                      settings(tmp_path / "work", package_max_files=2))
        assert result.status == "completed", result.message
        assert result.counts["failed"] == 0
        assert box.admin("state")["faults"]["injected"]["sas_expired"] > 0, "no container expired"
        assert arrived(box, tmp_path / "out", folder) == files
        with sqlite3.connect(f"file:{box.data_dir / 'tenant.db'}?mode=ro", uri=True, timeout=10) as tenant:
            urls = [row[0] for row in tenant.execute("SELECT lower(url) FROM files WHERE url LIKE ?",
                                                      (f"%/{folder}/%",))]
        assert len(urls) == len(set(urls)) == len(files)
        rows = rows_by_path(read_report(migration, "ItemReport_R1.csv"), source)
        assert {row["Status"] for row in rows.values()} == {"Migrated"}
    finally:
        box.stop()


# -- CASE-14: kill while a large file is being uploaded, then resume ----------------------------


def _item_states(db: Path) -> dict[str, tuple[str, str]]:
    """(item status, package status) by path, read without disturbing the running migration."""
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as connection:
            rows = connection.execute(
                "SELECT i.path, i.status, coalesce(p.status, '') FROM items i LEFT JOIN packages p "
                "ON p.task_id = i.task_id AND p.number = i.package_number").fetchall()
    except sqlite3.OperationalError:
        return {}
    return {row[0]: (row[1], row[2]) for row in rows}


def test_case14_kill_during_upload(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-14: SIGKILL while b.bin (50 MB) is being uploaded; `resume` finishes the session:
    a file imported before the kill is not imported again, b.bin and c.txt arrive whole, and the
    report has one Migrated row per item, as an uninterrupted run would."""

    files = {"a.txt": os.urandom(1024), "b.bin": os.urandom(50 * 2**20), "c.txt": os.urandom(1024)}
    source = write_tree(tmp_path / "share", files)
    folder, work = unique("c14"), tmp_path / "work"
    common = ["--tenant-profile", str(sandbox.profile_path), "--auth", "password", "--working-folder", str(work)]
    process = subprocess.Popen(
        [sys.executable, "-m", "spmt_tui", "migrate", str(source), *common, "--folder", folder,
         "--package-max-files", "1", "--packages-in-flight", "1", "--upload-concurrency", "1"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    states: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        dbs = list(work.glob("sessions/*/session.db"))
        states = _item_states(dbs[0]) if dbs else {}
        if states.get("b.bin", ("", ""))[0] == "packaged" and states.get("a.txt", ("", ""))[0] != "packaged":
            time.sleep(1.0)  # well into the 50 MB upload
            break
        if process.poll() is not None:
            pytest.fail(f"the migration ended before b.bin was uploaded: {process.stderr.read()[-2000:]}")
        time.sleep(0.02)
    else:
        pytest.fail("b.bin never started uploading")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()
    process.stderr.close()
    states = _item_states(next(iter(work.glob("sessions/*/session.db"))))
    assert states["b.bin"][0] in ("packaged", "uploaded"), f"the kill did not land during b.bin's upload: {states}"
    a_done_before = states["a.txt"][0] == "migrated"

    resumed = subprocess.run([sys.executable, "-m", "spmt_tui", "resume", *common], cwd=REPO, check=False,
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert arrived(sandbox, tmp_path / "out", folder) == files
    with sqlite3.connect(f"file:{sandbox.data_dir / 'tenant.db'}?mode=ro", uri=True, timeout=10) as tenant:
        versions = dict(tenant.execute(
            "SELECT f.name, count(v.version) FROM files f LEFT JOIN file_versions v ON v.file_id = f.id "
            "WHERE f.url LIKE ? GROUP BY f.name", (f"%/{folder}/%",)).fetchall())
    if a_done_before:
        assert versions["a.txt"] <= 1, "a.txt was imported again after the resume"
    [report] = list(work.glob("sessions/*/reports/**/ItemReport_R1.csv"))

    with open(report, encoding="utf-8-sig", newline="") as handle:
        rows = rows_by_path(list(csv.DictReader(handle)), source)
    assert sorted(rows) == sorted(files)
    assert {row["Status"] for row in rows.values()} == {"Migrated"}


# -- CASE-11: a file over 250 MB streams in blocks with bounded memory ------------------------


async def test_case11_large_file_streams(sandbox: Sandbox, tmp_path: Path) -> None:
    """CASE-11: a 300 MiB file (sparse) goes up as blocks, never whole: Python's peak allocation
    during the upload stays far below the file size, and the blob decrypts to the same length."""

    from spmt_tui.auth.cache import MemoryStore
    from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
    from spmt_tui.engine.upload import SINGLE_PUT_LIMIT, encrypt_and_upload
    from spmt_tui.spo.containers import StorageTransport
    from spmt_tui.spo.sharepoint import SharePointClient

    size = 300 * 2**20
    assert size > 250 * 10**6 > SINGLE_PUT_LIMIT
    (tmp_path / "big300m.bin").touch()
    os.truncate(tmp_path / "big300m.bin", size)  # sparse: no disk cost
    source = FileShareSource(tmp_path)
    item = None
    async for batch in source.walk():
        item = next((entry for entry in batch if entry.name == "big300m.bin"), item)
    assert item is not None
    profile = json.loads(sandbox.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(profile), profile["user"]["username"],
                                        profile["user"]["password"], store=MemoryStore())
    session = new_session(profile["ca_bundle"])
    transport = StorageTransport(profile["ca_bundle"])
    try:
        client = SharePointClient(profile["site_url"], SharePointHttp(session, provider.get_token))
        containers = await client.provision_containers()
        container = transport.container(containers.data_uri)
        tracemalloc.start()
        try:
            result = await encrypt_and_upload(source, item, container, containers.key, "big.dat")
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await container.close()
    finally:
        await transport.close()
        await session.close()
    assert result.plain_size == size
    assert result.cipher_size == size + 16
    assert peak < 64 * 2**20, f"peak Python allocation {peak / 2**20:.0f} MiB for a 300 MiB file"
    admin = BlobServiceClient(sandbox.profile["sandbox"]["azurite_blob"], credential={
        "account_name": "devstoreaccount1", "account_key": AZURITE_KEY}, connection_verify=sandbox.ca_bundle)
    name = containers.data_uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
    blob = admin.get_blob_client(name, "big.dat")
    properties = blob.get_blob_properties()
    assert properties.size == size + 16
    assert len(blob.get_block_list("committed")[0]) > 1, "the file went up in one request"
    blob.delete_blob(delete_snapshots="include")


def test_case14_session_db_versioned(tmp_path: Path) -> None:
    """CASE-14: the session database records its schema version, and a database of another
    version is refused with both versions named instead of being misread."""
    from spmt_tui.state.schema import SCHEMA_VERSION
    from spmt_tui.state.store import SessionStore, StoreError

    path = tmp_path / "s" / "session.db"
    SessionStore.open(path).close()
    with sqlite3.connect(path) as connection:
        assert connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == \
            (str(SCHEMA_VERSION),)
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}.*reads version {SCHEMA_VERSION}"):
        SessionStore.open(path)


def test_case19_not_in_source_query(tmp_path: Path) -> None:
    """CASE-19: the rows behind NotInSource_R<n>.csv, page by page: a file migrated or kept in an
    earlier round and missing from round n, once; not a file that failed or that came back."""
    from spmt_tui.state.store import NewItem, SessionStore

    store = SessionStore.open(tmp_path / "s" / "session.db")
    store.start_session("s", {}, [{"source": "/src", "site_url": "https://h/sites/x", "library": "Documents"}])
    task_id = store.task_id(0)

    def record(round_number: int, path: str, status: str, code: str | None = None) -> None:
        [row_id] = store.add_items(task_id, round_number, [NewItem(path, "file", 1, 1.0, 1.0, False, "scanned")])
        store.mark(row_id, status, code=code)

    for path in ("gone1.txt", "gone2.txt", "back.txt", "kept.txt"):
        record(1, path, "migrated")
    record(1, "failed.txt", "failed", code="0x01110003")
    record(2, "kept.txt", "skipped", code="UNCHANGED")
    record(2, "gone2.txt", "skipped", code="UNCHANGED")
    record(3, "kept.txt", "skipped", code="UNCHANGED")
    record(3, "back.txt", "skipped", code="DESTINATION_NEWER")

    assert [row.path for row in store.items_not_in_source(task_id, 2)] == ["back.txt", "gone1.txt"]
    first = store.items_not_in_source(task_id, 3, limit=1)
    assert [(row.path, row.round) for row in first] == [("gone1.txt", 1)]
    rest = store.items_not_in_source(task_id, 3, after_path=first[-1].path, limit=5)
    assert [(row.path, row.round) for row in rest] == [("gone2.txt", 2)]
    store.close()
