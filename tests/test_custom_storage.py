"""Custom Azure storage: packages go through containers and a queue in the customer's own account.

The sandbox's Azurite serves a second account, ``customer`` (its key is in tenant.json under
``sandbox.customer_storage``). These tests migrate through it and check what arrived, where the
containers were, that they are deleted or kept as the setting requests, that the sandbox rejects SAS
URIs with the wrong permissions, and that the access key is written nowhere.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from contextlib import closing
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas
from azure.storage.queue import QueueSasPermissions, QueueServiceClient, generate_queue_sas

from harness import REPO, Sandbox, start_sandbox
from parity_kit import USER_AGENT, arrived, provider, run, settings, unique, write_tree
from spmt_tui.engine import custom_storage
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings, SettingsError
from spmt_tui.engine.tasks import TaskFileError, load_tasks
from spmt_tui.profile import load_profile
from spmt_tui.spo import custom_storage as spo_storage

KEY_ENV = custom_storage.ACCESS_KEY_ENV


# -- helpers ------------------------------------------------------------------------------------


def customer(sandbox: Sandbox) -> dict[str, str]:
    """Return the sandbox's customer storage account: account, key, blob and queue endpoints."""
    entry = sandbox.profile["sandbox"]["customer_storage"]
    assert entry["account"] == "customer"
    return entry


def blob_service(sandbox: Sandbox) -> BlobServiceClient:
    entry = customer(sandbox)
    return BlobServiceClient(entry["blob_endpoint"], credential={"account_name": entry["account"],
                                                                  "account_key": entry["key"]},
                             connection_verify=sandbox.ca_bundle)


def queue_service(sandbox: Sandbox) -> QueueServiceClient:
    entry = customer(sandbox)
    return QueueServiceClient(entry["queue_endpoint"], credential={"account_name": entry["account"],
                                                                    "account_key": entry["key"]},
                              connection_verify=sandbox.ca_bundle)


def source_tree(root: Path, count: int = 24) -> Path:
    files: dict[str, bytes | str] = {"empty.txt": b"", "top.txt": "top level\n"}
    for number in range(count):
        files[f"d{number % 3}/sub{number % 2}/f{number:02d}.bin"] = os.urandom(50 + 37 * number)
    return write_tree(root, files)


