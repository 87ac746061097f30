"""Upload cases against the sandbox's Azurite: block boundaries, empty files, files that change.

The containers come from the sandbox's ProvisionMigrationContainers, as in a migration, and each
blob is read back with the Azurite account key and decrypted to check the bytes, the IV metadata,
Content-MD5 and the snapshot.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
from azure.storage.blob import BlobServiceClient

from harness import Sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.crypto import QuickXorHash, decrypt_blob
from spmt_tui.engine.source import FileShareSource, ItemStat, SourceItem
from spmt_tui.engine.upload import (
    BLOCK_SIZE,
    FileChangedError,
    SourceReadError,
    block_size_for,
    encrypt_and_upload,
)
from spmt_tui.sandbox.context import AZURITE_KEY
from spmt_tui.spo.containers import StorageTransport
from spmt_tui.spo.http import SharePointHttp, new_session
from spmt_tui.spo.sharepoint import SharePointClient

SIZES = [0, 1, 15, 16, 17, BLOCK_SIZE - 1, BLOCK_SIZE, BLOCK_SIZE + 1, 2 * BLOCK_SIZE + 5]


class Env:
    def __init__(self, client: SharePointClient, transport: StorageTransport, admin: BlobServiceClient):
        self.client = client
        self.transport = transport
        self.admin = admin


@pytest.fixture
async def env(sandbox: Sandbox) -> AsyncIterator[Env]:
    profile = json.loads(sandbox.profile_path.read_text())
    settings = AuthSettings.from_profile(profile)
    provider = UsernamePasswordProvider(settings, profile["user"]["username"], profile["user"]["password"],
                                        store=MemoryStore())
    session = new_session(profile["ca_bundle"])
    client = SharePointClient(profile["site_url"], SharePointHttp(session, provider.get_token))
    transport = StorageTransport(profile["ca_bundle"])
    admin = BlobServiceClient(profile["sandbox"]["azurite_blob"], credential={
        "account_name": "devstoreaccount1", "account_key": AZURITE_KEY}, connection_verify=profile["ca_bundle"])
    try:
        yield Env(client, transport, admin)
    finally:
        await transport.close()
        await session.close()


def _container_name(uri: str) -> str:
    return uri.split("?")[0].rstrip("/").rsplit("/", 1)[1]


async def _walk_one(source: FileShareSource, name: str) -> SourceItem:
    async for batch in source.walk():
        for item in batch:
            if item.name == name:
                return item
    raise AssertionError(f"{name} not found by the walker")


def _read_back(env: Env, uri: str, blob_name: str, key: bytes) -> tuple[bytes, dict[str, Any]]:
    container = env.admin.get_container_client(_container_name(uri))
    snapshots = [b for b in container.list_blobs(include=["snapshots", "metadata"]) if b.name == blob_name]
    assert any(b.snapshot for b in snapshots), f"{blob_name} has no snapshot"
    props = container.get_blob_client(blob_name).get_blob_properties()
    cipher = container.get_blob_client(blob_name).download_blob().readall()
    assert bytes(props.content_settings.content_md5) == hashlib.md5(cipher).digest()
    iv = base64.b64decode(props.metadata["IV"])
    assert len(iv) == 16
    return decrypt_blob(key, iv, cipher), dict(props.metadata)


# CASE-09, CASE-10: 0 bytes and block boundaries round-trip through Azurite
@pytest.mark.parametrize("size", SIZES)
async def test_block_boundaries_round_trip(env: Env, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f.bin").write_bytes(data)
    source = FileShareSource(tmp_path)
    item = await _walk_one(source, "f.bin")
    containers = await env.client.provision_containers()
    container = env.transport.container(containers.data_uri)
    try:
        result = await encrypt_and_upload(source, item, container, containers.key, "f.dat")
    finally:
        await container.close()
    plain, _ = _read_back(env, containers.data_uri, "f.dat", containers.key)
    assert plain == data
    assert result.plain_size == size
    assert result.cipher_size == (size // 16 + 1) * 16
    assert result.checksum_base64 == QuickXorHash(data).base64digest()


# CASE-22: a fresh IV per blob
async def test_each_blob_gets_its_own_iv(env: Env, tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"same bytes")
    (tmp_path / "b.txt").write_bytes(b"same bytes")
    source = FileShareSource(tmp_path)
    containers = await env.client.provision_containers()
    container = env.transport.container(containers.data_uri)
    try:
        for name in ("a.txt", "b.txt"):
            await encrypt_and_upload(source, await _walk_one(source, name), container, containers.key, f"{name}.dat")
    finally:
        await container.close()
    _, meta_a = _read_back(env, containers.data_uri, "a.txt.dat", containers.key)
    _, meta_b = _read_back(env, containers.data_uri, "b.txt.dat", containers.key)
    assert meta_a["IV"] != meta_b["IV"]


class ChangingSource(FileShareSource):
    """A share whose file is appended to while it is being read."""

    def stat(self, item: SourceItem) -> ItemStat | None:
        before = super().stat(item)
        with open(self.path_of(item), "ab") as handle:
            handle.write(b"more")
        return before


# CASE-15: a file that changes while it is read is detected
async def test_file_changed_while_read_is_detected(env: Env, tmp_path: Path) -> None:
    (tmp_path / "growing.log").write_bytes(b"x" * 1000)
    source = ChangingSource(tmp_path)
    item = await _walk_one(source, "growing.log")
    containers = await env.client.provision_containers()
    container = env.transport.container(containers.data_uri)
    try:
        with pytest.raises(FileChangedError):
            await encrypt_and_upload(source, item, container, containers.key, "g.dat")
    finally:
        await container.close()


# CASE-15: a file deleted after the scan is reported
async def test_file_gone_before_upload_is_reported(env: Env, tmp_path: Path) -> None:
    (tmp_path / "gone.txt").write_bytes(b"soon deleted")
    source = FileShareSource(tmp_path)
    item = await _walk_one(source, "gone.txt")
    (tmp_path / "gone.txt").unlink()
    containers = await env.client.provision_containers()
    container = env.transport.container(containers.data_uri)
    try:
        with pytest.raises(SourceReadError, match="no longer exists"):
            await encrypt_and_upload(source, item, container, containers.key, "gone.dat")
    finally:
        await container.close()


# CASE-11: block size grows so 250 GB fits Azure's block limit
def test_block_size_fits_azure_block_limit() -> None:
    assert block_size_for(10 * 2**20) == BLOCK_SIZE
    size = 250 * 10**9 + 16
    block = block_size_for(size)
    assert block % 2**20 == 0
    assert -(-size // block) <= 50_000
