"""Encrypt a source file and upload it as one blob, streaming, hashing in the same pass.

Files up to ``SINGLE_PUT_LIMIT`` go up in one request; larger ones as 4 MiB blocks with a few
blocks in flight. Reading and encrypting run in worker threads (the GIL is released by OpenSSL
and by file reads), so the event loop keeps serving other uploads. A small file takes one thread
call; a large file takes one per block, read one block ahead of the uploads. A file is never
held whole in memory unless it is smaller than one block.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from contextlib import aclosing
from dataclasses import dataclass
from typing import AsyncIterator, BinaryIO

from azure.storage.blob.aio import ContainerClient

from spmt_tui.engine.crypto import BlobEncryptor, new_iv
from spmt_tui.engine.progress import Stats
from spmt_tui.engine.source import ItemStat, Source, SourceItem
from spmt_tui.spo.containers import BLOCK_SIZE, upload_blocks, upload_small

log = logging.getLogger("spmt.engine.upload")

SINGLE_PUT_LIMIT = BLOCK_SIZE
# Azure allows at most 50,000 committed blocks per blob, so blocks grow for files over ~195 GiB.
MAX_BLOCKS = 50_000


def block_size_for(cipher_size: int) -> int:
    """Return the block size (a multiple of 1 MiB, at least 4 MiB) that fits Azure's block limit."""
    mib = 2**20
    needed = -(-cipher_size // MAX_BLOCKS)
    return max(BLOCK_SIZE, -(-needed // mib) * mib)
CODE_FILE_CHANGED = "0x02080001"
CODE_SOURCE_UNREADABLE = "0x01110003"


class FileChangedError(Exception):
    """The file's size or modified time changed while it was read (SPMT 0x02080001)."""


class SourceReadError(Exception):
    """The file could not be opened or read."""


class SourceMissingError(SourceReadError):
    """The file was deleted at the source after the scan: reported as skipped, not as a failure."""


def _read_error(item: SourceItem, verb: str, error: OSError) -> SourceReadError:
    if error.errno == errno.ENOENT:
        return SourceMissingError(f"{item.relative_path} no longer exists at the source")
    return SourceReadError(f"cannot {verb} {item.relative_path}: {error.strerror or error}")


@dataclass(frozen=True)
class BlobResult:
    blob_name: str
    plain_size: int
    cipher_size: int
    md5_base64: str
    checksum_base64: str
    iv_base64: str
    modified_ts: float  # the file's modified time when it was read, which may be newer than the scan's


@dataclass
class _SmallRead:
    """A file under ``SINGLE_PUT_LIMIT`` read and encrypted in one worker-thread call."""

    before: ItemStat
    after: ItemStat | None
    cipher: bytes
    encryptor: BlobEncryptor


def _stat_or_read_small(source: Source, item: SourceItem, key: bytes) -> ItemStat | _SmallRead:
    """Stat the file, and when it is small also open, read, encrypt and stat it again.

    Doing all of it in one call makes one worker-thread hop per small file instead of six, which
    matters when thousands of 4 KiB files are in flight. Returns the stat alone for a file that
    goes up in blocks, so the caller streams it.
    """
    before = source.stat(item)
    if before is None:
        raise SourceMissingError(f"{item.relative_path} no longer exists at the source")
    if before.size >= SINGLE_PUT_LIMIT:
        return before
    try:
        with source.open(item) as handle:
            data = handle.read(SINGLE_PUT_LIMIT + 1)
    except OSError as error:
        raise _read_error(item, "read", error) from error
    if len(data) > SINGLE_PUT_LIMIT:
        raise FileChangedError(f"{item.relative_path} grew while it was read")
    encryptor = BlobEncryptor(key, new_iv())
    cipher = encryptor.update(data) + encryptor.finalize()
    # The bytes uploaded are the ones read here, so a change after this stat does not matter.
    return _SmallRead(before, source.stat(item), cipher, encryptor)


async def encrypt_and_upload(
    source: Source,
    item: SourceItem,
    container: ContainerClient,
    key: bytes,
    blob_name: str,
    stats: Stats | None = None,
    *,
    blocks_in_flight: int = 4,
) -> BlobResult:
    """Upload ``item`` encrypted under ``key`` with a fresh IV; verify it did not change while read."""
    read = await asyncio.to_thread(_stat_or_read_small, source, item, key)
    if isinstance(read, _SmallRead):
        before, after, encryptor = read.before, read.after, read.encryptor
        await upload_small(container, blob_name, read.cipher, encryptor.iv, encryptor.md5_digest)
        if stats is not None:
            stats.add_bytes(uploaded=encryptor.plain_size)
    else:
        before = read
        encryptor = await _upload_large(source, item, container, key, blob_name, stats, before,
                                        blocks_in_flight)
        after = await asyncio.to_thread(source.stat, item)
    if after is None or after.size != before.size or after.modified_ts != before.modified_ts \
            or encryptor.plain_size != before.size:
        raise FileChangedError(
            f"{item.relative_path} changed while it was read "
            f"(size {before.size} -> {after.size if after else 'gone'})")
    return BlobResult(
        blob_name=blob_name,
        plain_size=encryptor.plain_size,
        cipher_size=encryptor.cipher_size,
        md5_base64=encryptor.md5_base64,
        checksum_base64=encryptor.checksum_base64 or "",
        iv_base64=encryptor.iv_base64,
        modified_ts=after.modified_ts,
    )


async def _upload_large(
    source: Source,
    item: SourceItem,
    container: ContainerClient,
    key: bytes,
    blob_name: str,
    stats: Stats | None,
    before: ItemStat,
    blocks_in_flight: int,
) -> BlobEncryptor:
    """Stream the file up as blocks; return the finalized encryptor with its checksums."""
    try:
        handle = await asyncio.to_thread(source.open, item)
    except OSError as error:
        raise _read_error(item, "open", error) from error
    encryptor = BlobEncryptor(key, new_iv())
    chunks = _encrypted_chunks(handle, encryptor, stats, block_size_for(before.size + 16))
    try:
        # aclosing ends the read-ahead before the handle closes, also when an upload fails.
        async with aclosing(chunks):
            await upload_blocks(
                container,
                blob_name,
                chunks,
                encryptor.iv,
                lambda: encryptor.md5_digest,
                in_flight=blocks_in_flight,
            )
    except OSError as error:
        raise _read_error(item, "read", error) from error
    finally:
        await asyncio.to_thread(handle.close)
    return encryptor


async def _encrypted_chunks(
    handle: BinaryIO, encryptor: BlobEncryptor, stats: Stats | None, block_size: int
) -> AsyncIterator[bytes]:
    """Yield the file's ciphertext in blocks of ``block_size``, the last one shorter.

    The next chunk is read and encrypted in a worker thread while the caller uploads the current
    one, so hashing and encryption overlap the uploads instead of alternating with them.
    """
    def step() -> tuple[bytes, int]:
        chunk = handle.read(block_size)
        if not chunk:
            return encryptor.finalize(), 0
        return encryptor.update(chunk), len(chunk)

    pending = b""
    ahead: asyncio.Future[tuple[bytes, int]] | None = asyncio.ensure_future(asyncio.to_thread(step))
    try:
        while ahead is not None:
            out, read = await ahead
            ahead = asyncio.ensure_future(asyncio.to_thread(step)) if read else None
            pending += out
            if stats is not None and read:
                stats.add_bytes(uploaded=read)
            # Blocks of exactly block_size keep Azure's block count predictable; the rest goes last.
            if len(pending) == block_size:
                yield pending
                pending = b""
            while len(pending) >= block_size:
                yield pending[:block_size]
                pending = pending[block_size:]
        if pending:
            yield pending
    finally:
        if ahead is not None:
            # A worker thread cannot be cancelled: wait until it no longer uses the handle.
            await asyncio.wait([ahead])
            if not ahead.cancelled():
                ahead.exception()