def tree_of(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """Return a folder's files (relative path -> bytes) and its sub-folders."""
    files = {path.relative_to(root).as_posix(): path.read_bytes()
             for path in root.rglob("*") if path.is_file()}
    folders = {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_dir()}
    return files, folders


def cli_export(sandbox: Sandbox, out: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "spmt_tui", "sandbox", "export", "--data", str(sandbox.data_dir),
         "--library", "Documents", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def ledger(session_dir: Path) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(session_dir / "session.db")) as connection:
        connection.row_factory = sqlite3.Row
        return [dict(row) for row in connection.execute(
            "SELECT * FROM custom_storage_resources ORDER BY created")]


def sandbox_jobs(sandbox: Sandbox, job_ids: set[str]) -> dict[str, tuple[str, str, str | None]]:
    """Return the source container, manifest container and queue the sandbox recorded per job."""
    with closing(sqlite3.connect(sandbox.data_dir / "tenant.db")) as connection:
        rows = connection.execute(
            "SELECT id, source_container, manifest_container, queue_name FROM migration_jobs").fetchall()
    return {row[0]: (row[1], row[2], row[3]) for row in rows if row[0] in job_ids}


def secret_forms(secret: bytes | str) -> set[bytes]:
    """The ways a secret could appear in a file: raw, base64, hex, URL-encoded."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {raw, base64.b64encode(raw), raw.hex().encode(), raw.hex().upper().encode(),
             urllib.parse.quote(raw.decode("latin-1"), safe="").encode()}
    return {form for form in forms if len(form) >= 12}


def files_under(*folders: Path) -> list[Path]:
    return [path for folder in folders if folder.exists() for path in folder.rglob("*") if path.is_file()]


def assert_no_secret(paths: list[Path], secrets: set[bytes]) -> None:
    assert paths, "no files to search"
    for path in paths:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{path} contains a secret ({secret[:6]!r}...)"
        assert b"sig=" not in data or b"sig=REDACTED" in data, f"{path} contains a SAS signature"


def key_secrets(key: str) -> set[bytes]:
    return secret_forms(key) | secret_forms(base64.b64decode(key))


def custom_settings(sandbox: Sandbox, work: Path, **values: Any) -> Settings:
    return settings(work, package_max_files=10, custom_azure_storage=True,
                    custom_azure_account=customer(sandbox)["account"], **values)


@pytest.fixture
def recorded_sas(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the signature of every SAS URI the client signs for SharePoint."""
    signatures: list[str] = []
    original_container = spo_storage.CustomStorageAccount.container_sas_uri
    original_queue = spo_storage.CustomStorageAccount.queue_sas_uri

    def keep(uri: str) -> str:
        signatures.append(urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["sig"][0])
        return uri

    monkeypatch.setattr(spo_storage.CustomStorageAccount, "container_sas_uri",
                        lambda self, *args, **kwargs: keep(original_container(self, *args, **kwargs)))
    monkeypatch.setattr(spo_storage.CustomStorageAccount, "queue_sas_uri",
                        lambda self, *args, **kwargs: keep(original_queue(self, *args, **kwargs)))
    return signatures


@pytest.fixture(autouse=True)
def _no_keys_in_memory() -> Iterator[None]:
    custom_storage.forget_keys()
    yield
    custom_storage.forget_keys()


# -- migrations through the customer account ---------------------------------------------------


async def test_migration_deletes_containers(sandbox: Sandbox, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            recorded_sas: list[str]) -> None:
    key = customer(sandbox)["key"]
    monkeypatch.setenv(KEY_ENV, key)
    monkeypatch.setenv("SPMT_TUI_CACHE_PASSPHRASE", "custom storage test passphrase")
    source = source_tree(tmp_path / "share")
    folder = unique("custom-deleted")
    migration, result = await run(
        sandbox, [MigrationTask(str(source), sandbox.site_url, "Documents", folder)],
        custom_settings(sandbox, tmp_path / "work", custom_azure_delete_after=True))
    assert result.status == "completed", result.message

    out = tmp_path / "export"
    cli_export(sandbox, out)
    assert tree_of(out / folder) == tree_of(source)

    rows = ledger(migration.session_dir)
    containers = [row for row in rows if row["role"] != "queue"]
    job_ids = {row["job_id"] for row in containers}
    assert len(job_ids) >= 3, "expected one job per package of 10 files"
    assert None not in job_ids
    assert {row["status"] for row in rows} == {"deleted"}
    assert [row["role"] for row in rows].count("queue") == 1

    # The sandbox ran every job on these containers and the session's queue, all in the
    # customer account, which now contains none of them.
    names = {row["name"] for row in containers}
    recorded = sandbox_jobs(sandbox, job_ids)
    assert set(recorded) == job_ids
    for source_container, manifest_container, queue in recorded.values():
        assert source_container.endswith("-data")
        assert source_container in names
        assert manifest_container.endswith("-manifest")
        assert manifest_container in names
        assert queue == next(row["name"] for row in rows if row["role"] == "queue")
    prefix = custom_storage.container_prefix(migration.session_id, 1)
    assert [item.name for item in blob_service(sandbox).list_containers(name_starts_with=prefix)] == []
    assert [item.name for item in queue_service(sandbox).list_queues(
        name_starts_with=custom_storage.queue_name(migration.session_id, 1, 1))] == []
    # The import logs were written into the manifest containers and read before deletion.
    logs = {path.name for path in (migration.session_dir / "logs").glob("Import-*.log")}
    assert logs == {f"Import-{job_id}-1.log" for job_id in job_ids}

    secrets = key_secrets(key)
    assert recorded_sas, "no SAS was signed"
    for signature in recorded_sas:
        secrets |= secret_forms(signature)
    written = files_under(tmp_path / "work", Path(os.environ["XDG_CONFIG_HOME"]),
                          Path(os.environ["XDG_DATA_HOME"]))
    assert any(path.name == "session.db" for path in written)
    assert any(path.name == "spmt-tui.log" for path in written)
    assert_no_secret(written, secrets)


async def test_migration_keeps_containers(sandbox: Sandbox, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, customer(sandbox)["key"])
    source = source_tree(tmp_path / "share", count=12)
    folder = unique("custom-kept")
    migration, result = await run(
        sandbox, [MigrationTask(str(source), sandbox.site_url, "Documents", folder)],
        custom_settings(sandbox, tmp_path / "work"))
    assert result.status == "completed", result.message
    exported = arrived(sandbox, tmp_path / "export", folder)
    assert exported == tree_of(source)[0]

    rows = ledger(migration.session_dir)
    containers = [row for row in rows if row["role"] != "queue"]
    assert containers
    assert {row["status"] for row in containers} == {"succeeded"}
    service = blob_service(sandbox)
    prefix = custom_storage.container_prefix(migration.session_id, 1)
    in_account = {item.name for item in service.list_containers(name_starts_with=prefix)}
    assert in_account == {row["name"] for row in containers}
    for row in containers:
        blobs = {blob.name for blob in service.get_container_client(row["name"]).list_blobs()}
        if row["role"] == "data":
            assert blobs and all(name.endswith(".dat") for name in blobs)
        else:
            assert "Manifest.xml" in blobs
            assert f"Import-{row['job_id']}-1.log" in blobs, "the sandbox wrote no import log"
    queue = custom_storage.queue_name(migration.session_id, 1, 1)
    assert [item.name for item in queue_service(sandbox).list_queues(name_starts_with=queue)] == [queue]


async def test_wrong_permission_fails_package(sandbox: Sandbox, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that signs the source SAS with write too gets the sandbox's rejection per item."""
    monkeypatch.setenv(KEY_ENV, customer(sandbox)["key"])
    monkeypatch.setattr(custom_storage, "SOURCE_PERMISSIONS",
                        ContainerSasPermissions(read=True, list=True, write=True))
    source = write_tree(tmp_path / "share", {"a.txt": "a", "b.txt": "b"})
    migration, result = await run(
        sandbox, [MigrationTask(str(source), sandbox.site_url, "Documents", unique("custom-bad"))],
        custom_settings(sandbox, tmp_path / "work", custom_azure_delete_after=True))
    assert result.status == "completed_with_failures"
    with closing(sqlite3.connect(migration.session_dir / "session.db")) as connection:
        messages = [row[0] for row in connection.execute(
            "SELECT message FROM items WHERE kind = 'file' AND status = 'failed'")]
    assert len(messages) == 2
    for message in messages:
        assert "azureContainerSourceUri" in message
        assert "grants permissions it must not: w (write)" in message
    # No job used the rejected containers, so deletion removed them at the end of the task.
    rows = [row for row in ledger(migration.session_dir) if row["role"] != "queue"]
    assert rows and {row["status"] for row in rows} == {"deleted"}


# -- the sandbox's own checks -------------------------------------------------------------------


def _own_container(sandbox: Sandbox, permission: str, name: str | None = None) -> str:
    entry = customer(sandbox)
    name = name or unique("own").lower()
    try:
        blob_service(sandbox).create_container(name)
    except ResourceExistsError:
        pass  # a second SAS for the same container
    sas = generate_container_sas(
        entry["account"], name, account_key=entry["key"],
        permission=ContainerSasPermissions.from_string(permission),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), protocol="https")
    return f"{entry['blob_endpoint']}/{name}?{sas}"


def _own_queue(sandbox: Sandbox, permission: str) -> str:
    entry = customer(sandbox)
    name = unique("own-queue").lower()
    queue_service(sandbox).create_queue(name)
    sas = generate_queue_sas(
        entry["account"], name, entry["key"], permission=QueueSasPermissions.from_string(permission),
        expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1), protocol="https")
    return f"{entry['queue_endpoint']}/{name}?{sas}"


