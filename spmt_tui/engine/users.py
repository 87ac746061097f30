"""User mapping: who a migrated item's Created By and Modified By become.

A file share item has one owner, the POSIX user name of its ``st_uid``
(:attr:`~spmt_tui.engine.source.SourceItem.owner`). The mapping file, SPMT's user-mapping CSV,
maps owners to SharePoint users. It has no header row and three columns::

    CORP\\jdoe,jane.doe@contoso.com,FALSE

(source login, target UPN, TRUE when the target is a group). An owner matches a row when the
owner equals the row's source login, ignoring case. It also matches when it equals the
login's account name (``jdoe`` for ``CORP\\jdoe`` or ``jdoe@corp.example``) and no other row
has that account name. This lets one file serve shares mounted with and without a domain
prefix in owner names.

Owners without a row get the default user: ``Settings.default_user`` when set, else the
signed-in account (the system account for app-only sign-in). They are counted per owner in the
session's ``user_not_mapped`` counters, from which the reports write ``UserNotMapped.csv``.
Every target person is resolved through the site's ``ensureuser`` call before anything is
packaged, so an unknown UPN stops the session with the mapping file line that names it. Group
rows are checked for format only: a group cannot be Created By or Modified By, so an owner
mapped to a group gets the default user and is reported as not mapped.
"""

from __future__ import annotations

import asyncio
import codecs
import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spmt_tui.engine.settings import SettingsError
from spmt_tui.reports.csv_reports import USER_NOT_MAPPED_SCOPE
from spmt_tui.spo.http import HttpError
from spmt_tui.spo.sharepoint import SharePointClient, UserInfo

log = logging.getLogger("spmt.engine.users")

RESOLVE_CONCURRENCY = 8
"""``ensureuser`` calls in flight at once while resolving a mapping file."""

MAPPING_COLUMNS = ("source login", "target UPN", "is group")


@dataclass(frozen=True)
class MappingIssue:
    """One problem in a user-mapping file; ``line`` and ``column`` count from 1."""

    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}: {self.message}"


class UserMappingError(ValueError):
    """A user-mapping file is invalid or names users the site cannot resolve."""

    def __init__(self, path: str | os.PathLike[str], issues: list[MappingIssue]) -> None:
        self.path = Path(path)
        self.issues = issues
        listed = "\n".join(f"  {issue}" for issue in issues)
        super().__init__(f"user mapping file {self.path} has {len(issues)} error(s):\n{listed}")


@dataclass(frozen=True)
class MappingRow:
    """One row of a user-mapping file."""

    line: int
    source_login: str
    target: str
    is_group: bool


def account_name(login: str) -> str:
    """Return the account part of a login: ``jdoe`` for ``CORP\\jdoe`` and ``jdoe@corp.example``."""
    return login.rpartition("\\")[2].partition("@")[0]


