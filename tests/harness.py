"""Test helpers: start a real sandbox tenant (HTTPS server plus Azurite) on 127.0.0.1, validate packages."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from spmt_tui.sandbox.azurite import free_port_block

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
XSD_DIR = SHARED / "reference" / "xsd"
CASES = SHARED / "cases"


XSD_FOR_FILE = {
    "Manifest.xml": "DeploymentManifest.xsd",
    "ExportSettings.xml": "DeploymentExportSettings.xsd",
    "RootObjectMap.xml": "DeploymentRootObjectMap.xsd",
}
_schemas: dict[str, Any] = {}


def validate_with_xsd(name: str, data: bytes) -> None:
    """Validate one package file against Microsoft's published XSD, if there is one for it."""
    from lxml import etree

    xsd = XSD_FOR_FILE.get(name)
    if xsd is None:
        return
    if not XSD_DIR.is_dir():
        pytest.skip(f"XSD folder {XSD_DIR} is missing, so packages cannot be checked against the schemas")
    if xsd not in _schemas:
        _schemas[xsd] = etree.XMLSchema(etree.parse(str(XSD_DIR / xsd)))
    schema = _schemas[xsd]
    document = etree.fromstring(data)
    assert schema.validate(document), f"{name} fails {xsd}: {schema.error_log}"


def validate_kept_packages(work: Path) -> int:
    """Validate every package that sessions under ``work`` kept; returns how many there were."""
    folders = sorted(work.glob("sessions/*/packages/*"))
    for folder in folders:
        for path in folder.glob("*.xml"):
            validate_with_xsd(path.name, path.read_bytes())
    return len(folders)


@dataclass
class Sandbox:
    """A running sandbox process and its tenant profile."""

    data_dir: Path
    process: subprocess.Popen[str]
    profile: dict[str, Any]

    @property
    def profile_path(self) -> Path:
        return self.data_dir / "tenant.json"

    @property
    def site_url(self) -> str:
        return self.profile["site_url"]

    @property
    def ca_bundle(self) -> str:
        return self.profile["ca_bundle"]

    def admin(self, action: str, body: dict[str, Any] | None = None) -> Any:
        sandbox = self.profile["sandbox"]
        url = f"{sandbox['admin_url']}/{action}"
        headers = {"X-Sandbox-Admin-Key": sandbox["admin_key"]}
        if body is None:
            response = requests.get(url, headers=headers, verify=self.ca_bundle, timeout=30)
        else:
            response = requests.post(url, json=body, headers=headers, verify=self.ca_bundle, timeout=30)
        response.raise_for_status()
        return response.json()

    def set_faults(self, spec: str) -> None:
        self.admin("faults", {"spec": spec})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_sandbox(data_dir: Path, *extra: str, timeout: float = 30.0) -> Sandbox:
    port = free_port_block()
    command = [sys.executable, "-m", "spmt_tui", "sandbox", "--data", str(data_dir),
               "--port", str(port), "--import-delay", "0.2", *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO, start_new_session=True)
    deadline = time.monotonic() + timeout
    assert process.stdout is not None
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if line.startswith("ready "):
                profile = json.loads((data_dir / "tenant.json").read_text())
                return Sandbox(data_dir, process, profile)
            if not line and process.poll() is not None:
                break
        if process.poll() is not None:
            break
    process.kill()
    err = process.stderr.read() if process.stderr else ""
    raise RuntimeError(f"sandbox did not become ready: {err[-3000:]}")
