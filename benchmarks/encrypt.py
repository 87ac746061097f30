"""Encrypt: ``BlobEncryptor`` against a bare loop doing the same cipher and hashes.

Both sides take the same random buffer in 4 MiB chunks (the upload block size) and produce
AES-256-CBC ciphertext with PKCS7 padding, the MD5 of the ciphertext and the QuickXorHash of the
plaintext. The bare loop uses ``cryptography``'s ``update()``, ``hashlib.md5`` and the
project's ``QuickXorHash`` (no other implementation of that hash is installed), so the ratio
measures what the encryptor adds around them. Detail lines give each part's own speed, which
shows what limits the stage.
"""

from __future__ import annotations

import base64
import hashlib
import os
import time

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from benchmarks.common import MIB, Result, info, interleave, median, per_round_ratios, spread
from spmt_tui.engine.crypto import BlobEncryptor, QuickXorHash
from spmt_tui.spo.containers import BLOCK_SIZE


def encrypt_with_blob_encryptor(chunks: list[memoryview], key: bytes, iv: bytes) -> tuple[str, str]:
    encryptor = BlobEncryptor(key, iv)
    for chunk in chunks:
        encryptor.update(chunk)
    encryptor.finalize()
    return encryptor.md5_base64, encryptor.checksum_base64 or ""


def encrypt_bare(chunks: list[memoryview], key: bytes, iv: bytes) -> tuple[bytes, bytes]:
    cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    md5 = hashlib.md5(usedforsecurity=False)
    quickxor = QuickXorHash()
    size = 0
    for chunk in chunks:
        quickxor.update(chunk)
        md5.update(cipher.update(chunk))
        size += len(chunk)
    pad = 16 - size % 16
    md5.update(cipher.update(bytes([pad]) * pad) + cipher.finalize())
    return md5.digest(), quickxor.digest()


def part_speeds(chunks: list[memoryview], key: bytes, iv: bytes) -> dict[str, float]:
    """Return MiB/s of each part of the stage alone: AES-CBC, MD5, QuickXorHash."""
    size_mib = sum(len(chunk) for chunk in chunks) / MIB

    def aes() -> None:
        cipher = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
        for chunk in chunks:
            cipher.update(chunk)

    def md5() -> None:
        digest = hashlib.md5(usedforsecurity=False)
        for chunk in chunks:
            digest.update(chunk)

    def quickxor() -> None:
        digest = QuickXorHash()
        for chunk in chunks:
            digest.update(chunk)
        digest.digest()

    speeds = {}
    for name, function in (("AES-256-CBC update()", aes), ("MD5", md5), ("QuickXorHash", quickxor)):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            function()
            times.append(time.perf_counter() - started)
        speeds[name] = size_mib / min(times)
    return speeds


async def run(context) -> list[Result]:
    rounds = 5 if context.quick else 11
    size = (256 if context.quick else 1024) * MIB
    data = memoryview(os.urandom(size))
    chunks = [data[start:start + BLOCK_SIZE] for start in range(0, size, BLOCK_SIZE)]
    key = os.urandom(32)
    iv = os.urandom(16)

    async def ours(_round: int) -> float:
        started = time.perf_counter()
        encrypt_with_blob_encryptor(chunks, key, iv)
        return size / MIB / (time.perf_counter() - started)

    async def baseline(_round: int) -> float:
        started = time.perf_counter()
        encrypt_bare(chunks, key, iv)
        return size / MIB / (time.perf_counter() - started)

    md5_ours, checksum_ours = encrypt_with_blob_encryptor(chunks[:2], key, iv)
    md5_bare, checksum_bare = encrypt_bare(chunks[:2], key, iv)
    if (md5_ours, checksum_ours) != (_b64(md5_bare), _b64(checksum_bare)):
        raise RuntimeError("BlobEncryptor and the bare loop disagree on the MD5 or the QuickXorHash")
    rates = await interleave(rounds, {"BlobEncryptor": ours, "bare loop": baseline})
    ratios = per_round_ratios(rates["BlobEncryptor"], rates["bare loop"])
    info(f"BlobEncryptor: {spread(rates['BlobEncryptor'])} MiB/s over {size // MIB} MiB")
    info(f"bare loop: {spread(rates['bare loop'])} MiB/s")
    info(f"per-round ratios: {spread(ratios, '{:.2f}')}")
    parts = part_speeds(chunks, key, iv)
    info("each part alone: " + ", ".join(f"{name} {speed:,.0f} MiB/s" for name, speed in parts.items()))
    return [Result("encrypt", ">=", 0.8, median(ratios),
                   details={"ours_mib_s": median(rates["BlobEncryptor"]),
                            "baseline_mib_s": median(rates["bare loop"]), **parts})]


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
