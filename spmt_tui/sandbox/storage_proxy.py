"""A fault-injecting HTTPS proxy in front of Azurite's blob and queue endpoints.

The REST faults of ``faults.py`` never touch Azure Storage, where a migration client spends most
of its requests. When the start-up fault schedule names a storage kind, the sandbox puts this
proxy between the client and Azurite: one loopback listener per endpoint, each forwarding
requests unchanged (path, query, headers, body) to Azurite and streaming the response back. The
tenant's storage URLs then point at the proxy, so the container and queue SAS URIs that the
Migration API hands out go through it.

Only requests signed with a SAS (``sig=`` in the query) can be faulted, because those are the
client's. The sandbox's own requests (account-key requests of the import job and the event
publisher, and the SAS check before a job is created) pass untouched. A faulted request gets one of:

- ``storage_503``: 503 with Azure's ``ServerBusy`` XML error, Azurite never sees the request;
- ``storage_500``: 500 with Azure's ``OperationTimedOut`` XML error, Azurite never sees it;
- ``storage_drop``: the connection closes mid-body. A request with a body is closed after about
  half of it arrived, so Azurite never sees it. Otherwise the request reaches Azurite and the
  client gets the headers and half of the response body (or nothing when the body is empty).
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import ssl
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp import web

from spmt_tui.sandbox.faults import Faults

log = logging.getLogger("spmt.sandbox.storage_proxy")

# Headers that describe one connection (hop-by-hop), not the request, so they are not forwarded.
# Host and Content-Length are set for each side of the proxy on its own.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                         "transfer-encoding", "upgrade", "host", "content-length"})

# The sandbox's SAS check before a job is created (migration.probe_sas) reads this blob or peeks
# at the queue; the client does neither.
_PROBE_BLOB = "spmt-sandbox-sas-probe"

_ERRORS = {
    "storage_503": (503, "ServerBusy", "The server is currently unable to receive requests. "
                    "Please retry your request."),
    "storage_500": (500, "OperationTimedOut", "Operation could not be completed within the "
                    "specified time."),
}


def _error_body(code: str, message: str, request_id: str) -> bytes:
    """Return Azure Storage's XML error document."""
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    return (f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}\n'
            f"RequestId:{request_id}\nTime:{when}</Message></Error>").encode("utf-8")


