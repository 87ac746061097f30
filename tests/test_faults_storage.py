"""Faults in Azure Storage: the sandbox's proxy in front of Azurite, and a migration through it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

import pytest
import requests

from harness import Sandbox, start_sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile
from spmt_tui.sandbox.export import export_library

STORAGE_FAULTS = "storage_503=0.04,storage_500=0.03,storage_drop=0.04"


@pytest.fixture(scope="module")
def storage_faults_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    box = start_sandbox(tmp_path_factory.mktemp("storage-faults"), "--faults", STORAGE_FAULTS,
                        "--fault-seed", "11")
    try:
        yield box
    finally:
        box.stop()


def _provider(box: Sandbox) -> UsernamePasswordProvider:
    data = json.loads(box.profile_path.read_text())
    return UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                    data["user"]["password"], store=MemoryStore())


def _container_sas(box: Sandbox) -> str:
    """Provision containers through the REST API, as a client does, and return the data SAS URI."""
    provider = _provider(box)
    import asyncio

    token = asyncio.run(provider.get_token())
    site = box.site_url
    response = requests.post(f"{site}/_api/site/ProvisionMigrationContainers",
                             headers={"Authorization": f"Bearer {token}",
                                      "Accept": "application/json;odata=verbose"},
                             verify=box.ca_bundle, timeout=30)
    response.raise_for_status()
    return response.json()["d"]["ProvisionMigrationContainers"]["DataContainerUri"]


def test_sas_uris_name_the_proxy(storage_faults_sandbox: Sandbox) -> None:
    box = storage_faults_sandbox
    uri = urlsplit(_container_sas(box))
    proxy = urlsplit(box.profile["sandbox"]["azurite_blob"])
    assert uri.port == proxy.port
    # The proxy's port is not one of Azurite's (the sandbox port + 1 and + 2).
    sandbox_port = urlsplit(box.site_url).port
    assert uri.port not in (sandbox_port + 1, sandbox_port + 2)


def test_proxy_answers_azure_errors(storage_faults_sandbox: Sandbox) -> None:
    box = storage_faults_sandbox
    sas_uri = _container_sas(box)
    base, _, query = sas_uri.partition("?")
    url = f"{base}/probe-{os.getpid()}.bin?{query}"
    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"}
    try:
        cases = [("storage_503=1", 503, "ServerBusy"), ("storage_500=1", 500, "OperationTimedOut")]
        for spec, status, code in cases:
            box.set_faults(spec)
            response = requests.put(url, data=b"x" * 1000, headers=headers, verify=box.ca_bundle, timeout=30)
            assert response.status_code == status
            assert response.headers["x-ms-error-code"] == code
            assert response.headers["Content-Type"] == "application/xml"
            assert f"<Error><Code>{code}</Code><Message>" in response.text
        box.set_faults("storage_drop=1")
        with pytest.raises(requests.ConnectionError):
            requests.put(url, data=os.urandom(256 * 1024), headers=headers, verify=box.ca_bundle, timeout=30)
        box.set_faults("storage_503=0")
        response = requests.put(url, data=b"y" * 10, headers=headers, verify=box.ca_bundle, timeout=30)
        assert response.status_code == 201, response.text
        fetched = requests.get(url, headers={"x-ms-version": "2021-08-06"}, verify=box.ca_bundle, timeout=30)
        assert fetched.content == b"y" * 10
    finally:
        box.set_faults(STORAGE_FAULTS)


def test_storage_kind_needs_proxy(sandbox: Sandbox) -> None:
    with pytest.raises(requests.HTTPError) as caught:
        sandbox.set_faults("storage_503=0.1")
    assert "needs the storage proxy" in caught.value.response.json()["error"]


async def test_migration_rides_through_storage_faults(storage_faults_sandbox: Sandbox, tmp_path: Path) -> None:
    box = storage_faults_sandbox
    before = box.admin("state")["faults"]
    source = tmp_path / "share"
    expected: dict[str, bytes] = {}
    sizes = [0, 1, 15, 16, 17, 4095, 70_000, 300_000] * 10 + [9 * 2**20 + 5, 4 * 2**20]
    for number, size in enumerate(sizes):
        relative = f"d{number % 4}/s{number % 3}/f{number:03d}.bin"
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        data = os.urandom(size)
        (source / relative).write_bytes(data)
        expected[relative] = data
    profile = load_profile(box.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=10, job_poll_seconds=0.5)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "storage-faults")],
                          settings, profile, _provider(box))
    result = await migration.run()
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0

    after = box.admin("state")["faults"]
    for kind in ("storage_503", "storage_500", "storage_drop"):
        fired = after["injected"][kind] - before["injected"][kind]
        assert fired > 0, f"no {kind} fault fired, so the test proved nothing about it"
    assert after["observed"]["blob_requests"] > before["observed"].get("blob_requests", 0)
    assert after["observed"]["queue_requests"] > before["observed"].get("queue_requests", 0)
    print("storage faults injected:", {k: after["injected"][k] - before["injected"][k]
                                       for k in ("storage_503", "storage_500", "storage_drop")},
          "requests seen:", after["observed"])
    # A lost response to a queue message delete must not be taken for a deleted queue.
    log_text = "".join(p.read_text() for p in (tmp_path / "work").glob("sessions/*/logs/spmt-tui.log"))
    assert "the job queue no longer exists" not in log_text

    out = tmp_path / "export"
    export_library(box.data_dir, "Documents", out)
    root = out / "storage-faults"
    arrived = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert sorted(arrived) == sorted(expected)
    for relative, content in expected.items():
        assert arrived[relative] == content, relative
