"""The sandbox import timer job, end to end against a real Azurite over TLS."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from lxml import etree

try:
    from . import migration_kit as kit
except ImportError:
    import migration_kit as kit  # type: ignore[no-redef]

from spmt_tui.sandbox import migration, rules, schema
from spmt_tui.sandbox.import_plan import QuickXorHash, parse_manifest_time
from spmt_tui.sandbox.jobs import JobState


@pytest.fixture(scope="module")
def storage_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.StorageEnv]:
    env = kit.start_azurite(tmp_path_factory.mktemp("azurite-import"))
    try:
        yield env
    finally:
        env.process.stop()


def file_row(env: kit.Env, library_path: str) -> dict:
    row = env.tenant.store.file_by_url(f"{env.library.root_folder_url}/{library_path}")
    assert row is not None, library_path
    return dict(row)


def content_of(env: kit.Env, row: dict) -> bytes:
    return env.tenant.store.content_path(row["content"]).read_bytes()


def end_event(events: list[dict[str, str]]) -> dict[str, str]:
    ends = kit.by_event(events, "JobEnd")
    assert len(ends) == 1
    return ends[0]


# -- a correct package ------------------------------------------------------------------------


async def test_correct_package_end_to_end(
    tmp_path: Path, storage_env: kit.StorageEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(migration, "PROGRESS_PAGE_SIZE", 2)
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.folder("Reports")
        created = dt.datetime(2021, 3, 28, 1, 30, tzinfo=dt.timezone.utc)
        files = {
            "Reports/q1.txt": b"first quarter" * 50,
            "Reports/empty.txt": b"",
            "readme.md": b"# readme\n",
        }
        for path, data in files.items():
            builder.file(path, data, created=created, modified=created + dt.timedelta(hours=5))
        kit.set_checksums(builder)
        package = builder.xml_files()
        assert kit.xsd_errors(package) == {}
        job_id, key, queue_uri, manifest_uri = await kit.submit(env, builder, queue=True, files=package)

        events, tokens = await kit.wait_for_end(env, job_id)
        names = [event["Event"] for event in events]
        assert names[0] == "JobQueued"
        assert names.index("JobLogFileCreate") < names.index("JobStart") < names.index("JobEnd")
        assert "JobProgress" in names
        assert names[-1] == "JobEnd"
        assert not kit.by_event(events, "JobError")
        assert all(isinstance(value, str) for event in events for value in event.values())
        end = end_event(events)
        assert end["FilesCreated"] == str(len(files))
        assert end["FilesCreatedIrrespectiveOfVersions"] == str(len(files))
        assert end["TotalErrors"] == "0"
        assert end["BytesProcessed"] == str(sum(len(data) for data in files.values()))
        assert end["TotalExpectedSPObjects"] == str(2 + 2 * (1 + len(files)))
        assert end["ObjectsProcessed"] == end["TotalExpectedSPObjects"]
        assert json.loads(end["ObjectsStatsByType"])["SPFile"]["Count"] == len(files)
        assert [int(token) for token in tokens] == sorted(int(token) for token in tokens)

        # Paging is idempotent: nothing new keeps the token, and the same request repeats.
        status, body = await kit.progress_page(env, job_id, tokens[-1])
        assert body["d"]["GetMigrationJobProgress"]["NextToken"] == tokens[-1]
        assert body["d"]["GetMigrationJobProgress"]["Logs"]["results"] == []
        _status, first = await kit.progress_page(env, job_id, "0")
        _status, again = await kit.progress_page(env, job_id, "0")
        assert first == again

        queued = await asyncio.to_thread(kit.read_queue, queue_uri, env.ca, key)
        assert [event["Event"] for event in queued] == names
        assert {event["_envelope_job"] for event in queued} == {job_id}
        assert kit.by_event(queued, "JobEnd")[0]["FilesCreated"] == str(len(files))

        status, body = await env.call("GetMigrationJobStatus", {"id": job_id})
        assert body["d"]["GetMigrationJobStatus"] == 0
        assert env.importer.jobs.job(job_id).key is None

        alice = env.tenant.store.user_by_login(env.site.id, f"i:0#.f|membership|{kit.ALICE_UPN}")
        assert alice is not None
        for path, data in files.items():
            row = file_row(env, path)
            assert content_of(env, row) == data
            assert row["created"] == "2021-03-28T01:30:00Z"
            assert row["modified"] == "2021-03-28T06:30:00Z"
            assert row["author_id"] == alice.id
            assert row["editor_id"] == alice.id
        spec = builder.files[0]
        row = file_row(env, spec.path)
        assert row["id"] == spec.id
        assert row["item_id"] == spec.item_id
        assert row["int_id"] == spec.int_id
        folder = env.tenant.store.folder_by_url(f"{env.library.root_folder_url}/Reports")
        assert folder["id"] == builder.folders[0].id
        assert row["folder_id"] == folder["id"]

        log_text = await asyncio.to_thread(kit.read_log, manifest_uri, env.ca, key, f"Import-{job_id}-1.log")
        assert "JobStart" in log_text
        assert "JobEnd" in log_text


async def test_versions_are_kept(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("plan.docx", [b"draft one", b"draft two", b"final text"])
        package = builder.xml_files()
        assert kit.xsd_errors(package) == {}
        job_id, *_rest = await kit.submit(env, builder, files=package)
        events, _tokens = await kit.wait_for_end(env, job_id)
        end = end_event(events)
        assert end["FilesCreated"] == "3"
        assert end["FilesCreatedIrrespectiveOfVersions"] == "1"
        assert end["BytesProcessedOnlyCurrentVersion"] == str(len(b"final text"))
        row = file_row(env, "plan.docx")
        assert content_of(env, row) == b"final text"
        assert row["version"] == "3.0"
        versions = env.tenant.store.query(
            "SELECT version, content FROM file_versions WHERE file_id = ? ORDER BY version", (row["id"],)
        )
        assert [version["version"] for version in versions] == ["1.0", "2.0"]
        assert env.tenant.store.content_path(versions[0]["content"]).read_bytes() == b"draft one"


async def test_overwrite_by_same_id(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        first = kit.PackageBuilder(env.site, env.library)
        spec = first.file("notes.txt", b"version from run one")
        job_id, *_rest = await kit.submit(env, first)
        await kit.wait_for_end(env, job_id)
        old_content = file_row(env, "notes.txt")["content"]

        second = kit.PackageBuilder(env.site, env.library)
        second.file("notes.txt", b"newer text from run two", file_id=spec.id, int_id=spec.int_id)
        job_id, *_rest = await kit.submit(env, second)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert end_event(events)["TotalErrors"] == "0"
        row = file_row(env, "notes.txt")
        assert row["id"] == spec.id
        assert content_of(env, row) == b"newer text from run two"
        assert not env.tenant.store.content_path(old_content).exists()
        count = env.tenant.store.query("SELECT COUNT(*) FROM files WHERE lower(name) = 'notes.txt'")[0][0]
        assert count == 1


async def test_overwrite_by_same_url(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        first = kit.PackageBuilder(env.site, env.library)
        first.file("same.txt", b"one", int_id=5)
        job_id, *_rest = await kit.submit(env, first)
        await kit.wait_for_end(env, job_id)

        second = kit.PackageBuilder(env.site, env.library)
        replacement = second.file("same.txt", b"two", int_id=5)
        job_id, *_rest = await kit.submit(env, second)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert end_event(events)["TotalErrors"] == "0"
        row = file_row(env, "same.txt")
        assert row["id"] == replacement.id
        assert content_of(env, row) == b"two"


# -- fatal errors -----------------------------------------------------------------------------


# CASE-22: the service side refuses an undeclared attribute
async def test_undeclared_attribute_fatal(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.folder("Minutes", Description="team minutes")
        builder.file("Minutes/a.txt", b"a")
        package = builder.xml_files()
        assert "Description" in kit.xsd_errors(package)["Manifest.xml"]
        job_id, *_rest = await kit.submit(env, builder, files=package)
        events, _tokens = await kit.wait_for_end(env, job_id)
        fatal = kit.by_event(events, "JobFatalError")
        assert len(fatal) == 1
        assert fatal[0]["Message"] == (
            "[System.Xml.Schema.XmlSchemaValidationException] [The 'Description' attribute is not declared.]"
        )
        assert [event["Event"] for event in events][-2:] == ["JobFatalError", "JobEnd"]
        assert end_event(events)["FilesCreated"] == "0"
        assert env.tenant.store.folder_by_url(f"{env.library.root_folder_url}/Minutes") is None


async def test_wrong_web_id_fatal(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library, web_id="6f0c0000-1111-2222-3333-444444444444")
        builder.file("a.txt", b"a")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        fatal = kit.by_event(events, "JobFatalError")
        assert len(fatal) == 1
        assert "parent web" in fatal[0]["Message"]
        assert "not found" in fatal[0]["Message"]
        assert env.tenant.store.file_by_url(f"{env.library.root_folder_url}/a.txt") is None


async def test_missing_source_type_fatal(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library, source_type=None)
        builder.file("a.txt", b"a")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert "SourceType" in kit.by_event(events, "JobFatalError")[0]["Message"]


async def test_duplicate_user_fatal(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        login = f"i:0#.f|membership|{kit.ALICE_UPN}"
        users = [kit.PackageUser(1, "Alice", login), kit.PackageUser(2, "Alice again", login)]
        builder = kit.PackageBuilder(env.site, env.library, users=users)
        builder.file("a.txt", b"a")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert "more than once" in kit.by_event(events, "JobFatalError")[0]["Message"]


async def test_injected_fatal_fault(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        env.tenant.faults.set_rates({"fatal": 1.0})
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("a.txt", b"a")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert len(kit.by_event(events, "JobFatalError")) == 1
        assert end_event(events)["FilesCreated"] == "0"


# -- per-object errors ------------------------------------------------------------------------


async def test_blob_without_snapshot_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("good.txt", b"good")
        bad = builder.file("unsnapped.txt", b"no snapshot")
        options = kit.Upload(no_snapshot={bad.file_values[0]})
        job_id, key, _queue, manifest_uri = await kit.submit(env, builder, options=options)
        events, _tokens = await kit.wait_for_end(env, job_id)
        errors = kit.by_event(events, "JobError")
        assert len(errors) == 1
        assert errors[0]["ObjectType"] == "File"
        assert errors[0]["Url"].endswith("/unsnapped.txt")
        assert "snapshot" in errors[0]["Message"]
        end = end_event(events)
        assert end["FilesCreated"] == "1"
        assert end["TotalErrors"] == "1"
        assert content_of(env, file_row(env, "good.txt")) == b"good"
        error_log = await asyncio.to_thread(kit.read_log, manifest_uri, env.ca, key, f"Import-{job_id}-1.err")
        assert "unsnapped.txt" in error_log


# CASE-22: the service side checks MD5Hash against the stored bytes
async def test_hash_mismatches_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        md5_bad = builder.file("md5.txt", b"content md5 is wrong")
        builder.file("checksum.txt", b"quick xor is wrong", Checksum="AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        good = builder.file("fine.txt", b"hashes agree")
        good.attrs["Checksum"] = kit.quick_xor_hash(good.versions[0])
        job_id, *_rest = await kit.submit(env, builder, options=kit.Upload(wrong_md5={md5_bad.file_values[0]}))
        events, _tokens = await kit.wait_for_end(env, job_id)
        errors = {event["Url"].rsplit("/", 1)[-1]: event for event in kit.by_event(events, "JobError")}
        assert set(errors) == {"md5.txt", "checksum.txt"}
        assert "MD5" in errors["md5.txt"]["Message"]
        assert "QuickXorHash" in errors["checksum.txt"]["Message"]
        assert end_event(events)["FilesCreated"] == "1"


async def test_missing_parent_folder_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("Ghost/orphan.txt", b"x", parent_id="99999999-0000-0000-0000-000000000000")
        builder.file("ok.txt", b"y")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        errors = kit.by_event(events, "JobError")
        assert len(errors) == 1
        assert "parent folder" in errors[0]["Message"]
        assert end_event(events)["FilesCreated"] == "1"


async def test_int_id_conflict_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        first = kit.PackageBuilder(env.site, env.library)
        first.file("one.txt", b"1", int_id=7)
        job_id, *_rest = await kit.submit(env, first)
        await kit.wait_for_end(env, job_id)

        second = kit.PackageBuilder(env.site, env.library)
        second.file("two.txt", b"2", int_id=7)
        job_id, *_rest = await kit.submit(env, second)
        events, _tokens = await kit.wait_for_end(env, job_id)
        errors = kit.by_event(events, "JobError")
        assert len(errors) == 1
        assert "IntId 7" in errors[0]["Message"]
        assert env.tenant.store.file_by_url(f"{env.library.root_folder_url}/two.txt") is None


async def test_invalid_names_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        for name in ("a?b.txt", "CON.txt", "x_vti_y.txt", " lead.txt"):
            builder.file(name, b"bad")
        builder.file("report .docx", b"good")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert len(kit.by_event(events, "JobError")) == 4
        assert end_event(events)["FilesCreated"] == "1"


# CASE-03: the service side blocks a package with more than 100 errors
async def test_too_many_errors_block_package(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, progress_every=50) as env:
        limit = env.tenant.settings.max_errors_per_package
        builder = kit.PackageBuilder(env.site, env.library)
        for number in range(limit + 1):
            builder.file(f"bad?{number:03d}.txt", b"x")
        for number in range(3):
            builder.file(f"good{number}.txt", b"fine")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id, timeout=60)
        assert len(kit.by_event(events, "JobError")) == limit + 1
        fatal = kit.by_event(events, "JobFatalError")
        assert len(fatal) == 1
        assert "blocked" in fatal[0]["Message"]
        assert end_event(events)["FilesCreated"] == "0"
        assert env.tenant.store.file_by_url(f"{env.library.root_folder_url}/good0.txt") is None
        assert list(env.tenant.store.content_dir.iterdir()) == []


async def test_unresolvable_user_system_account(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        users = [
            kit.PackageUser(1, "Old Account", "DOMAIN\\olduser"),
            kit.PackageUser(2, "Gone", "i:0#.f|membership|gone@elsewhere.example", system_id="AQUAAAAAAAUVAAAA"),
        ]
        builder = kit.PackageBuilder(env.site, env.library, users=users)
        builder.file("a.txt", b"a", author=1)
        builder.file("b.txt", b"b", author=2)
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        warnings = [event["Message"] for event in kit.by_event(events, "JobWarning")]
        assert "Failed to ensure user 'DOMAIN\\olduser'" in warnings
        assert any("falling back to passed in values" in message for message in warnings)
        assert file_row(env, "a.txt")["author_id"] == 1073741823
        departed = env.tenant.store.user_by_login(env.site.id, "i:0#.f|membership|gone@elsewhere.example")
        assert departed is not None
        assert file_row(env, "b.txt")["author_id"] == departed.id


async def test_unencrypted_own_containers_import(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("plain.txt", b"not encrypted")
        source = kit.own_container_uri(env, "rwl")
        manifest = kit.own_container_uri(env, "rwl")
        await asyncio.to_thread(kit.upload_package, builder, builder.xml_files(), source, manifest, None, env.ca)
        # The job gets the source container with read and list only, as the service requires.
        container_url = source.split("?")[0]
        read_list = container_url + "?" + generate_container_sas(
            env.tenant.storage.name, container_url.rsplit("/", 1)[1],
            account_key=env.tenant.storage.key, permission=ContainerSasPermissions(read=True, list=True),
            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), protocol="https")
        status, body = await env.call("CreateMigrationJob", kit.job_body(env, read_list, manifest))
        assert status == 200, body
        events, _tokens = await kit.wait_for_end(env, body["d"]["CreateMigrationJob"])
        assert end_event(events)["FilesCreated"] == "1"
        assert content_of(env, file_row(env, "plain.txt")) == b"not encrypted"


# -- timer job behaviour ----------------------------------------------------------------------


async def test_restart_resumes_processing_job(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("resumed.txt", b"after restart")
        job_id, *_rest = await kit.submit(env, builder)
        env.importer.jobs.mark_processing(job_id)  # as if the sandbox died mid-import
        assert env.importer.jobs.job(job_id).state == JobState.PROCESSING
        await env.importer.start()
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert end_event(events)["FilesCreated"] == "1"
        assert env.importer.jobs.job(job_id).state == JobState.NONE


async def test_postponed_job_still_runs(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        env.tenant.faults.set_rates({"postpone": 1.0})
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("late.txt", b"late")
        job_id, *_rest = await kit.submit(env, builder)
        events, _tokens = await kit.wait_for_end(env, job_id)
        names = [event["Event"] for event in events]
        assert names.count("JobPostponed") >= 1
        assert names.index("JobPostponed") < names.index("JobStart")
        assert end_event(events)["FilesCreated"] == "1"


async def test_lost_queue_keeps_progress(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        env.tenant.faults.set_rates({"lost_queue": 1.0})
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("q.txt", b"q")
        job_id, key, queue_uri, _manifest = await kit.submit(env, builder, queue=True)
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert kit.by_event(events, "JobEnd")
        assert await asyncio.to_thread(kit.read_queue, queue_uri, env.ca, key) == []


async def test_delete_processing_job_cancels(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("cancel.txt", b"c")
        job_id, *_rest = await kit.submit(env, builder)
        env.importer.jobs.mark_processing(job_id)
        status, body = await env.call("DeleteMigrationJob", {"id": job_id})
        assert body["d"]["DeleteMigrationJob"] is True
        await env.importer.start()
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert kit.by_event(events, "JobCancelled")[0]["CancelledByUser"] == "True"
        assert env.tenant.store.file_by_url(f"{env.library.root_folder_url}/cancel.txt") is None


# -- units: schema, rules, hashing, times -----------------------------------------------------


def test_schema_agrees_with_xsd_on_variants() -> None:
    store_site = kit.Site("s", "/sites/x", "X", "11111111-1111-1111-1111-111111111111",
                          "22222222-2222-2222-2222-222222222222")
    library = kit.Library("33333333-3333-3333-3333-333333333333", "s", "Documents",
                          "44444444-4444-4444-4444-444444444444", "/sites/x/Shared Documents", 101, True, "")
    builder = kit.PackageBuilder(store_site, library)
    builder.folder("A")
    builder.file("A/f.txt", b"abc", MD5Hash="x", Checksum="y", FileSize="3")
    builder.file("v.txt", [b"1", b"2"])
    manifest = builder.xml_files()["Manifest.xml"]
    xsd = etree.XMLSchema(etree.parse(str(kit.XSD_DIR / "DeploymentManifest.xsd")))

    def both(document: bytes) -> tuple[bool, bool]:
        lxml_ok = xsd.validate(etree.fromstring(document))
        try:
            schema.load_package_file(document, "Manifest.xml")
            ours = True
        except schema.XmlSchemaError:
            ours = False
        return lxml_ok, ours

    variants = {
        "valid": manifest,
        "folder extra attribute": manifest.replace(b"<Folder ", b'<Folder Foo="1" ', 1),
        "library extra attribute": manifest.replace(b"<DocumentLibrary ", b'<DocumentLibrary Foo="1" ', 1),
        "spobject extra attribute": manifest.replace(b"<SPObject ", b'<SPObject Foo="1" ', 1),
        "file extra attribute": manifest.replace(b"<File ", b'<File Foo="1" ', 1),
        "bad object type": manifest.replace(b'ObjectType="SPFile"', b'ObjectType="SPDocument"', 1),
        "bad int": manifest.replace(b'ListItemIntId="1"', b'ListItemIntId="one"', 1),
        "bad date": manifest.replace(b'TimeCreated="2022-05-01T08:00:00"', b'TimeCreated="May 1"', 1),
        "missing title": manifest.replace(b' Title="Documents"', b"", 1),
        "unknown child": manifest.replace(b"<Fields/>", b"<Bogus/>", 1),
        "two children": manifest.replace(b"<ContentTypes/>", b"<ContentTypes/>", 1).replace(
            b"</DocumentLibrary>", b"</DocumentLibrary><Folder/>", 1),
        "text in SPObject": manifest.replace(b"</SPObject>", b"oops</SPObject>", 1),
        "bad moderation": manifest.replace(b'ModerationStatus="Approved"', b'ModerationStatus="Ok"', 1),
    }
    for label, document in variants.items():
        lxml_ok, ours = both(document)
        assert lxml_ok == ours, label


def test_schema_rejects_doctype() -> None:
    document = b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><SPObjects xmlns="urn:deployment-manifest-schema"/>'
    with pytest.raises(schema.XmlSchemaError) as failure:
        schema.load_package_file(document, "Manifest.xml")
    assert failure.value.exception_type == schema.XML_EXCEPTION


def test_schema_wrong_root_for_file() -> None:
    document = b'<UserGroupMap xmlns="urn:deployment-usergroupmap-schema"/>'
    with pytest.raises(schema.XmlSchemaError) as failure:
        schema.load_package_file(document, "SystemData.xml")
    assert "is not declared" in failure.value.message


# CASE-01: the service side accepts 400 and refuses 401
def test_path_length_boundary() -> None:
    base = "/sites/s1/Shared Documents/"
    assert rules.check_path(base + "a" * (400 - len(base))) is None
    assert rules.check_path(base + "a" * (401 - len(base))) is not None


# CASE-03, CASE-04, CASE-06, CASE-07: the service side's own name rules
@pytest.mark.parametrize(
    ("name", "is_folder", "valid"),
    [
        ('a"b.txt', False, False), ("k|l.txt", False, False), (" x.txt", False, False),
        ("x.txt ", False, False), ("CON", False, False), ("nul.tar.gz", False, False),
        ("~$budget.xlsx", False, False), ("desktop.ini", False, False), ("a_VtI_b.txt", False, False),
        ("~tmp", True, False), ("COM10.txt", False, True), ("CONTRACT.txt", False, True),
        ("my.lock.txt", False, True), ("\u3000memo.txt", False, True), ("report .docx", False, True),
        ("50% #1 & more.txt", False, True),
    ],
)
def test_name_rules(name: str, is_folder: bool, valid: bool) -> None:
    assert (rules.check_name(name, is_folder=is_folder) is None) is valid


def test_forms_folder_at_library_root() -> None:
    assert rules.check_name("Forms", is_folder=True, at_library_root=True) is not None
    assert rules.check_name("Forms", is_folder=True, at_library_root=False) is None


# CASE-11: the service side's size limit
def test_size_limit_boundary() -> None:
    assert rules.check_size(rules.MAX_FILE_SIZE) is None
    assert rules.check_size(rules.MAX_FILE_SIZE + 1) is not None


def test_quick_xor_hash_matches_reference() -> None:
    data = hashlib.sha256(b"seed").digest() * 40 + b"tail"
    streaming = QuickXorHash()
    for start in range(0, len(data), 37):
        streaming.update(data[start : start + 37])
    assert streaming.b64digest() == kit.quick_xor_hash(data)
    empty = QuickXorHash()
    assert empty.b64digest() == "AAAAAAAAAAAAAAAAAAAAAAAAAAA="


def test_manifest_times_are_utc() -> None:
    assert parse_manifest_time("2021-03-28T01:30:00") == dt.datetime(2021, 3, 28, 1, 30, tzinfo=dt.timezone.utc)
    assert parse_manifest_time("2021-03-28T03:30:00+02:00") == dt.datetime(2021, 3, 28, 1, 30, tzinfo=dt.timezone.utc)
    assert parse_manifest_time("2021-03-28T01:30:00.1234567Z").microsecond == 123456


# -- through the real sandbox server ----------------------------------------------------------


def test_job_through_real_sandbox(fresh_sandbox: object) -> None:
    """A full job over HTTPS with a real token, the sandbox's REST dispatcher and its own Azurite."""
    import base64
    import time

    import requests

    profile = fresh_sandbox.profile  # type: ignore[attr-defined]
    ca = profile["ca_bundle"]
    token = requests.post(
        f"{profile['authority']}/oauth2/v2.0/token",
        data={"grant_type": "password", "client_id": profile["public_client_id"],
              "username": profile["user"]["username"], "password": profile["user"]["password"],
              "scope": f"{profile['resource']}/.default"},
        verify=ca, timeout=30,
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json;odata=verbose",
               "User-Agent": "NONISV|spmt-tui|spmt-tui-tests/0.1"}
    api = f"{profile['site_url']}/_api"

    def get(path: str) -> dict:
        response = requests.get(f"{api}/{path}", headers=headers, verify=ca, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["d"]

    def post(path: str, body: dict | None = None) -> tuple[int, dict]:
        response = requests.post(f"{api}/{path}", json=body, headers=headers, verify=ca, timeout=30)
        return response.status_code, response.json()

    site_url = "/" + profile["site_url"].split("/", 3)[3]
    web = get("web")
    site = kit.Site(get("site")["Id"], site_url, web["Title"], web["Id"], get("web/RootFolder")["UniqueId"])
    listing = get("web/lists/getbytitle('Documents')?$expand=RootFolder")
    root = listing["RootFolder"]
    library = kit.Library(listing["Id"], site.id, "Documents", root["UniqueId"], root["ServerRelativeUrl"], 101,
                          True, "")
    builder = kit.PackageBuilder(site, library)
    builder.folder("E2E")
    builder.file("E2E/hello.txt", b"hello over https")

    status, body = post("site/ProvisionMigrationContainers")
    assert status == 200, body
    info = body["d"]["ProvisionMigrationContainers"]
    key = base64.b64decode(info["EncryptionKey"])
    kit.upload_package(builder, builder.xml_files(), info["DataContainerUri"], info["MetadataContainerUri"],
                       key, ca)
    status, body = post("site/CreateMigrationJobEncrypted", {
        "options": {"AES256CBCKey": info["EncryptionKey"]}, "gWebId": site.web_id,
        "azureContainerSourceUri": info["DataContainerUri"],
        "azureContainerManifestUri": info["MetadataContainerUri"],
    })
    assert status == 200, body
    job_id = body["d"]["CreateMigrationJobEncrypted"]

    events: list[dict] = []
    token_text = "0"
    deadline = time.monotonic() + 60
    while not any(event["Event"] == "JobEnd" for event in events):
        assert time.monotonic() < deadline, [event["Event"] for event in events]
        page = get(f"site/GetMigrationJobProgress(jobId='{job_id}',nextToken={token_text})")
        page = page["GetMigrationJobProgress"]
        events.extend(json.loads(entry) for entry in page["Logs"]["results"])
        token_text = page["NextToken"]
        time.sleep(0.2)
    end = kit.by_event(events, "JobEnd")[0]
    assert end["FilesCreated"] == "1", events
    response = requests.get(
        f"{api}/web/GetFileByServerRelativeUrl('{library.root_folder_url}/E2E/hello.txt')/$value",
        headers=headers, verify=ca, timeout=30,
    )
    assert response.status_code == 200
    assert response.content == b"hello over https"


async def test_containers_purged_after_retention(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    """Provisioned containers are purged after the retention, except those an unfinished job reads."""
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False,
                               container_retention=dt.timedelta(seconds=0)) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        builder.file("kept.txt", b"kept")
        kit.set_checksums(builder)
        job_id, _key, _queue, _manifest = await kit.submit(env, builder)  # queued, not run yet
        idle_data, idle_manifest, _idle_key = await kit.provision(env)   # no job reads these
        service = env.tenant.storage.blob_service()

        def names() -> set[str]:
            return {container.name for container in service.list_containers()}

        idle = {urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1] for uri in (idle_data, idle_manifest)}
        assert idle <= names()
        assert env.importer._purge_containers() == 2
        assert not idle & names()
        busy = {row["name"] for row in env.tenant.store.query("SELECT name FROM migration_containers")}
        assert len(busy) == 2
        assert busy <= names()  # the queued job's containers stay

        await env.importer.start()
        events, _tokens = await kit.wait_for_end(env, job_id)
        assert kit.by_event(events, "JobEnd")
        assert env.importer._purge_containers() == 2
        assert not busy & names()
