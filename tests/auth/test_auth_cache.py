"""Token cache stores: encrypted file, keyring chunking (real and in-test backends), choose_store."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import aiohttp
import keyring.backend
import keyring.errors
import pytest

from spmt_tui.auth.cache import (
    KEYRING_CHUNK_CHARS,
    PASSPHRASE_ENV,
    CacheStoreUnavailable,
    EncryptedFileStore,
    KeyringStore,
    MemoryStore,
    PlaintextFileStore,
    WrongPassphrase,
    choose_store,
    keyring_problem,
)
from spmt_tui.auth.tokens import DeviceCodePrompt, DeviceCodeProvider

from auth_sandbox import Sandbox


class SizeLimitedKeyring(keyring.backend.KeyringBackend):
    """In-memory keyring that rejects secrets longer than a backend limit, like some OS stores."""

    priority = 1  # type: ignore[assignment]
    limit = 2048

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.entries.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        if len(password) > self.limit:
            raise keyring.errors.PasswordSetError(f"secret of {len(password)} characters is too long")
        self.entries[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        if (service, username) not in self.entries:
            raise keyring.errors.PasswordDeleteError("not found")
        del self.entries[(service, username)]


@pytest.fixture(autouse=True)
def _no_passphrase_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PASSPHRASE_ENV, raising=False)


async def _signed_in_cache(sandbox: Sandbox, https: aiohttp.ClientSession) -> tuple[str, str, str]:
    """Sign in by device code and return (serialized MSAL cache, access token, refresh token)."""

    async def approve(prompt: DeviceCodePrompt) -> None:
        form = {"user_code": prompt.user_code, "username": sandbox.user.username,
                "password": sandbox.user.password}
        async with https.post(prompt.verification_uri, data=form) as response:
            assert response.status == 200

    store = MemoryStore()
    provider = DeviceCodeProvider(sandbox.user_settings(), approve, store=store)
    token = await provider.sign_in()
    data = store.load()
    assert data is not None
    refresh_tokens = json.loads(data)["RefreshToken"]
    refresh_token = next(iter(refresh_tokens.values()))["secret"]
    return data, token, refresh_token


async def test_encrypted_store_round_trip(
    sandbox: Sandbox, https: aiohttp.ClientSession, tmp_path: Path
) -> None:
    data, access_token, refresh_token = await _signed_in_cache(sandbox, https)
    path = tmp_path / "cache" / "token-cache.bin"
    store = EncryptedFileStore(path, lambda: "passphrase one")
    store.save(data)

    assert path.stat().st_mode & 0o777 == 0o600
    raw = path.read_bytes()
    assert access_token.encode() not in raw
    assert refresh_token.encode() not in raw
    assert access_token.split(".")[1].encode() not in raw  # not even the JWT payload part
    assert b"RefreshToken" not in raw

    reopened = EncryptedFileStore(path, lambda: "passphrase one")
    assert reopened.load() == data
    reopened.save(data + " ")
    assert EncryptedFileStore(path, lambda: "passphrase one").load() == data + " "


def test_encrypted_store_wrong_passphrase(tmp_path: Path) -> None:
    path = tmp_path / "token-cache.bin"
    EncryptedFileStore(path, lambda: "right").save('{"AccessToken": {}}')
    wrong = EncryptedFileStore(path, lambda: "wrong")
    with pytest.raises(WrongPassphrase, match="passphrase is wrong"):
        wrong.load()
    # A store that cannot read the file must not overwrite it with a new cache either.
    with pytest.raises(WrongPassphrase):
        wrong.save("{}")
    assert EncryptedFileStore(path, lambda: "right").load() == '{"AccessToken": {}}'


def test_encrypted_store_detects_tampering(tmp_path: Path) -> None:
    path = tmp_path / "token-cache.bin"
    EncryptedFileStore(path, lambda: "right").save("{}")
    blob = bytearray(path.read_bytes())
    blob[-1] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(WrongPassphrase):
        EncryptedFileStore(path, lambda: "right").load()


def test_encrypted_store_passphrase_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(PASSPHRASE_ENV, "from the environment")
    path = tmp_path / "token-cache.bin"
    EncryptedFileStore(path).save("{}")
    assert EncryptedFileStore(path, lambda: "the callback is not used").load() == "{}"
    monkeypatch.delenv(PASSPHRASE_ENV)
    with pytest.raises(CacheStoreUnavailable, match=PASSPHRASE_ENV):
        EncryptedFileStore(path).load()


def test_plaintext_store_warns_each_use(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = PlaintextFileStore(tmp_path / "token-cache.json")
    with caplog.at_level(logging.WARNING, logger="spmt.auth"):
        store.save("{}")
        store.load()
    warnings = [r for r in caplog.records if "unencrypted" in r.getMessage()]
    assert len(warnings) == 2
    assert (tmp_path / "token-cache.json").stat().st_mode & 0o777 == 0o600


def test_keyring_store_chunks_in_test_backend() -> None:
    # In-test backend; see test_keyring_store_real_backend for gnome-keyring over D-Bus.
    backend = SizeLimitedKeyring()
    store = KeyringStore("token-cache-test", backend=backend)
    data = json.dumps({"secret": "x" * (KEYRING_CHUNK_CHARS * 3 + 17)})
    store.save(data)

    names = {username for _, username in backend.entries}
    assert names == {"token-cache-test", "token-cache-test#0", "token-cache-test#1",
                     "token-cache-test#2", "token-cache-test#3"}
    assert all(len(value) <= KEYRING_CHUNK_CHARS for value in backend.entries.values())
    assert store.load() == data

    store.save("short")
    assert {username for _, username in backend.entries} == {"token-cache-test", "token-cache-test#0"}
    assert store.load() == "short"

    backend.entries[("spmt-tui", "token-cache-test#0")] = "changed"
    assert store.load() is None  # checksum mismatch: sign in again

    store.clear()
    assert backend.entries == {}
    assert store.load() is None


@pytest.mark.parametrize(
    "backend_path",
    ["keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"],
)
def test_keyring_problem_rejects_unsafe_backends(backend_path: str) -> None:
    module_name, class_name = backend_path.rsplit(".", 1)
    module = __import__(module_name, fromlist=[class_name])
    backend = getattr(module, class_name)()
    assert keyring_problem(backend)
    with pytest.raises(CacheStoreUnavailable):
        KeyringStore(backend=backend)


def test_keyring_problem_rejects_empty_chainer_and_plaintext() -> None:
    from keyring.backends.chainer import ChainerBackend

    empty_chainer_class = type("EmptyChainer", (ChainerBackend,), {"backends": []})
    chainer = empty_chainer_class()
    assert "no backend" in (keyring_problem(chainer) or "")

    # keyrings.alt is not installed here, so a class in a module of that name is used in its place.
    plaintext_class = type("PlaintextKeyring", (SizeLimitedKeyring,), {"__module__": "keyrings.alt.file"})
    assert "without OS protection" in (keyring_problem(plaintext_class()) or "")
    assert keyring_problem(SizeLimitedKeyring()) is None


def test_choose_store_never_silent_plaintext(tmp_path: Path) -> None:
    from keyring.backends.fail import Keyring as FailKeyring

    with pytest.raises(CacheStoreUnavailable) as failure:
        choose_store("auto", None, cache_dir=tmp_path, keyring_backend=FailKeyring())
    message = str(failure.value)
    for choice in ("encrypted-file", "keyring", "memory", "plaintext-file", PASSPHRASE_ENV):
        assert choice in message
    assert list(tmp_path.iterdir()) == []


def test_choose_store_choices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from keyring.backends.fail import Keyring as FailKeyring

    secure = choose_store("auto", None, cache_dir=tmp_path, keyring_backend=SizeLimitedKeyring())
    assert isinstance(secure, KeyringStore)
    assert "keyring" in secure.description

    with_callback = choose_store("auto", lambda: "pass", cache_dir=tmp_path, keyring_backend=FailKeyring())
    assert isinstance(with_callback, EncryptedFileStore)
    assert with_callback.description == f"encrypted file {tmp_path / 'token-cache.bin'}"

    monkeypatch.setenv(PASSPHRASE_ENV, "pass")
    assert isinstance(choose_store("auto", None, cache_dir=tmp_path, keyring_backend=FailKeyring()),
                      EncryptedFileStore)
    monkeypatch.delenv(PASSPHRASE_ENV)

    with pytest.raises(CacheStoreUnavailable, match="needs a passphrase"):
        choose_store("encrypted-file", None, cache_dir=tmp_path)
    with pytest.raises(CacheStoreUnavailable, match="keyring cannot be used"):
        choose_store("keyring", None, cache_dir=tmp_path, keyring_backend=FailKeyring())
    plaintext = choose_store("plaintext-file", None, cache_dir=tmp_path)
    assert "NOT encrypted" in plaintext.description
    assert isinstance(choose_store("memory"), MemoryStore)
    with pytest.raises(ValueError, match="unknown token cache store"):
        choose_store("registry")


@pytest.fixture
def gnome_keyring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """Start a private D-Bus session with an unlocked gnome-keyring and return its backend."""
    if not (shutil.which("dbus-daemon") and shutil.which("gnome-keyring-daemon")):
        pytest.skip("dbus-daemon or gnome-keyring-daemon is not installed")
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    env = dict(os.environ, HOME=str(tmp_path), XDG_RUNTIME_DIR=str(runtime),
               XDG_DATA_HOME=str(tmp_path / "data"))
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--nopidfile", "--print-address=1"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    daemon: subprocess.Popen[str] | None = None
    try:
        address = bus.stdout.readline().strip() if bus.stdout else ""
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        daemon = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, text=True,
        )
        assert daemon.stdin is not None
        daemon.stdin.write("keyring unlock password")
        daemon.stdin.close()
        for name in ("DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "HOME"):
            monkeypatch.setenv(name, env[name])
        from keyring.backends import SecretService

        backend = SecretService.Keyring()
        deadline = time.monotonic() + 10
        while True:
            try:
                backend.get_password("spmt-tui-test", "probe")
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.skip("gnome-keyring did not start on the private D-Bus session")
                time.sleep(0.2)
        yield backend
    finally:
        if daemon is not None:
            daemon.terminate()
            daemon.wait(timeout=10)
        bus.terminate()
        bus.wait(timeout=10)


def test_keyring_store_real_backend(gnome_keyring: object) -> None:
    assert keyring_problem(gnome_keyring) is None
    store = KeyringStore("token-cache-real", backend=gnome_keyring)
    data = json.dumps({"RefreshToken": {"k": {"secret": "r" * 5000}}})
    store.save(data)
    assert gnome_keyring.get_password("spmt-tui", "token-cache-real#2") is not None  # type: ignore[attr-defined]
    assert KeyringStore("token-cache-real", backend=gnome_keyring).load() == data
    store.clear()
    assert store.load() is None
    assert gnome_keyring.get_password("spmt-tui", "token-cache-real#0") is None  # type: ignore[attr-defined]
