"""Logic of ``spmt-tui login``, ``logout`` and ``whoami``.

The CLI parses options (``add_login_arguments`` and friends define them) and calls
``run_login``, ``run_logout`` or ``run_whoami``. The async functions ``login``, ``logout`` and
``whoami`` do the work and can be called from the TUI. ``provider_for_account`` builds the
token provider of a saved account for the engine.

Saved accounts live in ``$XDG_CONFIG_HOME/spmt-tui/accounts.json`` (mode 0600), a JSON file
with paths, thumbprints, client ids and URLs. It never contains a password, passphrase,
private key or token: the token cache store keeps tokens, and the certificate passphrase is
read again from the environment variable whose name is saved.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import getpass
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO
from urllib.parse import urlsplit

from spmt_tui.auth.cache import (
    PASSPHRASE_ENV,
    STORE_CHOICES,
    CacheStoreError,
    EncryptedFileStore,
    KeyringStore,
    PassphraseCallback,
    PlaintextFileStore,
    TokenCacheStore,
    choose_store,
    user_config_dir,
)
from spmt_tui.auth.tokens import (
    AuthError,
    AuthSettings,
    CertificateProvider,
    DeviceCodeCallback,
    DeviceCodePrompt,
    DeviceCodeProvider,
    SignInRequired,
    TokenProvider,
    UsernamePasswordProvider,
)

logger = logging.getLogger("spmt.auth")

METHODS = ("device-code", "certificate", "password")
ACCOUNTS_FILE = "accounts.json"
DEFAULT_ACCOUNT = "default"


# --------------------------------------------------------------------------- options


@dataclass
class LoginOptions:
    """Options of ``spmt-tui login``."""

    method: str = "device-code"
    profile: Path | None = None
    account: str = DEFAULT_ACCOUNT
    authority: str | None = None
    resource: str | None = None
    tenant_id: str | None = None
    client_id: str | None = None
    ca_bundle: Path | None = None
    certificate: Path | None = None
    certificate_passphrase_env: str | None = None
    username: str | None = None
    password_env: str | None = None
    token_cache: str = "auto"
    config_dir: Path | None = None

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "LoginOptions":
        return _from_namespace(cls, namespace)


@dataclass
class AccountOptions:
    """Options of ``spmt-tui logout`` and ``spmt-tui whoami``."""

    account: str | None = None  # None: the default account
    config_dir: Path | None = None
    check: bool = True  # whoami: ask the identity provider for a token to confirm the sign-in

    @classmethod
    def from_namespace(cls, namespace: argparse.Namespace) -> "AccountOptions":
        return _from_namespace(cls, namespace)


def _from_namespace(cls: type, namespace: argparse.Namespace) -> Any:
    values = {}
    for name in cls.__dataclass_fields__:
        value = getattr(namespace, name, None)
        if value is not None:
            values[name] = value
    return cls(**values)


@dataclass
class LoginResult:
    """Outcome of a successful ``login``."""

    account: str
    method: str
    principal: str  # UPN of the user or client id of the app
    authority: str
    store_description: str
    thumbprint: str | None = None


@dataclass
class WhoamiResult:
    """Saved account and, when checked, whether a token can still be obtained silently."""

    account: str
    method: str
    kind: str  # "user" or "app"
    principal: str | None
    authority: str
    resource: str
    store_description: str
    signed_in: bool | None  # None when not checked
    problem: str | None = None
    token_expires_on: float | None = None
    details: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- config file


def config_dir(override: Path | None = None) -> Path:
    """Return the user config directory, ``$XDG_CONFIG_HOME/spmt-tui`` unless overridden."""
    return Path(override) if override is not None else user_config_dir()


def load_accounts(directory: Path | None = None) -> dict[str, Any]:
    """Return the saved accounts file, or an empty structure when it does not exist."""
    path = config_dir(directory) / ACCOUNTS_FILE
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {"version": 1, "default": None, "accounts": {}}
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read {path}: {exc}. Fix or delete the file and log in again") from exc
    data.setdefault("accounts", {})
    return data


def save_accounts(data: dict[str, Any], directory: Path | None = None) -> Path:
    """Write the accounts file with mode 0600 (the directory with 0700)."""
    folder = config_dir(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / ACCOUNTS_FILE
    temporary = folder / f".{ACCOUNTS_FILE}.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, sort_keys=True)
        handle.write("\n")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)
    return path


def _account_record(data: dict[str, Any], name: str | None) -> tuple[str, dict[str, Any]]:
    chosen = name or data.get("default")
    accounts = data.get("accounts", {})
    if not chosen or chosen not in accounts:
        known = ", ".join(sorted(accounts)) or "none"
        wanted = f"account {chosen!r}" if chosen else "a default account"
        raise SignInRequired(f"no saved {wanted} (saved accounts: {known}): run spmt-tui login")
    return chosen, accounts[chosen]


# --------------------------------------------------------------------------- settings


def _load_profile(path: Path | None) -> tuple[dict[str, Any], Path | None]:
    if path is None:
        return {}, None
    try:
        return json.loads(Path(path).read_text("utf-8")), Path(path).resolve().parent
    except FileNotFoundError:
        raise AuthError(f"tenant profile {path} not found: pass the tenant.json the sandbox wrote") from None
    except (OSError, ValueError) as exc:
        raise AuthError(f"cannot read tenant profile {path}: {exc}") from exc


def _tenant_of(authority: str) -> str:
    return urlsplit(authority).path.strip("/").split("/")[0]


def resolve_settings(options: LoginOptions) -> tuple[AuthSettings, dict[str, Any]]:
    """Combine the tenant profile with command-line overrides into ``AuthSettings``.

    There is no default authority: it comes from ``--authority`` or the profile, so nothing
    signs in to a tenant that was not named.
    """
    profile, profile_dir = _load_profile(options.profile)
    merged = dict(profile)
    if options.authority:
        merged["authority"] = options.authority
    if options.resource:
        merged["resource"] = options.resource
    if options.ca_bundle:
        merged["ca_bundle"] = str(options.ca_bundle)
    if not merged.get("authority"):
        raise AuthError(
            "no authority to sign in to: pass --profile tenant.json (the sandbox writes one) or "
            "--authority https://HOST/TENANT_ID together with --resource"
        )
    if not merged.get("resource"):
        raise AuthError("no resource: pass --resource https://TENANT.sharepoint.com or --profile")
    if options.tenant_id and _tenant_of(str(merged["authority"])).lower() != options.tenant_id.lower():
        raise AuthError(
            f"--tenant-id {options.tenant_id} does not match the authority {merged['authority']}: "
            "fix one of them"
        )
    settings = AuthSettings.from_profile(
        merged,
        client_id=options.client_id,
        app_only=options.method == "certificate",
        profile_dir=profile_dir,
    )
    return settings, profile


def _certificate_passphrase(env_name: str | None) -> str | None:
    if not env_name:
        return None
    value = os.environ.get(env_name)
    if value is None:
        raise AuthError(
            f"environment variable {env_name} (named by --certificate-passphrase-env) is not set"
        )
    return value


def _open_store(kind: str, account: str, directory: Path | None,
                passphrase_callback: PassphraseCallback | None) -> TokenCacheStore:
    return choose_store(kind, passphrase_callback, cache_dir=config_dir(directory),
                        name=f"token-cache-{account}")


# --------------------------------------------------------------------------- commands


async def login(
    options: LoginOptions,
    *,
    on_prompt: DeviceCodeCallback | None = None,
    passphrase_callback: PassphraseCallback | None = None,
    password_callback: Callable[[], str] | None = None,
) -> LoginResult:
    """Sign in with the chosen method, save the account and return who signed in."""
    if options.method not in METHODS:
        raise AuthError(f"unknown sign-in method {options.method!r}: choose one of {', '.join(METHODS)}")
    settings, profile = resolve_settings(options)
    store = await asyncio.to_thread(
        _open_store, options.token_cache, options.account, options.config_dir, passphrase_callback
    )
    record: dict[str, Any] = {
        "method": options.method,
        "authority": settings.authority,
        "resource": settings.resource,
        "tenant_id": settings.tenant_id or _tenant_of(settings.authority),
        "client_id": settings.client_id,
        "ca_bundle": str(settings.ca_bundle) if settings.ca_bundle else None,
        "instance_discovery": settings.instance_discovery,
        "token_cache": store.kind,
        "profile": str(Path(options.profile).resolve()) if options.profile else None,
    }

    provider: TokenProvider
    if options.method == "certificate":
        certificate = options.certificate or (profile.get("app") or {}).get("certificate")
        if not certificate:
            raise AuthError("certificate sign-in needs --certificate PEM|PFX (or app.certificate in the profile)")
        provider = CertificateProvider(
            settings, Path(certificate),
            passphrase=_certificate_passphrase(options.certificate_passphrase_env), store=store,
        )
        record.update(certificate=str(Path(certificate).resolve()),
                      thumbprint=provider.thumbprint,
                      certificate_passphrase_env=options.certificate_passphrase_env)
    elif options.method == "password":
        username = options.username or (profile.get("user") or {}).get("username")
        if not username:
            raise AuthError("password sign-in needs --username")
        password = os.environ.get(options.password_env) if options.password_env else None
        if options.password_env and password is None:
            raise AuthError(f"environment variable {options.password_env} (named by --password-env) is not set")
        if password is None and password_callback is not None:
            password = password_callback()
        if not password:
            raise AuthError("password sign-in needs a password: use --password-env VAR or a terminal")
        provider = UsernamePasswordProvider(settings, username, password, store=store)
        record.update(username=username)
    else:
        provider = DeviceCodeProvider(settings, on_prompt or _print_prompt, store=store)

    await provider.sign_in()
    principal = provider.whoami() or settings.client_id
    if provider.kind == "user":
        record["username"] = principal
    record["signed_in_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    data = await asyncio.to_thread(load_accounts, options.config_dir)
    data["accounts"][options.account] = record
    data["default"] = data.get("default") or options.account
    if data["default"] not in data["accounts"]:
        data["default"] = options.account
    await asyncio.to_thread(save_accounts, data, options.config_dir)
    logger.info("signed in %s (%s) as account %s; tokens in %s", principal, options.method,
                options.account, store.description)
    return LoginResult(
        account=options.account,
        method=options.method,
        principal=principal,
        authority=settings.authority,
        store_description=store.description,
        thumbprint=record.get("thumbprint"),
    )


def provider_for_account(
    account: str | None = None,
    *,
    directory: Path | None = None,
    passphrase_callback: PassphraseCallback | None = None,
    on_prompt: DeviceCodeCallback | None = None,
    password_callback: Callable[[], str] | None = None,
) -> TokenProvider:
    """Build the token provider of a saved account (the default one when ``account`` is None).

    Raises ``SignInRequired`` when no such account is saved.
    """
    name, record = _account_record(load_accounts(directory), account)
    settings = AuthSettings(
        authority=record["authority"],
        resource=record["resource"],
        client_id=record["client_id"],
        ca_bundle=Path(record["ca_bundle"]) if record.get("ca_bundle") else None,
        instance_discovery=record.get("instance_discovery"),
        tenant_id=record.get("tenant_id"),
    )
    store = _open_store(record.get("token_cache", "auto"), name, directory, passphrase_callback)
    method = record.get("method")
    if method == "certificate":
        return CertificateProvider(
            settings, Path(record["certificate"]),
            passphrase=_certificate_passphrase(record.get("certificate_passphrase_env")),
            store=store,
        )
    if method == "password":
        return UsernamePasswordProvider(settings, record["username"], password_callback, store=store)
    return DeviceCodeProvider(settings, on_prompt or _print_prompt,
                              username=record.get("username"), store=store)


async def whoami(options: AccountOptions, *,
                 passphrase_callback: PassphraseCallback | None = None) -> WhoamiResult:
    """Return the saved account; with ``options.check`` also confirm a token can be obtained."""
    data = await asyncio.to_thread(load_accounts, options.config_dir)
    name, record = _account_record(data, options.account)
    provider = await asyncio.to_thread(
        provider_for_account, name, directory=options.config_dir,
        passphrase_callback=passphrase_callback,
    )
    result = WhoamiResult(
        account=name,
        method=record.get("method", "device-code"),
        kind=provider.kind,
        principal=record.get("username") if provider.kind == "user" else record.get("client_id"),
        authority=record["authority"],
        resource=record["resource"],
        store_description=provider.store.description if provider.store else "none",
        signed_in=None,
    )
    if record.get("thumbprint"):
        result.details["thumbprint"] = record["thumbprint"]
    if record.get("certificate"):
        result.details["certificate"] = record["certificate"]
    if options.check:
        try:
            await provider.get_token()
        except AuthError as exc:
            result.signed_in = False
            result.problem = str(exc)
        else:
            result.signed_in = True
            result.principal = provider.whoami() or result.principal
            result.token_expires_on = provider.token_expires_on
    return result


async def logout(options: AccountOptions) -> str:
    """Remove a saved account and delete its token cache; return what was removed."""
    data = await asyncio.to_thread(load_accounts, options.config_dir)
    name, record = _account_record(data, options.account)
    store = _store_for_removal(record.get("token_cache", ""), name, options.config_dir)
    if store is not None:
        await asyncio.to_thread(store.clear)
    del data["accounts"][name]
    if data.get("default") == name:
        data["default"] = next(iter(sorted(data["accounts"])), None)
    await asyncio.to_thread(save_accounts, data, options.config_dir)
    principal = record.get("username") or record.get("client_id")
    where = store.description if store is not None else "no saved cache"
    logger.info("logged out account %s (%s); cleared %s", name, principal, where)
    return f"logged out {principal} (account {name}); removed tokens from {where}"


def _store_for_removal(kind: str, account: str, directory: Path | None) -> TokenCacheStore | None:
    # Deleting needs no passphrase, so the stores are built directly instead of by choose_store.
    folder = config_dir(directory)
    name = f"token-cache-{account}"
    if kind == "keyring":
        try:
            return KeyringStore(name)
        except CacheStoreError as exc:
            logger.warning("cannot clear the keyring entry of account %s: %s", account, exc)
            return None
    if kind == "encrypted-file":
        return EncryptedFileStore(folder / f"{name}.bin")
    if kind == "plaintext-file":
        return PlaintextFileStore(folder / f"{name}.json")
    return None


# --------------------------------------------------------------------------- CLI glue


def _print_prompt(prompt: DeviceCodePrompt) -> None:
    print(prompt.message or f"Open {prompt.verification_uri} and enter the code {prompt.user_code}",
          file=sys.stderr, flush=True)


def _terminal_passphrase() -> str | None:
    if not sys.stdin.isatty():
        return None
    return getpass.getpass("Token cache passphrase: ")


def _terminal_password() -> str:
    return getpass.getpass("Password: ")


def add_login_arguments(parser: argparse.ArgumentParser) -> None:
    """Define the options of ``spmt-tui login`` on ``parser``."""
    parser.add_argument("--method", choices=METHODS, default="device-code",
                        help="sign-in method (default: device-code; password is legacy and fails "
                             "with multi-factor authentication)")
    parser.add_argument("--profile", type=Path, help="tenant profile (tenant.json) with authority, resource and client ids")
    parser.add_argument("--account", default=DEFAULT_ACCOUNT, help="name to save the sign-in under (default: %(default)s)")
    parser.add_argument("--authority", help="authority URL https://HOST/TENANT_ID (overrides the profile)")
    parser.add_argument("--resource", help="SharePoint root URL; the token scope is RESOURCE/.default")
    parser.add_argument("--tenant-id", help="tenant id; must match the authority")
    parser.add_argument("--client-id", help="app (client) id of the app registration")
    parser.add_argument("--ca-bundle", type=Path, help="PEM file of CAs to trust for HTTPS (overrides the profile)")
    parser.add_argument("--certificate", type=Path, help="PEM (key and certificate) or PFX file for --method certificate")
    parser.add_argument("--certificate-passphrase-env", metavar="VAR",
                        help="name of the environment variable that contains the certificate passphrase")
    parser.add_argument("--username", help="user principal name for --method password")
    parser.add_argument("--password-env", metavar="VAR",
                        help="name of the environment variable that contains the password (else it is prompted)")
    add_token_cache_argument(parser)


def add_token_cache_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--token-cache", choices=STORE_CHOICES, default="auto",
                        help="where to keep tokens: auto (keyring, else encrypted file when "
                             f"{PASSPHRASE_ENV} is set or a terminal can prompt), keyring, "
                             "encrypted-file, plaintext-file (unencrypted) or memory (default: auto)")


def add_account_arguments(parser: argparse.ArgumentParser, *, whoami: bool = False) -> None:
    """Define the options of ``spmt-tui logout`` (and of ``whoami`` with ``whoami=True``)."""
    parser.add_argument("--account", help="saved account name (default: the default account)")
    if whoami:
        parser.add_argument("--no-check", dest="check", action="store_false", default=True,
                            help="show the saved account without asking the identity provider for a token")


def run_login(namespace: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``spmt-tui login`` and return the process exit code."""
    out = out or sys.stdout
    options = LoginOptions.from_namespace(namespace)
    try:
        result = asyncio.run(login(options, passphrase_callback=_terminal_passphrase,
                                   password_callback=_terminal_password))
    except (AuthError, CacheStoreError) as exc:
        print(f"spmt-tui login: {exc}", file=sys.stderr)
        return 1
    print(f"Signed in as {result.principal} ({result.method}) to {result.authority}", file=out)
    if result.thumbprint:
        print(f"Certificate thumbprint: {result.thumbprint}", file=out)
    print(f"Account: {result.account}; tokens kept in {result.store_description}", file=out)
    return 0


