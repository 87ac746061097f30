"""Persistent stores for MSAL's serialized token cache.

The cache contains refresh tokens, which can sign in as the user until they expire or are
revoked, so it is kept either in the operating system's keyring or in a file encrypted with a key derived from a
passphrase. A plaintext file is used only when chosen explicitly, and every use logs a
warning. ``choose_store`` picks a store and never falls back to plaintext on its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import struct
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

logger = logging.getLogger("spmt.auth")

PASSPHRASE_ENV = "SPMT_TUI_CACHE_PASSPHRASE"
KEYRING_SERVICE = "spmt-tui"
# Some keyring backends limit the size of one secret, so the cache is stored as chunks of at
# most this many characters. The sandbox cache of one signed-in user measured 5,010 characters.
KEYRING_CHUNK_CHARS = 2000
STORE_CHOICES = ("auto", "keyring", "encrypted-file", "plaintext-file", "memory")

PassphraseCallback = Callable[[], str | None]


class CacheStoreError(Exception):
    """A token cache store cannot be used or read. The message states why and what to do next."""


class CacheStoreUnavailable(CacheStoreError):
    """No store of the requested kind can be used here."""


class WrongPassphrase(CacheStoreError):
    """The encrypted cache file cannot be decrypted with the given passphrase."""


class TokenCacheStore(ABC):
    """Place where the serialized MSAL token cache is kept between runs."""

    kind = ""

    @property
    @abstractmethod
    def description(self) -> str:
        """Human-readable name of the store and its location, for status lines and logs."""

    @abstractmethod
    def load(self) -> str | None:
        """Return the stored cache, or None when nothing is stored yet."""

    @abstractmethod
    def save(self, data: str) -> None: ...

    @abstractmethod
    def clear(self) -> None: ...


class MemoryStore(TokenCacheStore):
    """Cache kept only in this process, so every run signs in again."""

    kind = "memory"

    def __init__(self) -> None:
        self._data: str | None = None

    @property
    def description(self) -> str:
        return "memory only (not saved)"

    def load(self) -> str | None:
        return self._data

    def save(self, data: str) -> None:
        self._data = data

    def clear(self) -> None:
        self._data = None


# --------------------------------------------------------------------------- keyring


def keyring_problem(backend: Any = None) -> str | None:
    """Return why the keyring backend cannot hold secrets safely, or None when it can.

    Rejected: the ``fail`` and ``null`` backends, any ``keyrings.alt`` backend (plaintext or
    weakly protected files), a chainer that is empty or has a rejected member, and backends
    with priority <= 0.
    """
    import keyring
    from keyring.backends import chainer, fail, null

    backend = backend if backend is not None else keyring.get_keyring()
    module = type(backend).__module__
    name = f"{module}.{type(backend).__name__}"
    if isinstance(backend, chainer.ChainerBackend):
        members = list(backend.backends)
        if not members:
            return f"the keyring chainer ({name}) has no backend"
        # The chainer writes to the first member that accepts a secret, so one unsafe member
        # could receive the cache.
        problems = [problem for problem in map(keyring_problem, members) if problem]
        return "; ".join(problems) if problems else None
    if isinstance(backend, fail.Keyring):
        return "no keyring backend is available (keyring.backends.fail.Keyring)"
    if isinstance(backend, null.Keyring):
        return "the keyring backend is the null backend, which stores nothing"
    if module.startswith("keyrings.alt"):
        return f"the keyring backend {name} keeps secrets in a file without OS protection"
    try:
        priority = float(getattr(backend, "priority", 1))
    except Exception as exc:  # a backend's priority property probes the system and may raise
        return f"the keyring backend {name} is not usable: {exc}"
    if priority <= 0:
        return f"the keyring backend {name} has priority {priority} and is not usable"
    return None


class KeyringStore(TokenCacheStore):
    """Cache kept in the OS keyring through the ``keyring`` package, split into chunks.

    Entries of service ``spmt-tui``: ``<name>`` is a small JSON index (chunk count and SHA-256
    of the whole cache), and ``<name>#0`` .. ``<name>#N-1`` are the chunks of at most
    ``KEYRING_CHUNK_CHARS`` characters.
    """

    kind = "keyring"

    def __init__(self, name: str = "token-cache", *, backend: Any = None,
                 service: str = KEYRING_SERVICE) -> None:
        import keyring

        self._backend = backend if backend is not None else keyring.get_keyring()
        problem = keyring_problem(self._backend)
        if problem:
            raise CacheStoreUnavailable(f"the keyring cannot be used: {problem}")
        self.name = name
        self.service = service

    @property
    def description(self) -> str:
        backend = type(self._backend)
        return f"keyring ({backend.__module__}.{backend.__name__}, service {self.service!r}, entry {self.name!r})"

    def _chunk_key(self, index: int) -> str:
        return f"{self.name}#{index}"

    def _read_index(self) -> dict[str, Any] | None:
        raw = self._backend.get_password(self.service, self.name)
        if raw is None:
            return None
        try:
            index = json.loads(raw)
            int(index["chunks"])
            return index
        except (ValueError, KeyError, TypeError):
            logger.warning("keyring entry %s/%s is not a token cache index; ignoring it",
                           self.service, self.name)
            return None

    def load(self) -> str | None:
        index = self._read_index()
        if index is None:
            return None
        parts: list[str] = []
        for number in range(int(index["chunks"])):
            part = self._backend.get_password(self.service, self._chunk_key(number))
            if part is None:
                logger.warning("token cache chunk %d of %d is missing from the keyring; "
                               "sign in again", number, index["chunks"])
                return None
            parts.append(part)
        data = "".join(parts)
        if hashlib.sha256(data.encode()).hexdigest() != index.get("sha256"):
            logger.warning("token cache in the keyring is inconsistent (checksum mismatch); "
                           "sign in again")
            return None
        return data

    def save(self, data: str) -> None:
        old = self._read_index()
        old_count = int(old["chunks"]) if old else 0
        chunks = [data[i:i + KEYRING_CHUNK_CHARS] for i in range(0, len(data), KEYRING_CHUNK_CHARS)]
        for number, chunk in enumerate(chunks):
            self._backend.set_password(self.service, self._chunk_key(number), chunk)
        # The index is written after the chunks, so a reader never sees an index whose chunks
        # are not written yet. The checksum detects a read that overlaps a later save.
        index = {"version": 1, "chunks": len(chunks),
                 "sha256": hashlib.sha256(data.encode()).hexdigest()}
        self._backend.set_password(self.service, self.name, json.dumps(index))
        for number in range(len(chunks), old_count):
            self._delete(self._chunk_key(number))

    def clear(self) -> None:
        old = self._read_index()
        count = int(old["chunks"]) if old else 0
        self._delete(self.name)
        for number in range(count):
            self._delete(self._chunk_key(number))

    def _delete(self, key: str) -> None:
        import keyring.errors

        try:
            self._backend.delete_password(self.service, key)
        except keyring.errors.PasswordDeleteError:
            pass


# --------------------------------------------------------------------------- files


def _write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` with mode 0600 through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


class EncryptedFileStore(TokenCacheStore):
    """Cache kept in a file encrypted with AES-256-GCM under a key derived by scrypt.

    File layout: magic ``SPMTTC1\\n``, scrypt parameters (log2 n, r, p as 3 bytes), 16-byte
    salt, 12-byte nonce, then the ciphertext with its tag. The header is authenticated as
    associated data, so a changed parameter is detected like a wrong passphrase.

    The passphrase comes from the environment variable ``SPMT_TUI_CACHE_PASSPHRASE`` when it is
    set, otherwise from ``passphrase_callback`` (for example a prompt). It is read once, and
    only the derived key is kept.
    """

    kind = "encrypted-file"
    MAGIC = b"SPMTTC1\n"
    SCRYPT_LOG2_N = 15  # n = 32768, r = 8: 32 MiB of memory per derivation
    SCRYPT_R = 8
    SCRYPT_P = 1

    def __init__(self, path: Path, passphrase_callback: PassphraseCallback | None = None) -> None:
        self.path = Path(path)
        self._passphrase_callback = passphrase_callback
        self._salt: bytes | None = None
        self._key: bytes | None = None
        self._params = (self.SCRYPT_LOG2_N, self.SCRYPT_R, self.SCRYPT_P)

    @property
    def description(self) -> str:
        return f"encrypted file {self.path}"

    def _passphrase(self) -> str:
        passphrase = os.environ.get(PASSPHRASE_ENV)
        if not passphrase and self._passphrase_callback is not None:
            passphrase = self._passphrase_callback()
        if not passphrase:
            raise CacheStoreUnavailable(
                f"the token cache {self.path} is encrypted and no passphrase was given: set "
                f"{PASSPHRASE_ENV} or enter it when asked"
            )
        return passphrase

    def _derive(self, salt: bytes, params: tuple[int, int, int]) -> bytes:
        log2_n, r, p = params
        kdf = Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p)
        return kdf.derive(self._passphrase().encode("utf-8"))

    def load(self) -> str | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        header_size = len(self.MAGIC) + 3 + 16
        if not blob.startswith(self.MAGIC) or len(blob) < header_size + 12 + 16:
            raise CacheStoreError(
                f"{self.path} is not an spmt-tui encrypted token cache: move it away or delete "
                "it, then sign in again"
            )
        params = struct.unpack("BBB", blob[len(self.MAGIC):len(self.MAGIC) + 3])
        salt = blob[len(self.MAGIC) + 3:header_size]
        nonce = blob[header_size:header_size + 12]
        key = self._key if (self._salt == salt and self._params == params and self._key) else self._derive(salt, params)
        try:
            plaintext = AESGCM(key).decrypt(nonce, blob[header_size + 12:], blob[:header_size])
        except InvalidTag:
            raise WrongPassphrase(
                f"cannot decrypt the token cache {self.path}: the passphrase is wrong or the file "
                f"was changed. Give the right passphrase ({PASSPHRASE_ENV} or the prompt), or "
                "delete the file and sign in again"
            ) from None
        self._salt, self._key, self._params = salt, key, params
        return plaintext.decode("utf-8")

    def save(self, data: str) -> None:
        if self._key is None or self._salt is None:
            if self.path.exists():
                # Reuse the file's salt and check the passphrase before replacing the file.
                self.load()
            if self._key is None or self._salt is None:
                self._params = (self.SCRYPT_LOG2_N, self.SCRYPT_R, self.SCRYPT_P)
                self._salt = secrets.token_bytes(16)
                self._key = self._derive(self._salt, self._params)
        assert self._key is not None and self._salt is not None
        header = self.MAGIC + struct.pack("BBB", *self._params) + self._salt
        nonce = secrets.token_bytes(12)
        ciphertext = AESGCM(self._key).encrypt(nonce, data.encode("utf-8"), header)
        _write_private_file(self.path, header + nonce + ciphertext)

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)
        self._salt = self._key = None


class PlaintextFileStore(TokenCacheStore):
    """Cache kept unencrypted in a file with mode 0600. Used only when chosen explicitly."""

    kind = "plaintext-file"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    @property
    def description(self) -> str:
        return f"plaintext file {self.path} (NOT encrypted)"

    def _warn(self) -> None:
        logger.warning(
            "the token cache %s is stored unencrypted: anyone who can read it can act as the "
            "signed-in account; prefer --token-cache keyring or encrypted-file", self.path
        )

    def load(self) -> str | None:
        self._warn()
        try:
            return self.path.read_text("utf-8")
        except FileNotFoundError:
            return None

    def save(self, data: str) -> None:
        self._warn()
        _write_private_file(self.path, data.encode("utf-8"))

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- choice


def user_config_dir() -> Path:
    """Return ``$XDG_CONFIG_HOME/spmt-tui`` (``~/.config/spmt-tui`` when the variable is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "spmt-tui"


def choose_store(
    prefer: str = "auto",
    passphrase_callback: PassphraseCallback | None = None,
    *,
    cache_dir: Path | None = None,
    name: str = "token-cache",
    keyring_backend: Any = None,
) -> TokenCacheStore:
    """Return the token cache store to use.

    ``prefer`` is one of ``STORE_CHOICES``. ``auto`` takes the keyring when a secure backend
    exists, else the encrypted file when a passphrase source exists (``SPMT_TUI_CACHE_PASSPHRASE``
    or ``passphrase_callback``), and otherwise raises ``CacheStoreUnavailable`` that lists the
    stores and how to choose one. It never picks the plaintext file.
    """
    if prefer not in STORE_CHOICES:
        raise ValueError(f"unknown token cache store {prefer!r}: choose one of {', '.join(STORE_CHOICES)}")
    directory = Path(cache_dir) if cache_dir is not None else user_config_dir()
    encrypted_path = directory / f"{name}.bin"
    plaintext_path = directory / f"{name}.json"

    if prefer == "memory":
        return MemoryStore()
    if prefer == "plaintext-file":
        store: TokenCacheStore = PlaintextFileStore(plaintext_path)
        logger.warning("token cache store: %s, chosen explicitly", store.description)
        return store
    if prefer == "keyring":
        return _log_choice(KeyringStore(name, backend=keyring_backend))
    has_passphrase = bool(os.environ.get(PASSPHRASE_ENV)) or passphrase_callback is not None
    if prefer == "encrypted-file":
        if not has_passphrase:
            raise CacheStoreUnavailable(
                f"the encrypted-file token cache needs a passphrase: set {PASSPHRASE_ENV} or "
                "run in a terminal where it can be asked"
            )
        return _log_choice(EncryptedFileStore(encrypted_path, passphrase_callback))

    try:
        return _log_choice(KeyringStore(name, backend=keyring_backend))
    except CacheStoreUnavailable as exc:
        keyring_reason = str(exc)
    if has_passphrase:
        return _log_choice(EncryptedFileStore(encrypted_path, passphrase_callback))
    raise CacheStoreUnavailable(
        "no secure token cache store is available: "
        f"{keyring_reason}, and no passphrase for an encrypted file was given. Choose one: "
        f"--token-cache encrypted-file with {PASSPHRASE_ENV} set (or a terminal to type it); "
        "--token-cache keyring after installing a keyring service (for example gnome-keyring "
        "or KWallet with a D-Bus session); --token-cache memory to sign in on every run; or "
        f"--token-cache plaintext-file to keep tokens unencrypted in {plaintext_path}."
    )


def _log_choice(store: TokenCacheStore) -> TokenCacheStore:
    logger.info("token cache store: %s", store.description)
    return store
