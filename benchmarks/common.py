"""Shared parts of the benchmarks: result lines, interleaved rounds, test data, the sandbox.

Every figure a benchmark reports is a ratio against a baseline measured in the same run, on the
same data and the same Azurite, because the machines are shared and absolute rates move by
25 % between runs. Measurements alternate between the tool and its baseline, the order flips
every round, and the reported value is the median of the per-round ratios.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable
from spmt_tui.sandbox.azurite import free_port_block

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
MIB = 2**20
GIB = 2**30
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

_PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def keep_traffic_local() -> None:
    """Remove proxy settings from the environment, so every request goes straight to 127.0.0.1.

    The client's aiohttp session and rclone both honour proxy variables. A proxy would send the
    benchmark's traffic off the machine and measure the proxy instead of the client.
    """
    for name in _PROXY_VARIABLES:
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"


keep_traffic_local()


# -- results ------------------------------------------------------------------------------------


@dataclass
class Result:
    """One reported figure: a ratio, or an absolute value where the goal is absolute (MB, ms)."""

    name: str
    op: str              # ">=", "<=" or "<"
    target: float
    value: float | None = None
    unit: str = ""       # "" for ratios, "MB" or "ms" for absolute goals
    skipped: str = ""    # reason the figure could not be measured
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        if self.op == ">=":
            return self.value >= self.target
        if self.op == "<=":
            return self.value <= self.target
        return self.value < self.target

    def line(self) -> str:
        """Return the ``ratio <name> <value> (goal <op> <target>)`` line for this result."""
        goal = f"(goal {self.op} {self.target:g})"
        if self.value is None:
            return f"ratio {self.name} skipped {goal} {self.skipped}"
        value = f"{self.value:.0f}" if self.unit else _number(self.value)
        return f"ratio {self.name} {value} {goal}"


def _number(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}"


def info(message: str) -> None:
    """Print one line of detail for a benchmark, indented under its name."""
    print(f"  {message}", flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values)


def spread(values: list[float], fmt: str = "{:.0f}") -> str:
    """Return ``median (min-max)`` of ``values``, formatted with ``fmt``."""
    return f"{fmt.format(median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def per_round_ratios(ours: list[float], baseline: list[float]) -> list[float]:
    """Divide each round's rate by the baseline's rate of the same round."""
    return [mine / base for mine, base in zip(ours, baseline)]


Measurement = Callable[[int], Awaitable[float]]


async def interleave(rounds: int, configs: dict[str, Measurement]) -> dict[str, list[float]]:
    """Run every configuration once per round, alternating the order; return rates by name.

    Each measurement gets the round number and returns a rate (higher is better). The order
    is reversed every other round, so a machine that slows down during a round penalises
    both sides alike.
    """
    rates: dict[str, list[float]] = {name: [] for name in configs}
    names = list(configs)
    for round_number in range(rounds):
        order = names if round_number % 2 == 0 else names[::-1]
        for name in order:
            gc.collect()
            rate = await configs[name](round_number)
            rates[name].append(rate)
            info(f"round {round_number + 1}/{rounds} {name}: {rate:,.1f}")
    return rates


# -- processes ----------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """Return user plus system CPU seconds used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    """Return the peak resident set size (VmHWM) of a running process in MiB."""
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"process {pid} has no VmHWM line in /proc/{pid}/status")


def find_processes(*needles: str) -> list[int]:
    """Return the pids whose command line contains every string in ``needles``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                command = handle.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(needle in command for needle in needles):
            pids.append(int(entry))
    return pids


def machine_summary() -> str:
    """Return cores, memory and CPU model of this machine, for the results table."""
    cores = os.cpu_count() or 0
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    model = ""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cores} cores, {memory_gib:.0f} GiB memory" + (f", {model}" if model else "")


# -- test data ------------------------------------------------------------------------------------


def make_tree(root: Path, folders: int, files_per_folder: int, size: int, *,
              odd_names_every: int = 0) -> int:
    """Create ``folders`` x ``files_per_folder`` files of ``size`` random bytes under ``root``.

    Folders sit two levels deep (``dNN/sNNN``), as in a department share. With
    ``odd_names_every`` > 0, every n-th file gets a name that a scan rule acts on (a hidden
    name, an invalid character, a trailing space, a skipped extension, an Office owner file),
    so the rules' slow path runs as well as the fast one. Returns the number of files.
    """
    odd_names = (".hidden{n}.txt", "q{n}?.txt", "trailing{n} .txt", "temp{n}.tmp", "~$owner{n}.docx")
    count = 0
    top = max(1, int(folders ** 0.5))
    for folder in range(folders):
        directory = root / f"d{folder % top:03d}" / f"s{folder:05d}"
        directory.mkdir(parents=True, exist_ok=True)
        for number in range(files_per_folder):
            if odd_names_every and count % odd_names_every == odd_names_every - 1:
                name = odd_names[(count // odd_names_every) % len(odd_names)].format(n=number)
            else:
                name = f"report-{number:05d}.docx"
            descriptor = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                if size:
                    os.write(descriptor, os.urandom(size))
            finally:
                os.close(descriptor)
            count += 1
    return count


def make_random_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes to ``path`` (random, so nothing on the way can compress it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    chunk = 64 * MIB
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            step = min(chunk, remaining)
            handle.write(os.urandom(step))
            remaining -= step


def make_sparse_file(path: Path, size: int) -> None:
    """Create a file of ``size`` bytes that takes no disk blocks (reads return zeros)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)


