"""What the wizard collects before a migration starts: sign-in, tasks and settings.

Nothing here imports Textual, so the review text and the task list can be tested and reused
without a terminal.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spmt_tui.engine.settings import Settings

if TYPE_CHECKING:
    from spmt_tui.auth.tokens import TokenProvider
    from spmt_tui.profile import TenantProfile
    from spmt_tui.tui.services import PasswordSlot

SIGN_IN_METHODS = {
    "device-code": "Device code",
    "certificate": "Certificate (app-only)",
    "password": "Username and password (legacy)",
}


@dataclass
class SignedIn:
    """A completed sign-in: the token provider the engine will use and the tenant it is for."""

    provider: "TokenProvider"
    profile: "TenantProfile"
    principal: str
    method: str
    password_slot: "PasswordSlot | None" = None  # the password method's, for signing in again


@dataclass
class TaskSpec:
    """One source folder and where it goes; turned into the engine's ``MigrationTask``."""

    source: str
    site_url: str
    library: str = "Documents"
    folder: str = ""
    # The task's own settings from a JSON task file, as in ``MigrationTask.settings``.
    settings: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        target = f"{self.site_url.rstrip('/')}/{self.library}"
        if self.folder:
            target += "/" + self.folder.strip("/")
        return f"{self.source} → {target}"


@dataclass
class MigrationPlan:
    """The wizard's state, filled in step by step."""

    settings: Settings = field(default_factory=Settings)
    signed_in: SignedIn | None = None
    profile_path: Path | None = None
    site_url: str = ""
    source: str = ""
    library: str = "Documents"
    folder: str = ""
    bulk_tasks: list[TaskSpec] | None = None
    bulk_file: Path | None = None

    def tasks(self) -> list[TaskSpec]:
        """Return the tasks to run: the bulk file's, or the one built by the wizard steps."""
        if self.bulk_tasks is not None:
            return list(self.bulk_tasks)
        return [TaskSpec(self.source, self.site_url, self.library, self.folder)]

    def review_lines(self) -> list[tuple[str, str]]:
        """Return (label, value) pairs that summarise the plan for the review step."""
        lines: list[tuple[str, str]] = []
        if self.signed_in is not None:
            lines.append(("Signed in as", f"{self.signed_in.principal} "
                                          f"({SIGN_IN_METHODS.get(self.signed_in.method, self.signed_in.method)})"))
            lines.append(("Tenant", self.signed_in.profile.authority))
        if self.bulk_file is not None:
            lines.append(("Task file", str(self.bulk_file)))
        for number, task in enumerate(self.tasks(), start=1):
            own = task_settings_text(task.settings)
            lines.append((f"Task {number}", task.describe() + (f" (own settings: {own})" if own else "")))
        lines.extend(changed_settings(self.settings))
        return lines


def changed_settings(settings: Settings) -> list[tuple[str, str]]:
    """Return the settings that differ from SPMT's defaults, as (name, value) pairs."""
    defaults = Settings()
    changed: list[tuple[str, str]] = []
    for item in dataclasses.fields(Settings):
        value = getattr(settings, item.name)
        if value != getattr(defaults, item.name):
            changed.append((item.name.replace("_", " "), format_setting(value)))
    if not changed:
        changed.append(("Settings", "SPMT defaults"))
    return changed


# Short labels of per-task settings: (label when on or set, label when off or empty).
_TASK_SETTING_LABELS = {
    "include_hidden": ("hidden files", "no hidden files"),
    "incremental": ("incremental", "not incremental"),
    "follow_symlinks": ("follow symlinks", "no symlinks"),
    "preserve_permissions": ("permissions", "no permissions"),
    "custom_azure_storage": ("custom storage", "no custom storage"),
    "custom_azure_delete_after": ("delete storage after", "keep storage"),
    "skip_extensions": ("skip {}", "skip no extension"),
    "replace_invalid_char": ("replace invalid with {}", "skip invalid names"),
    "created_after": ("created after {}", "any created time"),
    "modified_after": ("modified after {}", "any modified time"),
    "user_mapping_file": ("user mapping {}", "no user mapping"),
    "default_user": ("default user {}", "migration account as default user"),
    "custom_azure_account": ("storage account {}", "no storage account"),
}


def task_settings_text(overrides: dict[str, Any]) -> str:
    """Return a task's own settings as a short comma-separated text, e.g. "hidden files, skip tmp"."""
    parts = []
    for name, value in overrides.items():
        on_label, off_label = _TASK_SETTING_LABELS.get(name, (f"{name.replace('_', ' ')} {{}}", ""))
        if value is None or value is False or value == "":
            parts.append(off_label or name.replace("_", " ") + " off")
        elif value is True:
            parts.append(on_label.replace(" {}", ""))
        else:
            text = Path(value).name if isinstance(value, Path) else format_setting(value)
            parts.append(on_label.format(text))
    return ", ".join(parts)


def format_setting(value: Any) -> str:
    """Return a setting value as the settings form shows it (blank for None)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
