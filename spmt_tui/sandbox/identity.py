"""Identity provider of the sandbox tenant: a small Entra ID (Azure AD v2.0 endpoint) emulator.

It serves what MSAL Python needs to sign in against ``https://127.0.0.1:PORT/<tenant_id>``.
That is OpenID discovery, the signing keys (JWKS), the device authorization endpoint with a
device login page, and the token endpoint. The token endpoint accepts the device code, client
credentials (certificate assertion only), password (ROPC) and refresh token grants.
``IdentityService.authenticate`` checks the bearer tokens that the sandbox's REST handlers
receive.

Failures are returned in Entra's JSON shape (``error``, ``error_description`` starting with an
``AADSTSnnnnn:`` code, ``error_codes``, ``trace_id``, ``correlation_id``). Where the code
number of an Entra failure is known (Microsoft's list is at
https://learn.microsoft.com/entra/identity-platform/reference-error-codes) the sandbox uses it.
Some are approximations. The client secret rejection has no Entra counterpart at the token
endpoint, because Entra issues the token and SharePoint Online rejects it later, so it uses the
sandbox's own code ``AADSTS-SANDBOX-APPONLY``.

This module shares no code with ``spmt_tui.auth``, so each side checks the other.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import logging
import os
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

logger = logging.getLogger("spmt.sandbox.identity")

JWT_BEARER_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
DEVICE_CODE_LIFETIME = 900
REFRESH_TOKEN_LIFETIME = 90 * 24 * 3600
# Permission names that SharePoint Online uses for delegated and application access.
USER_SCOPE_CLAIM = "AllSites.FullControl"
DEFAULT_APP_ROLES: tuple[str, ...] = ("Sites.FullControl.All",)
# Letters and digits that cannot be mistaken for one another when typed from a screen.
USER_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
USER_CODE_LENGTH = 9


@dataclass(frozen=True)
class Principal:
    """Caller identified by a verified access token."""

    kind: str  # "user" or "app"
    name: str  # UPN for a user, client id for an app
    object_id: str
    display_name: str


@dataclass(frozen=True)
class AppRegistration:
    """App registration that signs in app-only with a certificate (public certificate PEM)."""

    client_id: str
    display_name: str
    certificate_pem: bytes
    roles: tuple[str, ...] = DEFAULT_APP_ROLES


@dataclass(frozen=True)
class SandboxUser:
    """User account of the sandbox tenant."""

    username: str
    password: str
    display_name: str
    object_id: str


@dataclass
class _RegisteredApp:
    registration: AppRegistration
    certificate: x509.Certificate
    sha1_thumbprint: bytes
    sha256_thumbprint: bytes
    object_id: str


@dataclass
class _DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scopes: list[str]
    expires_at: float
    status: str = "pending"  # "pending", "approved", "declined" or "redeemed"
    user: SandboxUser | None = None


@dataclass
class _RefreshToken:
    client_id: str
    username: str
    scopes: list[str]
    expires_at: float


@dataclass
class _TokenError(Exception):
    """OAuth error that the token endpoint returns as Entra-shaped JSON."""

    error: str
    code: str
    description: str
    status: int = 400
    extra: dict[str, Any] = field(default_factory=dict)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_to_b64url(value: int) -> str:
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _load_or_create_signing_key(path: Path) -> rsa.RSAPrivateKey:
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"signing key {path} is not an RSA private key")
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    logger.info("created token signing key %s", path)
    return key


def _normalize_user_code(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


class IdentityService:
    """Sandbox identity provider: aiohttp routes for sign-in and bearer token verification."""

    def __init__(
        self,
        *,
        tenant_id: str,
        base_url: str,
        resource: str,
        public_client_id: str,
        apps: list[AppRegistration],
        users: list[SandboxUser],
        signing_key_path: Path,
        token_lifetime: int = 3600,
        device_code_interval: int = 5,
    ) -> None:
        self.tenant_id = tenant_id
        self.base_url = base_url.rstrip("/")
        self.resource = resource.rstrip("/")
        self.public_client_id = public_client_id
        self.issuer = f"{self.base_url}/{tenant_id}/v2.0"
        self.token_endpoint = f"{self.base_url}/{tenant_id}/oauth2/v2.0/token"
        self.device_login_url = f"{self.base_url}/devicelogin"
        self.device_code_interval = device_code_interval
        self._token_lifetime = 0
        self.set_token_lifetime(token_lifetime)

        self._signing_key = _load_or_create_signing_key(Path(signing_key_path))
        public_der = self._signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._key_id = _b64url(hashlib.sha256(public_der).digest()[:20])

        self._users = {user.username.lower(): user for user in users}
        self._apps: dict[str, _RegisteredApp] = {}
        for app in apps:
            self._register_app(app)

        self._device_codes: dict[str, _DeviceCode] = {}
        self._device_codes_by_user_code: dict[str, str] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}

    # ----------------------------------------------------------------- admin

    def set_token_lifetime(self, seconds: int) -> None:
        """Set the lifetime of access tokens issued from now on, in seconds."""
        if seconds <= 0:
            raise ValueError(f"token lifetime must be a positive number of seconds, got {seconds}")
        self._token_lifetime = int(seconds)
        logger.info("access token lifetime set to %d s", seconds)

    @property
    def token_lifetime(self) -> int:
        return self._token_lifetime

    def revoke_refresh_tokens(self, username: str | None = None) -> int:
        """Revoke the refresh tokens of one user (or of all users) and return how many were revoked."""
        doomed = [
            token
            for token, entry in self._refresh_tokens.items()
            if username is None or entry.username.lower() == username.lower()
        ]
        for token in doomed:
            del self._refresh_tokens[token]
        logger.info("revoked %d refresh tokens (user %s)", len(doomed), username or "all")
        return len(doomed)

    def _register_app(self, app: AppRegistration) -> None:
        certificate = x509.load_pem_x509_certificate(app.certificate_pem)
        self._apps[app.client_id.lower()] = _RegisteredApp(
            registration=app,
            certificate=certificate,
            sha1_thumbprint=certificate.fingerprint(hashes.SHA1()),
            sha256_thumbprint=certificate.fingerprint(hashes.SHA256()),
            object_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"{self.tenant_id}/sp/{app.client_id}")),
        )

    # ---------------------------------------------------------------- routes

    def add_routes(self, app: web.Application) -> None:
        """Register the identity endpoints on ``app``."""
        prefix = f"/{self.tenant_id}"
        app.router.add_get(f"{prefix}/v2.0/.well-known/openid-configuration", self.handle_openid_configuration)
        app.router.add_get(f"{prefix}/discovery/v2.0/keys", self.handle_jwks)
        app.router.add_post(f"{prefix}/oauth2/v2.0/token", self.handle_token)
        app.router.add_post(f"{prefix}/oauth2/v2.0/devicecode", self.handle_device_code)
        app.router.add_route("*", f"{prefix}/oauth2/v2.0/authorize", self.handle_authorize)
        app.router.add_get("/common/userrealm/{username}", self.handle_user_realm)
        app.router.add_get("/devicelogin", self.handle_device_login_page)
        app.router.add_post("/devicelogin", self.handle_device_login_submit)

    async def handle_openid_configuration(self, request: web.Request) -> web.Response:
        prefix = f"{self.base_url}/{self.tenant_id}"
        return web.json_response(
            {
                "issuer": self.issuer,
                "authorization_endpoint": f"{prefix}/oauth2/v2.0/authorize",
                "token_endpoint": self.token_endpoint,
                "device_authorization_endpoint": f"{prefix}/oauth2/v2.0/devicecode",
                "jwks_uri": f"{prefix}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token"],
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": ["private_key_jwt", "none"],
                "token_endpoint_auth_signing_alg_values_supported": ["RS256", "PS256"],
                "grant_types_supported": [
                    DEVICE_CODE_GRANT,
                    "client_credentials",
                    "password",
                    "refresh_token",
                ],
                "scopes_supported": sorted(OIDC_SCOPES),
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "nbf", "name", "oid",
                                     "preferred_username", "tid", "ver"],
                "tenant_region_scope": "SANDBOX",
                "cloud_instance_name": "sandbox.local",
            }
        )

    async def handle_jwks(self, request: web.Request) -> web.Response:
        numbers = self._signing_key.public_key().public_numbers()
        return web.json_response(
            {
                "keys": [
                    {
                        "kty": "RSA",
                        "use": "sig",
                        "alg": "RS256",
                        "kid": self._key_id,
                        "n": _int_to_b64url(numbers.n),
                        "e": _int_to_b64url(numbers.e),
                        "issuer": self.issuer,
                    }
                ]
            }
        )

    async def handle_authorize(self, request: web.Request) -> web.Response:
        # The sandbox has no browser redirect flow, so the authorization code grant is absent.
        return self._error_response(
            _TokenError(
                "unsupported_response_type",
                "AADSTS70005",
                "The sandbox supports only the device code, client credentials, password and "
                "refresh token grants. Sign in with the device code flow instead.",
            ),
            request,
        )

    async def handle_user_realm(self, request: web.Request) -> web.Response:
        # MSAL calls this before the password grant to find out whether the domain is federated.
        username = request.match_info["username"]
        domain = username.rpartition("@")[2]
        known = any(name.rpartition("@")[2] == domain.lower() for name in self._users)
        return web.json_response(
            {
                "ver": "1.0",
                "account_type": "Managed" if known else "Unknown",
                "domain_name": domain,
                "cloud_instance_name": "sandbox.local",
                "cloud_audience_urn": "urn:federation:MicrosoftOnline",
            }
        )

    # ------------------------------------------------------- device login

    async def handle_device_code(self, request: web.Request) -> web.Response:
        form = await request.post()
        try:
            client_id = self._require(form, "client_id")
            if client_id.lower() != self.public_client_id.lower():
                raise self._unknown_client(client_id, public=True)
            scopes = self._check_user_scopes(str(form.get("scope", "")))
        except _TokenError as failure:
            return self._error_response(failure, request)
        self._drop_expired_device_codes()
        device_code = secrets.token_urlsafe(48)
        user_code = "".join(secrets.choice(USER_CODE_ALPHABET) for _ in range(USER_CODE_LENGTH))
        self._device_codes[device_code] = _DeviceCode(
            device_code=device_code,
            user_code=user_code,
            client_id=client_id,
            scopes=scopes,
            expires_at=time.time() + DEVICE_CODE_LIFETIME,
        )
        self._device_codes_by_user_code[user_code] = device_code
        logger.info("device code issued for client %s", client_id)
        return web.json_response(
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": self.device_login_url,
                "expires_in": DEVICE_CODE_LIFETIME,
                "interval": self.device_code_interval,
                "message": (
                    f"To sign in to the sandbox tenant, open {self.device_login_url} in a "
                    f"web browser and enter the code {user_code}."
                ),
            }
        )

    async def handle_device_login_page(self, request: web.Request) -> web.Response:
        return self._device_login_html(200, "", user_code=request.query.get("code", ""))

    async def handle_device_login_submit(self, request: web.Request) -> web.Response:
        form = await request.post()
        user_code = _normalize_user_code(str(form.get("user_code", "")))
        username = str(form.get("username", "")).strip()
        password = str(form.get("password", ""))
        decline = str(form.get("action", "")).lower() == "decline"

        device_code = self._device_codes_by_user_code.get(user_code)
        pending = self._device_codes.get(device_code) if device_code else None
        if pending is None or pending.status != "pending":
            logger.warning("device login rejected: code %r not found or already used", user_code)
            return self._device_login_html(
                400, "The code was not found or was already used. Check the code shown on your "
                "device, or start the sign-in again to get a new one.", user_code=user_code,
            )
        if pending.expires_at < time.time():
            logger.warning("device login rejected: code %s expired", user_code)
            return self._device_login_html(
                400, "The code has expired. Start the sign-in again on your device to get a new one.",
                user_code=user_code,
            )
        if decline:
            pending.status = "declined"
            logger.info("device login for code %s declined", user_code)
            return self._device_login_html(200, "Sign-in declined. You can close this window.")

        user = self._users.get(username.lower())
        if user is None or not secrets.compare_digest(user.password.encode(), password.encode()):
            logger.warning("device login rejected: wrong username or password for %r", username)
            return self._device_login_html(
                401, "The username or password is incorrect. Try again.", user_code=user_code,
            )
        pending.status = "approved"
        pending.user = user
        logger.info("device login for code %s approved by %s", user_code, user.username)
        return self._device_login_html(
            200, f"Signed in as {user.display_name}. Return to your device; you can close this window.",
        )

    def _device_login_html(self, status: int, message: str, *, user_code: str = "") -> web.Response:
        notice = f"<p id='message'>{html.escape(message)}</p>" if message else ""
        body = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sandbox tenant device sign-in</title></head>
<body>
<h1>Sign in to the sandbox tenant</h1>
{notice}
<form method="post" action="/devicelogin">
<p><label>Code <input name="user_code" value="{html.escape(user_code)}" autocomplete="off"></label></p>
<p><label>Username <input name="username" autocomplete="username"></label></p>
<p><label>Password <input name="password" type="password" autocomplete="current-password"></label></p>
<p><button name="action" value="approve">Sign in</button>
<button name="action" value="decline">Decline</button></p>
</form>
</body></html>
"""
        return web.Response(status=status, text=body, content_type="text/html")

    def _drop_expired_device_codes(self) -> None:
        now = time.time()
        for device_code, entry in list(self._device_codes.items()):
            if entry.expires_at + 60 < now or entry.status == "redeemed":
                del self._device_codes[device_code]
                self._device_codes_by_user_code.pop(entry.user_code, None)

    # ------------------------------------------------------- token endpoint

    async def handle_token(self, request: web.Request) -> web.Response:
        form = await request.post()
        grant_type = str(form.get("grant_type", ""))
        try:
            if grant_type == DEVICE_CODE_GRANT:
                payload = self._grant_device_code(form)
            elif grant_type == "client_credentials":
                payload = self._grant_client_credentials(form)
            elif grant_type == "password":
                payload = self._grant_password(form)
            elif grant_type == "refresh_token":
                payload = self._grant_refresh_token(form)
            elif not grant_type:
                raise _TokenError(
                    "invalid_request", "AADSTS900144",
                    "The request body must contain the following parameter: 'grant_type'.",
                )
            else:
                raise _TokenError(
                    "unsupported_grant_type", "AADSTS70003",
                    f"The sandbox does not support the grant type '{grant_type}'.",
                )
        except _TokenError as failure:
            if failure.error != "authorization_pending":
                logger.warning("token request (%s) failed: %s %s", grant_type or "none",
                               failure.error, failure.code)
            return self._error_response(failure, request)
        return web.json_response(payload, headers={"Cache-Control": "no-store"})

    def _grant_device_code(self, form: Any) -> dict[str, Any]:
        client_id = self._require(form, "client_id")
        device_code = self._require(form, "device_code")
        entry = self._device_codes.get(device_code)
        if entry is None or entry.client_id.lower() != client_id.lower():
            raise _TokenError(
                "invalid_grant", "AADSTS70000",
                "The provided device code is not valid. Start the device code flow again.",
            )
        if entry.status == "redeemed":
            raise _TokenError(
                "invalid_grant", "AADSTS70000",
                "The provided device code was already redeemed. Start the device code flow again.",
            )
        if entry.expires_at < time.time():
            raise _TokenError(
                "expired_token", "AADSTS70019",
                "The device code has expired before a user approved it. Start the sign-in again.",
            )
        if entry.status == "declined":
            raise _TokenError(
                "authorization_declined", "AADSTS70000",
                "The user declined the sign-in request.",
            )
        if entry.status == "pending" or entry.user is None:
            raise _TokenError(
                "authorization_pending", "AADSTS70016",
                "Authorization is pending: the user has not yet entered the code. Continue polling.",
            )
        entry.status = "redeemed"
        logger.info("device code redeemed by %s for client %s", entry.user.username, client_id)
        return self._user_token_response(entry.user, client_id, entry.scopes)

    def _grant_password(self, form: Any) -> dict[str, Any]:
        client_id = self._require(form, "client_id")
        if client_id.lower() != self.public_client_id.lower():
            raise self._unknown_client(client_id, public=True)
        username = self._require(form, "username")
        password = self._require(form, "password")
        scopes = self._check_user_scopes(str(form.get("scope", "")))
        user = self._users.get(username.lower())
        if user is None:
            raise _TokenError(
                "invalid_grant", "AADSTS50034",
                f"The user account {username} does not exist in the sandbox tenant.",
            )
        if not secrets.compare_digest(user.password.encode(), password.encode()):
            raise _TokenError(
                "invalid_grant", "AADSTS50126",
                "Error validating credentials due to invalid username or password.",
            )
        logger.info("password grant for %s", user.username)
        return self._user_token_response(user, client_id, scopes)

    def _grant_refresh_token(self, form: Any) -> dict[str, Any]:
        client_id = self._require(form, "client_id")
        token = self._require(form, "refresh_token")
        entry = self._refresh_tokens.get(token)
        if entry is None or entry.client_id.lower() != client_id.lower():
            raise _TokenError(
                "invalid_grant", "AADSTS70000",
                "The refresh token is not valid: it was revoked, already rotated, or issued "
                "before the sandbox restarted. Sign in again.",
            )
        if entry.expires_at < time.time():
            del self._refresh_tokens[token]
            raise _TokenError(
                "invalid_grant", "AADSTS700082",
                "The refresh token has expired due to inactivity. Sign in again.",
            )
        user = self._users.get(entry.username.lower())
        if user is None:
            raise _TokenError(
                "invalid_grant", "AADSTS50034",
                f"The user account {entry.username} no longer exists in the sandbox tenant.",
            )
        requested = str(form.get("scope", "")).split()
        scopes = self._check_user_scopes(" ".join(requested)) if requested else entry.scopes
        # NOTE: the old refresh token stops working once it is rotated. Entra keeps it valid,
        # so a second process that still has the old token must sign in again here.
        del self._refresh_tokens[token]
        logger.info("refresh token rotated for %s", user.username)
        return self._user_token_response(user, client_id, scopes)

    def _grant_client_credentials(self, form: Any) -> dict[str, Any]:
        if form.get("client_secret"):
            client_id = str(form.get("client_id", ""))
            raise _TokenError(
                "invalid_client", "AADSTS-SANDBOX-APPONLY",
                f"The app {client_id} presented a client secret. SharePoint Online accepts "
                "app-only access only with a certificate credential, so client secrets are "
                "rejected. Upload a certificate to the app registration and sign in with a "
                "certificate (client assertion).",
                status=401,
            )
        assertion_type = str(form.get("client_assertion_type", ""))
        assertion = str(form.get("client_assertion", ""))
        if not assertion:
            raise _TokenError(
                "invalid_client", "AADSTS7000218",
                "The request body must contain the following parameter: 'client_assertion' "
                "(app-only sign-in needs a certificate).",
                status=401,
            )
        if assertion_type != JWT_BEARER_ASSERTION_TYPE:
            raise _TokenError(
                "invalid_request", "AADSTS50027",
                f"client_assertion_type must be '{JWT_BEARER_ASSERTION_TYPE}', got '{assertion_type}'.",
            )
        app = self._verify_client_assertion(assertion, str(form.get("client_id", "")))
        self._check_app_scope(str(form.get("scope", "")))
        return self._app_token_response(app)

    def _check_app_scope(self, scope_text: str) -> None:
        scopes = scope_text.split()
        expected = f"{self.resource}/.default"
        resource_scopes = [s for s in scopes if s.lower() not in OIDC_SCOPES]
        if [s.lower().rstrip("/") for s in resource_scopes] != [expected.lower()]:
            raise _TokenError(
                "invalid_scope", "AADSTS1002012",
                f"The scope '{' '.join(scopes)}' is not valid for the client credentials flow: "
                f"request exactly '{expected}'.",
            )

    def _app_token_response(self, app: _RegisteredApp) -> dict[str, Any]:
        registration = app.registration
        now = int(time.time())
        claims = {
            "aud": self.resource,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + self._token_lifetime,
            "tid": self.tenant_id,
            "oid": app.object_id,
            "sub": app.object_id,
            "appid": registration.client_id,
            "app_displayname": registration.display_name,
            "roles": list(registration.roles),
            "idtyp": "app",
            "ver": "1.0",
        }
        logger.info("client credentials token issued to app %s", registration.client_id)
        return {
            "token_type": "Bearer",
            "expires_in": self._token_lifetime,
            "ext_expires_in": self._token_lifetime,
            "access_token": self._sign(claims),
        }

    def _verify_client_assertion(self, assertion: str, form_client_id: str) -> _RegisteredApp:
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            raise _TokenError(
                "invalid_client", "AADSTS50027", f"The client assertion is not a valid JWT: {exc}.",
                status=401,
            ) from exc
        client_id = form_client_id or str(unverified.get("iss", ""))
        app = self._apps.get(client_id.lower())
        if app is None:
            raise self._unknown_client(client_id, public=False)
        if str(unverified.get("iss", "")).lower() != client_id.lower() or str(
            unverified.get("sub", "")
        ).lower() != client_id.lower():
            raise _TokenError(
                "invalid_client", "AADSTS700027",
                f"The client assertion's iss and sub claims must both be the client id {client_id}.",
                status=401,
            )

        algorithm = str(header.get("alg", ""))
        presented = header.get("x5t#S256") or header.get("x5t")
        if algorithm not in ("RS256", "PS256") or not presented:
            raise _TokenError(
                "invalid_client", "AADSTS700027",
                "The client assertion must be signed with RS256 or PS256 and carry the "
                "certificate thumbprint in its x5t or x5t#S256 header.",
                status=401,
            )
        try:
            presented_bytes = _b64url_decode(str(presented))
        except ValueError:
            presented_bytes = b""
        registered = app.sha256_thumbprint if "x5t#S256" in header else app.sha1_thumbprint
        if not secrets.compare_digest(presented_bytes, registered):
            raise _TokenError(
                "invalid_client", "AADSTS700027",
                f"Client assertion failed signature validation: the key with thumbprint "
                f"{presented_bytes.hex().upper() or '(unreadable)'} was not found among the "
                f"certificates of app {client_id}, whose registered certificate has SHA-1 "
                f"thumbprint {app.sha1_thumbprint.hex().upper()}.",
                status=401,
            )
        try:
            jwt.decode(
                assertion,
                key=app.certificate.public_key(),
                algorithms=[algorithm],
                audience=self.token_endpoint,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.InvalidAudienceError as exc:
            raise _TokenError(
                "invalid_client", "AADSTS700027",
                f"The client assertion's audience must be the token endpoint {self.token_endpoint}.",
                status=401,
            ) from exc
        except jwt.ExpiredSignatureError as exc:
            raise _TokenError(
                "invalid_client", "AADSTS700024",
                "The client assertion has expired. Check the clock of the client machine.",
                status=401,
            ) from exc
        except jwt.PyJWTError as exc:
            raise _TokenError(
                "invalid_client", "AADSTS700027",
                f"Client assertion failed signature validation for app {client_id}: {exc}.",
                status=401,
            ) from exc
        return app

    # -------------------------------------------------------------- tokens

    def _user_token_response(
        self, user: SandboxUser, client_id: str, scopes: list[str]
    ) -> dict[str, Any]:
        now = int(time.time())
        resource_scopes = [s for s in scopes if s.lower() not in OIDC_SCOPES]
        access_claims = {
            "aud": self.resource,
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + self._token_lifetime,
            "tid": self.tenant_id,
            "oid": user.object_id,
            "sub": user.object_id,
            "upn": user.username,
            "unique_name": user.username,
            "name": user.display_name,
            "appid": client_id,
            "scp": USER_SCOPE_CLAIM,
            "idtyp": "user",
            "ver": "1.0",
        }
        payload: dict[str, Any] = {
            "token_type": "Bearer",
            # MSAL stores the access token under these scopes and looks it up by them later.
            "scope": " ".join(resource_scopes),
            "expires_in": self._token_lifetime,
            "ext_expires_in": self._token_lifetime,
            "access_token": self._sign(access_claims),
            "client_info": _b64url(
                json.dumps({"uid": user.object_id, "utid": self.tenant_id}).encode()
            ),
        }
        lowered = {s.lower() for s in scopes}
        if "openid" in lowered:
            payload["id_token"] = self._sign(
                {
                    "aud": client_id,
                    "iss": self.issuer,
                    "iat": now,
                    "nbf": now,
                    "exp": now + 3600,
                    "tid": self.tenant_id,
                    "oid": user.object_id,
                    "sub": user.object_id,
                    "preferred_username": user.username,
                    "name": user.display_name,
                    "ver": "2.0",
                }
            )
        if "offline_access" in lowered:
            refresh_token = secrets.token_urlsafe(64)
            self._refresh_tokens[refresh_token] = _RefreshToken(
                client_id=client_id,
                username=user.username,
                scopes=scopes,
                expires_at=time.time() + REFRESH_TOKEN_LIFETIME,
            )
            payload["refresh_token"] = refresh_token
        return payload

    def _sign(self, claims: dict[str, Any]) -> str:
        claims = dict(claims, uti=_b64url(secrets.token_bytes(16)))
        return jwt.encode(claims, self._signing_key, algorithm="RS256",
                          headers={"kid": self._key_id, "typ": "JWT"})

    def _check_user_scopes(self, scope_text: str) -> list[str]:
        scopes = scope_text.split()
        resource_scopes = [s for s in scopes if s.lower() not in OIDC_SCOPES]
        if not resource_scopes:
            raise _TokenError(
                "invalid_scope", "AADSTS70011",
                f"The request must ask for a scope of the resource, such as '{self.resource}/.default'.",
            )
        for scope in resource_scopes:
            resource, _, permission = scope.rpartition("/")
            if resource.lower() != self.resource.lower():
                raise _TokenError(
                    "invalid_resource", "AADSTS500011",
                    f"The resource principal named {resource or scope} was not found in the "
                    f"sandbox tenant {self.tenant_id}. The only resource is {self.resource}.",
                )
            if not permission:
                raise _TokenError(
                    "invalid_scope", "AADSTS70011", f"The scope '{scope}' names no permission.",
                )
        return scopes

    def _require(self, form: Any, name: str) -> str:
        value = form.get(name)
        if not value:
            raise _TokenError(
                "invalid_request", "AADSTS900144",
                f"The request body must contain the following parameter: '{name}'.",
            )
        return str(value)

    def _unknown_client(self, client_id: str, *, public: bool) -> _TokenError:
        kind = "public client (device code, password)" if public else "app-only (certificate)"
        return _TokenError(
            "unauthorized_client", "AADSTS700016",
            f"Application with identifier '{client_id}' was not found in the sandbox tenant "
            f"{self.tenant_id} as a {kind} app. Check the client id in the tenant profile.",
        )

    def _error_response(self, failure: _TokenError, request: web.Request) -> web.Response:
        correlation_id = request.headers.get("client-request-id") or str(uuid.uuid4())
        trace_id = str(uuid.uuid4())
        timestamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
        code_number = failure.code.removeprefix("AADSTS")
        body = {
            "error": failure.error,
            "error_description": (
                f"{failure.code}: {failure.description}\r\nTrace ID: {trace_id}\r\n"
                f"Correlation ID: {correlation_id}\r\nTimestamp: {timestamp}"
            ),
            "error_codes": [int(code_number)] if code_number.isdigit() else [],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            **failure.extra,
        }
        return web.json_response(body, status=failure.status, headers={"Cache-Control": "no-store"})

    # ------------------------------------------------------- verification

    def authenticate(self, request: web.Request) -> Principal:
        """Verify the request's bearer token and return its principal.

        Raises ``web.HTTPUnauthorized`` with a ``WWW-Authenticate`` challenge and a JSON error
        body in the verbose OData shape when the token is missing, malformed, badly signed,
        expired, not yet valid, from another issuer or for another audience.
        """
        header = request.headers.get("Authorization", "")
        if not header:
            raise self._unauthorized("The request has no Authorization header with a bearer token.")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise self._unauthorized("The Authorization header is malformed: expected 'Bearer <token>'.")
        try:
            unverified_header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise self._unauthorized("The bearer token is malformed: it is not a JWT.") from None
        if unverified_header.get("alg") != "RS256" or unverified_header.get("kid") != self._key_id:
            raise self._unauthorized(
                "The bearer token has a bad signature: it was not signed by this sandbox tenant's key."
            )
        try:
            claims = jwt.decode(
                token,
                key=self._signing_key.public_key(),
                algorithms=["RS256"],
                audience=self.resource,
                issuer=self.issuer,
                options={"require": ["exp", "iat", "nbf", "aud", "iss", "oid"]},
            )
        except jwt.ExpiredSignatureError:
            raise self._unauthorized("The bearer token has expired. Acquire a new token.") from None
        except jwt.InvalidAudienceError:
            raise self._unauthorized(
                f"The bearer token has the wrong audience: expected {self.resource}."
            ) from None
        except jwt.InvalidIssuerError:
            raise self._unauthorized(
                f"The bearer token has the wrong issuer: expected {self.issuer}."
            ) from None
        except jwt.ImmatureSignatureError:
            raise self._unauthorized("The bearer token is not valid yet (nbf is in the future).") from None
        except jwt.InvalidSignatureError:
            raise self._unauthorized("The bearer token has a bad signature.") from None
        except jwt.MissingRequiredClaimError as exc:
            raise self._unauthorized(f"The bearer token is malformed: {exc}.") from None
        except jwt.PyJWTError as exc:
            raise self._unauthorized(f"The bearer token is malformed: {exc}.") from None

        if claims.get("idtyp") == "app" or "upn" not in claims:
            app = self._apps.get(str(claims.get("appid", "")).lower())
            if app is None:
                raise self._unauthorized("The bearer token names an app that is not registered.")
            return Principal(
                kind="app",
                name=app.registration.client_id,
                object_id=app.object_id,
                display_name=app.registration.display_name,
            )
        user = self._users.get(str(claims["upn"]).lower())
        if user is None:
            raise self._unauthorized("The bearer token names a user that does not exist.")
        return Principal(
            kind="user", name=user.username, object_id=user.object_id, display_name=user.display_name,
        )

    def _unauthorized(self, message: str) -> web.HTTPUnauthorized:
        logger.info("rejected bearer token: %s", message)
        quoted = message.replace('"', "'")
        challenge = (
            f'Bearer realm="{self.tenant_id}", '
            f'authorization_uri="{self.base_url}/{self.tenant_id}/oauth2/v2.0/authorize", '
            f'error="invalid_token", error_description="{quoted}"'
        )
        body = {
            "error": {
                "code": "-2147024891, System.UnauthorizedAccessException",
                "message": {"lang": "en-US", "value": message},
            }
        }
        return web.HTTPUnauthorized(
            headers={"WWW-Authenticate": challenge},
            text=json.dumps(body),
            content_type="application/json",
        )
