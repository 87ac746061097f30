"""rclone pointed at the sandbox's Azurite, for the upload baselines.

Debian's rclone 1.60 cannot reach Azurite through ``use_emulator`` (it builds a URL on
blob.core.windows.net) or ``endpoint`` (it treats the value as a DNS suffix and looks up
``<account>.<endpoint>``), and both send look-ups off the machine. An account SAS URL works:
``sas_url = https://127.0.0.1:<port>/devstoreaccount1?<sas>`` names the host directly, and
``--ca-cert`` trusts the sandbox's private CA.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
from pathlib import Path

from benchmarks.common import Sandbox


def find_rclone() -> tuple[str | None, str]:
    """Return rclone's path, or None and the reason it cannot be used."""
    path = shutil.which("rclone")
    if path is None:
        return None, "rclone is not installed (apt-get install rclone)"
    try:
        version = subprocess.run([path, "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return None, f"rclone at {path} does not run: {error}"
    if version.returncode != 0:
        return None, f"`{path} version` failed with exit code {version.returncode}"
    return path, ""


class Rclone:
    """An rclone command line with its own config file, which defines one remote, ``azurite``."""

    def __init__(self, binary: str, sandbox: Sandbox, config_path: Path) -> None:
        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        from spmt_tui.sandbox.context import AZURITE_ACCOUNT, AZURITE_KEY

        sas = generate_account_sas(
            AZURITE_ACCOUNT, AZURITE_KEY,
            ResourceTypes(service=True, container=True, object=True),
            AccountSasPermissions(read=True, write=True, delete=True, list=True, add=True, create=True),
            expiry=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1),
        )
        config_path.write_text(f"[azurite]\ntype = azureblob\nsas_url = {sandbox.blob_url}?{sas}\n")
        config_path.chmod(0o600)
        self.binary = binary
        self.config_path = config_path
        self.ca_bundle = sandbox.ca_bundle
        # Only this config, and no RCLONE_* settings from the caller's environment.
        self.environment = {key: value for key, value in os.environ.items() if not key.startswith("RCLONE_")}

    def command(self, *arguments: str) -> list[str]:
        return [self.binary, "--config", str(self.config_path), "--ca-cert", self.ca_bundle,
                "--retries", "1", "--low-level-retries", "1", "--contimeout", "5s", "--stats", "0",
                "--quiet", *arguments]

    def copy(self, source: Path, container: str, *extra: str) -> None:
        """Run ``rclone copy SOURCE azurite:CONTAINER``; raise with rclone's output if it fails."""
        process = subprocess.run(self.command("copy", str(source), f"azurite:{container}", *extra),
                                 capture_output=True, text=True, env=self.environment, timeout=1800)
        if process.returncode != 0:
            raise RuntimeError(f"rclone copy failed with exit code {process.returncode}: "
                               f"{process.stderr.strip()[-2000:]}")
