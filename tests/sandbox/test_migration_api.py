"""REST methods of the sandbox Migration API, against a real Azurite over TLS."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest

try:
    from . import migration_kit as kit
except ImportError:
    import migration_kit as kit  # type: ignore[no-redef]

from spmt_tui.sandbox import migration


@pytest.fixture(scope="module")
def storage_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.StorageEnv]:
    env = kit.start_azurite(tmp_path_factory.mktemp("azurite-api"))
    try:
        yield env
    finally:
        env.process.stop()


def error_text(body: dict) -> str:
    return body["error"]["message"]["value"]


# CASE-22: container SAS grants read and write, no list
async def test_provision_containers_shape(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        status, body = await env.call("ProvisionMigrationContainers")
        assert status == 200
        info = body["d"]["ProvisionMigrationContainers"]
        data, metadata = urlsplit(info["DataContainerUri"]), urlsplit(info["MetadataContainerUri"])
        assert data.path != metadata.path
        for parts in (data, metadata):
            assert parts.scheme == "https"
            assert f":{parts.port}" in parts.netloc
            query = parse_qs(parts.query)
            assert query["sp"] == ["rw"]
            assert query["spr"] == ["https"]
        assert len(base64.b64decode(info["EncryptionKey"])) == 32
        assert info["__metadata"]["type"] == "SP.ProvisionedMigrationContainersInfo"


async def test_provision_keeps_only_key_hash(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        _data, _metadata, key = await kit.provision(env)
        rows = env.tenant.store.query("SELECT * FROM migration_containers")
        assert len(rows) == 2
        stored = json.dumps([dict(row) for row in rows])
        assert base64.b64encode(key).decode() not in stored
        assert key.hex() not in stored


async def test_provision_queue_permissions(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        uri = await kit.provision_queue(env)
        query = parse_qs(urlsplit(uri).query)
        assert set(query["sp"][0]) == set("raup")
        assert query["spr"] == ["https"]


async def test_reader_gets_403(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        status, body = await env.call("ProvisionMigrationContainers", caller="reader")
        assert status == 403
        assert "site collection administrator" in error_text(body)
        status, _body = await env.call("GetMigrationJobStatus", {"id": "00000000-0000-0000-0000-000000000001"},
                                       caller="reader")
        assert status == 403


async def test_app_principal_allowed(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        status, _body = await env.call("ProvisionMigrationContainers", caller="app")
        assert status == 200


async def test_unencrypted_job_on_provisioned_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, manifest_uri, _key = await kit.provision(env)
        status, body = await env.call("CreateMigrationJob", kit.job_body(env, data_uri, manifest_uri))
        assert status == 400
        assert "CreateMigrationJobEncrypted" in error_text(body)


async def test_same_container_twice_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, _manifest_uri, key = await kit.provision(env)
        status, body = await env.call("CreateMigrationJobEncrypted", kit.job_body(env, data_uri, data_uri, key))
        assert status == 400
        assert "same container" in error_text(body)


# CASE-22: an expired container SAS is refused
async def test_expired_sas_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        env.tenant.faults.set_rates({"sas_expired": 1.0})
        data_uri, manifest_uri, key = await kit.provision(env)
        status, body = await env.call("CreateMigrationJobEncrypted", kit.job_body(env, data_uri, manifest_uri, key))
        assert status == 400
        assert "expired" in error_text(body)


async def test_wrong_key_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, manifest_uri, _key = await kit.provision(env)
        body = kit.job_body(env, data_uri, manifest_uri, bytes(32))
        status, response = await env.call("CreateMigrationJobEncrypted", body)
        assert status == 400
        assert "not the key issued" in error_text(response)


async def test_tampered_signature_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, manifest_uri, key = await kit.provision(env)
        forged = data_uri.replace("sig=", "sig=AAAA")
        status, body = await env.call("CreateMigrationJobEncrypted", kit.job_body(env, forged, manifest_uri, key))
        assert status == 400
        assert "rejected by storage" in error_text(body)
        assert "AAAA" not in error_text(body)


async def test_wrong_web_id_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, manifest_uri, key = await kit.provision(env)
        body = kit.job_body(env, data_uri, manifest_uri, key)
        body["gWebId"] = "6f0c0000-0000-0000-0000-000000000000"
        status, response = await env.call("CreateMigrationJobEncrypted", body)
        assert status == 400
        assert "gWebId" in error_text(response)


async def test_own_containers_need_flags(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        source = kit.own_container_uri(env, "rl")
        manifest = kit.own_container_uri(env, "r")
        status, body = await env.call("CreateMigrationJob", kit.job_body(env, source, manifest))
        assert status == 400
        assert "lacks permissions" in error_text(body)


async def test_own_containers_unencrypted_job(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        source = kit.own_container_uri(env, "rl")
        manifest = kit.own_container_uri(env, "rwl")
        status, body = await env.call("CreateMigrationJob", kit.job_body(env, source, manifest))
        assert status == 200, body
        job_id = body["d"]["CreateMigrationJob"]
        job = env.importer.jobs.job(job_id)
        assert job is not None
        assert job.encrypted is False


async def test_job_queued_and_status(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, manifest_uri, key = await kit.provision(env)
        status, body = await env.call("CreateMigrationJobEncrypted", kit.job_body(env, data_uri, manifest_uri, key))
        assert status == 200
        job_id = body["d"]["CreateMigrationJobEncrypted"]
        status, body = await env.call("GetMigrationJobStatus", args=f"(id=guid'{job_id}')", http="GET")
        assert status == 200
        assert body["d"]["GetMigrationJobStatus"] == 2
        status, body = await env.call("GetMigrationStatus", http="GET")
        listed = body["d"]["GetMigrationStatus"]["results"]
        assert [(entry["JobId"], entry["JobState"]) for entry in listed] == [(job_id, 2)]
        status, body = await kit.progress_page(env, job_id, "0")
        logs = [json.loads(entry) for entry in body["d"]["GetMigrationJobProgress"]["Logs"]["results"]]
        assert [event["Event"] for event in logs] == ["JobQueued"]
        assert all(isinstance(value, str) for value in logs[0].values())


async def test_same_container_busy_rejected(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        data_uri, manifest_uri, key = await kit.provision(env)
        body = kit.job_body(env, data_uri, manifest_uri, key)
        status, _response = await env.call("CreateMigrationJobEncrypted", body)
        assert status == 200
        status, response = await env.call("CreateMigrationJobEncrypted", body)
        assert status == 400
        assert "already used by job" in error_text(response)


async def test_unknown_job_progress_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        unknown = "0b0b0b0b-0000-0000-0000-000000000000"
        status, body = await kit.progress_page(env, unknown, "0")
        assert status == 500
        assert body["error"]["code"].startswith("-2147213145")
        status, body = await kit.progress_page(env, unknown, "0", http="POST")
        assert status == 500
        status, body = await env.call("GetMigrationJobStatus", {"id": unknown})
        assert body["d"]["GetMigrationJobStatus"] == 0


async def test_expired_job_status_error(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False,
                               event_retention=dt.timedelta(seconds=0.5)) as env:
        data_uri, manifest_uri, key = await kit.provision(env)
        status, body = await env.call("CreateMigrationJobEncrypted", kit.job_body(env, data_uri, manifest_uri, key))
        job_id = body["d"]["CreateMigrationJobEncrypted"]
        status, body = await env.call("DeleteMigrationJob", {"id": job_id})
        assert body["d"]["DeleteMigrationJob"] is True
        status, body = await kit.progress_page(env, job_id, "0")
        assert status == 200
        events = [json.loads(entry)["Event"] for entry in body["d"]["GetMigrationJobProgress"]["Logs"]["results"]]
        assert events == ["JobQueued", "JobDeleted"]
        time.sleep(0.6)
        status, body = await kit.progress_page(env, job_id, "0")
        assert status == 500
        assert body["error"]["code"].startswith("-2147213146")


async def test_delete_unknown_job_false(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env, start_importer=False) as env:
        status, body = await env.call("DeleteMigrationJob", {"id": "0b0b0b0b-0000-0000-0000-000000000000"})
        assert status == 200
        assert body["d"]["DeleteMigrationJob"] is False


def test_redact_sas_hides_signature() -> None:
    uri = "https://127.0.0.1:10000/devstoreaccount1/c?sv=2024&sp=rw&sig=abc%2Fdef&se=x"
    redacted = migration.redact_sas(uri)
    assert "abc" not in redacted
    assert "sig=REDACTED&se=x" in redacted