def _bound_socket() -> socket.socket:
    """Return a listening TCP socket on 127.0.0.1 with a port the kernel chose."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Endpoint:
    """One listener (blob or queue) and the Azurite endpoint behind it."""

    def __init__(self, name: str, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.name = name
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.socket = _bound_socket()
        port = self.socket.getsockname()[1]
        self.url = urlunsplit((parts.scheme, f"127.0.0.1:{port}", parts.path, "", ""))


class StorageFaultProxy:
    """Forwards blob and queue requests to Azurite and injects the storage faults of ``faults``.

    The listening sockets are bound when the proxy is created, so ``blob_url`` and ``queue_url``
    are known before :meth:`start`.
    """

    def __init__(self, faults: Faults, blob_url: str, queue_url: str, *,
                 server_ssl: ssl.SSLContext, ca_bundle: Path | None) -> None:
        self.faults = faults
        self.server_ssl = server_ssl
        self.client_ssl = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
        self.endpoints = [_Endpoint("blob", blob_url), _Endpoint("queue", queue_url)]
        self._runners: list[web.AppRunner] = []
        self._session: aiohttp.ClientSession | None = None

    @property
    def blob_url(self) -> str:
        return self.endpoints[0].url

    @property
    def queue_url(self) -> str:
        return self.endpoints[1].url

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.client_ssl, limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            auto_decompress=False,
            trust_env=False,
        )
        for endpoint in self.endpoints:
            app = web.Application(client_max_size=0)
            app.router.add_route("*", "/{tail:.*}", self._handler(endpoint))
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            await web.SockSite(runner, endpoint.socket, ssl_context=self.server_ssl).start()
            self._runners.append(runner)
            log.info("storage fault proxy: %s -> %s", endpoint.url, endpoint.upstream)

    async def stop(self) -> None:
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        if self._session is not None:
            await self._session.close()

    def _handler(self, endpoint: _Endpoint) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._handle(endpoint, request)

        return handle

    @staticmethod
    def _may_fault(request: web.Request) -> bool:
        if "sig" not in request.query:
            return False  # account-key requests: the sandbox's own import and events
        if request.query.get("peekonly", "").lower() == "true":
            return False
        return not (request.method == "HEAD" and request.path.rstrip("/").endswith("/" + _PROBE_BLOB))

    async def _handle(self, endpoint: _Endpoint, request: web.Request) -> web.StreamResponse:
        self.faults.observe(f"{endpoint.name}_requests")
        if self._may_fault(request):
            if self.faults.roll("storage_drop"):
                return await self._drop(endpoint, request)
            for kind, (status, code, message) in _ERRORS.items():
                if self.faults.roll(kind):
                    return await self._error(request, status, code, message)
        return await self._forward(endpoint, request)

    async def _error(self, request: web.Request, status: int, code: str, message: str) -> web.Response:
        async for _ in request.content.iter_chunked(2**16):
            pass  # read the body so the client is not cut off while it still sends
        request_id = str(uuid.uuid4())
        return web.Response(
            status=status, body=_error_body(code, message, request_id),
            headers={"Content-Type": "application/xml", "x-ms-error-code": code,
                     "x-ms-request-id": request_id, "x-ms-version": request.headers.get("x-ms-version", "")},
        )

    async def _open_upstream(self, endpoint: _Endpoint, request: web.Request) -> Any:
        assert self._session is not None
        headers = [(key, value) for key, value in request.headers.items() if key.lower() not in _HOP_BY_HOP]
        length = request.content_length
        if length is not None:
            headers.append(("Content-Length", str(length)))
        return await self._session.request(
            request.method, endpoint.upstream + request.raw_path,
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
            # Adding headers the client did not send would break account-key signatures.
            skip_auto_headers=("Content-Type", "Accept-Encoding", "User-Agent", "Accept"),
        )

    @staticmethod
    def _response_for(upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in _HOP_BY_HOP:
                response.headers.add(key, value)
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        return response

    async def _forward(self, endpoint: _Endpoint, request: web.Request) -> web.StreamResponse:
        async with await self._open_upstream(endpoint, request) as upstream:
            response = self._response_for(upstream)
            await response.prepare(request)
            if request.method != "HEAD":
                async for chunk in upstream.content.iter_chunked(2**16):
                    await response.write(chunk)
            await response.write_eof()
            return response

    async def _drop(self, endpoint: _Endpoint, request: web.Request) -> web.StreamResponse:
        length = request.content_length or 0
        if request.body_exists and length > 0:
            received = 0
            async for chunk in request.content.iter_chunked(2**16):
                received += len(chunk)
                if received >= length // 2:
                    break
            raise self._dropped(request, f"{endpoint.name} {request.method}: dropped after "
                                f"{received} of {length} request bytes")
        async with await self._open_upstream(endpoint, request) as upstream:
            body_length = upstream.content_length or 0
            if request.method != "HEAD" and body_length >= 2:
                response = self._response_for(upstream)
                await response.prepare(request)
                await response.write(await upstream.content.readexactly(body_length // 2))
        raise self._dropped(request, f"{endpoint.name} {request.method}: dropped after the request "
                            "reached Azurite")

    @staticmethod
    def _dropped(request: web.Request, description: str) -> ConnectionResetError:
        """Close the client's connection and return the error that ends its handler."""
        log.info("injecting fault storage_drop: %s", description)
        if request.transport is not None:
            request.transport.close()
        return ConnectionResetError("sandbox fault: storage connection dropped")
