"""Fixtures: the sandbox identity service over HTTPS on 127.0.0.1 with an ephemeral port."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path
from typing import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from spmt_tui.sandbox.ca import ensure_app_certificate, ensure_tls
from spmt_tui.sandbox.identity import AppRegistration, IdentityService, Principal, SandboxUser

from auth_sandbox import APP_CLIENT_ID, Sandbox


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with the CA, server certificate and two app certificates, created once."""
    directory = tmp_path_factory.mktemp("sandbox-tls")
    ensure_tls(directory)
    ensure_app_certificate(directory)
    ensure_app_certificate(directory, name="unregistered")
    return directory


@pytest.fixture
async def sandbox(tls_dir: Path, tmp_path: Path) -> AsyncIterator[Sandbox]:
    tls = ensure_tls(tls_dir)
    app_certificate = ensure_app_certificate(tls_dir)
    other_certificate = ensure_app_certificate(tls_dir, name="unregistered")

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    base_url = f"https://127.0.0.1:{port}"

    tenant_id = str(uuid.uuid4())
    public_client_id = str(uuid.uuid4())
    user = SandboxUser(
        username="admin@sandbox.example",
        password="correct horse battery staple",
        display_name="Sandbox Admin",
        object_id=str(uuid.uuid4()),
    )
    service = IdentityService(
        tenant_id=tenant_id,
        base_url=base_url,
        resource=base_url,
        public_client_id=public_client_id,
        apps=[AppRegistration(APP_CLIENT_ID, "spmt-tui migration app", app_certificate.public_pem)],
        users=[user],
        signing_key_path=tmp_path / "identity" / "signing-key.pem",
        device_code_interval=1,
    )
    box = Sandbox(
        service=service, base_url=base_url, tenant_id=tenant_id,
        public_client_id=public_client_id, user=user, app_certificate=app_certificate,
        other_certificate=other_certificate, tls=tls, data_dir=tmp_path,
    )

    @web.middleware
    async def record_user_agent(request: web.Request, handler):  # type: ignore[no-untyped-def]
        box.user_agents.append(request.headers.get("User-Agent", ""))
        return await handler(request)

    async def whoami(request: web.Request) -> web.Response:
        principal: Principal = service.authenticate(request)
        return web.json_response({"kind": principal.kind, "name": principal.name,
                                  "object_id": principal.object_id,
                                  "display_name": principal.display_name})

    app = web.Application(middlewares=[record_user_agent])
    service.add_routes(app)
    app.router.add_get("/_api/whoami", whoami)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.SockSite(runner, listener, ssl_context=tls.server_context())
    await site.start()
    try:
        yield box
    finally:
        await runner.cleanup()


@pytest.fixture
async def https(sandbox: Sandbox) -> AsyncIterator[aiohttp.ClientSession]:
    """aiohttp client session that trusts the sandbox CA."""
    import ssl

    context = ssl.create_default_context(cafile=str(sandbox.tls.ca_cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context)) as session:
        yield session
