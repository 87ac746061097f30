"""HTTPS_PROXY: sign-in (MSAL over requests), SharePoint REST (aiohttp) and Azure Storage (the Azure
SDK over aiohttp) all go through the proxy that the environment names.

The proxy is a small CONNECT proxy on 127.0.0.1 in this test. It only opens tunnels to loopback
addresses, and counts each tunnel by its target and by the client library that asked for it.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from harness import Sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile
from spmt_tui.sandbox.export import export_library
from spmt_tui.proxy import proxy_for_url

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                   "NO_PROXY", "no_proxy")


class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that tunnels to loopback targets only."""

    def __init__(self) -> None:
        self.tunnels: collections.Counter[tuple[str, str]] = collections.Counter()
        self.rejected: list[str] = []
        self.server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self._open):
            writer.close()
        await self.server.wait_closed()

    def count(self, port: int, client: str | None = None) -> int:
        return sum(n for (target, agent), n in self.tunnels.items()
                   if target.endswith(f":{port}") and (client is None or agent == client))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return

        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = (lines[0].split(" ") + ["", ""])[:3]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        host, _, port = target.rpartition(":")
        if method != "CONNECT" or host.strip("[]") not in ("127.0.0.1", "localhost", "::1") or not port.isdigit():
            self.rejected.append(lines[0])
            writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        # aiohttp (REST, and the Azure SDK's transport) sends its default Accept-Encoding with
        # CONNECT; http.client, under requests and so MSAL, sends at most Host.
        agent = "aiohttp" if "accept-encoding" in headers else "requests"
        self.tunnels[(target, agent)] += 1

        try:
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return

        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        self._open.update((writer, up_writer))
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        except asyncio.CancelledError:
            pass  # the test's loop is closing
        finally:
            self._open.difference_update((writer, up_writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(2**16):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def connect_proxy(monkeypatch: pytest.MonkeyPatch) -> ConnectProxy:
    proxy = ConnectProxy()
    await proxy.start()
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    yield proxy
    await proxy.stop()


def test_proxy_choice_for_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert proxy_for_url("https://127.0.0.1:8443/x") is None
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert proxy_for_url("https://127.0.0.1:8443/x") == "http://127.0.0.1:3128"
    assert proxy_for_url("https://contoso.sharepoint.com/x") == "http://127.0.0.1:3128"
    assert proxy_for_url("http://127.0.0.1:8443/x") is None  # HTTPS_PROXY is for https URLs
    # A proxy on another machine cannot reach this machine's loopback services.
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp.example:3128")
    assert proxy_for_url("https://127.0.0.1:8443/x") is None
    assert proxy_for_url("https://localhost:8443/x") is None
    assert proxy_for_url("https://contoso.sharepoint.com/x") == "http://proxy.corp.example:3128"
    monkeypatch.setenv("NO_PROXY", ".sharepoint.com")
    assert proxy_for_url("https://contoso.sharepoint.com/x") is None
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:3129")  # the lower-case name wins
    monkeypatch.delenv("NO_PROXY")
    assert proxy_for_url("https://127.0.0.1:8443/x") == "http://127.0.0.1:3129"
    monkeypatch.setenv("no_proxy", "*")
    assert proxy_for_url("https://127.0.0.1:8443/x") is None


async def test_migration_goes_through_proxy(sandbox: Sandbox, tmp_path: Path,
                                            connect_proxy: ConnectProxy) -> None:
    source = tmp_path / "share"
    expected = {}
    for number in range(12):
        relative = f"p{number % 3}/f{number}.txt"
        (source / relative).parent.mkdir(parents=True, exist_ok=True)
        (source / relative).write_bytes(f"through the proxy {number}\n".encode() * (number + 1))
        expected[relative] = (source / relative).read_bytes()
    data = json.loads(sandbox.profile_path.read_text())
    provider = UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                        data["user"]["password"], store=MemoryStore())
    profile = load_profile(sandbox.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=4, job_poll_seconds=0.5)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "via-proxy")],
                          settings, profile, provider)
    result = await migration.run()
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0

    sandbox_port = urlsplit(sandbox.site_url).port
    blob_port = urlsplit(sandbox.profile["sandbox"]["azurite_blob"]).port
    queue_port = urlsplit(sandbox.profile["sandbox"]["azurite_queue"]).port
    tunnels = dict(connect_proxy.tunnels)
    assert connect_proxy.count(sandbox_port, "requests") > 0, f"no sign-in tunnel: {tunnels}"
    assert connect_proxy.count(sandbox_port, "aiohttp") > 0, f"no REST tunnel: {tunnels}"
    assert connect_proxy.count(blob_port, "aiohttp") > 0, f"no blob tunnel: {tunnels}"
    assert connect_proxy.count(queue_port, "aiohttp") > 0, f"no queue tunnel: {tunnels}"
    assert connect_proxy.rejected == []

    out = tmp_path / "export"
    export_library(sandbox.data_dir, "Documents", out)
    root = out / "via-proxy"
    arrived = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert arrived == expected
