"""QuickXorHash and the streaming AES-256-CBC blob encryptor."""

from __future__ import annotations

import base64
import hashlib
import os

import pytest

from spmt_tui.engine.crypto import (
    BlobEncryptor,
    QuickXorHash,
    decrypt_blob,
    encrypt_blob,
    encrypted_size,
    new_iv,
)

# (input, QuickXorHash) pairs, base64, from the test vectors published with rclone's
# OneDrive backend (backend/onedrive/quickxorhash/quickxorhash_test.go).
KNOWN_VECTORS = [
    ("", "AAAAAAAAAAAAAAAAAAAAAAAAAAA="),
    ("Sg==", "SgAAAAAAAAAAAAAAAQAAAAAAAAA="),
    ("tbQ=", "taAFAAAAAAAAAAAAAgAAAAAAAAA="),
    ("2fuxhBJXtpWFe8dOfdGeHw==", "O9tHLAghgSvYohKFyMMxnNCHaHg="),
    ("T6LYJIfDh81JrAK309H2JMJTXis=", "zBTHrspn3mEcohlJdIUAbjGNaNg="),
    (
        "jyibxJSzO6ZiZ0O1qe3tG/bvIAYssvukh9suIT5wEy1JBINVgPiqdsTW0cOpP0aUfP7mgqLfADkz"
        "I/m/GgCuVhr8oFLrOCoTx1/psBOWwhltCbhUx51Icm9aH8tY4Z3ccU+6BKpYQkLCy0B/A9Zc",
        "hZfLIilSITC6N3e3tQ/iSgEzkto=",
    ),
]

KEY = bytes(range(32))


def reference_quickxorhash(data: bytes) -> bytes:
    """Bit-by-bit definition: byte k is XORed in at bit (11 * k) mod 160, then the length."""
    state = 0
    mask = (1 << 160) - 1
    for index, byte in enumerate(data):
        shift = (11 * index) % 160
        state ^= ((byte << shift) | (byte >> (160 - shift))) & mask
    state ^= len(data) << 96
    return state.to_bytes(20, "little")


@pytest.mark.parametrize("data_b64, expected", KNOWN_VECTORS)
def test_quickxorhash_known_vectors(data_b64: str, expected: str) -> None:
    data = base64.b64decode(data_b64)
    assert QuickXorHash(data).base64digest() == expected
    assert base64.b64encode(reference_quickxorhash(data)).decode() == expected


def test_quickxorhash_empty_is_zero() -> None:
    assert QuickXorHash().digest() == bytes(20)


@pytest.mark.parametrize("size", [1, 159, 160, 161, 479, 480, 481, 1000, 262_080, 262_081, 700_001])
def test_quickxorhash_matches_reference(size: int) -> None:
    data = os.urandom(size)
    assert QuickXorHash(data).digest() == reference_quickxorhash(data)


@pytest.mark.parametrize("chunk", [1, 7, 160, 333, 4096, 300_000])
def test_quickxorhash_chunking_is_irrelevant(chunk: int) -> None:
    data = os.urandom(650_001)
    whole = QuickXorHash(data).digest()
    hasher = QuickXorHash()
    for start in range(0, len(data), chunk):
        hasher.update(memoryview(data)[start : start + chunk])
    assert hasher.digest() == whole
    assert hasher.length == len(data)


def test_quickxorhash_copy_is_independent() -> None:
    hasher = QuickXorHash(b"abc")
    clone = hasher.copy()
    clone.update(b"def")
    assert hasher.digest() == QuickXorHash(b"abc").digest()
    assert clone.digest() == QuickXorHash(b"abcdef").digest()


# CASE-22: decrypt(encrypt(x)) == x; MD5 of the stored bytes
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 1024, 5 * 2**20 + 3])
def test_encryptor_round_trip_and_checksums(size: int) -> None:
    data = os.urandom(size)
    iv = new_iv()
    encryptor = BlobEncryptor(KEY, iv)
    chunks = [encryptor.update(data[start : start + 65_536]) for start in range(0, size, 65_536)]
    chunks.append(encryptor.finalize())
    ciphertext = b"".join(chunks)

    assert len(ciphertext) == encrypted_size(size)
    assert encryptor.cipher_size == len(ciphertext)
    assert encryptor.plain_size == size
    assert decrypt_blob(KEY, iv, ciphertext) == data
    assert encryptor.md5_base64 == base64.b64encode(hashlib.md5(ciphertext).digest()).decode()
    assert encryptor.checksum_base64 == QuickXorHash(data).base64digest()
    assert encryptor.iv_base64 == base64.b64encode(iv).decode()


# CASE-09: empty input encrypts to one 16-byte block
def test_empty_file_encrypts_to_one_block() -> None:
    assert encrypted_size(0) == 16
    assert len(encrypt_blob(KEY, new_iv(), b"")) == 16


def test_encrypted_size_adds_full_block_on_boundary() -> None:
    assert encrypted_size(16) == 32
    assert encrypted_size(15) == 16


# CASE-22: IVs are random and never repeat
def test_fresh_ivs_differ() -> None:
    ivs = {new_iv() for _ in range(100)}
    assert len(ivs) == 100
    assert all(len(iv) == 16 for iv in ivs)


def test_same_plaintext_different_iv_differs() -> None:
    assert encrypt_blob(KEY, new_iv(), b"x" * 100) != encrypt_blob(KEY, new_iv(), b"x" * 100)


def test_decrypt_with_wrong_key_raises() -> None:
    iv = new_iv()
    blob = encrypt_blob(KEY, iv, b"secret content of some length")
    with pytest.raises(ValueError):
        decrypt_blob(bytes(32), iv, blob)


def test_decrypt_rejects_partial_block() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        decrypt_blob(KEY, new_iv(), b"123")


def test_invalid_key_length_rejected() -> None:
    with pytest.raises(ValueError, match="key length"):
        BlobEncryptor(b"short", new_iv())


def test_checksums_unavailable_before_finalize() -> None:
    encryptor = BlobEncryptor(KEY, new_iv())
    encryptor.update(b"data")
    with pytest.raises(RuntimeError):
        _ = encryptor.md5_base64


def test_update_after_finalize_raises() -> None:
    encryptor = BlobEncryptor(KEY, new_iv())
    encryptor.finalize()
    with pytest.raises(RuntimeError):
        encryptor.update(b"more")
