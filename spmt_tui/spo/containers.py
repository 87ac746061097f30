"""Azure Storage side of the Migration API: blob uploads, snapshots, the job queue, import logs.

The containers that SharePoint provisions grant read and write but not list, so nothing here
lists a container: every blob name comes from the package. Bytes arrive here already encrypted;
this module only moves them and sets the ``IV`` metadata, ``Content-MD5`` and a snapshot.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

import aiohttp
from azure.core.exceptions import AzureError, HttpResponseError, ResourceNotFoundError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import BlobClient, ContainerClient
from azure.storage.queue.aio import QueueClient
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from spmt_tui.logs import redact
from spmt_tui.proxy import proxy_for_url
from spmt_tui.spo.http import USER_AGENT, ssl_context

log = logging.getLogger("spmt.spo.containers")

BLOCK_SIZE = 4 * 2**20

# Retries of one storage request (503 ServerBusy, 500 OperationTimedOut, a dropped connection).
# The async clients of azure-storage-blob 12.31 and azure-storage-queue 12.18 build their
# ExponentialRetry from these keyword arguments. It waits initial_backoff + increment_base ** n
# seconds (+-3 s jitter) before retry n. With its defaults (15, 3, 3 retries: about 18, 24 and
# 42 s) every brief fault costs 15 s or more. These values wait about 4, 10, 28, 82 and 244 s, so
# a brief fault costs seconds and an outage of about six minutes is ridden through before the
# engine uploads the whole blob again.
STORAGE_RETRY = {"initial_backoff": 1, "increment_base": 3, "retry_total": 5}


class ContainerExpired(Exception):
    """The container's SAS is no longer valid (SPMT error 0x01610001): provision new containers."""


class StorageTransport:
    """One aiohttp session shared by every blob and queue client, so connections are reused.

    TLS verification uses the connector's context; passing a CA path per request to the Azure
    SDK instead would build a new SSL context for every request and defeat connection reuse.
    The session ignores proxy variables; each client gets its proxy from ``proxy_for_url``.
    """

    def __init__(self, ca_bundle: str | None, *, limit: int = 64) -> None:
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context(ca_bundle), limit=limit),
            trust_env=False,
        )

    def _transport(self) -> AioHttpTransport:
        return AioHttpTransport(session=self.session, session_owner=False)

    def container(self, sas_uri: str) -> ContainerClient:
        return ContainerClient.from_container_url(
            sas_uri, transport=self._transport(), user_agent=USER_AGENT,
            max_single_put_size=BLOCK_SIZE, max_block_size=BLOCK_SIZE,
            **STORAGE_RETRY, **_proxies(sas_uri),
        )

    def queue(self, sas_uri: str) -> QueueClient:
        return QueueClient.from_queue_url(sas_uri, transport=self._transport(), user_agent=USER_AGENT,
                                          **STORAGE_RETRY, **_proxies(sas_uri))

    async def close(self) -> None:
        await self.session.close()


def _proxies(uri: str) -> dict[str, Any]:
    """Return the Azure SDK's ``proxies`` argument for a storage URI (none when direct)."""
    proxy = proxy_for_url(uri)
    return {"proxies": {"https": proxy, "http": proxy}} if proxy else {}


def _is_expired(error: HttpResponseError) -> bool:
    code = (getattr(error, "error_code", None) or "").lower()
    return error.status_code == 403 and (
        "authenticationfailed" in code or "authorizationfailure" in code or "expired" in str(error).lower()
    )


@dataclass(frozen=True)
class UploadedBlob:
    name: str
    size: int
    snapshot: str


async def upload_small(
    container: ContainerClient, name: str, data: bytes, iv: bytes, md5: bytes
) -> UploadedBlob:
    """Upload an already encrypted blob in one request, then snapshot it."""
    blob = container.get_blob_client(name)
    try:
        await blob.upload_blob(
            data,
            overwrite=True,
            metadata={"IV": base64.b64encode(iv).decode("ascii")},
            content_settings=ContentSettings(content_md5=bytearray(md5)),
            length=len(data),
        )
        snapshot = await blob.create_snapshot()
    except HttpResponseError as error:
        if _is_expired(error):
            raise ContainerExpired(redact(str(error))) from error
        raise
    return UploadedBlob(name, len(data), snapshot.get("snapshot", ""))


