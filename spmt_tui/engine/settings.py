"""Migration settings: one model for the command line, the TOML config file and the TUI.

Defaults follow SPMT's where SPMT has the setting (``Register-SPMTMigration`` parameter text).
Each field carries its help text, command-line flag and SPMT JSON key in ``metadata`` so every
front end builds its controls from the same description.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


def default_working_folder() -> Path:
    """Per-user data folder: ``$XDG_DATA_HOME/spmt-tui`` or ``~/.local/share/spmt-tui``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "spmt-tui"


class SettingsError(ValueError):
    pass


MAX_PACKAGE_MB = 10_240
# Azure Storage account names: 3 to 24 lower-case letters and digits.
_STORAGE_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")


def _meta(help_text: str, *, group: str = "General", json_key: str | None = None,
          flag: str | None = None, per_task: bool = False) -> dict[str, Any]:
    return {"help": help_text, "group": group, "json_key": json_key, "flag": flag,
            "per_task": per_task}


@dataclass
class Settings:
    # General
    scan_only: bool = field(default=False, metadata=_meta(
        "only scan and write the scan reports; upload nothing", json_key="ScanOnly"))
    start_when_no_issue: bool = field(default=True, metadata=_meta(
        "migrate while scanning, skipping and reporting items with issues; off: scan everything "
        "first and stop so the scan reports can be reviewed, then resume the session to migrate",
        json_key="StartMigrationAutomaticallyWhenNoScanIssue"))
    preserve_permissions: bool = field(default=False, metadata=_meta(
        "map each item's POSIX owner, owning group and ACL users and groups, through the user "
        "mapping file, to SharePoint roles: write access gives Contribute (Full Control for the "
        "owner), read access gives Read; 'other' and unmapped principals are dropped and listed in "
        "UserNotMapped.csv; an item gets unique permissions only when they differ from its "
        "parent folder's; needs --user-mapping-file", json_key="PreservePermission", per_task=True))
    incremental: bool = field(default=True, metadata=_meta(
        "skip files that are unchanged or newer at the destination", json_key="EnableIncremental",
        per_task=True))
    auto_rerun: int = field(default=1, metadata=_meta(
        "number of rounds in one run (1 = run once, up to 5) to catch files changed during the run",
        group="Advanced", json_key="EnableMultiRound"))
    working_folder: Path = field(default_factory=default_working_folder, metadata=_meta(
        "folder for sessions, logs and reports", group="Advanced", json_key="WorkingFolder"))
    min_free_space_mb: int = field(default=200, metadata=_meta(
        "free megabytes the working folder's disk must keep; below that, the migration waits "
        "before new work and goes on when there is room again (0 = wait only when a write fails)",
        group="Advanced"))
    # Filters
    include_hidden: bool = field(default=True, metadata=_meta(
        "migrate hidden files and folders (names starting with a dot)", group="Filters",
        json_key="MigrateHiddenItems", per_task=True))
    created_after: dt.datetime | None = field(default=None, metadata=_meta(
        "only migrate files created after this time (ISO 8601, e.g. 2024-01-31 or "
        "2024-01-31T08:00+02:00; a date without a zone is UTC)", group="Filters",
        json_key="MigrateItemsCreatedAfter", per_task=True))
    modified_after: dt.datetime | None = field(default=None, metadata=_meta(
        "only migrate files modified after this time (same format as --created-after)",
        group="Filters", json_key="MigrateItemsModifiedAfter", per_task=True))
    skip_extensions: str = field(default="", metadata=_meta(
        "extensions not to migrate, colon-separated without dots (e.g. tmp:bak); only the last "
        "extension of a name counts", group="Filters", json_key="SkipFilesWithExtensions",
        per_task=True))
    replace_invalid_char: str | None = field(default=None, metadata=_meta(
        "replace characters SharePoint rejects with this character instead of skipping the item",
        group="Filters", json_key="ReplacementOfInvalidChar", per_task=True))
    follow_symlinks: bool = field(default=False, metadata=_meta(
        "follow symbolic links (by default they are reported and skipped)", group="Filters",
        per_task=True))
    # Users
    user_mapping_file: Path | None = field(default=None, metadata=_meta(
        "CSV without header: source owner, target UPN, TRUE/FALSE (is a group)", group="Users",
        json_key="UserMappingCSVFile", per_task=True))
    default_user: str | None = field(default=None, metadata=_meta(
        "UPN used as author for owners missing from the mapping file (default: the signed-in "
        "account)", group="Users", per_task=True))
    # Performance
    package_max_files: int = field(default=250, metadata=_meta(
        "maximum files per package (Microsoft recommends 250)", group="Performance"))
    package_max_mb: int = field(default=250, metadata=_meta(
        "maximum megabytes per package (Microsoft recommends 100 to 250)", group="Performance"))
    upload_concurrency: int = field(default=32, metadata=_meta(
        "blob uploads in flight at once", group="Performance"))
    packages_in_flight: int = field(default=8, metadata=_meta(
        "packages being uploaded at once", group="Performance"))
    jobs_in_flight: int = field(default=16, metadata=_meta(
        "migration jobs submitted and not yet finished, at most", group="Performance"))
    job_poll_seconds: float = field(default=5.0, metadata=_meta(
        "seconds between GetMigrationJobProgress calls when the queue is quiet",
        group="Performance"))
    fatal_retries: int = field(default=2, metadata=_meta(
        "times a package is submitted again after JobFatalError", group="Performance"))
    # Custom Azure storage. The access key is not a setting, so it is never stored with the
    # session. It comes from an environment variable, the keyring, a prompt or a task file's
    # CustomAzureAccessKey (see spmt_tui/engine/custom_storage.py).
    custom_azure_storage: bool = field(default=False, metadata=_meta(
        "upload packages to containers in your own Azure Storage account instead of the ones "
        "SharePoint provisions", group="Custom Azure storage", json_key="UseCustomAzureStorage",
        per_task=True))
    custom_azure_account: str = field(default="", metadata=_meta(
        "name of your General Purpose storage account (blobs and queues); its access key is read "
        "from SPMT_TUI_AZURE_STORAGE_KEY, the keyring or a prompt", group="Custom Azure storage",
        json_key="CustomAzureStorageAccount", per_task=True))
    custom_azure_blob_endpoint: str = field(default="", metadata=_meta(
        "blob service URL of the account (empty: https://ACCOUNT.blob.core.windows.net; an "
        "emulator such as Azurite: https://127.0.0.1:10000/ACCOUNT)", group="Custom Azure storage",
        per_task=True))
    custom_azure_queue_endpoint: str = field(default="", metadata=_meta(
        "queue service URL of the account (empty: https://ACCOUNT.queue.core.windows.net)",
        group="Custom Azure storage", per_task=True))
    custom_azure_delete_after: bool = field(default=False, metadata=_meta(
        "delete the containers of each job from your account once the job ended successfully",
        group="Custom Azure storage", json_key="CustomAzureDeletionAfterMig", per_task=True))

    def validate(self) -> None:
        if not 1 <= self.auto_rerun <= 5:
            raise SettingsError(f"invalid auto_rerun {self.auto_rerun}: use 1 (run once) to 5")
        if self.replace_invalid_char is not None:
            char = self.replace_invalid_char
            # '.' and '~' are legal in names but not as a replacement, because a name may not
            # end with '.' and a folder name may not start with '~'.
            if not isinstance(char, str) or len(char) != 1 or char in '"*:<>?/\\|.~' \
                    or char.isspace() or ord(char) < 32 or 0x7F <= ord(char) <= 0x9F:
                raise SettingsError(
                    f"invalid replacement character {char!r}: use one character that SharePoint "
                    "allows in names and that is not a space, '.' or '~', e.g. _ or -")
        for name in ("package_max_files", "package_max_mb", "upload_concurrency",
                     "packages_in_flight", "jobs_in_flight"):
            if getattr(self, name) < 1:
                raise SettingsError(f"invalid {name} {getattr(self, name)}: use 1 or more")
        for part in filter(None, self.skip_extensions.split(":")):
            if "." in part or "/" in part:
                raise SettingsError(
                    f"invalid extension {part!r} in skip_extensions: write it without the dot, "
                    "colon-separated, e.g. tmp:bak")
        if not (isinstance(self.job_poll_seconds, (int, float)) and 0.1 <= self.job_poll_seconds <= 3600):
            raise SettingsError(
                f"invalid job_poll_seconds {self.job_poll_seconds}: use a number of seconds from "
                "0.1 to 3600")
        if not (isinstance(self.min_free_space_mb, int) and self.min_free_space_mb >= 0):
            raise SettingsError(f"invalid min_free_space_mb {self.min_free_space_mb}: use 0 or more "
                                "megabytes")
        if not 0 <= self.fatal_retries <= 10:
            raise SettingsError(f"invalid fatal_retries {self.fatal_retries}: use 0 to 10")
        if self.package_max_mb > MAX_PACKAGE_MB:
            raise SettingsError(
                f"invalid package_max_mb {self.package_max_mb}: use at most {MAX_PACKAGE_MB}; "
                "Microsoft recommends packages of 100 to 250 MB (a larger file travels alone)")
        if any(char in self.skip_extensions for char in ", ;"):
            raise SettingsError(
                f"invalid skip_extensions {self.skip_extensions!r}: separate extensions with colons, "
                "e.g. tmp:bak")
        if self.user_mapping_file is not None and not Path(self.user_mapping_file).is_file():
            raise SettingsError(
                f"user mapping file {self.user_mapping_file} not found: give the path of the "
                "3-column CSV (source owner, target UPN, TRUE/FALSE)")
        self._validate_custom_storage()
        if self.default_user is not None and "@" not in self.default_user:
            raise SettingsError(
                f"invalid default_user {self.default_user!r}: give the user principal name, "
                "e.g. jane.doe@contoso.com")

    def _validate_custom_storage(self) -> None:
        account = self.custom_azure_account
        if not isinstance(account, str) or (account and not _STORAGE_ACCOUNT.fullmatch(account)):
            raise SettingsError(
                f"invalid custom_azure_account {account!r}: a storage account name has 3 to 24 "
                "lower-case letters and digits, e.g. contosomigration")
        if self.custom_azure_storage and not account:
            raise SettingsError(
                "custom Azure storage is on but custom_azure_account is empty: give the storage "
                "account name (--custom-azure-account NAME or CustomAzureStorageAccount)")
        for name in ("custom_azure_blob_endpoint", "custom_azure_queue_endpoint"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise SettingsError(f"invalid {name} {value!r}: give an https URL")
            if value:
                parts = urlsplit(value)
                if parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment:
                    raise SettingsError(
                        f"invalid {name} {value!r}: give the service's https URL without a query, "
                        "e.g. https://contoso.blob.core.windows.net or, for Azurite, "
                        "https://127.0.0.1:10000/ACCOUNT")

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Settings":
        """Return a copy with a task's own settings applied on top; ``self`` is not changed.

        ``overrides`` maps field names of per-task settings (``TASK_SETTINGS``) to values, which
        are converted as the config file's values are. Raises SettingsError for other names and
        for invalid values.
        """
        if not overrides:
            return self
        fields = {item.name: item for item in dataclasses.fields(self)}
        merged = dataclasses.replace(self)
        for name, value in overrides.items():
            if name not in TASK_SETTINGS:
                raise SettingsError(
                    f"setting {name!r} cannot be set per task; per-task settings: "
                    f"{', '.join(sorted(TASK_SETTINGS))}")
            setattr(merged, name, _coerce(fields[name], value))
        merged.validate()
        return merged

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            data[item.name] = value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Settings":
        settings = cls()
        for item in dataclasses.fields(cls):
            if item.name in data:
                setattr(settings, item.name, _coerce(item, data[item.name]))
        return settings


TASK_SETTINGS = frozenset(item.name for item in dataclasses.fields(Settings) if item.metadata["per_task"])
"""Names of the settings a task may set for itself; the others apply to the whole session."""


def task_settings_to_json(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a task's settings as JSON values (paths and times as text)."""
    data: dict[str, Any] = {}
    for name, value in overrides.items():
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, dt.datetime):
            value = value.isoformat()
        data[name] = value
    return data


def task_settings_from_json(data: Mapping[str, Any]) -> dict[str, Any]:
    """Return a task's settings from :func:`task_settings_to_json` output, with their types back."""
    fields = {item.name: item for item in dataclasses.fields(Settings)}
    return {name: _coerce(fields[name], value) for name, value in data.items() if name in TASK_SETTINGS}


def parse_time(text: str) -> dt.datetime:
    """Parse an ISO 8601 date or time; a value without a zone is taken as UTC."""
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise SettingsError(
            f"invalid time {text!r}: use ISO 8601, e.g. 2024-01-31 or 2024-01-31T08:00+02:00"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value


def _coerce(item: dataclasses.Field[Any], value: Any) -> Any:
    if value is None:
        return None
    kind = str(item.type)
    if "Path" in kind:
        if not isinstance(value, (str, Path)):
            raise SettingsError(f"invalid value {value!r} for {item.name}: give a folder or file path")
        return Path(value).expanduser()
    if "datetime" in kind:
        return value if isinstance(value, dt.datetime) else parse_time(str(value))
    if kind == "bool":
        if isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise SettingsError(f"invalid value {value!r} for {item.name}: use true or false")
        return bool(value)
    if kind == "int":
        try:
            return int(value)
        except (TypeError, ValueError):
            raise SettingsError(f"invalid value {value!r} for {item.name}: use a whole number") from None
    if kind == "float":
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise SettingsError(f"invalid value {value!r} for {item.name}: use a number") from None
        if number != number or number in (float("inf"), float("-inf")):
            raise SettingsError(f"invalid value {value!r} for {item.name}: use a finite number")
        return number
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one flag per setting, e.g. ``--include-hidden/--no-include-hidden``."""
    defaults = Settings()
    groups: dict[str, argparse._ArgumentGroup] = {}
    for item in dataclasses.fields(Settings):
        meta = item.metadata
        group = groups.setdefault(meta["group"], parser.add_argument_group(f"{meta['group']} settings"))
        flag = meta.get("flag") or "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        help_text = meta["help"]
        if str(item.type) == "bool":
            group.add_argument(flag, dest=item.name, action=argparse.BooleanOptionalAction,
                               default=None, help=f"{help_text} (default: {'on' if default else 'off'})")
        else:
            group.add_argument(flag, dest=item.name, default=None, metavar=item.name.upper(),
                               help=f"{help_text} (default: {default})")


def settings_from_args(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """Apply the flags that were given on top of ``base`` (config file values or defaults)."""
    settings = base or Settings()
    for item in dataclasses.fields(Settings):
        value = getattr(args, item.name, None)
        if value is not None:
            setattr(settings, item.name, _coerce(item, value))
    settings.validate()
    return settings


def load_config(path: Path | None = None) -> Settings:
    """Read defaults from a TOML file (``[settings]`` table); missing file gives SPMT's defaults."""
    import tomllib

    if path is None:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
        path = Path(base) / "spmt-tui" / "config.toml"
        if not path.exists():
            return Settings()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SettingsError(f"config file {path} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise SettingsError(f"invalid TOML in {path}: {error}") from None
    table = data.get("settings", data)
    known = {item.name for item in dataclasses.fields(Settings)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise SettingsError(f"unknown setting(s) {', '.join(unknown)} in {path}; known: {', '.join(sorted(known))}")
    settings = Settings.from_json(table)
    settings.validate()
    return settings
