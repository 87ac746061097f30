"""Customer-owned containers and queues in the sandbox: a second Azurite account and SAS routing.

SharePoint Online accepts jobs whose containers and report queue are in the customer's own
storage account. It then reads and writes them only through the SAS URIs the job was created
with, and the sandbox does the same:

- its Azurite serves a second account, ``customer``, whose key is created on the first start and
  kept in ``tenant-config.json`` (mode 0600). ``tenant.json`` lists it under
  ``sandbox.customer_storage`` for tests and the demo;
- :class:`RoutingStorageAccount` is the tenant's storage account object. When a job is created
  on containers or a queue of another account, the migration API registers their SAS URIs
  here, and the clients the importer and the event publisher ask for by name are then built
  from those SAS URIs instead of the tenant's account key. A SAS that lacks a permission
  therefore fails in storage, as it would in the service.

NOTE: Azurite 3.35 puts a request's ``snapshot`` parameter into the string it signs for every
service SAS, so a container SAS cannot read a blob snapshot there (Azure signs a snapshot time
only for ``sr=bs``). The sandbox therefore reads snapshots of customer containers with the
account key, which it knows because it runs that Azurite. Listing, properties and the import
logs still go through the job's SAS.

The SAS URIs are held in memory only, and dropped once no queued or processing job uses them.
NOTE: a sandbox restarted while such a job is queued cannot read its containers any more; the
job ends with JobFatalError and the client submits the package again.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urlsplit

from spmt_tui.sandbox.context import StorageAccount

log = logging.getLogger("spmt.sandbox.own_storage")

CUSTOMER_ACCOUNT = "customer"
CUSTOMER_KEY_CONFIG = "customer_storage_key"


def new_account_key() -> str:
    """Return a random storage account key in Azure's format (base64 of 64 bytes)."""
    return base64.b64encode(os.urandom(64)).decode("ascii")


@dataclass
class RoutingStorageAccount(StorageAccount):
    """The tenant's storage account, which also reaches customer resources through their SAS."""

    # The other accounts the tenant's Azurite serves: name -> key.
    account_keys: dict[str, str] = field(default_factory=dict, repr=False)
    _containers: dict[str, str] = field(default_factory=dict, repr=False)
    _queues: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def accounts(self) -> set[str]:
        """Every account the tenant's Azurite serves, including the tenant's own."""
        return {self.name, *self.account_keys}

    def register(self, kind: str, name: str, sas_uri: str) -> None:
        """Route clients of container or queue ``name`` through ``sas_uri`` from now on."""
        table = self._containers if kind == "container" else self._queues
        with self._lock:
            table[name] = sas_uri

    def prune(self, in_use: Callable[[str, str], bool]) -> None:
        """Forget the SAS URIs of resources that no queued or processing job uses any more."""
        with self._lock:
            for kind, table in (("container", self._containers), ("queue", self._queues)):
                for name in [name for name in table if not in_use(kind, name)]:
                    del table[name]

    def sas_uri(self, kind: str, name: str) -> str | None:
        table = self._containers if kind == "container" else self._queues
        with self._lock:
            return table.get(name)

    def _verify(self) -> dict[str, Any]:
        return {"connection_verify": str(self.ca_bundle)} if self.ca_bundle is not None else {}

    def blob_service(self) -> Any:
        return _RoutingBlobService(super().blob_service(), self)

    def queue_service(self) -> Any:
        return _RoutingQueueService(super().queue_service(), self)


class _RoutingBlobService:
    """A BlobServiceClient whose container clients use a registered SAS URI when there is one."""

    def __init__(self, inner: Any, storage: RoutingStorageAccount) -> None:
        self._inner = inner
        self._storage = storage

    def get_container_client(self, name: str) -> Any:
        uri = self._storage.sas_uri("container", name)
        if uri is None:
            return self._inner.get_container_client(name)
        from azure.storage.blob import ContainerClient

        by_sas = ContainerClient.from_container_url(uri, **self._storage._verify())
        parts = urlsplit(uri)
        account = [segment for segment in parts.path.split("/") if segment][0]
        key = self._storage.account_keys.get(account)
        if key is None:
            return by_sas
        by_key = ContainerClient(f"{parts.scheme}://{parts.netloc}/{account}", name,
                                 credential={"account_name": account, "account_key": key},
                                 **self._storage._verify())
        return _SnapshotsByKey(by_sas, by_key)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)


class _SnapshotsByKey:
    """A container client that reads blob snapshots with the account key (see the note above)."""

    def __init__(self, by_sas: Any, by_key: Any) -> None:
        self._by_sas = by_sas
        self._by_key = by_key

    def get_blob_client(self, blob: str, snapshot: str | None = None) -> Any:
        client = self._by_key if snapshot else self._by_sas
        return client.get_blob_client(blob, snapshot=snapshot)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._by_sas, attribute)


class _RoutingQueueService:
    """A QueueServiceClient whose queue clients use a registered SAS URI when there is one."""

    def __init__(self, inner: Any, storage: RoutingStorageAccount) -> None:
        self._inner = inner
        self._storage = storage

    def get_queue_client(self, name: str) -> Any:
        uri = self._storage.sas_uri("queue", name)
        if uri is None:
            return self._inner.get_queue_client(name)
        from azure.storage.queue import QueueClient

        return QueueClient.from_queue_url(uri, **self._storage._verify())

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._inner, attribute)
