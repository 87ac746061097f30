"""Sandbox identity service: endpoints, device login page and bearer token verification."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import aiohttp
import jwt
import msal
import pytest

from spmt_tui.auth.http import AuthHttpClient
from spmt_tui.sandbox.identity import IdentityService

from auth_sandbox import APP_CLIENT_ID, Sandbox


async def _password_token(sandbox: Sandbox, https: aiohttp.ClientSession) -> str:
    form = {
        "grant_type": "password",
        "client_id": sandbox.public_client_id,
        "username": sandbox.user.username,
        "password": sandbox.user.password,
        "scope": f"{sandbox.resource}/.default openid profile offline_access",
    }
    async with https.post(f"{sandbox.authority}/oauth2/v2.0/token", data=form) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["access_token"]


async def _call_whoami(sandbox: Sandbox, https: aiohttp.ClientSession,
                       authorization: str | None) -> tuple[int, dict, str]:
    headers = {"Authorization": authorization} if authorization is not None else {}
    async with https.get(f"{sandbox.base_url}/_api/whoami", headers=headers) as response:
        return response.status, await response.json(), response.headers.get("WWW-Authenticate", "")


async def test_openid_configuration_and_jwks(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    url = f"{sandbox.authority}/v2.0/.well-known/openid-configuration"
    async with https.get(url) as response:
        config = await response.json()
    assert config["issuer"] == f"{sandbox.authority}/v2.0"
    assert config["token_endpoint"] == f"{sandbox.authority}/oauth2/v2.0/token"
    assert config["device_authorization_endpoint"] == f"{sandbox.authority}/oauth2/v2.0/devicecode"
    async with https.get(config["jwks_uri"]) as response:
        keys = (await response.json())["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "RSA"

    token = await _password_token(sandbox, https)
    public_key = jwt.PyJWK(keys[0]).key
    claims = jwt.decode(token, public_key, algorithms=["RS256"], audience=sandbox.resource)
    assert claims["upn"] == sandbox.user.username
    assert claims["tid"] == sandbox.tenant_id
    assert claims["exp"] - claims["iat"] == 3600


async def test_signing_key_file_private_and_reused(sandbox: Sandbox) -> None:
    key_path = sandbox.data_dir / "identity" / "signing-key.pem"
    assert key_path.stat().st_mode & 0o777 == 0o600
    again = IdentityService(
        tenant_id=sandbox.tenant_id, base_url=sandbox.base_url, resource=sandbox.resource,
        public_client_id=sandbox.public_client_id, apps=[], users=[], signing_key_path=key_path,
    )
    assert again._key_id == sandbox.service._key_id


async def test_authenticate_accepts_user_token(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    token = await _password_token(sandbox, https)
    status, body, _ = await _call_whoami(sandbox, https, f"Bearer {token}")
    assert status == 200
    assert body == {"kind": "user", "name": sandbox.user.username,
                    "object_id": sandbox.user.object_id, "display_name": "Sandbox Admin"}


async def test_authenticate_rejects_missing_token(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    status, body, challenge = await _call_whoami(sandbox, https, None)
    assert status == 401
    assert challenge.startswith(f'Bearer realm="{sandbox.tenant_id}"')
    assert 'error="invalid_token"' in challenge
    assert "no Authorization header" in body["error"]["message"]["value"]


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        ("Basic dXNlcjpwYXNz", "malformed"),
        ("Bearer", "malformed"),
        ("Bearer not-a-jwt", "malformed"),
    ],
)
async def test_authenticate_rejects_malformed_header(
    sandbox: Sandbox, https: aiohttp.ClientSession, authorization: str, expected: str
) -> None:
    status, body, challenge = await _call_whoami(sandbox, https, authorization)
    assert status == 401
    assert 'error="invalid_token"' in challenge
    assert expected in body["error"]["message"]["value"]


async def test_authenticate_rejects_tampered_token(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    token = await _password_token(sandbox, https)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["upn"] = "someone.else@sandbox.example"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    status, body, _ = await _call_whoami(sandbox, https, f"Bearer {header}.{forged}.{signature}")
    assert status == 401
    assert "bad signature" in body["error"]["message"]["value"]


async def test_authenticate_rejects_foreign_key(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    token = jwt.encode(
        {"aud": sandbox.resource, "iss": sandbox.service.issuer, "iat": now, "nbf": now,
         "exp": now + 600, "oid": sandbox.user.object_id, "upn": sandbox.user.username},
        other_key, algorithm="RS256", headers={"kid": sandbox.service._key_id},
    )
    status, body, _ = await _call_whoami(sandbox, https, f"Bearer {token}")
    assert status == 401
    assert "bad signature" in body["error"]["message"]["value"]


async def test_authenticate_rejects_expired_token(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    sandbox.service.set_token_lifetime(1)
    token = await _password_token(sandbox, https)
    await asyncio.sleep(2.1)
    status, body, challenge = await _call_whoami(sandbox, https, f"Bearer {token}")
    assert status == 401
    assert "expired" in body["error"]["message"]["value"]
    assert "expired" in challenge


async def test_authenticate_rejects_wrong_audience(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    now = int(time.time())
    token = sandbox.service._sign(
        {"aud": "https://other.example", "iss": sandbox.service.issuer, "iat": now, "nbf": now,
         "exp": now + 600, "oid": sandbox.user.object_id, "upn": sandbox.user.username}
    )
    status, body, _ = await _call_whoami(sandbox, https, f"Bearer {token}")
    assert status == 401
    assert "wrong audience" in body["error"]["message"]["value"]


async def test_device_login_rejects_unknown_code(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    form = {"user_code": "NOSUCHCOD", "username": sandbox.user.username, "password": sandbox.user.password}
    async with https.post(f"{sandbox.base_url}/devicelogin", data=form) as response:
        text = await response.text()
    assert response.status == 400
    assert "code was not found" in text


async def test_device_login_rejects_wrong_password(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    start = {"client_id": sandbox.public_client_id, "scope": f"{sandbox.resource}/.default openid offline_access"}
    async with https.post(f"{sandbox.authority}/oauth2/v2.0/devicecode", data=start) as response:
        flow = await response.json()
    async with https.get(f"{sandbox.base_url}/devicelogin") as response:
        page = await response.text()
    assert response.status == 200
    assert 'name="user_code"' in page

    form = {"user_code": flow["user_code"].lower(), "username": sandbox.user.username, "password": "wrong"}
    async with https.post(f"{sandbox.base_url}/devicelogin", data=form) as response:
        text = await response.text()
    assert response.status == 401
    assert "username or password is incorrect" in text

    poll = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
            "client_id": sandbox.public_client_id, "device_code": flow["device_code"]}
    async with https.post(f"{sandbox.authority}/oauth2/v2.0/token", data=poll) as response:
        body = await response.json()
    assert body["error"] == "authorization_pending"
    assert body["error_description"].startswith("AADSTS70016:")


async def test_device_code_unknown_client(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    start = {"client_id": "00000000-0000-0000-0000-000000000001", "scope": f"{sandbox.resource}/.default"}
    async with https.post(f"{sandbox.authority}/oauth2/v2.0/devicecode", data=start) as response:
        body = await response.json()
    assert response.status == 400
    assert body["error"] == "unauthorized_client"
    assert body["error_codes"] == [700016]


async def test_token_rejects_foreign_resource(sandbox: Sandbox, https: aiohttp.ClientSession) -> None:
    form = {"grant_type": "password", "client_id": sandbox.public_client_id,
            "username": sandbox.user.username, "password": sandbox.user.password,
            "scope": "https://contoso.sharepoint.com/.default"}
    async with https.post(f"{sandbox.authority}/oauth2/v2.0/token", data=form) as response:
        body = await response.json()
    assert body["error"] == "invalid_resource"
    assert "AADSTS500011" in body["error_description"]


async def test_client_secret_rejected_by_msal_flow(sandbox: Sandbox) -> None:
    def request_with_secret() -> dict:
        app = msal.ConfidentialClientApplication(
            APP_CLIENT_ID, client_credential="not-a-certificate", authority=sandbox.authority,
            http_client=AuthHttpClient(sandbox.tls.ca_cert), instance_discovery=False,
        )
        return app.acquire_token_for_client(scopes=[f"{sandbox.resource}/.default"])

    result = await asyncio.to_thread(request_with_secret)
    assert "access_token" not in result
    assert result["error"] == "invalid_client"
    assert "certificate" in result["error_description"]
    assert "client secret" in result["error_description"]


async def test_user_agent_reaches_sandbox(sandbox: Sandbox) -> None:
    def sign_in() -> dict:
        app = msal.ConfidentialClientApplication(
            APP_CLIENT_ID,
            client_credential={
                "private_key": sandbox.app_certificate.pem_path.read_text(),
                "thumbprint": sandbox.app_certificate.thumbprint,
            },
            authority=sandbox.authority,
            http_client=AuthHttpClient(sandbox.tls.ca_cert),
            instance_discovery=False,
        )
        return app.acquire_token_for_client(scopes=[f"{sandbox.resource}/.default"])

    sandbox.user_agents.clear()
    result = await asyncio.to_thread(sign_in)
    assert "access_token" in result
    assert len(sandbox.user_agents) >= 2  # OpenID discovery and the token request
    assert set(sandbox.user_agents) == {"NONISV|spmt-tui|spmt-tui/0.1.0"}
