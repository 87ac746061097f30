"""Tenant profiles: where a tenant's endpoints are and how to sign in to it.

A profile is a JSON file with the keys described in docs/architecture.md. The sandbox writes one
(``DIR/tenant.json``); for a real tenant an admin writes one by hand or ``spmt-tui login`` saves
one. Profiles hold URLs, ids, paths and (for the sandbox only) test passwords, never tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class ProfileError(ValueError):
    pass


@dataclass(frozen=True)
class TenantProfile:
    authority: str
    site_url: str
    resource: str
    public_client_id: str
    tenant_id: str = ""
    tenant_name: str = ""
    ca_bundle: str | None = None
    user: dict[str, Any] = field(default_factory=dict)
    app: dict[str, Any] = field(default_factory=dict)
    source_path: Path | None = None

    @property
    def scope(self) -> str:
        return self.resource.rstrip("/") + "/.default"

    @property
    def is_microsoft_authority(self) -> bool:
        host = urlsplit(self.authority).hostname or ""
        return host.endswith(("login.microsoftonline.com", "login.microsoftonline.us",
                              "login.partner.microsoftonline.cn"))

    def origin_of(self, url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}"


def load_profile(path: Path) -> TenantProfile:
    """Read a tenant profile, naming the file and the key when something is missing."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(
            f"tenant profile {path} not found: start the sandbox (`spmt-tui sandbox --data DIR` "
            "writes DIR/tenant.json) or give the path of your tenant's profile") from None
    except ValueError as error:
        raise ProfileError(f"tenant profile {path} is not valid JSON: {error}") from None
    missing = [key for key in ("authority", "site_url", "resource", "public_client_id") if not data.get(key)]
    if missing:
        raise ProfileError(f"tenant profile {path} is missing {', '.join(missing)}")
    ca_bundle = data.get("ca_bundle")
    if ca_bundle and not Path(ca_bundle).is_absolute():
        ca_bundle = str((path.parent / ca_bundle).resolve())
    return TenantProfile(
        authority=data["authority"].rstrip("/"),
        site_url=data["site_url"].rstrip("/"),
        resource=data["resource"].rstrip("/"),
        public_client_id=data["public_client_id"],
        tenant_id=data.get("tenant_id", ""),
        tenant_name=data.get("tenant_name", ""),
        ca_bundle=ca_bundle,
        user=dict(data.get("user") or {}),
        app=dict(data.get("app") or {}),
        source_path=path,
    )