async def _create_job(sandbox: Sandbox, source: str, manifest: str, queue: str | None) -> tuple[int, str]:
    """Call CreateMigrationJobEncrypted as the admin user; return the HTTP status and body."""
    token = await provider(sandbox).get_token()
    headers = {"Authorization": f"Bearer {token}", "User-Agent": USER_AGENT,
               "Accept": "application/json;odata=verbose"}

    def call() -> requests.Response:
        web = requests.get(f"{sandbox.site_url}/_api/web", verify=sandbox.ca_bundle, timeout=30,
                           headers=headers).json()["d"]
        body = {"options": {"AES256CBCKey": base64.b64encode(os.urandom(32)).decode()},
                "gWebId": web["Id"], "azureContainerSourceUri": source,
                "azureContainerManifestUri": manifest, "azureQueueReportUri": queue}
        return requests.post(f"{sandbox.site_url}/_api/site/CreateMigrationJobEncrypted", json=body,
                             verify=sandbox.ca_bundle, timeout=30, headers=headers)

    response = await asyncio.to_thread(call)
    return response.status_code, response.text


@pytest.mark.parametrize("source_sp, manifest_sp, queue_sp, expected", [
    ("rwl", "rwl", "rau", "azureContainerSourceUri (sp=rwl) grants permissions it must not: w (write)"),
    ("rl", "rl", "rau", "azureContainerManifestUri (sp=rl) lacks permissions w (write)"),
    ("r", "rwl", "rau", "azureContainerSourceUri (sp=r) lacks permissions l (list)"),
    ("rl", "rwdl", "rau", "grants permissions it must not: d (delete)"),
    ("rl", "rwl", "raup", "azureQueueReportUri (sp=raup) grants permissions it must not: p (process)"),
    ("rl", "rwl", "ra", "azureQueueReportUri (sp=ra) lacks permissions u (update)"),
])
async def test_sandbox_rejects_wrong_permissions(sandbox: Sandbox, source_sp: str, manifest_sp: str,
                                                 queue_sp: str, expected: str) -> None:
    status, text = await _create_job(sandbox, _own_container(sandbox, source_sp),
                                     _own_container(sandbox, manifest_sp), _own_queue(sandbox, queue_sp))
    assert status == 400, text
    assert expected in text


