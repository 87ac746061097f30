"""Containers and a report queue in the user's own Azure Storage account ("custom Azure storage").

SharePoint normally provisions the containers of each job. With custom storage the client
creates them in a General Purpose account of the user's with the account key, and passes
SharePoint SAS URIs that grant exactly what Microsoft's Migration API reference requires for
customer-owned storage:

- source (content) container: read and list (``sp=rl``);
- manifest container: read, list and write (``sp=rlw``), because the import writes its logs
  there, and it must not be the source container;
- report queue: add, read and update (``sp=rau``); more permissions keep the job from posting.

The client itself uploads, reads the queue and deletes with the account key, never through
those SAS URIs. Nothing here writes the key or a SAS signature anywhere: ``repr`` hides them and
errors pass through :func:`spmt_tui.logs.redact`.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient, ContainerClient
from azure.storage.queue import QueueSasPermissions, generate_queue_sas
from azure.storage.queue.aio import QueueClient

from spmt_tui.spo.containers import BLOCK_SIZE, StorageTransport
from spmt_tui.spo.http import USER_AGENT

log = logging.getLogger("spmt.spo.custom_storage")

SOURCE_PERMISSIONS = ContainerSasPermissions(read=True, list=True)
MANIFEST_PERMISSIONS = ContainerSasPermissions(read=True, list=True, write=True)
QUEUE_PERMISSIONS = QueueSasPermissions(read=True, add=True, update=True)

# Microsoft suggests a SAS expiry of 12 to 48 hours for a package of about 250 files. A job can
# wait in SharePoint's queue for a long time, and a resumed session signs new SAS URIs for every
# submission, so three days (the lifetime of SharePoint's own container SAS) is used.
SAS_LIFETIME = dt.timedelta(days=3)
# The SAS start time lies this far in the past, so a service clock that runs behind ours still
# accepts it ("SAS start at or before submit time").
SAS_CLOCK_SKEW = dt.timedelta(minutes=15)


def default_endpoint(account: str, service: str) -> str:
    """Return the public endpoint of ``service`` ("blob" or "queue") of an Azure account."""
    return f"https://{account}.{service}.core.windows.net"


def resource_name(uri: str) -> str:
    """Return the container or queue name of a service URL (the last path segment)."""
    segments = [segment for segment in urlsplit(uri).path.split("/") if segment]
    if not segments:
        raise ValueError(f"invalid storage URL {urlsplit(uri)._replace(query='').geturl()}: "
                         "it names no container or queue")
    return unquote(segments[-1])


@dataclass(frozen=True)
class StorageEndpoints:
    """The blob and queue endpoints of a customer account (no secret)."""

    account: str
    blob: str
    queue: str

    @classmethod
    def for_account(cls, account: str, blob: str = "", queue: str = "") -> "StorageEndpoints":
        return cls(account, (blob or default_endpoint(account, "blob")).rstrip("/"),
                   (queue or default_endpoint(account, "queue")).rstrip("/"))

    @property
    def hosts(self) -> set[str]:
        return {urlsplit(self.blob).hostname or "", urlsplit(self.queue).hostname or ""}


class CustomStorageAccount:
    """One customer storage account, reached with its account key over a shared transport."""

    def __init__(self, endpoints: StorageEndpoints, key: str, transport: StorageTransport) -> None:
        self.endpoints = endpoints
        self._key = key
        self._transport = transport

    def __repr__(self) -> str:
        return f"CustomStorageAccount({self.endpoints.account!r}, key=<secret>)"

    @property
    def account(self) -> str:
        return self.endpoints.account

    def _credential(self) -> AzureNamedKeyCredential:
        return AzureNamedKeyCredential(self.endpoints.account, self._key)

    def _pipeline(self) -> dict[str, Any]:
        return {"transport": AioHttpTransport(session=self._transport.session, session_owner=False),
                "user_agent": USER_AGENT}

    # -- clients authorized by the account key --------------------------------------------------

    def container_client(self, name: str) -> ContainerClient:
        return ContainerClient(self.endpoints.blob, name, credential=self._credential(),
                               max_single_put_size=BLOCK_SIZE, max_block_size=BLOCK_SIZE,
                               **self._pipeline())

    def queue_client(self, name: str) -> QueueClient:
        return QueueClient(self.endpoints.queue, name, credential=self._credential(), **self._pipeline())

    def service_client(self) -> BlobServiceClient:
        return BlobServiceClient(self.endpoints.blob, credential=self._credential(), **self._pipeline())

    # -- containers and queues ------------------------------------------------------------------

    async def create_container(self, name: str) -> None:
        client = self.container_client(name)
        try:
            await client.create_container()
        except ResourceExistsError:
            pass
        finally:
            await client.close()

    async def delete_container(self, name: str) -> bool:
        """Delete a container; return False when it did not exist."""
        client = self.container_client(name)
        try:
            await client.delete_container()
        except ResourceNotFoundError:
            return False
        finally:
            await client.close()
        return True

    async def list_containers(self, prefix: str) -> list[str]:
        client = self.service_client()
        try:
            return [item.name async for item in client.list_containers(name_starts_with=prefix)]
        finally:
            await client.close()

    async def ensure_queue(self, name: str) -> None:
        client = self.queue_client(name)
        try:
            await client.create_queue()
        except ResourceExistsError:
            pass
        finally:
            await client.close()

    async def delete_queue(self, name: str) -> bool:
        client = self.queue_client(name)
        try:
            await client.delete_queue()
        except ResourceNotFoundError:
            return False
        finally:
            await client.close()
        return True

    # -- SAS URIs for SharePoint ----------------------------------------------------------------

    def container_sas_uri(self, name: str, permission: ContainerSasPermissions,
                          lifetime: dt.timedelta = SAS_LIFETIME) -> str:
        """Return ``name``'s URL with a service SAS that grants ``permission`` over HTTPS only."""
        now = dt.datetime.now(dt.timezone.utc)
        sas = generate_container_sas(
            self.endpoints.account, name, account_key=self._key, permission=permission,
            start=now - SAS_CLOCK_SKEW, expiry=now + lifetime, protocol="https")
        return f"{self.endpoints.blob}/{name}?{sas}"

    def queue_sas_uri(self, name: str, lifetime: dt.timedelta = SAS_LIFETIME) -> str:
        """Return the queue's URL with a SAS that grants add, read and update over HTTPS only."""
        now = dt.datetime.now(dt.timezone.utc)
        sas = generate_queue_sas(
            self.endpoints.account, name, self._key, permission=QUEUE_PERMISSIONS,
            start=now - SAS_CLOCK_SKEW, expiry=now + lifetime, protocol="https")
        return f"{self.endpoints.queue}/{name}?{sas}"


class KeyedQueueTransport:
    """Stand-in for :class:`StorageTransport` where a queue client is built from a SAS URI.

    The job queue's SAS grants SharePoint add, read and update, but reading and deleting
    messages needs process permission, so the client reads the queue with the account key.
    """

    def __init__(self, account: CustomStorageAccount) -> None:
        self.account = account

    def queue(self, sas_uri: str) -> QueueClient:
        return self.account.queue_client(resource_name(sas_uri))
