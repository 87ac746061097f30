"""The sandbox tenant: a local SharePoint Online with the Import Migration API, over HTTPS.

``Tenant`` owns the parts: the tenant store, the identity provider, the REST dispatcher with the
Migration API, the import timer job, Azurite, and the fault schedule. ``run_sandbox`` starts it
all, writes ``DIR/tenant.json`` and prints ``ready <site-url>``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from spmt_tui.sandbox import migration
from spmt_tui.sandbox.azurite import AzuriteProcess
from spmt_tui.sandbox.ca import ensure_app_certificate, ensure_tls
from spmt_tui.sandbox.context import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    TenantSettings,
)
from spmt_tui.sandbox.faults import (
    FAULT_KINDS,
    STORAGE_KINDS,
    Faults,
    FaultSpecError,
    parse_fault_spec,
    wants_storage_proxy,
)
from spmt_tui.sandbox.storage_proxy import StorageFaultProxy
from spmt_tui.sandbox.identity import AppRegistration, IdentityService, SandboxUser
from spmt_tui.sandbox.importer import Importer
from spmt_tui.sandbox.own_storage import (
    CUSTOMER_ACCOUNT,
    CUSTOMER_KEY_CONFIG,
    RoutingStorageAccount,
    new_account_key,
)
from spmt_tui.sandbox.rest import RestApi
from spmt_tui.sandbox.store import TenantStore

log = logging.getLogger("spmt.sandbox")

DEFAULT_PORT = 8443
DEMO_SITE = "/sites/demo"


@dataclass
class SandboxOptions:
    data_dir: Path
    port: int = DEFAULT_PORT
    faults: dict[str, float] = field(default_factory=dict)
    fault_seed: int | None = None
    azurite_url: str | None = None
    azurite_queue_url: str | None = None
    sites: list[str] = field(default_factory=list)
    libraries: list[str] = field(default_factory=list)  # "SITE_URL=Title"
    import_delay: float = 2.0
    token_lifetime: int = 3600
    sas_lifetime_seconds: int | None = None
    container_retention_seconds: float | None = None
    slow_seconds: float = 2.0


def _load_or_create_config(data_dir: Path) -> dict[str, Any]:
    """Return the tenant's fixed identities (ids, users, passwords), created on the first start."""
    path = data_dir / "tenant-config.json"
    if path.exists():
        config = json.loads(path.read_text())
        if CUSTOMER_KEY_CONFIG not in config:  # a data folder from before the customer account
            config[CUSTOMER_KEY_CONFIG] = new_account_key()
            _write_private_json(path, config)
        return config
    config = {
        "tenant_id": str(uuid.uuid4()),
        "public_client_id": str(uuid.uuid4()),
        "app_client_id": str(uuid.uuid4()),
        "admin_key": secrets.token_urlsafe(24),
        CUSTOMER_KEY_CONFIG: new_account_key(),
        "users": [
            {"username": "admin@sandbox.example", "password": secrets.token_urlsafe(12),
             "display_name": "Sandbox Admin", "object_id": str(uuid.uuid4()), "site_admin": True},
            {"username": "member@sandbox.example", "password": secrets.token_urlsafe(12),
             "display_name": "Sandbox Member", "object_id": str(uuid.uuid4()), "site_admin": False},
            {"username": "jane.doe@sandbox.example", "password": secrets.token_urlsafe(12),
             "display_name": "Jane Doe", "object_id": str(uuid.uuid4()), "site_admin": False},
            {"username": "john.roe@sandbox.example", "password": secrets.token_urlsafe(12),
             "display_name": "John Roe", "object_id": str(uuid.uuid4()), "site_admin": False},
        ],
    }
    _write_private_json(path, config)
    return config


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(tmp, path)


