"""Token providers against the sandbox identity service, with unmodified MSAL and TLS verification."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path

import aiohttp
import msal
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography import x509

from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.http import AuthHttpClient
from spmt_tui.auth.tokens import (
    AuthConnectionError,
    AuthError,
    AuthSettings,
    CertificateProvider,
    DeviceCodePrompt,
    DeviceCodeProvider,
    SignInRequired,
    UsernamePasswordProvider,
    load_certificate,
)

from auth_sandbox import APP_CLIENT_ID, Sandbox


def _approver(sandbox: Sandbox, https: aiohttp.ClientSession, prompts: list[DeviceCodePrompt]):
    """Return an on_prompt callback that completes the user's step on the device login page."""

    async def approve(prompt: DeviceCodePrompt) -> None:
        prompts.append(prompt)
        form = {"user_code": prompt.user_code, "username": sandbox.user.username,
                "password": sandbox.user.password}
        async with https.post(prompt.verification_uri, data=form) as response:
            assert response.status == 200, await response.text()

    return approve


async def _whoami(sandbox: Sandbox, https: aiohttp.ClientSession, token: str) -> dict:
    async with https.get(f"{sandbox.base_url}/_api/whoami",
                         headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_settings_from_profile_discovery_rule() -> None:
    sandbox_profile = {"authority": "https://127.0.0.1:8443/t1", "resource": "https://127.0.0.1:8443",
                       "public_client_id": "c1"}
    assert AuthSettings.from_profile(sandbox_profile).instance_discovery is False
    microsoft = dict(sandbox_profile, authority="https://login.microsoftonline.com/t1")
    assert AuthSettings.from_profile(microsoft).instance_discovery is None
    explicit = dict(sandbox_profile, instance_discovery=True)
    assert AuthSettings.from_profile(explicit).instance_discovery is None
    assert AuthSettings.from_profile(sandbox_profile).scopes == ["https://127.0.0.1:8443/.default"]


async def test_device_code_sign_in(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    prompts: list[DeviceCodePrompt] = []
    provider = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, prompts))
    token = await provider.sign_in()

    assert len(prompts) == 1
    assert prompts[0].verification_uri == f"{sandbox.base_url}/devicelogin"
    assert prompts[0].user_code in prompts[0].message
    assert prompts[0].expires_in > 0
    assert provider.whoami() == sandbox.user.username
    assert (await _whoami(sandbox, https, token))["name"] == sandbox.user.username
    assert await provider.get_token() == token  # served from memory, no request


async def test_device_code_declined(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    async def decline(prompt: DeviceCodePrompt) -> None:
        form = {"user_code": prompt.user_code, "action": "decline"}
        async with https.post(prompt.verification_uri, data=form) as response:
            assert response.status == 200

    provider = DeviceCodeProvider(sandbox.user_settings(), decline)
    with pytest.raises(AuthError, match="declined"):
        await provider.sign_in()


async def test_silent_refresh_after_expiry(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    store = MemoryStore()
    provider = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, []), store=store)
    sandbox.service.set_token_lifetime(2)
    first = await provider.sign_in()
    await asyncio.sleep(2.5)

    second = await provider.get_token()
    assert second != first
    assert (await _whoami(sandbox, https, second))["name"] == sandbox.user.username

    # A new provider that only has the saved cache signs in silently with the refresh token.
    sandbox.service.set_token_lifetime(3600)
    restarted = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, []), store=store)
    third = await restarted.get_token()
    assert third not in (first, second)
    assert restarted.whoami() == sandbox.user.username


async def test_revoked_refresh_token_needs_sign_in(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    provider = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, []))
    sandbox.service.set_token_lifetime(1)
    await provider.sign_in()
    assert sandbox.service.revoke_refresh_tokens(sandbox.user.username) == 1
    await asyncio.sleep(1.5)
    with pytest.raises(SignInRequired, match="spmt-tui login"):
        await provider.get_token()