@dataclass
class UserMapping:
    """The rows of one mapping file, indexed for owner look-ups."""

    path: Path
    rows: list[MappingRow]
    _by_login: dict[str, MappingRow] = field(default_factory=dict, repr=False)
    _by_account: dict[str, list[MappingRow]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for row in self.rows:
            self._by_login[row.source_login.lower()] = row
            self._by_account.setdefault(account_name(row.source_login).lower(), []).append(row)

    def find(self, owner: str) -> tuple[MappingRow | None, str]:
        """Return the row for ``owner``, or None and the reason it has none."""
        row = self._by_login.get(owner.lower())
        if row is not None:
            return row, ""
        candidates = self._by_account.get(account_name(owner).lower(), [])
        if len(candidates) == 1:
            return candidates[0], ""
        if candidates:
            lines = ", ".join(str(candidate.line) for candidate in candidates)
            return None, f"its account name matches more than one row (lines {lines})"
        return None, "not in the user mapping file"

    def user_rows(self) -> list[MappingRow]:
        """Return the rows whose target is a person, not a group."""
        return [row for row in self.rows if not row.is_group]


def load_user_mapping(path: str | os.PathLike[str]) -> UserMapping:
    """Read and check a user-mapping file (UTF-8, with or without a byte order mark).

    Raises UserMappingError with every problem found, each with its line and column.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UserMappingError(path, [MappingIssue(1, 1, f"cannot read the file: {error.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line, column = utf8_error_position(raw, error)
        raise UserMappingError(path, [MappingIssue(
            line, column, "the file is not valid UTF-8; save it as UTF-8 (CSV UTF-8 in Excel)")]) from None
    issues: list[MappingIssue] = []
    rows: list[MappingRow] = []
    first_line: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    end_of_previous = 0
    for record in reader:
        line = end_of_previous + 1
        end_of_previous = reader.line_num
        if not any(cell.strip() for cell in record):
            continue
        row = _check_row(record, line, issues)
        if row is None:
            continue
        key = row.source_login.lower()
        if key in first_line:
            issues.append(MappingIssue(line, 1, f"source login {row.source_login!r} is already "
                                       f"mapped on line {first_line[key]}; keep one row per login"))
            continue
        first_line[key] = line
        rows.append(row)
    if not rows and not issues:
        issues.append(MappingIssue(1, 1, "the file has no rows; write one row per user: "
                                   "source login, target UPN, TRUE or FALSE"))
    if issues:
        raise UserMappingError(path, issues)
    return UserMapping(path, rows)


def utf8_error_position(raw: bytes, error: UnicodeDecodeError) -> tuple[int, int]:
    """Return the 1-based line and character column of the byte ``raw.decode("utf-8-sig")`` rejected."""
    # The utf-8-sig codec counts error offsets after the byte order mark.
    offset = error.start + (len(codecs.BOM_UTF8) if raw.startswith(codecs.BOM_UTF8) else 0)
    line_start = raw.rfind(b"\n", 0, offset) + 1
    prefix = raw[line_start:offset].decode("utf-8-sig", errors="replace")
    return raw.count(b"\n", 0, offset) + 1, len(prefix) + 1


def _check_row(record: list[str], line: int, issues: list[MappingIssue]) -> MappingRow | None:
    if len(record) != 3:
        column = min(len(record) + 1, 4)
        issues.append(MappingIssue(line, column, f"expected 3 columns ({', '.join(MAPPING_COLUMNS)}), "
                                   f"found {len(record)}"))
        return None
    source, target, group = (cell.strip() for cell in record)
    found = len(issues)
    if not source:
        issues.append(MappingIssue(line, 1, "the source login is empty"))
    if not target:
        issues.append(MappingIssue(line, 2, "the target UPN is empty"))
    is_group = group.upper() == "TRUE"
    if group.upper() not in ("TRUE", "FALSE"):
        hint = " (the file must not have a header row)" if line == 1 else ""
        issues.append(MappingIssue(line, 3, f"invalid value {group!r}: use TRUE for a group or "
                                   f"FALSE for a person{hint}"))
    elif target and not is_group and "@" not in target:
        issues.append(MappingIssue(line, 2, f"invalid target UPN {target!r}: give the user "
                                   "principal name, e.g. jane.doe@contoso.com"))
    if len(issues) > found:
        return None
    return MappingRow(line, source, target, is_group)


@dataclass
class _NotMapped:
    reason: str
    pending: int = 0  # items given the default user since the last flush


class AuthorMap:
    """Owner-to-user decisions for the Created By and Modified By fields of one task's items.

    ``person_for`` returns a resolved site user, or None for the system account. With no
    mapping file every owner gets the default user and nothing is reported as not mapped.
    """

    def __init__(
        self,
        default: UserInfo | None,
        *,
        mapping: UserMapping | None = None,
        resolved: dict[str, UserInfo] | None = None,
    ) -> None:
        self.default = default
        self.mapping = mapping
        self.resolved = resolved or {}
        self._not_mapped: dict[str, _NotMapped] = {}
        self._flushed_packages: set[tuple[int, int]] = set()
        self._default_name = (default.email or default.title) if default else "System Account"

    def person_for(self, owner: str | None) -> UserInfo | None:
        """Return the user for an item owned by ``owner``, counting the item if it is not mapped."""
        if self.mapping is None or not owner:
            return self.default
        row, reason = self.mapping.find(owner)
        if row is not None and not row.is_group:
            return self.resolved[row.target.lower()]
        if row is not None:
            reason = (f"mapped on line {row.line} to the group {row.target}, and a group cannot "
                      "be Created By or Modified By")
        entry = self._not_mapped.get(owner)
        if entry is None:
            entry = self._not_mapped[owner] = _NotMapped(f"{reason}; {self._default_name} used instead")
            log.info("owner %s not mapped: %s", owner, entry.reason)
        entry.pending += 1
        return self.default

    def flush_not_mapped(self, store: Any, package: tuple[int, int]) -> None:
        """Add the items counted while building ``package`` (task id, number) to the session's counters.

        A package built again (after a container expired or a job failed) is not counted twice.
        """
        first_build = package not in self._flushed_packages
        self._flushed_packages.add(package)
        for owner, entry in self._not_mapped.items():
            if entry.pending and first_build:
                # NOTE: the count can exceed the number of items: a new folder that several
                # packages carry counts once per package, and a resumed run counts the items of
                # packages left unfinished by the interrupted run again.
                store.add_counter(USER_NOT_MAPPED_SCOPE, json.dumps([owner, entry.reason]), entry.pending)
            entry.pending = 0


async def build_author_map(
    client: SharePointClient,
    mapping_file: Path | None,
    default_user: str | None,
    signed_in: UserInfo | None,
    cache: dict[tuple[str, str], UserInfo] | None = None,
) -> AuthorMap:
    """Resolve the default user and every person of the mapping file through ``ensureuser``.

    ``cache`` keeps users already resolved, keyed by (site URL, lower-case UPN), across tasks.
    Raises UserMappingError naming every mapping file line whose UPN the site cannot resolve,
    and SettingsError when the default user cannot be resolved.
    """
    cache = cache if cache is not None else {}
    site = client.site_url.lower()
    semaphore = asyncio.Semaphore(RESOLVE_CONCURRENCY)

    async def resolve(upn: str) -> UserInfo | HttpError:
        key = (site, upn.lower())
        if key in cache:
            return cache[key]
        async with semaphore:
            try:
                user = await client.ensure_user(upn)
            except HttpError as error:
                return error
        cache[key] = user
        return user

    default = signed_in
    if default_user:
        found = await resolve(default_user)
        if isinstance(found, HttpError):
            raise SettingsError(f"default user {default_user} cannot be resolved in "
                                f"{client.site_url}: {found.message}; set default_user to a user "
                                "of the tenant")
        default = found
    if mapping_file is None:
        return AuthorMap(default)
    mapping = load_user_mapping(mapping_file)
    rows = mapping.user_rows()
    upns = sorted({row.target.lower() for row in rows})
    results = dict(zip(upns, await asyncio.gather(*(resolve(upn) for upn in upns)), strict=True))
    issues = [
        MappingIssue(row.line, 2, f"target user {row.target} cannot be resolved in "
                     f"{client.site_url}: {results[row.target.lower()].message}")
        for row in rows if isinstance(results[row.target.lower()], HttpError)
    ]
    if issues:
        raise UserMappingError(mapping.path, issues)
    resolved = {upn: user for upn, user in results.items() if isinstance(user, UserInfo)}
    log.info("user mapping %s: %d user(s) resolved in %s", mapping.path, len(resolved), client.site_url)
    return AuthorMap(default, mapping=mapping, resolved=resolved)


def folder_owner(source: Any, relative_path: str) -> str | None:
    """Return the owner name of a source folder, read again from the file system.

    The packager's folder records do not carry the owner, so it is read here. The name follows
    :class:`~spmt_tui.engine.source.FileShareSource`: the user name, else the uid as text.
    Returns None for sources without a local root and for folders that cannot be read.
    """
    root = getattr(source, "root", None)
    if root is None:
        return None
    try:
        uid = os.stat(os.path.join(root, *relative_path.split("/")), follow_symlinks=False).st_uid
    except OSError:
        return None
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid) if uid else None
