"""The Import Migration API methods of ``SP.Site`` in the sandbox tenant.

``register(api, tenant)`` adds the handlers to the REST dispatcher:

- ProvisionMigrationContainers: two new containers in the tenant's Azurite account, each with a
  read+write service SAS over HTTPS, and a fresh AES-256 key that is returned once;
- ProvisionMigrationQueue: a new queue with an add+read+update+process SAS, reusable by jobs;
- CreateMigrationJob / CreateMigrationJobEncrypted: validate the call and queue a job. Containers
  and a queue of the customer's own (in the tenant's account or in another account of the same
  Azurite, see ``own_storage``) need SAS URIs with exactly the permissions Microsoft documents.
- GetMigrationJobStatus, GetMigrationStatus, GetMigrationJobProgress, DeleteMigrationJob.

Only site collection administrators and app principals may call them, as in SharePoint Online.
The import itself is done by ``spmt_tui.sandbox.importer.Importer``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
import logging
import os
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web

from spmt_tui.sandbox.context import RequestContext
from spmt_tui.sandbox.jobs import (
    AES_KEY_BYTES,
    EventPublisher,
    JobState,
    JobStore,
    key_fingerprint,
    redact_sas,
    server_ids,
)

log = logging.getLogger("spmt.sandbox.migration")

# Events returned by one GetMigrationJobProgress call; the client pages with NextToken.
PROGRESS_PAGE_SIZE = 1000

JOB_NOT_FOUND = "-2147213145, Microsoft.SharePoint.SPException"
JOB_STATUS_EXPIRED = "-2147213146, Microsoft.SharePoint.SPException"
# NOTE: the codes for a rejected job creation and for access denied are not published for these
# methods. The sandbox uses the usual argument and access-denied HRESULTs.
INVALID_ARGUMENT = "-2147024809, System.ArgumentException"
ACCESS_DENIED = "-2147024891, System.UnauthorizedAccessException"

# Blob name used to probe a container SAS with a HEAD request; it never exists.
SAS_PROBE_BLOB = "spmt-sandbox-sas-probe"

# Permission letters a customer-owned container or queue SAS must grant, no more and no less
# (CreateMigrationJob's parameter rules in Microsoft's Migration API reference).
OWN_SOURCE_PERMISSIONS = frozenset("rl")
OWN_MANIFEST_PERMISSIONS = frozenset("rlw")
OWN_QUEUE_PERMISSIONS = frozenset("aru")
PERMISSION_NAMES = {"r": "read", "a": "add", "c": "create", "w": "write", "d": "delete",
                    "x": "delete version", "l": "list", "t": "tags", "u": "update", "p": "process",
                    "m": "move", "e": "execute", "i": "set immutability policy", "y": "permanent delete"}

VERBOSE_JSON = "application/json;odata=verbose;charset=utf-8"


def ok(name: str, value: Any) -> web.Response:
    """Return ``{"d": {name: value}}`` as a verbose OData response."""
    return _json({"d": {name: value}}, 200)


def error(status: int, code: str, message: str) -> web.Response:
    """Return SharePoint's verbose error body (the shape rest.sp_error builds) with ``status``."""
    body = {
        "error": {
            "code": code,
            "message": {"lang": "en-US", "value": message},
            "innererror": {"message": message, "type": code.split(", ")[-1], "stacktrace": ""},
        }
    }
    return _json(body, status)


def _json(body: Any, status: int) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(body).encode(), headers={"Content-Type": VERBOSE_JSON}
    )


class MigrationRequestError(Exception):
    """A rejected call; ``message`` names the problem for the client."""

    def __init__(self, message: str, *, status: int = 400, code: str = INVALID_ARGUMENT) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


# -- request helpers --------------------------------------------------------------------------