async def test_sandbox_rejects_same_or_foreign_uri(sandbox: Sandbox) -> None:
    source = _own_container(sandbox, "rl")
    name = urllib.parse.urlsplit(source).path.rsplit("/", 1)[1]
    manifest_same = _own_container(sandbox, "rwl", name)
    status, text = await _create_job(sandbox, source, manifest_same, None)
    assert status == 400
    assert "name the same container" in text

    # Another port on this machine is not the sandbox's Azurite; nothing is sent there.
    parts = urllib.parse.urlsplit(_own_container(sandbox, "rwl"))
    elsewhere = parts._replace(netloc=f"127.0.0.1:{parts.port + 100}").geturl()
    status, text = await _create_job(sandbox, source, elsewhere, None)
    assert status == 400
    assert "azureContainerManifestUri does not point into this tenant's storage" in text
    assert "sig=REDACTED" in text

    unknown_account = source.replace("/customer/", "/stranger/")
    status, text = await _create_job(sandbox, unknown_account, _own_container(sandbox, "rwl"), None)
    assert status == 400
    assert "names storage account 'stranger'" in text


# -- task files and the command line -----------------------------------------------------------


def test_task_file_holds_key_in_memory(tmp_path: Path) -> None:
    write_tree(tmp_path / "alpha", {"a.txt": "a"})
    key = base64.b64encode(os.urandom(64)).decode()
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"Tasks": [{
        "SourcePath": "alpha", "TargetPath": "https://127.0.0.1:1/sites/x", "TargetList": "Documents",
        "Settings": {"UseCustomAzureStorage": True, "CustomAzureStorageAccount": "customer",
                     "CustomAzureAccessKey": key, "CustomAzureDeletionAfterMig": True}}]}))
    tasks = load_tasks(path)
    assert tasks[0].settings == {"custom_azure_storage": True, "custom_azure_account": "customer",
                                 "custom_azure_delete_after": True}
    assert custom_storage.find_key("customer") == (key, "memory")


