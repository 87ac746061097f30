"""File-share permissions: POSIX owner, group and ACL entries mapped to SharePoint roles.

SPMT maps NTFS rights to SharePoint roles (Full control to Full Control, Modify and Write to
Contribute, Read and List folder contents to Read) and drops deny and special rights. The POSIX
mapping follows the same table:

* **Rights of one entry.** A file entry with ``w`` grants Contribute, one with ``r`` alone grants
  Read. A folder entry needs ``w`` and ``x`` to create or delete children, so ``wx`` grants
  Contribute, and ``r`` without it grants Read. ``x`` alone on a folder (traverse only) is a
  special right and is dropped, as is ``x`` on a file.
* **The owner** gets Full Control when it can write, because POSIX lets the owner change the
  item's permissions (chmod, setfacl) and that right is what separates Full Control from
  Contribute. An owner without write access gets Read, so an item deliberately made read-only
  stays read-only for its owner.
* **Named users and named groups** of the ``system.posix_acl_access`` ACL, and the owning group,
  get the role of their rights after the ACL mask is applied.
* **Other** (every local account on the file server) is dropped. Mapping it to SharePoint's
  "Everyone except external users" would open the item to the whole tenant.
* Users and groups are looked up by name in the user mapping file, and either may be mapped to
  a person or to a group. A principal without a row is dropped and listed in
  UserNotMapped.csv. A group row's target is written as the claim ``c:0t.c|tenant|<target>``
  unless it is already a claim (``c:0...``).

When one SharePoint principal receives several roles for one item, only the highest is kept.
An item gets unique permissions only when its mapped role assignments differ from those of its
parent folder; the top-level items are compared with the source root folder. A share whose
permissions are uniform therefore creates no unique scopes, and the destination library's own
permissions are never changed.

Default ACLs (``system.posix_acl_default``) only seed the ACLs of new children, which are read
from the children themselves, so they are not read.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spmt_tui.engine.users import UserMapping
    from spmt_tui.spo.sharepoint import UserInfo

log = logging.getLogger("spmt.engine.permissions")

ACL_ACCESS_XATTR = "system.posix_acl_access"

# Binary layout of the ACL extended attribute (Linux <linux/posix_acl_xattr.h>): a little-endian
# 32-bit version (2), then one 8-byte entry per ACL entry: 16-bit tag, 16-bit permission bits,
# 32-bit user or group id (0xFFFFFFFF for the entries that name no one).
ACL_EA_VERSION = 2
ACL_USER_OBJ = 0x01
ACL_USER = 0x02
ACL_GROUP_OBJ = 0x04
ACL_GROUP = 0x08
ACL_MASK = 0x10
ACL_OTHER = 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")

READ = 4
WRITE = 2
EXECUTE = 1

GROUP_CLAIM_PREFIX = "c:0t.c|tenant|"
"""Claim prefix of a Microsoft Entra security group in SharePoint Online."""

UNIQUE_SCOPES_RECOMMENDED = 5_000
UNIQUE_SCOPES_LIMIT = 50_000
"""Unique permission scopes per list: Microsoft supports 50,000 and recommends at most 5,000."""


@dataclass(frozen=True, slots=True, order=True)
class RoleDefinition:
    """A built-in SharePoint role definition.

    NOTE: ids, masks and orders are SharePoint's built-in values as remembered from
    ``_api/web/RoleDefinitions`` output; they were not checked against a live tenant here.
    """

    order: int  # lower is more privileged, as in SharePoint's RoleDefinition.Order
    id: int
    title: str
    high: int  # BasePermissions.High
    low: int  # BasePermissions.Low
    kind: int  # RoleTypeKind

    @property
    def perm_mask(self) -> str:
        """The 64-bit permission mask as decimal text, as ``Role/@PermMask`` carries it."""
        return str((self.high << 32) | self.low)


FULL_CONTROL = RoleDefinition(1, 1073741829, "Full Control", 2147483647, 4294967295, 5)
CONTRIBUTE = RoleDefinition(64, 1073741827, "Contribute", 432, 1011028719, 3)
READ_ROLE = RoleDefinition(128, 1073741826, "Read", 176, 138612833, 2)
ROLES = (FULL_CONTROL, CONTRIBUTE, READ_ROLE)


class AclFormatError(ValueError):
    """A ``system.posix_acl_access`` value is not in the Linux binary format."""


@dataclass(frozen=True, slots=True)
class AclEntry:
    """One POSIX ACL entry; ``qualifier`` is the uid or gid of named entries, else None."""

    tag: int
    perm: int
    qualifier: int | None


@dataclass(frozen=True, slots=True)
class PosixAccess:
    """The permission data of one source item: mode bits, owner, group and the raw access ACL."""

    mode: int  # st_mode & 0o7777
    uid: int
    gid: int
    acl: bytes | None = None  # the system.posix_acl_access value; None when the item has none


def parse_posix_acl(data: bytes) -> list[AclEntry]:
    """Parse the binary value of ``system.posix_acl_access``; raises AclFormatError."""
    if len(data) < _HEADER.size or (len(data) - _HEADER.size) % _ENTRY.size:
        raise AclFormatError(f"invalid ACL of {len(data)} bytes: expected 4 + 8 * n bytes")
    (version,) = _HEADER.unpack_from(data)
    if version != ACL_EA_VERSION:
        raise AclFormatError(f"unsupported ACL version {version}: expected {ACL_EA_VERSION}")
    entries = []
    for tag, perm, qualifier in _ENTRY.iter_unpack(data[_HEADER.size:]):
        if tag not in (ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_GROUP, ACL_MASK, ACL_OTHER):
            raise AclFormatError(f"invalid ACL entry tag 0x{tag:x}")
        named = tag in (ACL_USER, ACL_GROUP)
        entries.append(AclEntry(tag, perm & 7, qualifier if named else None))
    return entries


def read_acl(path: str, follow_symlinks: bool = False) -> bytes | None:
    """Return the access ACL of ``path``, or None when it has none.

    File systems without ACL support (ENOTSUP) and items without an ACL (ENODATA) give None.
    Other OSErrors are raised.
    """
    try:
        return os.getxattr(path, ACL_ACCESS_XATTR, follow_symlinks=follow_symlinks)
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.ENOTSUP, getattr(errno, "ENOATTR", errno.ENODATA)):
            return None
        raise


@dataclass(frozen=True, slots=True)
class SourceGrant:
    """Rights one POSIX principal has on an item, after the ACL mask."""

    kind: str  # "user" or "group"
    id: int
    rights: int  # r=4, w=2, x=1
    is_owner: bool = False


def source_grants(access: PosixAccess) -> list[SourceGrant]:
    """Return the owner, owning group and named ACL entries of an item; ``other`` is left out.

    Raises AclFormatError for an ACL that cannot be parsed.
    """
    mode = access.mode
    grants = [SourceGrant("user", access.uid, (mode >> 6) & 7, is_owner=True)]
    if access.acl is None:
        grants.append(SourceGrant("group", access.gid, (mode >> 3) & 7))
        return grants
    entries = parse_posix_acl(access.acl)
    # With an ACL the group bits of the mode are the mask; without a mask entry nothing is masked.
    mask = next((entry.perm for entry in entries if entry.tag == ACL_MASK), 7)
    for entry in entries:
        if entry.tag == ACL_USER and entry.qualifier is not None:
            grants.append(SourceGrant("user", entry.qualifier, entry.perm & mask))
        elif entry.tag == ACL_GROUP_OBJ:
            grants.append(SourceGrant("group", access.gid, entry.perm & mask))
        elif entry.tag == ACL_GROUP and entry.qualifier is not None:
            grants.append(SourceGrant("group", entry.qualifier, entry.perm & mask))
    return grants


def role_for(rights: int, is_folder: bool, is_owner: bool = False) -> RoleDefinition | None:
    """Return the SharePoint role for POSIX ``rights`` (r=4, w=2, x=1), or None when none applies."""
    can_write = bool(rights & WRITE) and (not is_folder or bool(rights & EXECUTE))
    if can_write:
        return FULL_CONTROL if is_owner else CONTRIBUTE
    if rights & READ:
        return READ_ROLE
    return None


@dataclass(frozen=True, slots=True, order=True)
class Principal:
    """A SharePoint user or group that receives a role; ``login`` is its claim."""

    login: str
    title: str
    email: str = ""
    is_group: bool = False


Scope = tuple[tuple[Principal, RoleDefinition], ...]
"""Role assignments of one item, sorted by principal login; one role per principal."""


@dataclass(frozen=True, slots=True)
class ItemPermissions:
    """Permission decision for one planned item.

    ``scope`` is None when the item inherits from its parent, else its unique role assignments
    (possibly empty, which leaves the item to site collection administrators). ``not_mapped``
    lists ``(source principal, reason)`` pairs whose rights were dropped.
    """

    scope: Scope | None
    not_mapped: tuple[tuple[str, str], ...] = ()


def group_claim(target: str) -> str:
    """Return the claim of a group target from the mapping file."""
    if target.lower().startswith("c:0"):
        return target
    return GROUP_CLAIM_PREFIX + target


@dataclass
class PermissionMapper:
    """Map items' POSIX permissions to SharePoint role assignments through a user mapping.

    Results are cached per distinct (mode, uid, gid, ACL, kind), which most items of a share
    have in common, so the mapping costs a dict look-up per item.
    """

    mapping: UserMapping | None
    resolved: dict[str, UserInfo]
    _cache: dict[tuple[PosixAccess, bool], tuple[Scope, tuple[tuple[str, str], ...]]] = field(
        default_factory=dict, repr=False)
    _user_names: dict[int, str] = field(default_factory=dict, repr=False)
    _group_names: dict[int, str] = field(default_factory=dict, repr=False)
    _not_mapped: dict[tuple[str, str], int] = field(default_factory=dict, repr=False)
    _flushed_packages: set[tuple[int, int]] = field(default_factory=set, repr=False)

    def scope_of(self, access: PosixAccess, is_folder: bool) -> tuple[Scope, tuple[tuple[str, str], ...]]:
        """Return the item's mapped role assignments and the principals that could not be mapped."""
        key = (access, is_folder)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        best: dict[Principal, RoleDefinition] = {}
        not_mapped: list[tuple[str, str]] = []
        try:
            grants = source_grants(access)
        except AclFormatError as error:
            log.warning("ACL ignored (owner and group bits used): %s", error)
            grants = source_grants(PosixAccess(access.mode, access.uid, access.gid))
        for grant in grants:
            role = role_for(grant.rights, is_folder, grant.is_owner)
            if role is None:
                continue
            name = self._name(grant)
            principal, reason = self._principal(name, grant.kind)
            if principal is None:
                not_mapped.append((name, reason))
                continue
            current = best.get(principal)
            if current is None or role.order < current.order:
                best[principal] = role
        result = (tuple(sorted(best.items())), tuple(dict.fromkeys(not_mapped)))
        self._cache[key] = result
        return result

    def count_not_mapped(self, entries: tuple[tuple[str, str], ...]) -> None:
        """Count one item for each principal in ``entries`` until the next flush."""
        for entry in entries:
            self._not_mapped[entry] = self._not_mapped.get(entry, 0) + 1

    def flush_not_mapped(self, store: Any, package: tuple[int, int], scope_name: str) -> None:
        """Add the counted items to the session's UserNotMapped counters, once per package."""
        import json

        first_build = package not in self._flushed_packages
        self._flushed_packages.add(package)
        if first_build:
            for (name, reason), count in self._not_mapped.items():
                store.add_counter(scope_name, json.dumps([name, reason]), count)
        self._not_mapped.clear()

    def _principal(self, name: str, kind: str) -> tuple[Principal | None, str]:
        principal_kind = "POSIX group" if kind == "group" else "POSIX user"
        if self.mapping is None:
            return None, f"{principal_kind}: no user mapping file is set, so its permissions are not migrated"
        row, reason = self.mapping.find(name)
        if row is None:
            return None, f"{principal_kind}: {reason}; its permissions are not migrated"
        if row.is_group:
            return Principal(group_claim(row.target), row.target, "", True), ""
        user = self.resolved.get(row.target.lower())
        if user is None:
            return None, f"{principal_kind}: the target {row.target} on line {row.line} was not resolved"
        return Principal(user.login, user.title, user.email, False), ""

    def _name(self, grant: SourceGrant) -> str:
        """Return the user or group name of a grant (the number as text when it has no name)."""
        if grant.kind == "user":
            cache, lookup = self._user_names, _user_name
        else:
            cache, lookup = self._group_names, _group_name
        name = cache.get(grant.id)
        if name is None:
            name = cache[grant.id] = lookup(grant.id)
        return name


def _user_name(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        import grp

        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)
