"""Upload: the client's scan, encrypt and upload path against the bare SDK and rclone.

All three write to the same Azurite, the one a sandbox tenant starts (HTTPS with the sandbox's
CA, data on disk), in interleaved rounds:

* the client: ``FileShareSource.walk`` and ``ScanRules.evaluate``, then ``encrypt_and_upload``
  into containers provisioned by the sandbox's ``ProvisionMigrationContainers``. It uses the
  pipeline's defaults: 4 blocks in flight for a large file, 32 uploads in flight for small
  ones. The clock runs from the start of the walk to the last upload;
* the bare SDK: ``azure.storage.blob.aio`` with the account key. It uploads the plain file with
  ``upload_blob(max_concurrency=8)``, or every small file with ``upload_blob`` and 32 in
  flight. The clock covers the upload calls;
* ``rclone copy`` (Debian's rclone 1.60) through an account SAS URL; the clock covers the whole
  process, so it includes rclone's start-up and listings (about 0.1-0.3 s).

Containers are deleted after each measurement so Azurite's disk does not fill up.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import shutil
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from azure.core.pipeline.transport import AioHttpTransport

from benchmarks.common import (
    GIB,
    MIB,
    Result,
    Sandbox,
    cached_tree,
    container_name,
    delete_containers,
    info,
    interleave,
    make_random_file,
    median,
    per_round_ratios,
    process_cpu_seconds,
    spread,
    start_sandbox,
)
from benchmarks.rclone import Rclone, find_rclone
from spmt_tui.engine.crypto import encrypted_size
from spmt_tui.engine.rules import Outcome, ScanRules
from spmt_tui.engine.settings import Settings
from spmt_tui.engine.source import FileShareSource
from spmt_tui.engine.upload import encrypt_and_upload
from spmt_tui.spo.containers import BLOCK_SIZE, StorageTransport
from spmt_tui.spo.http import SharePointHttp, new_session
from spmt_tui.spo.sharepoint import SharePointClient

SMALL_FOLDERS = 50
SMALL_FILES_PER_FOLDER = 100
SMALL_SIZE = 4096
SDK_LARGE_CONCURRENCY = 8
SDK_SMALL_IN_FLIGHT = 32
RCLONE_SMALL_TRANSFERS = 32


class UploadBench:
    """The sandbox, the clients and the data shared by the upload measurements."""

    def __init__(self, sandbox: Sandbox, large_dir: Path | None, small_dir: Path,
                 rclone: Rclone | None) -> None:
        from azure.storage.blob.aio import BlobServiceClient

        from spmt_tui.sandbox.context import AZURITE_ACCOUNT, AZURITE_KEY

        self.sandbox = sandbox
        self.large_dir = large_dir
        self.large_size = sum(entry.stat().st_size for entry in os.scandir(large_dir)) if large_dir else 0
        self.small_dir = small_dir
        self.small_count = sum(len(files) for _, _, files in os.walk(small_dir))
        self.rclone = rclone
        self.settings = Settings()
        self.destination = urlsplit(sandbox.profile["site_url"]).path + "/Shared Documents"
        self.http_session = new_session(sandbox.ca_bundle)
        provider = sandbox.credentials()
        self.client = SharePointClient(sandbox.profile["site_url"],
                                       SharePointHttp(self.http_session, provider.get_token))
        self.transport = StorageTransport(sandbox.ca_bundle, limit=self.settings.upload_concurrency + 16)
        # The SDK gets its own aiohttp session with one SSL context. Passing the CA file as
        # connection_verify instead makes azure-core build an SSL context for every request,
        # which also defeats aiohttp's connection reuse (a TLS handshake per request).
        self.sdk_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=sandbox.ca_bundle),
                                           limit=SDK_SMALL_IN_FLIGHT + 16))
        self.sdk = BlobServiceClient(
            sandbox.blob_url, credential={"account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY},
            transport=AioHttpTransport(session=self.sdk_session, session_owner=False),
            max_block_size=BLOCK_SIZE)
        self.azurite_pid = sandbox.azurite_blob_pid()
        self.azurite_cpu: dict[str, list[float]] = {}
        # CPU of this process (the client or the bare SDK, not rclone), in cores while measuring.
        self.own_cpu: dict[str, list[float]] = {}

    async def close(self) -> None:
        await self.sdk.close()
        await self.sdk_session.close()
        await self.transport.close()
        await self.http_session.close()

    def _cpu_seconds(self) -> tuple[float, float]:
        """Return the CPU seconds used so far by Azurite's blob process and by this process."""
        azurite = process_cpu_seconds(self.azurite_pid) if self.azurite_pid else 0.0
        return azurite, time.process_time()

    def _note_cpu(self, name: str, before: tuple[float, float], elapsed: float) -> None:
        azurite, own = self._cpu_seconds()
        if self.azurite_pid:
            self.azurite_cpu.setdefault(name, []).append((azurite - before[0]) / elapsed)
        self.own_cpu.setdefault(name, []).append((own - before[1]) / elapsed)

    # -- the client ----------------------------------------------------------------------------

    async def ours(self, root: Path, name: str) -> tuple[float, int]:
        """Scan, encrypt and upload every file under ``root``; return seconds and files uploaded."""
        containers = await self.client.provision_containers()
        container = self.transport.container(containers.data_uri)
        slots = asyncio.Semaphore(self.settings.upload_concurrency)

        async def upload(source: FileShareSource, item: Any) -> None:
            async with slots:
                await encrypt_and_upload(source, item, container, containers.key, f"{uuid.uuid4()}.dat")

        try:
            cpu_before = self._cpu_seconds()
            started = time.perf_counter()
            source = FileShareSource(root)
            rules = ScanRules(self.destination)
            uploads = []
            async for batch in source.walk():
                for item, result in zip(batch, rules.evaluate(batch)):
                    if result.outcome is Outcome.PASS and not item.is_folder:
                        uploads.append(asyncio.create_task(upload(source, item)))
            await asyncio.gather(*uploads)
            elapsed = time.perf_counter() - started
            self._note_cpu(name, cpu_before, elapsed)
        finally:
            await container.close()
        data_name = container_name(containers.data_uri)
        self._check_container(data_name, len(uploads), encrypted=True)
        delete_containers(self.sandbox, [data_name, container_name(containers.metadata_uri)])
        return elapsed, len(uploads)

    # -- the bare SDK --------------------------------------------------------------------------

    async def sdk_large(self, name: str) -> float:
        container = self.sdk.get_container_client(f"sdk-large-{uuid.uuid4().hex[:12]}")
        await container.create_container()
        assert self.large_dir is not None
        (path,) = [entry.path for entry in os.scandir(self.large_dir)]
        with open(path, "rb") as handle:
            cpu_before = self._cpu_seconds()
            started = time.perf_counter()
            await container.upload_blob("large.bin", handle, length=self.large_size,
                                        max_concurrency=SDK_LARGE_CONCURRENCY)
            elapsed = time.perf_counter() - started
            self._note_cpu(name, cpu_before, elapsed)
        self._check_container(container.container_name, 1, encrypted=False)
        delete_containers(self.sandbox, [container.container_name])
        return elapsed

    async def sdk_small(self, name: str) -> float:
        container = self.sdk.get_container_client(f"sdk-small-{uuid.uuid4().hex[:12]}")
        await container.create_container()
        paths = [os.path.join(folder, file) for folder, _, files in os.walk(self.small_dir) for file in files]
        slots = asyncio.Semaphore(SDK_SMALL_IN_FLIGHT)

        async def upload(path: str) -> None:
            async with slots:
                with open(path, "rb") as handle:
                    data = handle.read()
                await container.upload_blob(os.path.relpath(path, self.small_dir), data, overwrite=True)

        cpu_before = self._cpu_seconds()
        started = time.perf_counter()
        await asyncio.gather(*(upload(path) for path in paths))
        elapsed = time.perf_counter() - started
        self._note_cpu(name, cpu_before, elapsed)
        self._check_container(container.container_name, len(paths), encrypted=False)
        delete_containers(self.sandbox, [container.container_name])
        return elapsed

    # -- rclone --------------------------------------------------------------------------------

    async def rclone_copy(self, root: Path, name: str, *extra: str) -> float:
        assert self.rclone is not None
        target = f"rclone-{uuid.uuid4().hex[:12]}"
        expected = sum(len(files) for _, _, files in os.walk(root))
        cpu_before = self._cpu_seconds()
        started = time.perf_counter()
        await asyncio.to_thread(self.rclone.copy, root, target, *extra)
        elapsed = time.perf_counter() - started
        self._note_cpu(name, cpu_before, elapsed)
        self._check_container(target, expected, encrypted=False)
        delete_containers(self.sandbox, [target])
        return elapsed

    def _check_container(self, name: str, expected: int, *, encrypted: bool) -> None:
        """Check the container's blob count, and the blob's size when it has one blob (the large file)."""
        container = self.sandbox.admin_blob_service().get_container_client(name)
        sizes = [blob.size for blob in container.list_blobs()]
        if len(sizes) != expected:
            raise RuntimeError(f"container {name} contains {len(sizes)} blobs, expected {expected}")
        if expected == 1:
            want = encrypted_size(self.large_size) if encrypted else self.large_size
            if sizes[0] != want:
                raise RuntimeError(f"blob in {name} has {sizes[0]} bytes, expected {want}")