@pytest.mark.parametrize("settings_json, expected", [
    ({"CustomAzureAccessKey": "a2V5"}, "CustomAzureAccessKey needs CustomAzureStorageAccount"),
    ({"CustomAzureStorageAccount": "customer", "CustomAzureAccessKey": "not base64 ###"},
     "is not valid base64"),
    ({"CustomAzureStorageAccount": "Bad_Name"}, "invalid custom_azure_account 'Bad_Name'"),
    ({"custom_azure_blob_endpoint": "http://127.0.0.1:1/customer"}, "invalid custom_azure_blob_endpoint"),
])
def test_task_file_custom_storage_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        settings_json: dict[str, Any], expected: str) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv(f"{KEY_ENV}_CUSTOMER", raising=False)
    write_tree(tmp_path / "alpha", {"a.txt": "a"})
    path = tmp_path / "tasks.json"
    path.write_text(json.dumps({"Tasks": [{"SourcePath": "alpha", "TargetPath": "https://127.0.0.1:1/sites/x",
                                           "TargetList": "Documents", "Settings": settings_json}]},
                               indent=1))
    with pytest.raises(TaskFileError) as error:
        load_tasks(path)
    assert expected in str(error.value)
    assert error.value.issues[0].line > 1
    assert "###" not in str(error.value)
    assert custom_storage.find_key("customer") is None, "a key of an invalid file was kept"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "spmt_tui", *args]


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(KEY_ENV)}
    env.update(XDG_CONFIG_HOME=str(tmp_path / "xdg-config"), XDG_DATA_HOME=str(tmp_path / "xdg-data"),
               PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring", **extra)
    return env


def test_task_file_per_task_storage(sandbox: Sandbox, tmp_path: Path) -> None:
    entry = customer(sandbox)
    share = tmp_path / "share"
    source_tree(share / "alpha", count=14)
    source_tree(share / "beta", count=5)
    folders = [unique("task-custom"), unique("task-spo")]
    tasks = {"Tasks": [
        {"SourcePath": "alpha", "TargetPath": sandbox.site_url, "TargetList": "Documents",
         "TargetListRelativePath": folders[0],
         "Settings": {"UseCustomAzureStorage": True, "CustomAzureStorageAccount": entry["account"],
                      "CustomAzureAccessKey": entry["key"], "CustomAzureDeletionAfterMig": True,
                      "custom_azure_blob_endpoint": entry["blob_endpoint"],
                      "custom_azure_queue_endpoint": entry["queue_endpoint"]}},
        {"SourcePath": "beta", "TargetPath": sandbox.site_url, "TargetList": "Documents",
         "TargetListRelativePath": folders[1]},
    ]}
    task_file = share / "tasks.json"
    task_file.write_text(json.dumps(tasks, indent=2))
    work = tmp_path / "work"
    result = subprocess.run(
        _cli("migrate", "--tasks", str(task_file), "--tenant-profile", str(sandbox.profile_path),
             "--auth", "password", "--token-cache", "memory", "--working-folder", str(work),
             "--package-max-files", "10", "--job-poll-seconds", "0.5"),
        cwd=REPO, capture_output=True, text=True, timeout=600, env=_cli_env(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert result.stdout.startswith("completed")

    out = tmp_path / "export"
    cli_export(sandbox, out)
    assert tree_of(out / folders[0]) == tree_of(share / "alpha")
    assert tree_of(out / folders[1]) == tree_of(share / "beta")

    session_dir = next(work.glob("sessions/*"))
    rows = ledger(session_dir)
    assert rows and {row["task_id"] for row in rows} == {1}, "only the first task uses custom storage"
    assert {row["status"] for row in rows} == {"deleted"}
    custom_jobs = {row["job_id"] for row in rows if row["role"] != "queue"}
    with closing(sqlite3.connect(session_dir / "session.db")) as connection:
        all_jobs = {row[0] for row in connection.execute("SELECT job_id FROM jobs")}
    spo_jobs = all_jobs - custom_jobs
    assert custom_jobs and spo_jobs
    names = {row["name"] for row in rows}
    for job_id, (source_container, manifest_container, _queue) in sandbox_jobs(sandbox, all_jobs).items():
        in_customer = source_container in names and manifest_container in names
        assert in_customer == (job_id in custom_jobs)

    # The key came from the task file only; it is in no file the run wrote.
    written = files_under(work, tmp_path / "xdg-config", tmp_path / "xdg-data")
    assert_no_secret(written, key_secrets(entry["key"]))


def test_missing_key_stops_with_advice(sandbox: Sandbox, tmp_path: Path) -> None:
    write_tree(tmp_path / "share", {"a.txt": "a"})
    result = subprocess.run(
        _cli("migrate", str(tmp_path / "share"), "--tenant-profile", str(sandbox.profile_path),
             "--auth", "password", "--token-cache", "memory", "--working-folder", str(tmp_path / "work"),
             "--custom-azure-storage", "--custom-azure-account", "customer"),
        cwd=REPO, capture_output=True, text=True, timeout=120, env=_cli_env(tmp_path),
        stdin=subprocess.DEVNULL)
    assert result.returncode == 2
    assert "no access key for storage account 'customer'" in result.stderr
    assert "SPMT_TUI_AZURE_STORAGE_KEY_CUSTOMER" in result.stderr


# -- resume ------------------------------------------------------------------------------------


@pytest.fixture
def slow_import_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    # Each job waits 3 s before it starts, so a kill lands while jobs are still queued.
    box = start_sandbox(tmp_path / "tenant", "--import-delay", "3")
    try:
        yield box
    finally:
        box.stop()


def _submitted(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute("SELECT count(*) FROM items WHERE status = 'submitted'").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_kill_and_resume_custom_storage(slow_import_sandbox: Sandbox, tmp_path: Path) -> None:
    box = slow_import_sandbox
    entry = customer(box)
    source = source_tree(tmp_path / "share", count=40)
    work = tmp_path / "work"
    common = ["--tenant-profile", str(box.profile_path), "--auth", "password", "--token-cache", "memory",
              "--working-folder", str(work)]
    env = _cli_env(tmp_path, **{KEY_ENV: entry["key"]})
    process = subprocess.Popen(
        _cli("migrate", str(source), *common, "--folder", "resumed", "--package-max-files", "10",
             "--jobs-in-flight", "3", "--custom-azure-storage", "--custom-azure-account", "customer",
             "--custom-azure-delete-after"),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    db = None
    while time.monotonic() < deadline:
        found = list(work.glob("sessions/*/session.db"))
        if found:
            db = found[0]
            if _submitted(db) >= 5:
                break
        if process.poll() is not None:
            pytest.fail(f"the migration ended before it could be killed: {process.stderr.read()[-2000:]}")
        time.sleep(0.05)
    else:
        pytest.fail("the migration never submitted a job")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert db is not None
    session_dir = db.parent
    before = ledger(session_dir)
    submitted_jobs = {row["job_id"] for row in before if row["status"] == "submitted"}
    assert submitted_jobs, f"no job was recorded as submitted before the kill: {before}"

    without_key = subprocess.run(_cli("resume", *common), cwd=REPO, capture_output=True, text=True,
                                 timeout=120, env=_cli_env(tmp_path), stdin=subprocess.DEVNULL)
    assert without_key.returncode == 2
    assert "no access key for storage account 'customer'" in without_key.stderr

    resumed = subprocess.run(_cli("resume", *common), cwd=REPO, capture_output=True, text=True,
                             timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert resumed.stdout.startswith("completed")

    out = tmp_path / "export"
    cli_export(box, out)
    assert tree_of(out / "resumed") == tree_of(source)

    rows = ledger(session_dir)
    assert {row["status"] for row in rows} == {"deleted"}
    # The jobs submitted before the kill were followed to their end by the resumed run, which
    # then deleted their containers with SAS and clients made again from the key.
    assert submitted_jobs <= {row["job_id"] for row in rows}
    prefix = custom_storage.container_prefix(session_dir.name, 1)
    assert [item.name for item in blob_service(box).list_containers(name_starts_with=prefix)] == []


async def test_rerun_deletes_unrecorded_job(sandbox: Sandbox, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A job that only the storage record knows (killed before its items were recorded)."""
    monkeypatch.setenv(KEY_ENV, customer(sandbox)["key"])
    source = source_tree(tmp_path / "share", count=4)
    migration, result = await run(
        sandbox, [MigrationTask(str(source), sandbox.site_url, "Documents", unique("custom-orphan"))],
        custom_settings(sandbox, tmp_path / "work"))
    assert result.status == "completed", result.message
    rows = [row for row in ledger(migration.session_dir) if row["role"] != "queue"]
    orphan = rows[0]["job_id"]
    with closing(sqlite3.connect(migration.session_dir / "session.db")) as connection:
        connection.execute("UPDATE custom_storage_resources SET status = 'submitted' WHERE job_id = ?",
                           (orphan,))
        connection.commit()

    again = Migration.open_session(migration.session_id, migration.settings,
                                   load_profile(sandbox.profile_path), provider(sandbox))
    again.settings.custom_azure_delete_after = True
    result = await again.run()
    assert result.status == "completed", result.message
    statuses = {row["name"]: row["status"] for row in ledger(migration.session_dir)
                if row["job_id"] == orphan}
    assert statuses and set(statuses.values()) == {"deleted"}
    for name in statuses:
        assert not blob_service(sandbox).get_container_client(name).exists()


# -- settings and endpoints --------------------------------------------------------------------


def test_settings_reject_bad_custom_storage() -> None:
    with pytest.raises(SettingsError, match="custom_azure_account is empty"):
        Settings(custom_azure_storage=True).validate()
    with pytest.raises(SettingsError, match="invalid custom_azure_queue_endpoint"):
        Settings(custom_azure_account="customer",
                 custom_azure_queue_endpoint="https://127.0.0.1:1/customer?sv=1").validate()


def test_endpoints_stay_on_loopback(sandbox: Sandbox) -> None:
    profile = load_profile(sandbox.profile_path)
    entry = customer(sandbox)
    sandbox_endpoints = custom_storage.resolve_endpoints(
        Settings(custom_azure_storage=True, custom_azure_account="customer"), profile, sandbox.site_url)
    assert (sandbox_endpoints.blob, sandbox_endpoints.queue) == (entry["blob_endpoint"], entry["queue_endpoint"])
    # Another account has no emulator endpoints, and a local tenant never gets Azure's.
    with pytest.raises(SettingsError, match="is not on this machine"):
        custom_storage.resolve_endpoints(
            Settings(custom_azure_storage=True, custom_azure_account="contoso"), profile, sandbox.site_url)
    public = custom_storage.resolve_endpoints(
        Settings(custom_azure_storage=True, custom_azure_account="contoso"), None,
        "https://contoso.sharepoint.com/sites/x")
    assert (public.blob, public.queue) == ("https://contoso.blob.core.windows.net",
                                           "https://contoso.queue.core.windows.net")