async def test_sign_out_clears_store(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    store = MemoryStore()
    provider = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, []), store=store)
    await provider.sign_in()
    assert store.load() is not None
    await provider.sign_out()
    assert store.load() is None
    assert provider.whoami() is None
    with pytest.raises(SignInRequired):
        await provider.get_token()


async def test_get_token_without_sign_in(sandbox: Sandbox) -> None:
    provider = DeviceCodeProvider(sandbox.user_settings(), lambda prompt: None)
    with pytest.raises(SignInRequired, match="no signed-in account"):
        await provider.get_token()


async def test_concurrent_get_token_single_refresh(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    provider = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, []))
    sandbox.service.set_token_lifetime(1)
    await provider.sign_in()
    sandbox.service.set_token_lifetime(3600)
    await asyncio.sleep(1.2)
    tokens = await asyncio.gather(*(provider.get_token() for _ in range(8)))
    assert len(set(tokens)) == 1


async def test_certificate_sign_in_pem(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    provider = CertificateProvider(sandbox.app_settings(), sandbox.app_certificate.pem_path)
    assert provider.thumbprint == sandbox.app_certificate.thumbprint
    token = await provider.get_token()
    body = await _whoami(sandbox, https, token)
    assert body["kind"] == "app"
    assert body["name"] == APP_CLIENT_ID
    assert provider.whoami() == APP_CLIENT_ID


async def test_certificate_sign_in_pfx(sandbox: Sandbox, https: aiohttp.ClientSession, tmp_path: Path) -> None:
    pem = sandbox.app_certificate.pem_path.read_bytes()
    key = serialization.load_pem_private_key(pem, None)
    certificate = x509.load_pem_x509_certificate(pem)
    pfx = tmp_path / "app.pfx"
    pfx.write_bytes(pkcs12.serialize_key_and_certificates(
        b"app", key, certificate, None, serialization.BestAvailableEncryption(b"pfx secret")))

    with pytest.raises(AuthError, match="passphrase"):
        load_certificate(pfx)
    with pytest.raises(AuthError, match="passphrase is wrong"):
        load_certificate(pfx, "wrong")
    provider = CertificateProvider(sandbox.app_settings(), pfx, passphrase="pfx secret")
    assert provider.thumbprint == sandbox.app_certificate.thumbprint
    token = await provider.get_token()
    assert (await _whoami(sandbox, https, token))["kind"] == "app"


async def test_certificate_sha256_thumbprint_accepted(sandbox: Sandbox) -> None:
    # MSAL signs with PS256 and an x5t#S256 header when given the public certificate instead
    # of a SHA-1 thumbprint. The sandbox accepts both forms, like Entra.
    def sign_in() -> dict:
        pem = sandbox.app_certificate.pem_path.read_text()
        app = msal.ConfidentialClientApplication(
            APP_CLIENT_ID,
            client_credential={"private_key": pem, "public_certificate": sandbox.app_certificate.public_pem.decode()},
            authority=sandbox.authority, http_client=AuthHttpClient(sandbox.tls.ca_cert),
            instance_discovery=False,
        )
        return app.acquire_token_for_client(scopes=[f"{sandbox.resource}/.default"])

    result = await asyncio.to_thread(sign_in)
    assert "access_token" in result, result.get("error_description")


async def test_wrong_certificate_clear_error(sandbox: Sandbox) -> None:
    provider = CertificateProvider(sandbox.app_settings(), sandbox.other_certificate.pem_path)
    with pytest.raises(AuthError) as failure:
        await provider.get_token()
    message = str(failure.value)
    assert f"rejected certificate {sandbox.other_certificate.thumbprint}" in message
    assert f"client id {APP_CLIENT_ID}" in message
    assert "upload this certificate to the app registration" in message
    assert "--certificate" in message
    assert "AADSTS700027" in message


async def test_unknown_app_clear_error(sandbox: Sandbox) -> None:
    settings = AuthSettings.from_profile(sandbox.profile(), client_id="0b7e1c58-0000-4000-8000-000000000000")
    provider = CertificateProvider(settings, sandbox.app_certificate.pem_path)
    with pytest.raises(AuthError, match="no app with client id 0b7e1c58"):
        await provider.get_token()


async def test_username_password_sign_in(
    sandbox: Sandbox, https: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="spmt.auth"):
        provider = UsernamePasswordProvider(sandbox.user_settings(), sandbox.user.username,
                                            sandbox.user.password)
        assert "multi-factor" not in caplog.text  # reading an account logs no warning
        token = await provider.sign_in()
        await provider.sign_in()
    assert caplog.text.count("multi-factor") == 1
    assert sandbox.user.password not in caplog.text
    assert (await _whoami(sandbox, https, token))["name"] == sandbox.user.username


async def test_username_password_wrong_password(sandbox: Sandbox) -> None:
    provider = UsernamePasswordProvider(sandbox.user_settings(), sandbox.user.username, "nope")
    with pytest.raises(AuthError, match="username or password .* is wrong"):
        await provider.sign_in()


async def test_tls_verification_stays_on(sandbox: Sandbox) -> None:
    # Without a CA bundle the loopback session verifies against certifi's CAs, which do not
    # include the sandbox CA, so the handshake fails.
    settings = AuthSettings.from_profile({**sandbox.profile(), "ca_bundle": None})
    provider = UsernamePasswordProvider(settings, sandbox.user.username, sandbox.user.password)
    with pytest.raises(AuthConnectionError, match="TLS verification failed"):
        await provider.sign_in()


async def test_ca_bundle_wins_over_environment(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # REQUESTS_CA_BUNDLE names a bundle without the sandbox CA, and HTTPS_PROXY names a proxy on
    # another machine (a reserved .invalid name, never contacted). The per-request CA bundle and
    # the bypass of remote proxies for loopback hosts still let sign-in work.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", requests.certs.where())
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    provider = UsernamePasswordProvider(sandbox.user_settings(), sandbox.user.username, sandbox.user.password)
    assert await provider.sign_in()


def test_proxy_honoured_for_other_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The proxy is a closed port on 127.0.0.1, so the request fails at the proxy and never
    # leaves this machine. A ProxyError shows that the proxy setting was used.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = AuthHttpClient(None, timeout=5)
    with pytest.raises(requests.exceptions.ProxyError):
        client.get("https://identity.example.invalid/tenant/v2.0/.well-known/openid-configuration")


async def test_unreachable_authority(tmp_path: Path, tls_dir: Path) -> None:
    port = _free_port()
    settings = AuthSettings(authority=f"https://127.0.0.1:{port}/t1", resource=f"https://127.0.0.1:{port}",
                            client_id="c1", ca_bundle=tls_dir / "ca" / "ca.pem", instance_discovery=False)
    provider = DeviceCodeProvider(settings, lambda prompt: None)
    with pytest.raises(AuthError, match=f"127.0.0.1:{port}"):
        await provider.sign_in()


async def test_logs_contain_no_secrets(
    sandbox: Sandbox, https: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore()
    with caplog.at_level(logging.DEBUG):
        provider = DeviceCodeProvider(sandbox.user_settings(), _approver(sandbox, https, []), store=store)
        sandbox.service.set_token_lifetime(1)
        first = await provider.sign_in()
        await asyncio.sleep(1.2)
        second = await provider.get_token()
    cache = json.loads(store.load() or "{}")
    refresh_token = next(iter(cache["RefreshToken"].values()))["secret"]
    logged = "\n".join(record.getMessage() for record in caplog.records
                       if record.name.startswith("spmt."))
    assert "spmt.sandbox.identity" in {record.name for record in caplog.records}
    for secret in (first, second, refresh_token, sandbox.user.password):
        assert secret not in logged