def run_logout(namespace: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``spmt-tui logout`` and return the process exit code."""
    try:
        message = asyncio.run(logout(AccountOptions.from_namespace(namespace)))
    except (AuthError, CacheStoreError) as exc:
        print(f"spmt-tui logout: {exc}", file=sys.stderr)
        return 1
    print(message, file=out or sys.stdout)
    return 0


def run_whoami(namespace: argparse.Namespace, *, out: TextIO | None = None) -> int:
    """Run ``spmt-tui whoami``; the exit code is 0 when signed in (or unchecked), 1 otherwise."""
    out = out or sys.stdout
    try:
        result = asyncio.run(whoami(AccountOptions.from_namespace(namespace),
                                    passphrase_callback=_terminal_passphrase))
    except (AuthError, CacheStoreError) as exc:
        print(f"spmt-tui whoami: {exc}", file=sys.stderr)
        return 1
    print(f"{result.principal} ({result.kind}, {result.method}) account {result.account}", file=out)
    print(f"authority: {result.authority}", file=out)
    print(f"resource: {result.resource}", file=out)
    for key, value in result.details.items():
        print(f"{key}: {value}", file=out)
    print(f"token cache: {result.store_description}", file=out)
    if result.signed_in is False:
        print(f"not signed in: {result.problem}", file=out)
        return 1
    if result.token_expires_on:
        expiry = dt.datetime.fromtimestamp(result.token_expires_on).isoformat(timespec="seconds")
        print(f"access token valid until {expiry}", file=out)
    return 0