def param(body: dict[str, Any], *names: str) -> Any:
    """Return the first body value whose key matches one of ``names``, ignoring case."""
    lowered = {str(key).lower(): value for key, value in body.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def parse_guid(value: Any) -> str | None:
    """Return the canonical lower-case form of a GUID given as ``guid'…'``, ``{…}`` or plain."""
    if value is None:
        return None
    text = str(value).strip()
    if text.lower().startswith("guid'") and text.endswith("'"):
        text = text[5:-1]
    text = text.strip("'\"{}")
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return None


def _is_app_principal(principal: Any) -> bool:
    # NOTE: the identity provider's Principal type is not final; these are the attribute names it
    # may use to mark an app-only (client credentials) caller.
    for attribute in ("is_app", "app_only", "is_app_only"):
        if getattr(principal, attribute, False) is True:
            return True
    return str(getattr(principal, "kind", "")).lower() in ("app", "application")


def may_migrate(ctx: RequestContext) -> bool:
    """Return whether the caller is a site collection administrator or an app principal."""
    return _is_app_principal(ctx.principal) or bool(getattr(ctx.user, "is_site_admin", False))


# -- SAS URIs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SasUri:
    """A container or queue URI with a SAS, split into the parts the checks need."""

    raw: str
    scheme: str
    host: str
    port: int
    account: str
    resource: str
    sas: dict[str, str]
    query: str

    @property
    def permissions(self) -> frozenset[str]:
        return frozenset(self.sas.get("sp", ""))

    def expiry(self) -> dt.datetime | None:
        return _sas_time(self.sas.get("se"))

    def redacted(self) -> str:
        return redact_sas(self.raw)


def _sas_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    for pattern in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%dT%H:%MZ", "%Y-%m-%d"):
        try:
            return dt.datetime.strptime(text, pattern).replace(tzinfo=dt.timezone.utc)
        except ValueError:
            continue
    return None


def _endpoint(url: str) -> tuple[str, str, int, str]:
    """Split a storage endpoint such as ``https://127.0.0.1:10000/devstoreaccount1``."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, parts.hostname or "", port, parts.path.strip("/").split("/")[0]


def _same_host(left: str, right: str) -> bool:
    loopback = {"127.0.0.1", "localhost"}
    return left.lower() == right.lower() or (left.lower() in loopback and right.lower() in loopback)


def parse_sas_uri(value: Any, *, endpoint: str, what: str, accounts: Any = ()) -> SasUri:
    """Parse a SAS URI that must point into the tenant's storage ``endpoint``.

    The URI may name the endpoint's account or one of ``accounts``, other accounts that the same
    storage service (host and port) serves.
    """
    if not isinstance(value, str) or not value.strip():
        raise MigrationRequestError(f"{what} is missing.")
    raw = value.strip()
    parts = urlsplit(raw)
    scheme, host, port, account = _endpoint(endpoint)
    uri_port = parts.port or (443 if parts.scheme == "https" else 80)
    path = [segment for segment in parts.path.split("/") if segment]
    if parts.scheme != "https":
        raise MigrationRequestError(f"{what} must use https: {redact_sas(raw)}")
    if not (_same_host(parts.hostname or "", host) and uri_port == port):
        raise MigrationRequestError(
            f"{what} does not point into this tenant's storage at {scheme}://{host}:{port}: "
            f"{redact_sas(raw)}"
        )
    known = sorted({account, *accounts})
    if path[:1] and path[0] not in known:
        raise MigrationRequestError(
            f"{what} names storage account {path[0]!r}, which this tenant's storage does not "
            f"serve (accounts: {', '.join(known)}): {redact_sas(raw)}"
        )
    if len(path) != 2:
        raise MigrationRequestError(f"{what} must name exactly one container or queue: {redact_sas(raw)}")
    sas = dict(parse_qsl(parts.query, keep_blank_values=True))
    if "sig" not in sas:
        raise MigrationRequestError(f"{what} carries no SAS signature (sig): {redact_sas(raw)}")
    return SasUri(raw, scheme, parts.hostname or host, uri_port, path[0], path[1], sas, parts.query)


def _ssl_context(tenant: Any) -> ssl.SSLContext:
    ca_bundle = tenant.storage.ca_bundle
    return ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)


async def probe_sas(tenant: Any, uri: SasUri, *, queue: bool, what: str) -> None:
    """Check with one request to storage that the SAS is accepted (signature, time, protocol)."""
    base = f"https://{uri.host}:{uri.port}/{uri.account}/{uri.resource}"
    if queue:
        url, method = f"{base}/messages?peekonly=true&{uri.query}", "GET"
    else:
        url, method = f"{base}/{SAS_PROBE_BLOB}?{uri.query}", "HEAD"
    timeout = aiohttp.ClientTimeout(total=15)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.request(method, url, ssl=_ssl_context(tenant)) as response:
                status = response.status
                code = response.headers.get("x-ms-error-code", "")
    except (aiohttp.ClientError, asyncio.TimeoutError) as failure:
        log.error("SAS probe of %s failed: %s", uri.redacted(), redact_sas(str(failure)))
        raise MigrationRequestError(
            f"{what} could not be reached to check its SAS: {redact_sas(str(failure))}", status=500
        ) from None
    accepted = status in (200, 204) or (not queue and status == 404 and code == "BlobNotFound")
    if accepted:
        return
    if code in ("ContainerNotFound", "QueueNotFound"):
        raise MigrationRequestError(f"{what} does not exist: {uri.redacted()}")
    if status == 403:
        raise MigrationRequestError(
            f"The SAS of {what} was rejected by storage ({code or 'HTTP 403'}): the signature is "
            f"invalid, the token has expired or is not yet valid, or it lacks read permission."
        )
    raise MigrationRequestError(f"{what} failed its SAS check with HTTP {status} {code}".rstrip())


def check_expiry(uri: SasUri, what: str) -> None:
    """Reject a SAS whose expiry has passed; the storage probe checks the rest of its validity."""
    expiry = uri.expiry()
    if expiry is None and "si" in uri.sas:
        return  # the expiry is in a stored access policy, which only storage can read
    if expiry is None:
        raise MigrationRequestError(f"The SAS of {what} has no valid expiry time (se).")
    if expiry <= dt.datetime.now(dt.timezone.utc):
        raise MigrationRequestError(
            f"The SAS of {what} expired at {expiry.strftime('%Y-%m-%dT%H:%M:%SZ')}; provision new "
            "containers or issue a new SAS."
        )


def _permission_list(letters: frozenset[str]) -> str:
    return ", ".join(f"{letter} ({PERMISSION_NAMES.get(letter, 'unknown')})" for letter in sorted(letters))


def check_own_permissions(uri: SasUri, required: frozenset[str], what: str) -> None:
    """Require exactly the permission letters Microsoft documents for customer-owned storage.

    The service rejects a missing permission and an extra one alike (an extra permission on the
    queue keeps the job from posting). NOTE: the service's error code and text for this case
    are not published; the message below is the sandbox's own.
    """
    granted = uri.permissions
    if granted == required:
        return
    problems = []
    missing = required - granted
    if missing:
        problems.append(f"lacks permissions {_permission_list(missing)}")
    extra = granted - required
    if extra:
        problems.append(f"grants permissions it must not: {_permission_list(extra)}")
    raise MigrationRequestError(
        f"The SAS of {what} (sp={uri.sas.get('sp', '')}) {' and '.join(problems)}. Storage of "
        f"your own must grant exactly sp={''.join(sorted(required))}, "
        f"that is {_permission_list(required)}."
    )


# -- handlers ---------------------------------------------------------------------------------


class MigrationApi:
    """The SP.Site migration methods for one tenant."""

    def __init__(self, tenant: Any) -> None:
        self.tenant = tenant
        self.jobs = JobStore(tenant.store)
        self.publisher = EventPublisher(tenant, self.jobs)

    def register(self, api: Any) -> None:
        routes: list[tuple[str, Any, tuple[str, ...]]] = [
            ("ProvisionMigrationContainers", self.provision_containers, ("POST",)),
            ("ProvisionMigrationQueue", self.provision_queue, ("POST",)),
            ("CreateMigrationJob", self.create_job, ("POST",)),
            ("CreateMigrationJobEncrypted", self.create_job_encrypted, ("POST",)),
            ("GetMigrationJobStatus", self.job_status, ("GET", "POST")),
            ("GetMigrationStatus", self.site_status, ("GET", "POST")),
            ("GetMigrationJobProgress", self.job_progress, ("GET", "POST")),
            ("DeleteMigrationJob", self.delete_job, ("POST",)),
        ]
        for name, handler, methods in routes:
            api.register(f"site/{name}", self._guarded(name, handler), methods=methods)

    def _guarded(self, name: str, handler: Any) -> Any:
        async def guarded(request: web.Request, ctx: RequestContext, body: dict[str, Any]) -> web.StreamResponse:
            if not may_migrate(ctx):
                return error(
                    403,
                    ACCESS_DENIED,
                    f"Access denied. {name} can be called only by a site collection administrator "
                    "or an app with full control of the site.",
                )
            try:
                return await handler(request, ctx, body)
            except MigrationRequestError as rejection:
                log.warning("%s rejected for site %s: %s", name, ctx.site.url, rejection.message)
                return error(rejection.status, rejection.code, rejection.message)

        guarded.__name__ = f"migration_{name}"
        return guarded

    # provisioning

    def _container_uri(self, name: str, sas: str) -> str:
        scheme, host, port, account = _endpoint(self.tenant.storage.blob_url)
        return f"{scheme}://{host}:{port}/{account}/{name}?{sas}"

    def _queue_uri(self, name: str, sas: str) -> str:
        scheme, host, port, account = _endpoint(self.tenant.storage.queue_url)
        return f"{scheme}://{host}:{port}/{account}/{name}?{sas}"

    async def provision_containers(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        storage = self.tenant.storage
        faults = getattr(self.tenant, "faults", None)
        now = dt.datetime.now(dt.timezone.utc)
        if faults is not None and faults.roll("sas_expired"):
            expiry = now - dt.timedelta(seconds=1)
        else:
            expiry = now + self.tenant.settings.sas_lifetime
        key = _new_key()
        names = [uuid.uuid4().hex, uuid.uuid4().hex]

        def create() -> None:
            service = storage.blob_service()
            for name in names:
                service.create_container(name)

        await asyncio.to_thread(create)
        uris = []
        for name in names:
            self.jobs.add_container(name, ctx.site.id, key, expiry.timestamp())
            sas = generate_container_sas(
                storage.name,
                name,
                account_key=storage.key,
                permission=ContainerSasPermissions(read=True, write=True),
                expiry=expiry,
                protocol="https",
            )
            uris.append(self._container_uri(name, sas))
        log.info("site %s: provisioned migration containers %s and %s", ctx.site.url, *names)
        return ok(
            "ProvisionMigrationContainers",
            {
                "__metadata": {"type": "SP.ProvisionedMigrationContainersInfo"},
                "DataContainerUri": uris[0],
                "EncryptionKey": base64.b64encode(key).decode(),
                "MetadataContainerUri": uris[1],
            },
        )

    async def provision_queue(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        from azure.storage.queue import QueueSasPermissions, generate_queue_sas

        storage = self.tenant.storage
        name = f"spmt-{uuid.uuid4().hex}"
        expiry = dt.datetime.now(dt.timezone.utc) + self.tenant.settings.queue_sas_lifetime
        await asyncio.to_thread(lambda: storage.queue_service().create_queue(name))
        self.jobs.add_queue(name, ctx.site.id, expiry.timestamp())
        sas = generate_queue_sas(
            storage.name,
            name,
            storage.key,
            permission=QueueSasPermissions(read=True, add=True, update=True, process=True),
            expiry=expiry,
            protocol="https",
        )
        log.info("site %s: provisioned migration queue %s", ctx.site.url, name)
        return ok(
            "ProvisionMigrationQueue",
            {
                "__metadata": {"type": "SP.ProvisionedMigrationQueueInfo"},
                "JobQueueUri": self._queue_uri(name, sas),
            },
        )

    # job creation

    async def create_job(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        return await self._create(ctx, body, encrypted=False)

    async def create_job_encrypted(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        return await self._create(ctx, body, encrypted=True)

    async def _create(self, ctx: RequestContext, body: dict[str, Any], *, encrypted: bool) -> web.StreamResponse:
        method = "CreateMigrationJobEncrypted" if encrypted else "CreateMigrationJob"
        storage = self.tenant.storage

        web_id = parse_guid(param(body, "gWebId", "webId"))
        if web_id is None:
            raise MigrationRequestError("gWebId is missing or is not a GUID.")
        if web_id != ctx.site.web_id.lower():
            raise MigrationRequestError(
                f"gWebId {web_id} is not the id of the web at {ctx.site.url} ({ctx.site.web_id})."
            )
        key = _job_key(body) if encrypted else None

        accounts = getattr(storage, "accounts", ())
        source = parse_sas_uri(
            param(body, "azureContainerSourceUri"), endpoint=storage.blob_url,
            what="azureContainerSourceUri", accounts=accounts,
        )
        manifest = parse_sas_uri(
            param(body, "azureContainerManifestUri"), endpoint=storage.blob_url,
            what="azureContainerManifestUri", accounts=accounts,
        )
        if source.resource == manifest.resource:
            raise MigrationRequestError(
                "azureContainerSourceUri and azureContainerManifestUri name the same container "
                f"({source.resource}); content and manifests must be in different containers."
            )

        queue_value = param(body, "azureQueueReportUri")
        queue = None
        if isinstance(queue_value, str) and queue_value.strip():
            queue = parse_sas_uri(queue_value, endpoint=storage.queue_url, what="azureQueueReportUri",
                                  accounts=accounts)

        for uri, what, required in (
            (source, "azureContainerSourceUri", OWN_SOURCE_PERMISSIONS),
            (manifest, "azureContainerManifestUri", OWN_MANIFEST_PERMISSIONS),
        ):
            self._check_container(ctx, uri, what, required, key=key, method=method)
        if queue is not None:
            check_expiry(queue, "azureQueueReportUri")
            if queue.account != storage.name or not self.jobs.queue_exists(queue.resource):
                check_own_permissions(queue, OWN_QUEUE_PERMISSIONS, "azureQueueReportUri")

        for uri, what in ((source, "azureContainerSourceUri"), (manifest, "azureContainerManifestUri")):
            await probe_sas(self.tenant, uri, queue=False, what=what)
        if queue is not None:
            await probe_sas(self.tenant, queue, queue=True, what="azureQueueReportUri")
        self._route_customer_storage(source, manifest, queue)

        job = self.jobs.create_job(
            site_id=ctx.site.id,
            web_id=ctx.site.web_id,
            source_container=source.resource,
            manifest_container=manifest.resource,
            queue_name=queue.resource if queue else None,
            key=key,
            delay=self.tenant.settings.import_delay,
        )
        ids = server_ids(ctx.site.id)
        await asyncio.to_thread(
            self.publisher.publish, job, "JobQueued", {"SiteId": ctx.site.id, "DbId": ids["DbId"]}
        )
        log.info(
            "site %s: queued migration job %s (source %s, manifest %s, queue %s, encrypted %s)",
            ctx.site.url, job.id, source.resource, manifest.resource,
            queue.resource if queue else "none", encrypted,
        )
        return ok(method, job.id)

    def _route_customer_storage(self, source: SasUri, manifest: SasUri, queue: SasUri | None) -> None:
        """Make the importer and the event publisher reach other accounts through the job's SAS."""
        storage = self.tenant.storage
        if not hasattr(storage, "register"):
            return

        def in_use(kind: str, name: str) -> bool:
            if kind == "container":
                return bool(self.jobs.active_jobs_using(name))
            rows = self.jobs.store.query(
                "SELECT 1 FROM migration_jobs WHERE state != 0 AND queue_name = ? LIMIT 1", (name,))
            return bool(rows)

        storage.prune(in_use)
        for uri, kind in ((source, "container"), (manifest, "container"), (queue, "queue")):
            if uri is not None and uri.account != storage.name:
                storage.register(kind, uri.resource, uri.raw)

    def _check_container(
        self,
        ctx: RequestContext,
        uri: SasUri,
        what: str,
        required: frozenset[str],
        *,
        key: bytes | None,
        method: str,
    ) -> None:
        check_expiry(uri, what)
        own_account = uri.account == self.tenant.storage.name
        provisioned = self.jobs.container(uri.resource) if own_account else None
        if provisioned is None:
            check_own_permissions(uri, required, what)
        else:
            if provisioned.site_id != ctx.site.id:
                raise MigrationRequestError(
                    f"Container {uri.resource} of {what} was provisioned for another site."
                )
            if key is None:
                raise MigrationRequestError(
                    f"{method} cannot use containers provisioned by SharePoint ({uri.resource}); "
                    "jobs on SharePoint-provided containers must be created with "
                    "CreateMigrationJobEncrypted and the key returned by ProvisionMigrationContainers."
                )
            if key_fingerprint(key) != provisioned.key_sha256:
                raise MigrationRequestError(
                    f"The AES256CBCKey is not the key issued with container {uri.resource} ({what})."
                )
        busy = self.jobs.active_jobs_using(uri.resource)
        if busy:
            raise MigrationRequestError(
                f"Container {uri.resource} of {what} is already used by job {busy[0]}, which is "
                "still queued or processing."
            )

    # status and progress

    def _job_for_site(self, ctx: RequestContext, job_id: str | None) -> Any:
        if job_id is None:
            return None
        job = self.jobs.job(job_id)
        if job is None or job.site_id != ctx.site.id:
            return None
        return job

    async def job_status(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        job = self._job_for_site(ctx, parse_guid(param(body, "id", "MigrationJobId", "jobId")))
        state = job.state if job is not None else JobState.NONE
        return ok("GetMigrationJobStatus", int(state))

    async def site_status(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        # Finished jobs leave the timer-job queue, so only queued and processing jobs are listed.
        jobs = [job for job in self.jobs.jobs_for_site(ctx.site.id) if job.state != JobState.NONE]
        results = [
            {
                "__metadata": {"type": "SP.SPMigrationJobStatus"},
                "JobId": job.id,
                "JobState": int(job.state),
            }
            for job in jobs
        ]
        return ok("GetMigrationStatus", {"results": results})

    async def job_progress(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        job_id = parse_guid(param(body, "jobId", "id"))
        job = self._job_for_site(ctx, job_id)
        if job is None:
            return error(500, JOB_NOT_FOUND, "Job not found")
        retention = self.tenant.settings.event_retention
        expired = job.ended is not None and time.time() - job.ended > retention.total_seconds()
        if expired or job.events_purged:
            return error(500, JOB_STATUS_EXPIRED, "Job status expired")
        token_value = param(body, "nextToken")
        token_text = "0" if token_value in (None, "") else str(token_value).strip("'\"")
        if not token_text.isdigit():
            raise MigrationRequestError(f"nextToken {token_text!r} is not a token this service returned.")
        after = int(token_text)
        events = await asyncio.to_thread(self.jobs.events_after, job.id, after, PROGRESS_PAGE_SIZE)
        next_token = str(events[-1][0]) if events else token_text
        return ok(
            "GetMigrationJobProgress",
            {
                "Logs": {
                    "__metadata": {"type": "Collection(Edm.String)"},
                    "results": [body_text for _seq, body_text in events],
                },
                "NextToken": next_token,
                "__metadata": {"type": "SP.MigrationJobProgress"},
            },
        )

    async def delete_job(
        self, request: web.Request, ctx: RequestContext, body: dict[str, Any]
    ) -> web.StreamResponse:
        job = self._job_for_site(ctx, parse_guid(param(body, "id", "MigrationJobId", "jobId")))
        if job is None or job.state == JobState.NONE:
            return ok("DeleteMigrationJob", False)
        if job.state == JobState.QUEUED:
            await asyncio.to_thread(self.publisher.publish, job, "JobDeleted", {})
            self.jobs.finish(job.id)
            log.info("site %s: deleted queued migration job %s", ctx.site.url, job.id)
        else:
            # NOTE: whether deleting a running job cancels it is not documented; the sandbox
            # cancels it before its changes are applied (JobCancelled, then JobEnd).
            self.jobs.request_cancel(job.id)
            log.info("site %s: cancel requested for migration job %s", ctx.site.url, job.id)
        return ok("DeleteMigrationJob", True)


def _new_key() -> bytes:
    return os.urandom(AES_KEY_BYTES)


def _job_key(body: dict[str, Any]) -> bytes:
    options = param(body, "options")
    value = param(options, "AES256CBCKey") if isinstance(options, dict) else None
    if value is None:
        value = param(body, "AES256CBCKey")
    if not isinstance(value, str) or not value:
        raise MigrationRequestError("options.AES256CBCKey is missing; the encrypted job needs its key.")
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise MigrationRequestError("options.AES256CBCKey is not valid base64.") from None
    if len(key) != AES_KEY_BYTES:
        raise MigrationRequestError(
            f"options.AES256CBCKey is {len(key)} bytes; an AES-256 key is {AES_KEY_BYTES} bytes."
        )
    return key


def register(api: Any, tenant: Any) -> MigrationApi:
    """Add the migration methods to the REST dispatcher ``api``; return the handler object."""
    migration = MigrationApi(tenant)
    migration.register(api)
    return migration