async def upload_blocks(
    container: ContainerClient,
    name: str,
    chunks: AsyncIterator[bytes],
    iv: bytes,
    md5_of_all: Any,
    *,
    in_flight: int = 4,
) -> UploadedBlob:
    """Upload encrypted chunks as blocks, up to ``in_flight`` at once, then commit and snapshot.

    ``md5_of_all`` is called after the last chunk to get the MD5 of every encrypted byte.
    """
    blob: BlobClient = container.get_blob_client(name)
    block_ids: list[str] = []
    pending: set[asyncio.Task[None]] = set()
    size = 0
    try:
        async for chunk in chunks:
            block_id = base64.b64encode(uuid.uuid4().bytes).decode("ascii")
            block_ids.append(block_id)
            size += len(chunk)
            pending.add(asyncio.create_task(blob.stage_block(block_id, chunk, length=len(chunk))))
            if len(pending) >= in_flight:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
        if pending:
            for task in await asyncio.gather(*pending, return_exceptions=True):
                if isinstance(task, BaseException):
                    raise task
            pending = set()
        await blob.commit_block_list(
            block_ids,
            metadata={"IV": base64.b64encode(iv).decode("ascii")},
            content_settings=ContentSettings(content_md5=bytearray(md5_of_all())),
        )
        snapshot = await blob.create_snapshot()
    except HttpResponseError as error:
        if _is_expired(error):
            raise ContainerExpired(redact(str(error))) from error
        raise
    finally:
        for task in pending:
            task.cancel()
    return UploadedBlob(name, size, snapshot.get("snapshot", ""))


def decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Decrypt AES-256-CBC with PKCS7 padding, as the service encrypts queue events and logs."""
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(data) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(padded) + unpadder.finalize()


def decode_queue_message(text: str, key: bytes | None) -> dict[str, Any] | None:
    """Turn one queue message into the event it carries, or None if it cannot be read."""
    try:
        raw = base64.b64decode(text)
        envelope = json.loads(raw.decode("utf-8-sig"))
    except ValueError:
        try:
            envelope = json.loads(text)
        except ValueError:
            log.warning("skipped a queue message that is neither base64 JSON nor JSON")
            return None
    if envelope.get("Label") == "Encrypted":
        if key is None:
            return None
        try:
            plain = decrypt(key, base64.b64decode(envelope["IV"]), base64.b64decode(envelope["Content"]))
            event = json.loads(plain.decode("utf-8-sig"))
        except (KeyError, ValueError) as error:
            log.warning("job %s: could not decrypt a queue event: %s", envelope.get("JobId"), error)
            return None
        event.setdefault("JobId", envelope.get("JobId"))
        return event
    return envelope


async def receive_events(
    queue: QueueClient, keys: dict[str, bytes], *, max_messages: int = 32
) -> list[dict[str, Any]]:
    """Read and delete up to ``max_messages`` events; ``keys`` maps job ids to their AES keys."""
    events: list[dict[str, Any]] = []
    try:
        messages = queue.receive_messages(messages_per_page=max_messages, visibility_timeout=60)
        async for message in messages:
            text = message.content
            job_hint = None
            try:
                job_hint = json.loads(base64.b64decode(text)).get("JobId")
            except (ValueError, AttributeError):
                pass
            event = decode_queue_message(text, keys.get(str(job_hint).lower()) if job_hint else None)
            if event is not None:
                events.append(event)
            try:
                await queue.delete_message(message)
            except ResourceNotFoundError as error:
                if (error.error_code or "") != "MessageNotFound":
                    raise
                # An earlier try deleted it and its response was lost, so the SDK retried.
                log.debug("queue message %s was already deleted", message.id)
            if len(events) >= max_messages:
                break
    except ResourceNotFoundError:
        log.warning("the job queue no longer exists; following jobs through GetMigrationJobProgress")
        raise
    except AzureError as error:
        log.warning("reading the job queue failed: %s", redact(str(error)))
    return events


async def download_log(container: ContainerClient, name: str, key: bytes) -> bytes | None:
    """Download and decrypt one import log blob, or return None when it is not there."""
    blob = container.get_blob_client(name)
    try:
        props = await blob.get_blob_properties()
        stream = await blob.download_blob()
        data = await stream.readall()
    except ResourceNotFoundError:
        return None
    iv_text = (props.metadata or {}).get("IV")
    if not iv_text:
        return data
    return decrypt(key, base64.b64decode(iv_text), data)