async def run(context) -> list[Result]:
    large_rounds = 3 if context.quick else 5
    small_rounds = 3 if context.quick else 5
    # Quick mode uses a quarter of the large file and 2,000 small files to stay within minutes.
    large_size = GIB // 4 if context.quick else GIB
    small_folders = 20 if context.quick else SMALL_FOLDERS
    large_dir = context.data / "upload-large"
    large_file = large_dir / "large.bin"
    if not large_file.exists() or large_file.stat().st_size != large_size:
        shutil.rmtree(large_dir, ignore_errors=True)
        make_random_file(large_file, large_size)
    small_dir = cached_tree(context.data / f"upload-small-{small_folders}", small_folders,
                            SMALL_FILES_PER_FOLDER, SMALL_SIZE)
    rclone_path, rclone_missing = find_rclone()

    sandbox = start_sandbox(context.data / "sandbox-upload")
    bench = None
    try:
        rclone = Rclone(rclone_path, sandbox, context.data / "rclone.conf") if rclone_path else None
        bench = UploadBench(sandbox, large_dir, small_dir, rclone)
        if bench.azurite_pid is None:
            info("Azurite's blob process was not found; no Azurite CPU figures")
        results = await _large(bench, large_rounds, rclone_missing)
        results += await _small(bench, small_rounds, rclone_missing)
        for name, values in bench.azurite_cpu.items():
            info(f"Azurite blob CPU while {name}: {spread(values, '{:.2f}')} cores")
        # Divided by the rates above, these give CPU per MiB or per file. When both cores are
        # busy, a ratio follows the CPU each side needs per unit of work.
        for name, values in bench.own_cpu.items():
            if not name.startswith("rclone"):
                info(f"benchmark process CPU while {name}: {spread(values, '{:.2f}')} cores")
        return results
    finally:
        if bench is not None:
            await bench.close()
        sandbox.stop()
        shutil.rmtree(sandbox.data_dir, ignore_errors=True)


