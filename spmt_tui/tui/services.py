"""Calls the screens make outside the UI: sign-in, SharePoint look-ups, sessions, the engine.

``Services`` is the one seam between the Textual screens and the rest of spmt-tui. Tests and
screenshot scripts pass a subclass with fixed answers, so a screen never builds an HTTP
session or a token provider itself. Nothing in this module imports Textual.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import urlsplit

from spmt_tui.auth.cache import PassphraseCallback, TokenCacheStore, choose_store
from spmt_tui.auth.commands import DEFAULT_ACCOUNT, config_dir, load_accounts, provider_for_account, save_accounts
from spmt_tui.auth.tokens import (
    AuthError,
    AuthSettings,
    CertificateProvider,
    DeviceCodePrompt,
    DeviceCodeProvider,
    TokenProvider,
    UsernamePasswordProvider,
)
from spmt_tui.engine.progress import EventSink
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import TenantProfile, load_profile
from spmt_tui.tui.plan import SignedIn, TaskSpec

log = logging.getLogger("spmt.tui")

PromptCallback = Callable[[DeviceCodePrompt], Awaitable[None] | None]

TOKEN_CACHE_CHOICES = {
    "auto": "Keyring, else an encrypted file",
    "keyring": "Keyring",
    "encrypted-file": "Encrypted file (asks for a passphrase)",
    "memory": "Memory only (sign in again next run)",
}


@dataclass
class SignInRequest:
    """What the sign-in form collected. ``password`` is held in memory only."""

    method: str = "device-code"
    profile_path: Path | None = None
    site_url: str = ""
    authority: str = ""
    client_id: str = ""
    ca_bundle: str = ""
    certificate: str = ""
    username: str = ""
    password: str = ""
    token_cache: str = "auto"

    def __repr__(self) -> str:  # Keeps the password out of tracebacks and logs.
        return f"SignInRequest(method={self.method!r}, site_url={self.site_url!r})"


@dataclass(frozen=True)
class Library:
    title: str
    root_folder_url: str


@dataclass(frozen=True)
class Folder:
    name: str
    server_relative_url: str


@dataclass(frozen=True)
class SiteInfo:
    title: str
    url: str
    libraries: tuple[Library, ...]


class PasswordSlot:
    """Password of a username and password sign-in, held in memory for signing in again.

    A ``UsernamePasswordProvider`` built with the slot as its password callable reads it each
    time it needs the password, so a password typed later (in ``ReauthModal``) takes effect
    without rebuilding the provider. ``fallback`` is asked when the slot is empty.
    """

    def __init__(self, password: str = "", fallback: Callable[[], str] | None = None) -> None:
        self._password = password
        self._fallback = fallback

    def set(self, password: str) -> None:
        self._password = password

    def __call__(self) -> str:
        if self._password:
            return self._password
        return self._fallback() if self._fallback is not None else ""

    def __repr__(self) -> str:  # Keeps the password out of tracebacks and logs.
        return "PasswordSlot(***)"


class ServiceError(Exception):
    """A look-up or sign-in failed; the message is written for the user."""


def profile_mapping(request: SignInRequest) -> tuple[dict[str, Any], Path | None]:
    """Merge the tenant profile file (if any) with the values typed in the form."""
    data: dict[str, Any] = {}
    profile_dir: Path | None = None
    if request.profile_path is not None:
        path = Path(request.profile_path).expanduser()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ServiceError(f"tenant profile {path} not found: check the path") from None
        except (OSError, ValueError) as error:
            raise ServiceError(f"cannot read tenant profile {path}: {error}") from None
        profile_dir = path.resolve().parent
    if request.authority:
        data["authority"] = request.authority.strip().rstrip("/")
    if request.client_id:
        key = "app" if request.method == "certificate" else "public_client_id"
        if key == "app":
            data["app"] = {**(data.get("app") or {}), "client_id": request.client_id.strip()}
        else:
            data["public_client_id"] = request.client_id.strip()
    if request.ca_bundle:
        data["ca_bundle"] = str(Path(request.ca_bundle).expanduser())
    site_url = request.site_url.strip().rstrip("/")
    if site_url:
        data["site_url"] = site_url
        if not data.get("resource"):
            parts = urlsplit(site_url)
            data["resource"] = f"{parts.scheme}://{parts.netloc}"
    return data, profile_dir


def tenant_profile(data: dict[str, Any], profile_path: Path | None) -> TenantProfile:
    """Build a ``TenantProfile`` from merged profile data, naming what is missing."""
    missing = [key for key in ("authority", "site_url", "resource") if not data.get(key)]
    if missing:
        raise ServiceError(
            f"missing {', '.join(missing)}: give a tenant profile, or type the site URL and the "
            "authority (https://login.microsoftonline.com/TENANT_ID)")
    site_url = str(data["site_url"])
    if urlsplit(site_url).scheme != "https":
        raise ServiceError(f"invalid site URL {site_url!r}: use an https:// URL")
    return TenantProfile(
        authority=str(data["authority"]).rstrip("/"),
        site_url=site_url.rstrip("/"),
        resource=str(data["resource"]).rstrip("/"),
        public_client_id=str(data.get("public_client_id") or ""),
        tenant_id=str(data.get("tenant_id") or ""),
        tenant_name=str(data.get("tenant_name") or ""),
        ca_bundle=data.get("ca_bundle"),
        user=dict(data.get("user") or {}),
        app=dict(data.get("app") or {}),
        source_path=profile_path,
    )


class Services:
    """Live implementation that talks to the tenant and the engine."""

    def __init__(self, *, passphrase_callback: PassphraseCallback | None = None,
                 password_callback: Callable[[], str] | None = None) -> None:
        self.passphrase_callback = passphrase_callback
        self.password_callback = password_callback

    # -- sign-in --------------------------------------------------------------------------------

    def read_profile(self, path: Path) -> TenantProfile:
        """Load a tenant profile for pre-filling the sign-in form."""
        try:
            return load_profile(Path(path).expanduser())
        except ValueError as error:
            raise ServiceError(str(error)) from None

    async def sign_in(self, request: SignInRequest, on_prompt: PromptCallback) -> SignedIn:
        """Sign in with the requested method and save the account for later runs."""
        data, profile_dir = profile_mapping(request)
        profile = tenant_profile(data, request.profile_path)
        try:
            settings = AuthSettings.from_profile(data, app_only=request.method == "certificate",
                                                 profile_dir=profile_dir)
            store = await asyncio.to_thread(self._store, request.token_cache)
            provider, record, slot = self._provider(request, data, settings, store, on_prompt)
            await provider.sign_in()
        except AuthError as error:
            raise ServiceError(str(error)) from None
        except Exception as error:  # CacheStoreError and OSError carry user-facing text too.
            log.warning("sign-in failed: %s", error)
            raise ServiceError(str(error)) from None
        principal = provider.whoami() or settings.client_id
        await asyncio.to_thread(self._save_account, request, settings, store, record, principal)
        log.info("signed in %s (%s) to %s", principal, request.method, settings.authority)
        return SignedIn(provider=provider, profile=profile, principal=principal, method=request.method,
                        password_slot=slot)

    def _store(self, kind: str) -> TokenCacheStore:
        return choose_store(kind, self.passphrase_callback, cache_dir=config_dir(),
                            name=f"token-cache-{DEFAULT_ACCOUNT}")

    def _provider(self, request: SignInRequest, data: dict[str, Any], settings: AuthSettings,
                  store: TokenCacheStore,
                  on_prompt: PromptCallback) -> tuple[TokenProvider, dict[str, Any], PasswordSlot | None]:
        if request.method == "certificate":
            certificate = request.certificate or (data.get("app") or {}).get("certificate")
            if not certificate:
                raise ServiceError("certificate sign-in needs a PEM or PFX file: type its path")
            provider = CertificateProvider(settings, Path(certificate).expanduser(), store=store)
            return provider, {"certificate": str(Path(certificate).expanduser().resolve()),
                              "thumbprint": provider.thumbprint}, None
        if request.method == "password":
            user = data.get("user") or {}
            username = request.username.strip() or str(user.get("username") or "")
            if not username:
                raise ServiceError("username and password sign-in needs a username")
            password = request.password
            if not password and user.get("username") == username:
                password = str(user.get("password") or "")
            if not password:
                raise ServiceError(f"type the password of {username}")
            slot = PasswordSlot(password)
            provider = UsernamePasswordProvider(settings, username, slot, store=store)
            return provider, {"username": username}, slot
        return DeviceCodeProvider(settings, on_prompt, store=store), {}, None

    def _save_account(self, request: SignInRequest, settings: AuthSettings, store: TokenCacheStore,
                      extra: dict[str, Any], principal: str) -> None:
        # Same record shape as ``spmt-tui login`` writes, so the CLI and the UI share accounts.
        record: dict[str, Any] = {
            "method": request.method,
            "authority": settings.authority,
            "resource": settings.resource,
            "tenant_id": settings.tenant_id or urlsplit(settings.authority).path.strip("/").split("/")[0],
            "client_id": settings.client_id,
            "ca_bundle": str(settings.ca_bundle) if settings.ca_bundle else None,
            "instance_discovery": settings.instance_discovery,
            "token_cache": store.kind,
            "profile": str(Path(request.profile_path).expanduser().resolve()) if request.profile_path else None,
            "signed_in_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **extra,
        }
        if request.method != "certificate":
            record["username"] = principal
        try:
            accounts = load_accounts()
            accounts["accounts"][DEFAULT_ACCOUNT] = record
            accounts["default"] = DEFAULT_ACCOUNT
            save_accounts(accounts)
        except (AuthError, OSError) as error:
            log.warning("signed in, but the account was not saved: %s", error)

    async def saved_sign_in(self, profile_path: Path | None, on_prompt: PromptCallback) -> SignedIn | None:
        """Return a sign-in from the saved default account if a token comes without the user.

        Returns None when no account is saved, it is for another tenant than the profile, or
        its tokens can no longer be refreshed silently; the caller then shows the sign-in step.
        """
        if profile_path is None or not Path(profile_path).exists():
            return None
        try:
            profile = await asyncio.to_thread(load_profile, Path(profile_path))
            record = (await asyncio.to_thread(load_accounts)).get("accounts", {}).get(DEFAULT_ACCOUNT)
            if not record or record.get("authority", "").rstrip("/") != profile.authority:
                return None
            slot = PasswordSlot(self._profile_password(profile, record) or "",
                                fallback=self.password_callback)
            provider = await asyncio.to_thread(
                provider_for_account, DEFAULT_ACCOUNT, on_prompt=on_prompt,
                passphrase_callback=self.passphrase_callback, password_callback=slot)
            await provider.get_token()
        except Exception as error:  # Any failure here only means "ask the user to sign in".
            log.info("saved sign-in not usable for resume: %s", error)
            return None
        principal = provider.whoami() or str(record.get("username") or record.get("client_id"))
        method = str(record.get("method", "device-code"))
        return SignedIn(provider=provider, profile=profile, principal=principal, method=method,
                        password_slot=slot if method == "password" else None)

    @staticmethod
    def _profile_password(profile: TenantProfile, record: dict[str, Any]) -> str | None:
        if record.get("method") != "password":
            return None
        if profile.user.get("username") == record.get("username"):
            return profile.user.get("password")
        return None

    # -- SharePoint -----------------------------------------------------------------------------

    async def site(self, signed_in: SignedIn, site_url: str) -> SiteInfo:
        """Check that the site answers and return its document libraries."""
        async def call(client: Any) -> SiteInfo:
            web = await client.web()
            libraries = await client.libraries()
            return SiteInfo(
                title=web.title, url=site_url,
                libraries=tuple(Library(item.title, item.root_folder_url) for item in libraries))

        return await self._with_client(signed_in, site_url, call)

    async def folders(self, signed_in: SignedIn, site_url: str, server_relative_url: str) -> list[Folder]:
        """Return the sub-folders of a library folder, without SharePoint's system ``Forms``."""
        async def call(client: Any) -> list[Folder]:
            found = await client.folder_folders(server_relative_url)
            return sorted((Folder(item.name, item.server_relative_url) for item in found
                           if item.name != "Forms"), key=lambda folder: folder.name.lower())

        return await self._with_client(signed_in, site_url, call)

    async def _with_client(self, signed_in: SignedIn, site_url: str,
                           call: Callable[[Any], Awaitable[Any]]) -> Any:
        from spmt_tui.spo.http import HttpError, RetryPolicy, SharePointHttp, new_session
        from spmt_tui.spo.sharepoint import SharePointClient

        parts = urlsplit(site_url)
        if parts.scheme != "https" or not parts.netloc:
            raise ServiceError(f"invalid site URL {site_url!r}: use https://HOST/sites/NAME")
        try:
            async with new_session(signed_in.profile.ca_bundle) as session:
                # Few attempts: the user is waiting at the screen and can press Enter again.
                http = SharePointHttp(session, signed_in.provider.get_token,
                                      policy=RetryPolicy(max_attempts=2, max_throttle_wait=30))
                return await call(SharePointClient(site_url, http))
        except HttpError as error:
            if error.status == 404:
                raise ServiceError(f"site {site_url} not found (HTTP 404): check the URL") from None
            if error.status in (401, 403):
                raise ServiceError(f"access to {site_url} denied (HTTP {error.status}): sign in "
                                   "with an account that is a site collection admin") from None
            raise ServiceError(str(error)) from None
        except AuthError as error:
            raise ServiceError(str(error)) from None
        except OSError as error:
            raise ServiceError(f"cannot reach {site_url}: {error}") from None

    # -- sessions and the engine ----------------------------------------------------------------

    def list_sessions(self, working_folder: Path) -> list[Any]:
        """Return the sessions in ``working_folder``, newest first (empty without the engine)."""
        try:
            from spmt_tui.engine.sessions import list_sessions
        except ImportError:
            log.info("session list unavailable: spmt_tui.engine.sessions is not installed")
            return []
        sessions = list_sessions(working_folder)
        return sorted(sessions, key=lambda info: str(getattr(info, "created", "")), reverse=True)

    def new_migration(self, tasks: list[TaskSpec], settings: Settings, signed_in: SignedIn,
                      sink: EventSink) -> Any:
        """Create the engine's ``Migration`` for a new session.

        Each task keeps its own settings from the task file. Like ``spmt-tui migrate``, this
        raises MissingAccessKey when a custom storage account has no key in memory, in the
        environment or in the keyring (the TUI does not prompt for one).
        """
        from spmt_tui.engine.custom_storage import MissingAccessKey, accounts_needing_keys, find_key
        from spmt_tui.engine.migration import Migration, MigrationTask

        engine_tasks = [MigrationTask(source=task.source, site_url=task.site_url, library=task.library,
                                      folder=task.folder, settings=dict(task.settings))
                        for task in tasks]
        for account in accounts_needing_keys(settings, [task.settings for task in engine_tasks]):
            if find_key(account) is None:
                raise MissingAccessKey(account)
        return Migration(engine_tasks, settings, signed_in.profile, signed_in.provider, sink=sink)

    def open_session(self, session_id: str, settings: Settings, signed_in: SignedIn,
                     sink: EventSink) -> Any:
        """Open an interrupted session for resuming."""
        from spmt_tui.engine.migration import Migration

        return Migration.open_session(session_id, settings, signed_in.profile, signed_in.provider,
                                      sink=sink)
