"""No token, key, password or SAS signature in any file a migration writes.

The migration runs in this process so the test can record every secret it handles: access
tokens from the provider, and the AES keys and SAS URIs that ProvisionMigrationContainers and
ProvisionMigrationQueue return. Then every file under the working folder and the user's config
and data folders is searched for each of them, in the forms they could be written in.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from harness import Sandbox
from spmt_tui.auth.cache import EncryptedFileStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile
from spmt_tui.spo import sharepoint


class RecordingProvider(UsernamePasswordProvider):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tokens: set[str] = set()

    async def get_token(self) -> str:
        token = await super().get_token()
        self.tokens.add(token)
        return token


def _forms(secret: bytes | str) -> set[bytes]:
    """The ways a secret could appear in a file: raw, base64, hex, URL-encoded."""
    raw = secret.encode() if isinstance(secret, str) else secret
    forms = {raw, base64.b64encode(raw), raw.hex().encode(), raw.hex().upper().encode()}
    forms.add(urllib.parse.quote(raw.decode("latin-1"), safe="").encode())
    return {form for form in forms if len(form) >= 12}


async def test_migration_writes_no_secrets(sandbox: Sandbox, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[bytes | str] = []
    original_containers = sharepoint.SharePointClient.provision_containers
    original_queue = sharepoint.SharePointClient.provision_queue

    async def provision_containers(self: Any) -> Any:
        result = await original_containers(self)
        recorded.append(result.key)
        for uri in (result.data_uri, result.metadata_uri):
            recorded.append(urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["sig"][0])
        return result

    async def provision_queue(self: Any) -> str:
        uri = await original_queue(self)
        recorded.append(urllib.parse.parse_qs(urllib.parse.urlsplit(uri).query)["sig"][0])
        return uri

    monkeypatch.setattr(sharepoint.SharePointClient, "provision_containers", provision_containers)
    monkeypatch.setattr(sharepoint.SharePointClient, "provision_queue", provision_queue)
    passphrase = "correct horse battery staple"
    monkeypatch.setenv("SPMT_TUI_CACHE_PASSPHRASE", passphrase)

    source = tmp_path / "share"
    for number in range(30):
        (source / f"d{number % 3}").mkdir(parents=True, exist_ok=True)
        (source / f"d{number % 3}" / f"f{number}.txt").write_text(f"file {number}\n" * 50)
    profile_data = json.loads(sandbox.profile_path.read_text())
    profile = load_profile(sandbox.profile_path)
    cache_file = Path(os.environ["XDG_CONFIG_HOME"]) / "spmt-tui" / "token-cache.bin"
    provider = RecordingProvider(
        AuthSettings.from_profile(profile_data), profile_data["user"]["username"],
        profile_data["user"]["password"], store=EncryptedFileStore(cache_file))
    settings = Settings(working_folder=tmp_path / "work", package_max_files=10)
    migration = Migration([MigrationTask(str(source), profile.site_url, "Documents", "secrets-test")],
                          settings, profile, provider)
    result = await migration.run()
    assert result.status == "completed", result.message
    assert provider.tokens, "the provider handed out no token"
    assert len(recorded) >= 4, "no containers were provisioned"

    secrets: set[bytes] = set()
    for token in provider.tokens:
        secrets |= _forms(token)
        secrets.add(token.split(".")[2].encode())  # the signature part alone
    for value in recorded:
        secrets |= _forms(value)
    secrets |= _forms(profile_data["user"]["password"]) | _forms(passphrase)

    written = [path for folder in (tmp_path / "work", Path(os.environ["XDG_CONFIG_HOME"]),
                                   Path(os.environ["XDG_DATA_HOME"]))
               if folder.exists() for path in folder.rglob("*") if path.is_file()]
    assert any(path.name == "session.db" for path in written)
    assert any(path.suffix == ".csv" for path in written)
    assert cache_file in written, "the encrypted token cache was not written"
    for path in written:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, f"{path} contains a secret ({secret[:6]!r}...)"
        assert b"sig=" not in data or b"sig=REDACTED" in data, f"{path} contains a SAS signature"
