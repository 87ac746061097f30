"""Shared test data: the running sandbox identity service that the fixtures in conftest.py start."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from spmt_tui.auth.tokens import AuthSettings
from spmt_tui.sandbox.ca import AppCertificate, TlsFiles
from spmt_tui.sandbox.identity import IdentityService, SandboxUser

APP_CLIENT_ID = "7a1c5e0b-5d0e-4a57-9f3a-2b8f6c1d0e11"


@dataclass
class Sandbox:
    """A running identity service and what a client needs to talk to it."""

    service: IdentityService
    base_url: str
    tenant_id: str
    public_client_id: str
    user: SandboxUser
    app_certificate: AppCertificate
    other_certificate: AppCertificate
    tls: TlsFiles
    data_dir: Path
    user_agents: list[str] = field(default_factory=list)

    @property
    def authority(self) -> str:
        return f"{self.base_url}/{self.tenant_id}"

    @property
    def resource(self) -> str:
        return self.base_url

    def profile(self) -> dict[str, object]:
        """Return a tenant profile in the format the sandbox writes to tenant.json."""
        return {
            "tenant_id": self.tenant_id,
            "tenant_name": "sandbox",
            "authority": self.authority,
            "site_url": f"{self.base_url}/sites/demo",
            "resource": self.resource,
            "ca_bundle": str(self.tls.ca_cert),
            "public_client_id": self.public_client_id,
            "user": {"username": self.user.username, "password": self.user.password,
                     "display_name": self.user.display_name},
            "app": {"client_id": APP_CLIENT_ID, "certificate": str(self.app_certificate.pem_path),
                    "thumbprint": self.app_certificate.thumbprint},
            "sandbox": {"admin_url": f"{self.base_url}/_sandbox"},
        }

    def user_settings(self) -> AuthSettings:
        return AuthSettings.from_profile(self.profile())

    def app_settings(self) -> AuthSettings:
        return AuthSettings.from_profile(self.profile(), app_only=True)
