"""Start and stop Azurite (blob and queue services) for the sandbox tenant.

Azurite is looked up in this order: the ``SPMT_TUI_AZURITE_BIN`` environment variable (a folder
holding ``azurite-blob`` and ``azurite-queue``), the project-local install made by ``make setup``
(``.azurite/node_modules/.bin`` at the repository root), then ``PATH``.

Flags that matter (measured with Azurite 3.35): ``--disableTelemetry`` because Azurite sends
telemetry by default; ``--skipApiVersionCheck`` because it rejects the API version of current
azure-storage-blob releases otherwise; data on disk with ``--location`` because in-memory mode
keeps the memory of deleted blobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("spmt.sandbox.azurite")

REPO_ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 20.0


class AzuriteError(RuntimeError):
    pass


def find_azurite_bin() -> Path:
    """Return the folder that contains ``azurite-blob`` and ``azurite-queue``."""
    candidates: list[Path] = []
    env = os.environ.get("SPMT_TUI_AZURITE_BIN")
    if env:
        candidates.append(Path(env))
    candidates.append(REPO_ROOT / ".azurite" / "node_modules" / ".bin")
    on_path = shutil.which("azurite-blob")
    if on_path:
        candidates.append(Path(on_path).parent)
    for folder in candidates:
        if (folder / "azurite-blob").exists() and (folder / "azurite-queue").exists():
            return folder
    raise AzuriteError(
        "Azurite not found: run `make setup` (installs it into .azurite/), install it with "
        "`npm install -g azurite`, set SPMT_TUI_AZURITE_BIN to the folder holding azurite-blob, "
        "or pass --azurite-url for an Azurite that is already running"
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int = 3, host: str = "127.0.0.1") -> int:
    """Return a port P such that P .. P+count-1 are all free on ``host`` (for a sandbox and its Azurite)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind((host, 0))
            base = probe.getsockname()[1]
        if base + count <= 65535 and all(port_is_free(port, host) for port in range(base, base + count)):
            return base
    raise AzuriteError(f"no block of {count} free ports found on {host}")


async def wait_for_port(port: int, timeout: float, host: str = "127.0.0.1") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            _reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            if loop.time() > deadline:
                raise AzuriteError(f"Azurite did not listen on {host}:{port} within {timeout:.0f} s")
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


@dataclass
class AzuriteProcess:
    """A running Azurite blob service and queue service, over HTTPS on 127.0.0.1."""

    blob_port: int
    queue_port: int
    location: Path
    cert: Path
    key: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Storage accounts to serve (name -> base64 key). Empty: Azurite's development account only.
    accounts: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def blob_url(self) -> str:
        return f"https://127.0.0.1:{self.blob_port}/devstoreaccount1"

    @property
    def queue_url(self) -> str:
        return f"https://127.0.0.1:{self.queue_port}/devstoreaccount1"

    async def start(self) -> None:
        for port in (self.blob_port, self.queue_port):
            if not port_is_free(port):
                raise AzuriteError(
                    f"port {port} on 127.0.0.1 is in use: stop what listens there or choose "
                    "another sandbox --port (Azurite uses the two ports after it)"
                )
        bin_dir = find_azurite_bin()
        self.location.mkdir(parents=True, exist_ok=True)
        log_path = self.location / "azurite.log"
        common = [
            "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
            "--location", str(self.location), "--cert", str(self.cert), "--key", str(self.key),
        ]
        commands = [
            [str(bin_dir / "azurite-blob"), "--blobHost", "127.0.0.1",
             "--blobPort", str(self.blob_port), *common],
            [str(bin_dir / "azurite-queue"), "--queueHost", "127.0.0.1",
             "--queuePort", str(self.queue_port), *common],
        ]
        env = dict(os.environ)
        if self.accounts:
            # Azurite then serves exactly these accounts (read at start and every minute).
            env["AZURITE_ACCOUNTS"] = ";".join(f"{name}:{key}" for name, key in self.accounts.items())
        with open(log_path, "ab") as log_file:
            for command in commands:
                log.info("starting %s", " ".join(command[:3]))
                self.processes.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log_file,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                        env=env,
                    )
                )
        try:
            await wait_for_port(self.blob_port, START_TIMEOUT)
            await wait_for_port(self.queue_port, START_TIMEOUT)
        except AzuriteError:
            self.stop()
            tail = log_path.read_text(errors="replace")[-2000:]
            raise AzuriteError(f"Azurite failed to start; its log ends with:\n{tail}") from None

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        for process in self.processes:
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
