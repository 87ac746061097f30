"""Objects the sandbox's parts share: storage account, settings, per-request context."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from aiohttp import web

if TYPE_CHECKING:
    from spmt_tui.sandbox.faults import Faults
    from spmt_tui.sandbox.identity import Principal
    from spmt_tui.sandbox.store import Site, SiteUser, TenantStore

# Azurite's fixed development account (public, documented by Microsoft for the emulator).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


@dataclass
class StorageAccount:
    """The Azure Storage account behind the tenant (Azurite), reached with its account key."""

    name: str
    key: str
    blob_url: str
    queue_url: str
    ca_bundle: Path | None

    def connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"credential": {"account_name": self.name, "account_key": self.key}}
        if self.ca_bundle is not None:
            kwargs["connection_verify"] = str(self.ca_bundle)
        return kwargs

    def blob_service(self) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.blob_url, **self.connection_kwargs())

    def queue_service(self) -> Any:
        from azure.storage.queue import QueueServiceClient

        return QueueServiceClient(self.queue_url, **self.connection_kwargs())


@dataclass
class TenantSettings:
    """Service behaviour that tests and users may tune."""

    import_delay: float = 2.0          # seconds between JobQueued and JobStart
    sas_lifetime: dt.timedelta = dt.timedelta(days=3)
    queue_sas_lifetime: dt.timedelta = dt.timedelta(days=21)
    event_retention: dt.timedelta = dt.timedelta(days=5)
    # SharePoint purges provisioned containers 30 to 90 days after creation. Long runs against
    # the sandbox may shorten it, so that Azurite's data, and with it its per-request cost, stays small.
    container_retention: dt.timedelta = dt.timedelta(days=30)
    max_errors_per_package: int = 100
    progress_every: int = 50           # objects between JobProgress events
    import_workers: int = 2


@dataclass
class RequestContext:
    """Context of one REST call: the tenant, the site and the caller."""

    tenant: Any  # spmt_tui.sandbox.server.Tenant (kept loose to avoid an import cycle)
    site: "Site"
    principal: "Principal"
    user: "SiteUser"
    extra: dict[str, Any] = field(default_factory=dict)


SiteHandler = Callable[[web.Request, RequestContext, dict[str, Any]], Awaitable[web.StreamResponse]]