async def _large(bench: UploadBench, rounds: int, rclone_missing: str) -> list[Result]:
    size_mib = bench.large_size / MIB
    ours_name = "client scan+encrypt+upload"
    sdk_name = f"SDK upload_blob(max_concurrency={SDK_LARGE_CONCURRENCY})"
    rclone_name = "rclone copy"

    async def ours(_round: int) -> float:
        elapsed, count = await bench.ours(bench.large_dir, ours_name)
        return size_mib / elapsed

    async def sdk(_round: int) -> float:
        return size_mib / await bench.sdk_large(sdk_name)

    async def rclone(_round: int) -> float:
        return size_mib / await bench.rclone_copy(bench.large_dir, rclone_name)

    configs = {ours_name: ours, sdk_name: sdk}
    if bench.rclone is not None:
        configs[rclone_name] = rclone
    info(f"one {size_mib:,.0f} MiB file, MiB/s of plaintext:")
    rates = await interleave(rounds, configs)
    for name, values in rates.items():
        info(f"{name}: {spread(values)} MiB/s")
    ratios = per_round_ratios(rates[ours_name], rates[sdk_name])
    info(f"client / SDK per round: {spread(ratios, '{:.2f}')}")
    results = [Result("upload_large", ">=", 0.85, median(ratios),
                      details={"ours_mib_s": median(rates[ours_name]), "sdk_mib_s": median(rates[sdk_name])})]
    if bench.rclone is None:
        results.append(Result("upload_large_rclone", ">=", 1.3, skipped=rclone_missing))
    else:
        rclone_ratios = per_round_ratios(rates[ours_name], rates[rclone_name])
        info(f"client / rclone per round: {spread(rclone_ratios, '{:.2f}')}")
        results.append(Result("upload_large_rclone", ">=", 1.3, median(rclone_ratios),
                              details={"rclone_mib_s": median(rates[rclone_name])}))
    return results


async def _small(bench: UploadBench, rounds: int, rclone_missing: str) -> list[Result]:
    ours_name = "client scan+encrypt+upload"
    sdk_name = f"SDK upload_blob, {SDK_SMALL_IN_FLIGHT} in flight"
    rclone_name = f"rclone copy --transfers {RCLONE_SMALL_TRANSFERS}"

    async def ours(_round: int) -> float:
        elapsed, count = await bench.ours(bench.small_dir, f"{ours_name} (small)")
        return count / elapsed

    async def sdk(_round: int) -> float:
        return bench.small_count / await bench.sdk_small(sdk_name)

    async def rclone(_round: int) -> float:
        seconds = await bench.rclone_copy(bench.small_dir, rclone_name,
                                          "--transfers", str(RCLONE_SMALL_TRANSFERS))
        return bench.small_count / seconds

    configs = {ours_name: ours, sdk_name: sdk}
    if bench.rclone is not None:
        configs[rclone_name] = rclone
    info(f"{bench.small_count:,} files of {SMALL_SIZE // 1024} KiB, files/s:")
    rates = await interleave(rounds, configs)
    for name, values in rates.items():
        info(f"{name}: {spread(values)} files/s")
    ratios = per_round_ratios(rates[ours_name], rates[sdk_name])
    info(f"client / SDK per round: {spread(ratios, '{:.2f}')}")
    results = [Result("upload_small", ">=", 0.9, median(ratios),
                      details={"ours_files_s": median(rates[ours_name]),
                               "sdk_files_s": median(rates[sdk_name])})]
    if bench.rclone is None:
        results.append(Result("upload_small_rclone", ">=", 1.8, skipped=rclone_missing))
    else:
        rclone_ratios = per_round_ratios(rates[ours_name], rates[rclone_name])
        info(f"client / rclone per round: {spread(rclone_ratios, '{:.2f}')}")
        results.append(Result("upload_small_rclone", ">=", 1.8, median(rclone_ratios),
                              details={"rclone_files_s": median(rates[rclone_name])}))
    return results
