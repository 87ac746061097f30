"""login, whoami and logout logic with a tenant profile, against the sandbox identity service."""

from __future__ import annotations

import argparse
import logging
import io
import json
from pathlib import Path

import aiohttp
import pytest

from spmt_tui.auth import commands
from spmt_tui.auth.cache import PASSPHRASE_ENV, CacheStoreUnavailable
from spmt_tui.auth.commands import AccountOptions, LoginOptions
from spmt_tui.auth.tokens import AuthError, DeviceCodePrompt, SignInRequired

from auth_sandbox import APP_CLIENT_ID, Sandbox


@pytest.fixture
def profile_path(sandbox: Sandbox, tmp_path: Path) -> Path:
    path = tmp_path / "tenant.json"
    path.write_text(json.dumps(sandbox.profile()))
    return path


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(PASSPHRASE_ENV, "cache passphrase for tests")
    return tmp_path / "xdg" / "spmt-tui"


def _approver(sandbox: Sandbox, https: aiohttp.ClientSession):
    async def approve(prompt: DeviceCodePrompt) -> None:
        form = {"user_code": prompt.user_code, "username": sandbox.user.username,
                "password": sandbox.user.password}
        async with https.post(prompt.verification_uri, data=form) as response:
            assert response.status == 200

    return approve


async def test_device_code_login_whoami_logout(
    sandbox: Sandbox, https: aiohttp.ClientSession, profile_path: Path, config_dir: Path
) -> None:
    options = LoginOptions(profile=profile_path, token_cache="encrypted-file")
    result = await commands.login(options, on_prompt=_approver(sandbox, https))
    assert result.principal == sandbox.user.username
    assert result.store_description == f"encrypted file {config_dir / 'token-cache-default.bin'}"

    accounts_file = config_dir / "accounts.json"
    assert accounts_file.stat().st_mode & 0o777 == 0o600
    text = accounts_file.read_text()
    assert sandbox.user.password not in text
    assert "cache passphrase for tests" not in text
    record = json.loads(text)["accounts"]["default"]
    assert record["method"] == "device-code"
    assert record["username"] == sandbox.user.username
    assert record["client_id"] == sandbox.public_client_id
    assert record["authority"] == sandbox.authority

    info = await commands.whoami(AccountOptions())
    assert info.signed_in is True
    assert info.principal == sandbox.user.username
    assert info.kind == "user"

    message = await commands.logout(AccountOptions())
    assert sandbox.user.username in message
    assert not (config_dir / "token-cache-default.bin").exists()
    with pytest.raises(SignInRequired, match="run spmt-tui login"):
        await commands.whoami(AccountOptions())


async def test_certificate_login_saves_thumbprint(
    sandbox: Sandbox, profile_path: Path, config_dir: Path
) -> None:
    options = LoginOptions(method="certificate", profile=profile_path, account="app",
                           client_id=APP_CLIENT_ID, tenant_id=sandbox.tenant_id,
                           certificate=sandbox.app_certificate.pem_path, token_cache="memory")
    result = await commands.login(options)
    assert result.principal == APP_CLIENT_ID
    assert result.thumbprint == sandbox.app_certificate.thumbprint
    record = json.loads((config_dir / "accounts.json").read_text())["accounts"]["app"]
    assert record["thumbprint"] == sandbox.app_certificate.thumbprint
    assert "PRIVATE KEY" not in json.dumps(record)

    provider = commands.provider_for_account("app")
    token = await provider.get_token()
    assert token.count(".") == 2


async def test_login_rejects_mismatched_tenant(sandbox: Sandbox, profile_path: Path, config_dir: Path) -> None:
    options = LoginOptions(method="certificate", profile=profile_path, tenant_id="another-tenant",
                           certificate=sandbox.app_certificate.pem_path, token_cache="memory")
    with pytest.raises(AuthError, match="does not match the authority"):
        await commands.login(options)


async def test_login_needs_named_authority(config_dir: Path) -> None:
    with pytest.raises(AuthError, match="no authority"):
        await commands.login(LoginOptions(token_cache="memory"))


async def test_login_without_secure_store(
    sandbox: Sandbox, profile_path: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keyring
    from keyring.backends.fail import Keyring as FailKeyring

    monkeypatch.delenv(PASSPHRASE_ENV)
    monkeypatch.setattr(keyring, "get_keyring", lambda: FailKeyring())
    with pytest.raises(CacheStoreUnavailable, match="no secure token cache store"):
        await commands.login(LoginOptions(profile=profile_path), on_prompt=lambda prompt: None)


async def test_password_login_from_env(
    sandbox: Sandbox, profile_path: Path, config_dir: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("SANDBOX_PASSWORD", sandbox.user.password)
    options = LoginOptions(method="password", profile=profile_path, username=sandbox.user.username,
                           password_env="SANDBOX_PASSWORD", token_cache="encrypted-file")
    result = await commands.login(options)
    assert result.principal == sandbox.user.username
    assert sandbox.user.password not in (config_dir / "accounts.json").read_text()

    # whoami reads the saved account and its cached token: no legacy-flow warning then.
    assert "multi-factor" in caplog.text  # from the login
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="spmt.auth"):
        info = await commands.whoami(AccountOptions())
    assert info.principal == sandbox.user.username
    assert "multi-factor" not in caplog.text


def test_cli_arguments_parse_into_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    commands.add_login_arguments(parser)
    namespace = parser.parse_args(["--method", "certificate", "--client-id", "c1", "--certificate",
                                   str(tmp_path / "app.pfx"), "--certificate-passphrase-env", "PFX_PASS",
                                   "--token-cache", "memory"])
    options = LoginOptions.from_namespace(namespace)
    assert options.method == "certificate"
    assert options.certificate == tmp_path / "app.pfx"
    assert options.certificate_passphrase_env == "PFX_PASS"
    assert options.token_cache == "memory"

    whoami_parser = argparse.ArgumentParser()
    commands.add_account_arguments(whoami_parser, whoami=True)
    assert AccountOptions.from_namespace(whoami_parser.parse_args(["--no-check"])).check is False


def test_run_whoami_without_account(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = commands.run_whoami(argparse.Namespace(account=None, check=True), out=io.StringIO())
    assert code == 1
    assert "run spmt-tui login" in capsys.readouterr().err