def count_files(root: Path) -> int:
    count = 0
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    count += 1
    return count


def cached_tree(path: Path, folders: int, files_per_folder: int, size: int, **kwargs: Any) -> Path:
    """Return a generated tree, creating it unless a complete one from an earlier run is there."""
    marker = path.parent / f"{path.name}.complete"
    spec = json.dumps([folders, files_per_folder, size, kwargs], sort_keys=True)
    if marker.exists() and marker.read_text() == spec:
        return path
    shutil.rmtree(path, ignore_errors=True)
    marker.unlink(missing_ok=True)
    path.mkdir(parents=True)
    started = time.perf_counter()
    count = make_tree(path, folders, files_per_folder, size, **kwargs)
    info(f"generated {count:,} files of {size} bytes in {path} ({time.perf_counter() - started:.1f} s)")
    marker.write_text(spec)
    return path


# -- the sandbox tenant ------------------------------------------------------------------------


@dataclass
class Sandbox:
    """A running sandbox tenant (``spmt-tui sandbox``) with its Azurite."""

    data_dir: Path
    port: int
    process: subprocess.Popen[str]
    profile: dict[str, Any]

    @property
    def profile_path(self) -> Path:
        return self.data_dir / "tenant.json"

    @property
    def ca_bundle(self) -> str:
        return self.profile["ca_bundle"]

    @property
    def blob_url(self) -> str:
        return self.profile["sandbox"]["azurite_blob"]

    def azurite_blob_pid(self) -> int | None:
        """Return the pid of the Azurite blob service (node), for CPU figures; None if not found."""
        pids = find_processes("azurite-blob", f"--blobPort {self.port + 1}")
        return pids[0] if pids else None

    def admin_blob_service(self) -> Any:
        """Return a synchronous blob service client with Azurite's account key."""
        from azure.storage.blob import BlobServiceClient

        from spmt_tui.sandbox.context import AZURITE_ACCOUNT, AZURITE_KEY

        return BlobServiceClient(self.blob_url, credential={
            "account_name": AZURITE_ACCOUNT, "account_key": AZURITE_KEY}, connection_verify=self.ca_bundle)

    def credentials(self) -> Any:
        """Return a username-and-password token provider for the sandbox's admin user."""
        from spmt_tui.auth.cache import MemoryStore
        from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider

        return UsernamePasswordProvider(AuthSettings.from_profile(self.profile),
                                        self.profile["user"]["username"],
                                        self.profile["user"]["password"], store=MemoryStore())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sandbox(data_dir: Path, *, import_delay: float = 0.2, timeout: float = 60.0,
                  container_retention: float | None = None) -> Sandbox:
    """Start ``python -m spmt_tui sandbox`` on free ports and wait for its ``ready`` line."""
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    port = free_port_block()
    command = [PYTHON, "-m", "spmt_tui", "sandbox", "--data", str(data_dir), "--port", str(port),
               "--import-delay", str(import_delay)]
    if container_retention is not None:
        command += ["--container-retention", str(container_retention)]
    stderr = open(data_dir / "sandbox-stderr.log", "w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=REPO,
                               start_new_session=True)
    stderr.close()
    assert process.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line.startswith("ready "):
                profile = json.loads((data_dir / "tenant.json").read_text())
                return Sandbox(data_dir, port, process, profile)
            if not line and process.poll() is not None:
                break
        elif process.poll() is not None:
            break
    process.kill()
    process.wait()
    log_tail = (data_dir / "sandbox-stderr.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the sandbox did not print 'ready' within {timeout:.0f} s; its log ends with:\n"
                       f"{log_tail}")


def delete_containers(sandbox: Sandbox, names: list[str]) -> None:
    """Delete containers with the account key, so large uploads do not pile up on disk."""
    from azure.core.exceptions import ResourceNotFoundError

    service = sandbox.admin_blob_service()
    for name in names:
        try:
            service.delete_container(name)
        except ResourceNotFoundError:
            pass


def container_name(sas_uri: str) -> str:
    """Return the container name of a container SAS URI."""
    return sas_uri.split("?", 1)[0].rstrip("/").rsplit("/", 1)[1]


def run_async(coroutine: Awaitable[Any]) -> Any:
    return asyncio.run(coroutine)  # type: ignore[arg-type]