class Tenant:
    """Everything one sandbox tenant runs, wired together."""

    def __init__(self, options: SandboxOptions) -> None:
        self.options = options
        self.data_dir = options.data_dir.resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.data_dir, 0o700)
        self.config = _load_or_create_config(self.data_dir)
        self.tls = ensure_tls(self.data_dir)
        self.app_certificate = ensure_app_certificate(self.data_dir)
        self.base_url = f"https://127.0.0.1:{options.port}"
        self.settings = TenantSettings(import_delay=options.import_delay)
        if options.sas_lifetime_seconds is not None:
            import datetime as dt

            self.settings.sas_lifetime = dt.timedelta(seconds=options.sas_lifetime_seconds)
        if options.container_retention_seconds is not None:
            import datetime as dt

            self.settings.container_retention = dt.timedelta(seconds=options.container_retention_seconds)
        self.faults = Faults(options.faults, seed=options.fault_seed, slow_seconds=options.slow_seconds)
        self.store = TenantStore(self.data_dir)
        self.users = {u["username"].lower(): u for u in self.config["users"]}
        self.identity = IdentityService(
            tenant_id=self.config["tenant_id"],
            base_url=self.base_url,
            resource=self.base_url,
            public_client_id=self.config["public_client_id"],
            apps=[AppRegistration(self.config["app_client_id"], "spmt-tui sandbox app",
                                  self.app_certificate.public_pem)],
            users=[SandboxUser(u["username"], u["password"], u["display_name"], u["object_id"])
                   for u in self.config["users"]],
            signing_key_path=self.data_dir / "ca" / "token-signing.key",
            token_lifetime=options.token_lifetime,
        )
        self.azurite: AzuriteProcess | None = None
        if options.azurite_url:
            blob_url = options.azurite_url.rstrip("/")
            queue_url = options.azurite_queue_url or _queue_url_from_blob(blob_url)
        else:
            self.azurite = AzuriteProcess(
                blob_port=options.port + 1,
                queue_port=options.port + 2,
                location=self.data_dir / "azurite",
                cert=self.tls.server_cert,
                key=self.tls.server_key,
                accounts={AZURITE_ACCOUNT: AZURITE_KEY,
                          CUSTOMER_ACCOUNT: self.config[CUSTOMER_KEY_CONFIG]},
            )
            blob_url, queue_url = self.azurite.blob_url, self.azurite.queue_url
        # With storage faults, every storage URL (and so every SAS URI handed out) names the proxy.
        self.storage_proxy: StorageFaultProxy | None = None
        if wants_storage_proxy(options.faults):
            self.storage_proxy = StorageFaultProxy(self.faults, blob_url, queue_url,
                                                   server_ssl=self.tls.server_context(),
                                                   ca_bundle=self.tls.ca_cert)
            blob_url, queue_url = self.storage_proxy.blob_url, self.storage_proxy.queue_url
        # The sandbox cannot add accounts to an Azurite given with --azurite-url, so the customer
        # account exists only when the sandbox starts Azurite itself.
        self.storage = RoutingStorageAccount(
            AZURITE_ACCOUNT, AZURITE_KEY, blob_url, queue_url, self.tls.ca_cert,
            account_keys={CUSTOMER_ACCOUNT: self.config[CUSTOMER_KEY_CONFIG]}
            if self.azurite is not None else {})
        self.rest = RestApi(self)
        migration.register(self.rest, self)
        self.importer = Importer(self)
        self._seed()

    # -- helpers used by the REST layer ------------------------------------------------------

    def identity_knows_user(self, upn: str) -> bool:
        return upn.lower() in self.users

    def display_name_of(self, upn: str) -> str:
        user = self.users.get(upn.lower())
        return user["display_name"] if user else upn

    # -- set-up --------------------------------------------------------------------------------

    def _seed(self) -> None:
        wanted_sites = [DEMO_SITE, *self.options.sites]
        for url in wanted_sites:
            site = self.store.site_by_url(url)
            if site is None:
                title = url.rstrip("/").rsplit("/", 1)[-1].title() or "Root"
                site = self.store.create_site(url, title)
                self.store.create_library(site, "Documents", "Shared Documents")
                log.info("created site %s with library Documents", url)
            for user in self.config["users"]:
                self.store.ensure_user(
                    site.id, f"i:0#.f|membership|{user['username']}", user["username"],
                    user["display_name"], is_site_admin=user["site_admin"],
                )
        for spec in self.options.libraries:
            site_url, sep, title = spec.partition("=")
            site = self.store.site_by_url(site_url) if sep else None
            if site is None or not title.strip():
                raise SystemExit(
                    f"invalid --library {spec!r}: use SITE_URL=Title with a site the sandbox has, "
                    "e.g. /sites/demo=Archive"
                )
            if self.store.library_by_title(site.id, title.strip()) is None:
                self.store.create_library(site, title.strip())

    def profile(self) -> dict[str, Any]:
        admin = next(u for u in self.config["users"] if u["site_admin"])
        return {
            "tenant_id": self.config["tenant_id"],
            "tenant_name": "sandbox",
            "authority": f"{self.base_url}/{self.config['tenant_id']}",
            "site_url": f"{self.base_url}{DEMO_SITE}",
            "resource": self.base_url,
            "ca_bundle": str(self.tls.ca_cert),
            "public_client_id": self.config["public_client_id"],
            "user": {"username": admin["username"], "password": admin["password"],
                     "display_name": admin["display_name"]},
            "users": [
                {"username": u["username"], "password": u["password"],
                 "display_name": u["display_name"], "site_admin": u["site_admin"]}
                for u in self.config["users"]
            ],
            "app": {
                "client_id": self.config["app_client_id"],
                "certificate": str(self.app_certificate.pem_path),
                "thumbprint": self.app_certificate.thumbprint,
            },
            "sandbox": {
                "admin_url": f"{self.base_url}/_sandbox",
                "admin_key": self.config["admin_key"],
                "azurite_blob": self.storage.blob_url,
                "azurite_queue": self.storage.queue_url,
                **self._customer_storage(),
                "data_dir": str(self.data_dir),
            },
        }

    def _customer_storage(self) -> dict[str, Any]:
        """Return the ``customer_storage`` profile entry: a storage account for custom storage."""
        if self.azurite is None:
            return {}
        # Same host and port as the tenant's own account (Azurite, or the fault proxy before it).
        blob = f"{self.storage.blob_url.rsplit('/', 1)[0]}/{CUSTOMER_ACCOUNT}"
        queue = f"{self.storage.queue_url.rsplit('/', 1)[0]}/{CUSTOMER_ACCOUNT}"
        return {"customer_storage": {"account": CUSTOMER_ACCOUNT,
                                     "key": self.config[CUSTOMER_KEY_CONFIG],
                                     "blob_endpoint": blob, "queue_endpoint": queue}}

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        self.identity.add_routes(app)
        app.router.add_route("*", "/_sandbox/{action}", self._admin)
        app.router.add_route("*", "/{tail:.*}/_api{rest:.*}", self.rest.handle)
        app.router.add_route("*", "/_api{rest:.*}", self.rest.handle)
        return app

    # -- admin endpoint ------------------------------------------------------------------------

    async def _admin(self, request: web.Request) -> web.Response:
        if not secrets.compare_digest(request.headers.get("X-Sandbox-Admin-Key", ""),
                                      self.config["admin_key"]):
            return web.json_response({"error": "missing or wrong X-Sandbox-Admin-Key header "
                                      "(see sandbox.admin_key in tenant.json)"}, status=403)
        action = request.match_info["action"]
        body = await request.json() if request.can_read_body else {}
        if action == "state" and request.method == "GET":
            return web.json_response({"faults": self.faults.snapshot(),
                                      "settings": {"import_delay": self.settings.import_delay}})
        if action == "faults" and request.method == "POST":
            try:
                rates = parse_fault_spec(body.get("spec", "")) if "spec" in body else {
                    str(k): float(v) for k, v in body.get("rates", {}).items()}
                for kind in rates:
                    if kind not in FAULT_KINDS:
                        raise FaultSpecError(f"unknown fault kind {kind!r}")
                    if kind in STORAGE_KINDS and self.storage_proxy is None:
                        raise FaultSpecError(
                            f"fault kind {kind!r} needs the storage proxy: start the sandbox with "
                            f"a storage kind in --faults, e.g. --faults {kind}=0")
            except (FaultSpecError, ValueError) as error:
                return web.json_response({"error": str(error)}, status=400)
            self.faults.set_rates(rates)
            return web.json_response(self.faults.snapshot())
        if action == "token-lifetime" and request.method == "POST":
            self.identity.set_token_lifetime(int(body["seconds"]))
            return web.json_response({"seconds": int(body["seconds"])})
        if action == "revoke-refresh-tokens" and request.method == "POST":
            revoked = self.identity.revoke_refresh_tokens(body.get("username"))
            return web.json_response({"revoked": revoked})
        if action == "settings" and request.method == "POST":
            for key, value in body.items():
                if key == "import_delay":
                    self.settings.import_delay = float(value)
                elif key == "sas_lifetime_seconds":
                    import datetime as dt

                    self.settings.sas_lifetime = dt.timedelta(seconds=float(value))
                elif key == "container_retention_seconds":
                    import datetime as dt

                    self.settings.container_retention = dt.timedelta(seconds=float(value))
                else:
                    return web.json_response({"error": f"unknown setting {key!r}"}, status=400)
            return web.json_response({"ok": True})
        if action == "versioning" and request.method == "POST":
            site = self.store.site_by_url(body.get("site", DEMO_SITE))
            library = self.store.library_by_title(site.id, body["library"]) if site else None
            if library is None:
                return web.json_response({"error": "library not found"}, status=404)
            self.store.set_versioning(library.id, bool(body["enabled"]))
            return web.json_response({"ok": True})
        return web.json_response({"error": f"unknown admin action {request.method} {action}"},
                                 status=404)

    # -- lifetime ------------------------------------------------------------------------------

    async def start(self) -> web.AppRunner:
        from spmt_tui.sandbox.azurite import AzuriteError, port_is_free

        if not port_is_free(self.options.port):
            raise AzuriteError(f"port {self.options.port} on 127.0.0.1 is in use: stop what listens "
                               "there or choose another --port")
        if self.azurite is not None:
            await self.azurite.start()
        if self.storage_proxy is not None:
            await self.storage_proxy.start()
        runner = web.AppRunner(self.build_app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.options.port,
                           ssl_context=self.tls.server_context())
        await site.start()
        await self.importer.start()
        _write_private_json(self.data_dir / "tenant.json", self.profile())
        return runner

    async def stop(self, runner: web.AppRunner) -> None:
        await self.importer.stop()
        await runner.cleanup()
        if self.storage_proxy is not None:
            await self.storage_proxy.stop()
        if self.azurite is not None:
            self.azurite.stop()
        self.store.close()


def _queue_url_from_blob(blob_url: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(blob_url)
    port = (parts.port or 10000) + 1
    return urlunsplit((parts.scheme, f"{parts.hostname}:{port}", parts.path, "", ""))


async def run_sandbox(options: SandboxOptions) -> int:
    """Run the sandbox until SIGINT or SIGTERM."""
    tenant = Tenant(options)
    runner = await tenant.start()
    print(f"ready {tenant.profile()['site_url']}", flush=True)
    print(f"tenant profile: {tenant.data_dir / 'tenant.json'}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping the sandbox")
        await tenant.stop(runner)
    return 0
