"""Token providers: MSAL sign-in by device code, certificate or username and password.

Each provider builds one MSAL application for the authority, client id and scope
``<resource>/.default`` of an ``AuthSettings`` and serves ``async get_token()`` to the engine.
MSAL's calls block (HTTP through ``requests``), so they run in ``asyncio.to_thread``. A lock
keeps one MSAL call in flight per provider, so many workers asking at once cause one refresh.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import threading
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from spmt_tui.auth.cache import TokenCacheStore
from spmt_tui.auth.http import AuthHttpClient

logger = logging.getLogger("spmt.auth")

# An access token that expires within this many seconds is refreshed before use. MSAL 1.39
# applies the same margin in acquire_token_silent and acquire_token_for_client.
REFRESH_MARGIN = 5 * 60

# Hosts of Microsoft's Entra ID authorities (public and national clouds), taken from MSAL 1.39
# (msal.authority.WELL_KNOWN_AUTHORITY_HOSTS). MSAL validates other hosts through instance
# discovery at login.microsoftonline.com unless instance_discovery=False.
MICROSOFT_AUTHORITY_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.microsoftonline.de",
        "login-us.microsoftonline.com",
        "login.microsoftonline.us",
        "login.usgovcloudapi.net",
        "login.sovcloud-identity.fr",
        "login.sovcloud-identity.de",
        "login.sovcloud-identity.sg",
    }
)


class AuthError(Exception):
    """Sign-in failure whose message states what failed and what to do next."""


class SignInRequired(AuthError):
    """No valid token can be obtained without the user signing in again."""


class AuthConnectionError(AuthError):
    """The identity provider could not be reached (network, TLS or proxy failure)."""


@dataclass(frozen=True)
class DeviceCodePrompt:
    """Code and URL that the user needs to finish a device code sign-in on another device."""

    user_code: str
    verification_uri: str
    message: str
    expires_in: int


DeviceCodeCallback = Callable[[DeviceCodePrompt], Awaitable[None] | None]


def _authority_host(authority: str) -> str:
    return (urlsplit(authority).hostname or "").lower()


@dataclass(frozen=True)
class AuthSettings:
    """Authority, resource and client id of a sign-in.

    ``instance_discovery``: ``None`` lets MSAL validate the authority host against Microsoft's
    instance discovery endpoint (right for Microsoft hosts). ``False`` skips that check, which
    is needed for any other authority such as the sandbox tenant, because MSAL would otherwise
    send the authority URL to login.microsoftonline.com and fail.
    ``from_profile`` takes the value from the profile key ``instance_discovery`` when present,
    and otherwise sets ``False`` exactly when the authority host is not one of
    ``MICROSOFT_AUTHORITY_HOSTS``.
    """

    authority: str
    resource: str
    client_id: str
    ca_bundle: Path | None = None
    instance_discovery: bool | None = None
    tenant_id: str | None = None

    @property
    def scopes(self) -> list[str]:
        return [f"{self.resource.rstrip('/')}/.default"]

    @property
    def is_microsoft_authority(self) -> bool:
        return _authority_host(self.authority) in MICROSOFT_AUTHORITY_HOSTS

    @classmethod
    def from_profile(
        cls,
        profile: Mapping[str, Any],
        *,
        client_id: str | None = None,
        app_only: bool = False,
        profile_dir: Path | None = None,
    ) -> "AuthSettings":
        """Build settings from a tenant profile (the ``tenant.json`` the sandbox writes).

        ``client_id`` overrides the profile's ``public_client_id`` (user sign-in) or
        ``app.client_id`` (``app_only``). A relative ``ca_bundle`` is resolved against
        ``profile_dir``.
        """
        missing = [key for key in ("authority", "resource") if not profile.get(key)]
        if missing:
            raise AuthError(f"tenant profile is missing {', '.join(missing)}: regenerate it or fix the file")
        if client_id is None:
            if app_only:
                client_id = (profile.get("app") or {}).get("client_id")
            else:
                client_id = profile.get("public_client_id")
        if not client_id:
            which = "app.client_id" if app_only else "public_client_id"
            raise AuthError(f"no client id: pass --client-id or set {which} in the tenant profile")
        ca_bundle = profile.get("ca_bundle")
        ca_path: Path | None = None
        if ca_bundle:
            ca_path = Path(ca_bundle)
            if not ca_path.is_absolute() and profile_dir is not None:
                ca_path = profile_dir / ca_path
        authority = str(profile["authority"])
        if "instance_discovery" in profile:
            discovery: bool | None = None if profile["instance_discovery"] else False
        else:
            discovery = None if _authority_host(authority) in MICROSOFT_AUTHORITY_HOSTS else False
        return cls(
            authority=authority,
            resource=str(profile["resource"]),
            client_id=str(client_id),
            ca_bundle=ca_path,
            instance_discovery=discovery,
            tenant_id=profile.get("tenant_id"),
        )


def _first_line(text: str) -> str:
    return text.replace("\r\n", "\n").split("\n", 1)[0].strip()


def _aadsts_text(result: Mapping[str, Any]) -> str:
    description = _first_line(str(result.get("error_description") or ""))
    error = str(result.get("error") or "unknown_error")
    return f"{error}: {description}" if description else error


class TokenProvider(ABC):
    """Source of access tokens for the engine's requests to SharePoint Online."""

    kind = "user"

    def __init__(
        self,
        settings: AuthSettings,
        *,
        store: TokenCacheStore | None = None,
        http_client: AuthHttpClient | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        if http_client is None:
            try:
                http_client = AuthHttpClient(settings.ca_bundle)
            except FileNotFoundError as exc:
                raise AuthError(str(exc)) from exc
        self.http_client = http_client
        self.cache = msal.SerializableTokenCache()
        self._cache_loaded = False
        self._msal_app: msal.ClientApplication | None = None
        self._token: str | None = None
        self._expires_on = 0.0
        self._lock: asyncio.Lock | None = None
        self._name: str | None = None

    # -------------------------------------------------------------- public

    async def get_token(self) -> str:
        """Return a valid access token, refreshing it silently when it expires within 5 minutes.

        Raises ``SignInRequired`` when no token can be obtained without the user, and
        ``AuthConnectionError`` when the identity provider cannot be reached.
        """
        if self._token and self._expires_on - time.time() > REFRESH_MARGIN:
            return self._token
        async with self._get_lock():
            if self._token and self._expires_on - time.time() > REFRESH_MARGIN:
                return self._token
            result = await asyncio.to_thread(self._acquire_silently)
            return self._accept(result)

    async def sign_in(self) -> str:
        """Sign in (interactively for the device code flow) and return an access token."""
        async with self._get_lock():
            result = await self._sign_in_locked()
            return self._accept(result)

    async def sign_out(self) -> None:
        """Forget the accounts and tokens of this provider and clear its cache store."""
        async with self._get_lock():
            await asyncio.to_thread(self._sign_out_blocking)

    def whoami(self) -> str | None:
        """Return the signed-in user's name or the app's client id, or None before sign-in."""
        return self._name

    @property
    def token_expires_on(self) -> float:
        """Expiry of the current access token as a Unix time (0 before the first token)."""
        return self._expires_on

    # ---------------------------------------------------------- subclasses

    @abstractmethod
    def _build_app(self) -> msal.ClientApplication: ...

    @abstractmethod
    def _acquire_silently(self) -> dict[str, Any]:
        """Return an MSAL result without user interaction; raise SignInRequired if impossible."""

    async def _sign_in_locked(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._acquire_silently)

    def _describe_failure(self, result: Mapping[str, Any]) -> AuthError:
        return AuthError(f"sign-in to {self.settings.authority} failed: {_aadsts_text(result)}")

    # ------------------------------------------------------------- helpers

    def _get_lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    def _app(self) -> msal.ClientApplication:
        """Return the MSAL application, creating it on first use (which fetches the OpenID
        configuration, so it runs in a worker thread)."""
        if not self._cache_loaded:
            self._load_cache()
        if self._msal_app is None:
            try:
                self._msal_app = self._build_app()
            except ValueError as exc:
                raise AuthError(
                    f"cannot use authority {self.settings.authority}: {exc} Check 'authority' "
                    "in the tenant profile and that the identity provider is running."
                ) from exc
            except requests.RequestException as exc:
                raise self._connection_error(exc) from exc
        return self._msal_app

    def _common_app_arguments(self) -> dict[str, Any]:
        arguments: dict[str, Any] = {
            "authority": self.settings.authority,
            "token_cache": self.cache,
            "http_client": self.http_client,
        }
        if self.settings.instance_discovery is False:
            arguments["instance_discovery"] = False
        return arguments

    def _call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run an MSAL call, turning network failures into AuthConnectionError and saving the
        cache when the call changed it."""
        try:
            return function(*args, **kwargs)
        except requests.RequestException as exc:
            raise self._connection_error(exc) from exc
        finally:
            self._save_cache()

    def _connection_error(self, exc: requests.RequestException) -> AuthConnectionError:
        if isinstance(exc, requests.exceptions.SSLError):
            return AuthConnectionError(
                f"TLS verification failed for {self.settings.authority}: {exc}. Check that "
                f"'ca_bundle' in the tenant profile ({self.settings.ca_bundle}) is the CA that "
                "signed the server's certificate."
            )
        return AuthConnectionError(
            f"cannot reach the identity provider at {self.settings.authority}: {exc}. Check that "
            "it is running (for the sandbox: spmt-tui sandbox start) and the proxy settings."
        )

    def _load_cache(self) -> None:
        self._cache_loaded = True
        if self.store is None:
            return
        data = self.store.load()
        if data:
            self.cache.deserialize(data)
        self.cache.has_state_changed = False

    def _save_cache(self) -> None:
        if self.store is not None and self.cache.has_state_changed:
            self.store.save(self.cache.serialize())
            self.cache.has_state_changed = False

    def _accept(self, result: Mapping[str, Any] | None) -> str:
        if not result or "access_token" not in result:
            raise self._describe_failure(result or {})
        self._token = str(result["access_token"])
        self._expires_on = time.time() + int(result.get("expires_in", 0))
        logger.debug("access token valid for %s s obtained for %s", result.get("expires_in"),
                     self._name or self.settings.client_id)
        return self._token

    def _sign_out_blocking(self) -> None:
        # A fresh cache drops every account and token without contacting the authority.
        self.cache = msal.SerializableTokenCache()
        self._cache_loaded = True
        self._msal_app = None
        self._token = None
        self._expires_on = 0.0
        self._name = self.settings.client_id if self.kind == "app" else None
        if self.store is not None:
            self.store.clear()


class _UserProvider(TokenProvider):
    """Provider that signs in a user with a public client application."""

    def _build_app(self) -> msal.ClientApplication:
        return msal.PublicClientApplication(self.settings.client_id, **self._common_app_arguments())

    def _account(self, app: msal.ClientApplication) -> dict[str, Any] | None:
        accounts = app.get_accounts(username=self._name) if self._name else app.get_accounts()
        return accounts[0] if accounts else None

    def _acquire_silently(self) -> dict[str, Any]:
        app = self._app()
        account = self._account(app)
        if account is None:
            raise SignInRequired(
                f"no signed-in account for {self.settings.authority}: run spmt-tui login"
            )
        self._name = account.get("username") or self._name
        result = self._call(app.acquire_token_silent_with_error, self.settings.scopes, account=account)
        if result and "access_token" in result:
            return result
        reason = _aadsts_text(result) if result else "no refresh token in the cache"
        logger.warning("silent token refresh for %s failed: %s", self._name, reason)
        raise SignInRequired(
            f"the session of {self._name} can no longer be refreshed ({reason}): sign in again "
            "with spmt-tui login"
        )

    def _remember_account(self, result: Mapping[str, Any]) -> None:
        claims = result.get("id_token_claims") or {}
        self._name = claims.get("preferred_username") or claims.get("upn") or self._name


class DeviceCodeProvider(_UserProvider):
    """Device code sign-in: the user opens a URL on any device and types a short code.

    ``on_prompt`` receives a ``DeviceCodePrompt``. It may be a plain function or a coroutine
    function, so the CLI can print it and the TUI can show it in a dialog. ``username`` selects
    the cached account when the cache has several.
    """

    def __init__(
        self,
        settings: AuthSettings,
        on_prompt: DeviceCodeCallback,
        *,
        username: str | None = None,
        store: TokenCacheStore | None = None,
        http_client: AuthHttpClient | None = None,
    ) -> None:
        super().__init__(settings, store=store, http_client=http_client)
        self.on_prompt = on_prompt
        self._name = username

    async def _sign_in_locked(self) -> dict[str, Any]:
        app = await asyncio.to_thread(self._app)
        assert isinstance(app, msal.PublicClientApplication)
        flow = await asyncio.to_thread(self._call, app.initiate_device_flow, scopes=self.settings.scopes)
        if "user_code" not in flow:
            raise AuthError(
                f"the identity provider at {self.settings.authority} did not start a device code "
                f"sign-in: {_aadsts_text(flow)}. Check the public client id in the tenant profile."
            )
        prompt = DeviceCodePrompt(
            user_code=str(flow["user_code"]),
            verification_uri=str(flow.get("verification_uri") or flow.get("verification_url") or ""),
            message=str(flow.get("message") or ""),
            expires_in=int(flow.get("expires_in", 0)),
        )
        shown = self.on_prompt(prompt)
        if inspect.isawaitable(shown):
            await shown

        stop = threading.Event()

        def should_stop(current_flow: dict[str, Any]) -> bool:
            return stop.is_set() or current_flow.get("expires_at", 0) < time.time()

        try:
            result = await asyncio.to_thread(
                self._call, app.acquire_token_by_device_flow, flow, exit_condition=should_stop
            )
        finally:
            # Ends MSAL's polling loop within a second when the awaiting task is cancelled.
            stop.set()
        if "access_token" not in result:
            raise self._describe_failure(result)
        self._remember_account(result)
        logger.info("signed in %s by device code", self._name)
        return result

    def _describe_failure(self, result: Mapping[str, Any]) -> AuthError:
        error = result.get("error")
        text = _aadsts_text(result)
        if error == "expired_token" or error == "authorization_pending":
            return AuthError(f"the device code expired before sign-in was completed ({text}): run spmt-tui login again")
        if error == "authorization_declined":
            return AuthError(f"the sign-in was declined on the device login page ({text})")
        return super()._describe_failure(result)


class UsernamePasswordProvider(_UserProvider):
    """Legacy username and password sign-in (OAuth resource owner password credentials).

    Tenants that require multi-factor authentication, and federated accounts that MSAL cannot
    handle, reject it. Prefer the device code or certificate sign-in.
    """

    def __init__(
        self,
        settings: AuthSettings,
        username: str,
        password: str | Callable[[], str] | None,
        *,
        store: TokenCacheStore | None = None,
        http_client: AuthHttpClient | None = None,
    ) -> None:
        super().__init__(settings, store=store, http_client=http_client)
        self.username = username
        self._password = password
        self._name = username
        self._warned = False

    def _password_value(self) -> str | None:
        if callable(self._password):
            return self._password()
        return self._password

    def _acquire_by_password(self) -> dict[str, Any]:
        password = self._password_value()
        if not password:
            raise SignInRequired(f"the password of {self.username} is needed to sign in again")
        if not self._warned:
            # Said when the password is used, not when a saved account is only read (whoami).
            self._warned = True
            logger.warning(
                "username and password sign-in for %s is a legacy flow: tenants that require "
                "multi-factor authentication reject it; prefer device code or certificate sign-in",
                self.username,
            )
        app = self._app()
        if not self.settings.is_microsoft_authority:
            _skip_user_realm_discovery(self.settings.authority)
        with warnings.catch_warnings():
            # MSAL 1.39 marks this flow deprecated, and the warning logged above covers it.
            warnings.simplefilter("ignore", DeprecationWarning)
            result = self._call(
                app.acquire_token_by_username_password, self.username, password, scopes=self.settings.scopes
            )
        if "access_token" not in result:
            raise self._describe_failure(result)
        self._remember_account(result)
        return result

    async def _sign_in_locked(self) -> dict[str, Any]:
        result = await asyncio.to_thread(self._acquire_by_password)
        logger.info("signed in %s by username and password", self._name)
        return result

    def _acquire_silently(self) -> dict[str, Any]:
        try:
            return super()._acquire_silently()
        except SignInRequired:
            if self._password_value():
                logger.info("signing in %s again with the stored password", self.username)
                return self._acquire_by_password()
            raise

    def _describe_failure(self, result: Mapping[str, Any]) -> AuthError:
        text = _aadsts_text(result)
        if result.get("error") == "invalid_grant" and "50126" in text:
            return AuthError(f"the username or password of {self.username} is wrong ({text})")
        if "50076" in text or "50079" in text:
            return AuthError(
                f"the tenant requires multi-factor authentication for {self.username}, which the "
                f"username and password sign-in cannot do ({text}): use --method device-code"
            )
        return super()._describe_failure(result)


def _skip_user_realm_discovery(authority: str) -> None:
    """Stop MSAL from asking ``https://<host>/common/userrealm/`` before the password grant.

    MSAL 1.39 builds that URL from the authority's host name without its port, so for the
    sandbox on ``127.0.0.1:8443`` the request would go to port 443. The account is then
    treated as managed (not federated), which is what a non-Microsoft authority serves.
    """
    # NOTE: this uses MSAL's private class attribute Authority._domains_without_user_realm_discovery
    # (present in MSAL 1.39). If a later MSAL removes it, the password sign-in against a
    # non-default port fails with a connection error to port 443.
    domains = getattr(msal.authority.Authority, "_domains_without_user_realm_discovery", None)
    if isinstance(domains, set):
        domains.add(_authority_host(authority))


@dataclass(frozen=True)
class LoadedCertificate:
    """A certificate with its private key as unencrypted PEM held in memory only."""

    private_key_pem: str
    certificate_pem: str
    thumbprint: str  # SHA-1 of the DER certificate, upper-case hex as Entra shows it
    not_valid_after: float  # Unix time


def load_certificate(path: Path, passphrase: str | None = None) -> LoadedCertificate:
    """Load a PEM (key and certificate in one file) or PFX/PKCS#12 file.

    The key is decrypted with ``passphrase`` when the file is encrypted and kept in memory as
    unencrypted PEM, because MSAL needs a PEM key and a thumbprint.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AuthError(f"cannot read certificate {path}: {exc.strerror}") from exc
    password = passphrase.encode() if passphrase else None
    is_pem = b"-----BEGIN" in data
    try:
        if is_pem:
            if b"PRIVATE KEY-----" not in data:
                raise AuthError(
                    f"certificate file {path} has no private key: put the key and the "
                    "certificate in one PEM file"
                )
            if b"-----BEGIN CERTIFICATE-----" not in data:
                raise AuthError(
                    f"certificate file {path} has no certificate: put the key and the "
                    "certificate in one PEM file"
                )
            # Both loaders read the first block of their type and skip the other blocks.
            key = serialization.load_pem_private_key(data, password=password)
            certificate = x509.load_pem_x509_certificate(data)
        else:
            key, certificate, _ = pkcs12.load_key_and_certificates(data, password)
    except TypeError as exc:
        # cryptography raises TypeError when an encrypted key has no passphrase or the reverse.
        raise AuthError(
            f"certificate {path}: {exc} Pass the passphrase with --certificate-passphrase-env VAR"
            if passphrase is None else f"certificate {path}: {exc}"
        ) from exc
    except ValueError as exc:
        raise AuthError(
            f"cannot load certificate {path}: the file is not a valid PEM or PFX, or the "
            f"passphrase is wrong ({exc})"
        ) from exc
    if key is None or certificate is None:
        raise AuthError(f"certificate file {path} must contain both the private key and the certificate")
    der = certificate.public_bytes(serialization.Encoding.DER)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
    return LoadedCertificate(
        private_key_pem=key_pem,
        certificate_pem=certificate.public_bytes(serialization.Encoding.PEM).decode("ascii"),
        thumbprint=hashlib.sha1(der).hexdigest().upper(),
        not_valid_after=certificate.not_valid_after_utc.timestamp(),
    )


class CertificateProvider(TokenProvider):
    """App-only sign-in with a certificate (client credentials with a signed client assertion).

    SharePoint Online accepts app-only tokens only when the app proved itself with a
    certificate, so there is no client secret variant.
    """

    kind = "app"

    def __init__(
        self,
        settings: AuthSettings,
        certificate_path: Path,
        *,
        passphrase: str | None = None,
        store: TokenCacheStore | None = None,
        http_client: AuthHttpClient | None = None,
    ) -> None:
        super().__init__(settings, store=store, http_client=http_client)
        self.certificate_path = Path(certificate_path)
        self.certificate = load_certificate(self.certificate_path, passphrase)
        self._name = settings.client_id
        if self.certificate.not_valid_after < time.time():
            logger.warning("certificate %s (thumbprint %s) has expired", self.certificate_path,
                           self.certificate.thumbprint)

    @property
    def thumbprint(self) -> str:
        return self.certificate.thumbprint

    def _build_app(self) -> msal.ClientApplication:
        credential = {
            "private_key": self.certificate.private_key_pem,
            "thumbprint": self.certificate.thumbprint,
        }
        return msal.ConfidentialClientApplication(
            self.settings.client_id, client_credential=credential, **self._common_app_arguments()
        )

    def _acquire_silently(self) -> dict[str, Any]:
        app = self._app()
        assert isinstance(app, msal.ConfidentialClientApplication)
        # acquire_token_for_client returns the cached token until it is within 5 minutes of
        # expiry and then requests a new one with the certificate, so no user is ever needed.
        result = self._call(app.acquire_token_for_client, scopes=self.settings.scopes)
        if "access_token" not in result:
            raise self._describe_failure(result)
        return result

    def _describe_failure(self, result: Mapping[str, Any]) -> AuthError:
        text = _aadsts_text(result)
        client_id = self.settings.client_id
        if "700027" in text or (result.get("error") == "invalid_client" and "certificate" in text.lower()):
            return AuthError(
                f"the tenant rejected certificate {self.thumbprint} for client id {client_id}: "
                f"upload this certificate to the app registration or pass the right --certificate "
                f"({text})"
            )
        if "700016" in text or result.get("error") == "unauthorized_client":
            return AuthError(
                f"the tenant has no app with client id {client_id}: check --client-id and "
                f"--tenant-id ({text})"
            )
        return AuthError(f"app-only sign-in of {client_id} failed: {text}")
