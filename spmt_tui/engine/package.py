"""Import Migration API packages: id derivation, package planning, XML building and validation.

A package imports folders and files into an existing document library. It consists of eight
XML files that go to the metadata container (each encrypted separately) plus one content blob
per file in the data container. The XML follows Microsoft's constrained deployment schemas:

* ``Manifest.xml`` (``urn:deployment-manifest-schema``): the existing list root folder and
  library, then per folder an ``SPFolder`` and its ``SPListItem``, per file an ``SPFile`` and
  its ``SPListItem``. Ids of the web, list and root folders are the real target ids. The target
  keeps the package's folder, file and list-item GUIDs and list-item integer ids (IntIds).
* ``ExportSettings.xml``, ``SystemData.xml``, ``UserGroup.xml``, ``RootObjectMap.xml``,
  ``Requirements.xml``, ``LookupListMap.xml``, ``ViewFormsList.xml``.

Items with unique permissions add two objects at the end of the manifest: a
``DeploymentRoles`` object with the role definitions used, and a ``DeploymentRoleAssignments``
object with one ``RoleAssignment`` per item (``ObjectId`` is the list item GUID, ``ObjectType``
2 for a list item) whose ``Assignment`` children name a role and a ``User`` of UserGroup.xml.
ExportSettings.xml then says ``IncludeSecurity="All"``, else ``None``.

URL conventions: ``SPObject/@Url`` is server-relative with a leading ``/``; ``File/@Url``,
``Folder/@Url`` and ``ListItem/@FileUrl`` are web-relative without one; ``ListItem/@DirName``
is the parent folder's server-relative path without the leading ``/``. Dates are written as
``yyyy-MM-ddTHH:mm:ss`` in UTC. ``FileValue`` is the blob name ``<file GUID>.dat``; ``MD5Hash``
is the base64 MD5 of the encrypted blob and ``Checksum`` the base64 QuickXorHash of the
plaintext.

The service rejects the whole job when ``SPObject``, ``Folder``, ``List`` or
``DocumentLibrary`` carries an attribute the schema does not declare, so the builder writes only
declared attributes there and :func:`validate_package` checks them against
:data:`DECLARED_ATTRIBUTES`. ``File`` and ``ListItem`` accept any extra attribute.
"""

from __future__ import annotations

import logging
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol, TypeVar

logger = logging.getLogger("spmt.engine.package")

NS_MANIFEST = "urn:deployment-manifest-schema"
NS_EXPORT_SETTINGS = "urn:deployment-exportsettings-schema"
NS_SYSTEM_DATA = "urn:deployment-systemdata-schema"
NS_USER_GROUP = "urn:deployment-usergroupmap-schema"
NS_ROOT_OBJECT_MAP = "urn:deployment-rootobjectmap-schema"
NS_REQUIREMENTS = "urn:deployment-requirements-schema"
NS_LOOKUP_LIST_MAP = "urn:deployment-lookuplistmap-schema"
# NOTE: Microsoft does not print this namespace. The singular "viewformlist" is what three
# public packagers use; one other writes "viewformslist".
NS_VIEW_FORMS_LIST = "urn:deployment-viewformlist-schema"

MANIFEST_FILE = "Manifest.xml"
EXPORT_SETTINGS_FILE = "ExportSettings.xml"
SYSTEM_DATA_FILE = "SystemData.xml"
USER_GROUP_FILE = "UserGroup.xml"
ROOT_OBJECT_MAP_FILE = "RootObjectMap.xml"
REQUIREMENTS_FILE = "Requirements.xml"
LOOKUP_LIST_MAP_FILE = "LookupListMap.xml"
VIEW_FORMS_LIST_FILE = "ViewFormsList.xml"

REQUIRED_FILES = (EXPORT_SETTINGS_FILE, SYSTEM_DATA_FILE, USER_GROUP_FILE, ROOT_OBJECT_MAP_FILE)
"""Files every package must contain; the manifest files are the ones SystemData.xml lists."""

ROOT_ELEMENTS = {
    EXPORT_SETTINGS_FILE: (NS_EXPORT_SETTINGS, "ExportSettings"),
    SYSTEM_DATA_FILE: (NS_SYSTEM_DATA, "SystemData"),
    USER_GROUP_FILE: (NS_USER_GROUP, "UserGroupMap"),
    ROOT_OBJECT_MAP_FILE: (NS_ROOT_OBJECT_MAP, "RootObjects"),
    REQUIREMENTS_FILE: (NS_REQUIREMENTS, "Requirements"),
    LOOKUP_LIST_MAP_FILE: (NS_LOOKUP_LIST_MAP, "LookupLists"),
    VIEW_FORMS_LIST_FILE: (NS_VIEW_FORMS_LIST, "ViewFormsList"),
}

# Attributes the constrained manifest schema declares on the elements that have no
# xs:anyAttribute. Kept here, not read from the XSD at run time.
_SPOBJECT_ATTRIBUTES = frozenset({
    "ObjectType", "Id", "ParentId", "Name", "IsDeleted", "IsSiteRename", "ParentWebId",
    "ParentWebUrl", "ContentTypeId", "Url",
})
_LIST_ATTRIBUTES = frozenset({
    "Id", "Title", "RootFolderId", "RootFolderUrl", "ParentWebId", "ParentWebUrl", "BaseType",
    "BaseTemplate",
})
DECLARED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "SPObject": _SPOBJECT_ATTRIBUTES,
    "List": _LIST_ATTRIBUTES,
    "DocumentLibrary": _LIST_ATTRIBUTES | {
        "DocumentTemplateUrl", "IsCatalog", "ThumbnailSize", "WebImageHeight", "WebImageWidth",
    },
    "Folder": frozenset({
        "Id", "Name", "Url", "ParentFolderId", "ParentWebId", "ParentWebUrl",
        "ContainingDocumentLibrary", "WelcomePageUrl", "WelcomePageParameters", "ListItemIntId",
        "Author", "ModifiedBy", "TimeCreated", "TimeLastModified", "ProgId", "SortBehavior",
    }),
}
REQUIRED_ATTRIBUTES: dict[str, frozenset[str]] = {
    "List": frozenset({"Id", "Title", "RootFolderUrl", "ParentWebId", "BaseTemplate"}),
    "DocumentLibrary": frozenset({"Id", "Title", "RootFolderUrl", "ParentWebId", "BaseTemplate"}),
}

SYSTEM_ACCOUNT_USER_ID = 1073741823
"""User id that stands for SharePoint's system account in Author/ModifiedBy."""

FOLDER_CONTENT_TYPE_ID = "0x0120"
SCHEMA_VERSION = {"Version": "15.0.0.0", "Build": "16.0.3111.1200", "DatabaseVersion": "11552",
                  "SiteVersion": "15"}
CLAIM_PREFIX = "i:0#.f|membership|"
# NOTE: Microsoft does not document RoleAssignment/@ObjectType; 2 (list item) and 1 (list) are
# the values a third-party packager writes.
LIST_ITEM_OBJECT_TYPE = "2"

DEFAULT_MAX_FILES = 250
DEFAULT_MAX_BYTES = 250 * 2**20


class PackageError(ValueError):
    """A package cannot be built or failed validation; the message names the value at fault."""


# -- ids --------------------------------------------------------------------------------------


def object_ids(site_url: str, list_id: uuid.UUID | str, relative_path: str) -> tuple[uuid.UUID, uuid.UUID]:
    """Return deterministic ``(object GUID, list-item GUID)`` for a path in a library.

    Both are name-based (version 5, SHA-1) UUIDs in the URL namespace, as SPMT derives its
    GUIDs. The name is ``<site url>|<list id>|<path>``, with the site URL and path lower-cased
    (SharePoint URLs compare ignoring case) and ``relative_path`` taken relative to the library
    root with "/" separators. The same path in the same library therefore gets the same ids on
    every run, which makes a re-import overwrite instead of duplicate.
    NOTE: SPMT's exact input string is not published, so these ids differ from SPMT's own.
    """
    path = relative_path.replace("\\", "/").strip("/").lower()
    name = f"{site_url.rstrip('/').lower()}|{str(list_id).lower()}|{path}"
    return uuid.uuid5(uuid.NAMESPACE_URL, name), uuid.uuid5(uuid.NAMESPACE_URL, name + "|item")


# -- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetIds:
    """Ids and URLs of the existing destination, read from SharePoint before packaging."""

    site_url: str  # absolute, for example https://contoso.sharepoint.com/sites/demo
    web_id: uuid.UUID
    web_url: str  # server-relative, "/sites/demo"; "/" for the root web
    web_root_folder_id: uuid.UUID
    list_id: uuid.UUID
    list_title: str
    list_root_folder_id: uuid.UUID
    list_root_folder_url: str  # server-relative, "/sites/demo/Shared Documents"

    @property
    def web_prefix(self) -> str:
        """Web URL with a trailing "/" ("/" for the root web)."""
        return self.web_url.rstrip("/") + "/"

    @property
    def list_web_relative_url(self) -> str:
        """Library root URL relative to the web, for example ``Shared Documents``."""
        prefix = self.web_prefix
        url = self.list_root_folder_url
        if not url.startswith(prefix):
            raise PackageError(
                f"invalid list_root_folder_url {url!r}: it must start with the web URL {prefix!r}"
            )
        return url[len(prefix):].strip("/")


@dataclass(frozen=True)
class PackageUser:
    """One person in UserGroup.xml; ``login`` is a UPN or a full claim."""

    id: int
    name: str
    login: str
    email: str = ""
    is_site_admin: bool = False
    is_deleted: bool = False
    system_id: str | None = None  # base64 SID or other id; lets the service keep a deleted user
    is_domain_group: bool = False  # a directory group, whose login is a group claim (c:0...)

    @property
    def claim(self) -> str:
        """Login as a claim: a UPN becomes ``i:0#.f|membership|<upn>``, claims are kept."""
        if self.login.startswith(("i:0#.f|", "c:0")):
            return self.login
        return CLAIM_PREFIX + self.login


@dataclass(frozen=True)
class PackageRole:
    """A role definition that role assignments refer to, written to ``DeploymentRoles``."""

    id: int
    title: str
    perm_mask: str  # 64-bit permission mask as decimal text
    order: int


@dataclass(frozen=True)
class PackageRoleAssignment:
    """One principal's role on an item; ``principal_id`` is a ``User/@Id`` of UserGroup.xml."""

    principal_id: int
    role_id: int


@dataclass(frozen=True)
class PackageFolder:
    """A folder to create; ``path`` is relative to the library root ("A/B")."""

    object_id: uuid.UUID
    item_id: uuid.UUID
    int_id: int
    name: str
    path: str
    parent_id: uuid.UUID  # parent folder's id; the list root folder id at the library root
    created: datetime
    modified: datetime
    author_id: int
    editor_id: int
    # None: the folder inherits its permissions; a tuple (maybe empty): unique permissions.
    role_assignments: tuple[PackageRoleAssignment, ...] | None = None

    is_folder = True

    @property
    def size(self) -> int:
        """Folders carry no content."""
        return 0


@dataclass(frozen=True)
class PackageFile:
    """A file to create; ``path`` is relative to the library root ("A/f.txt")."""

    object_id: uuid.UUID
    item_id: uuid.UUID
    int_id: int
    name: str
    path: str
    parent_id: uuid.UUID
    size: int
    created: datetime
    modified: datetime
    author_id: int
    editor_id: int
    blob_name: str  # the content blob's name in the data container, normally "<object_id>.dat"
    md5_base64: str  # MD5 of the encrypted blob
    checksum_base64: str | None = None  # QuickXorHash of the plaintext
    version: str = "1.0"
    # None: the file inherits its permissions; a tuple (maybe empty): unique permissions.
    role_assignments: tuple[PackageRoleAssignment, ...] | None = None

    is_folder = False


PackageItem = PackageFolder | PackageFile


def blob_name_for(object_id: uuid.UUID) -> str:
    """Return the content blob name for a file, ``<GUID>.dat``."""
    return f"{object_id}.dat"


# -- planning ---------------------------------------------------------------------------------


class Plannable(Protocol):
    """Attributes the planner reads from an item."""

    @property
    def is_folder(self) -> bool: ...
    @property
    def size(self) -> int: ...


PlanItem = TypeVar("PlanItem", bound=Plannable)


def plan_packages(
    items: Iterable[PlanItem],
    max_files: int = DEFAULT_MAX_FILES,
    max_bytes: int = DEFAULT_MAX_BYTES,
    large_file_alone: int | None = None,
) -> Iterator[list[PlanItem]]:
    """Split items, in walk order, into packages following Microsoft's sizing guidance.

    A package contains at most ``max_files`` objects (folders and files both count) and at most
    ``max_bytes`` of file content. A file of ``large_file_alone`` bytes or more (default:
    ``max_bytes``) goes into a package of its own. Order is kept, so a folder always lands in
    the same package as its first children or an earlier one, never a later one. Streaming: the
    input is read once and only the current package is held in memory.
    """
    if max_files < 1:
        raise ValueError(f"invalid max_files {max_files}: must be at least 1")
    if max_bytes < 1:
        raise ValueError(f"invalid max_bytes {max_bytes}: must be at least 1")
    threshold = max_bytes if large_file_alone is None else large_file_alone
    current: list[PlanItem] = []
    current_bytes = 0
    for item in items:
        size = 0 if item.is_folder else item.size
        if not item.is_folder and size >= threshold:
            if current:
                yield current
                current, current_bytes = [], 0
            yield [item]
            continue
        if current and (len(current) >= max_files or current_bytes + size > max_bytes):
            yield current
            current, current_bytes = [], 0
        current.append(item)
        current_bytes += size
    if current:
        yield current


# -- building ---------------------------------------------------------------------------------


def format_time(value: datetime) -> str:
    """Format an aware datetime as ``yyyy-MM-ddTHH:mm:ss`` in UTC (no fraction, no zone)."""
    if value.tzinfo is None:
        raise PackageError(f"invalid time {value.isoformat()}: must be timezone-aware")
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _serialize(root: ET.Element) -> bytes:
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _join_url(*segments: str) -> str:
    return "/".join(segment.strip("/") for segment in segments if segment.strip("/"))


class _ManifestWriter:
    """Builds Manifest.xml for one package."""

    def __init__(self, target: TargetIds) -> None:
        self.target = target
        self.root = ET.Element("SPObjects", {"xmlns": NS_MANIFEST})
        self.web_url = target.web_url if target.web_url.startswith("/") else "/" + target.web_url
        self.list_url = target.list_web_relative_url  # web-relative
        self.ids = {
            "web": str(target.web_id),
            "list": str(target.list_id),
            "root": str(target.list_root_folder_id),
            "web_root": str(target.web_root_folder_id),
        }

    def server_relative(self, web_relative: str) -> str:
        return target_url(self.web_url, web_relative)

    def add_spobject(self, object_type: str, object_id: str, parent_id: str, url: str) -> ET.Element:
        return ET.SubElement(self.root, "SPObject", {
            "Id": object_id,
            "ObjectType": object_type,
            "ParentId": parent_id,
            "ParentWebId": self.ids["web"],
            "ParentWebUrl": self.web_url,
            "Url": url,
        })

    def add_library(self) -> None:
        target = self.target
        root_url = self.server_relative(self.list_url)
        folder = self.add_spobject("SPFolder", self.ids["root"], self.ids["web_root"], root_url)
        ET.SubElement(folder, "Folder", {
            "Id": self.ids["root"],
            "Url": self.list_url,
            "Name": self.list_url.rsplit("/", 1)[-1],
            "ParentFolderId": self.ids["web_root"],
            "ParentWebId": self.ids["web"],
            "ParentWebUrl": self.web_url,
            "ContainingDocumentLibrary": self.ids["list"],
            "SortBehavior": "1",
        })
        library = self.add_spobject("SPDocumentLibrary", self.ids["list"], self.ids["web"], root_url)
        element = ET.SubElement(library, "DocumentLibrary", {
            "Id": self.ids["list"],
            "BaseTemplate": "DocumentLibrary",
            "BaseType": "DocumentLibrary",
            "RootFolderId": self.ids["root"],
            "RootFolderUrl": root_url,
            "ParentWebId": self.ids["web"],
            "ParentWebUrl": self.web_url,
            "Title": target.list_title,
        })
        ET.SubElement(element, "ContentTypes")

    def add_folder(self, folder: PackageFolder) -> None:
        web_relative = _join_url(self.list_url, folder.path)
        url = self.server_relative(web_relative)
        parent_dir = url.rsplit("/", 1)[0]
        times = {"TimeCreated": format_time(folder.created), "TimeLastModified": format_time(folder.modified)}
        users = {"Author": str(folder.author_id), "ModifiedBy": str(folder.editor_id)}
        spobject = self.add_spobject("SPFolder", str(folder.object_id), str(folder.parent_id), url)
        ET.SubElement(spobject, "Folder", {
            "Id": str(folder.object_id),
            "Url": web_relative,
            "Name": folder.name,
            "ParentFolderId": str(folder.parent_id),
            "ParentWebId": self.ids["web"],
            "ParentWebUrl": self.web_url,
            "ContainingDocumentLibrary": self.ids["list"],
            "ListItemIntId": str(folder.int_id),
            **times,
            "SortBehavior": "1",
            **users,
        })
        item = self.add_spobject("SPListItem", str(folder.item_id), self.ids["list"], url)
        list_item = ET.SubElement(item, "ListItem", {
            "FileUrl": web_relative,
            "DocType": "Folder",
            "ParentFolderId": str(folder.parent_id),
            "Order": str(folder.int_id * 100),
            "Id": str(folder.item_id),
            "ParentWebId": self.ids["web"],
            "ParentListId": self.ids["list"],
            "Name": folder.name,
            "DirName": parent_dir.lstrip("/"),
            "IntId": str(folder.int_id),
            "DocId": str(folder.object_id),
            "Version": "1.0",
            "ContentTypeId": FOLDER_CONTENT_TYPE_ID,
            **users,
            **times,
            "ModerationStatus": "Approved",
        })
        ET.SubElement(list_item, "Fields")

    def add_file(self, file: PackageFile) -> None:
        web_relative = _join_url(self.list_url, file.path)
        url = self.server_relative(web_relative)
        parent_dir = url.rsplit("/", 1)[0]
        times = {"TimeCreated": format_time(file.created), "TimeLastModified": format_time(file.modified)}
        users = {"Author": str(file.author_id), "ModifiedBy": str(file.editor_id)}

        spobject = self.add_spobject("SPFile", str(file.object_id), str(file.parent_id), url)
        attributes = {
            "Url": web_relative,
            "Id": str(file.object_id),
            "ParentWebId": self.ids["web"],
            "ParentWebUrl": self.web_url,
            "Name": file.name,
            "ListItemIntId": str(file.int_id),
            "ListId": self.ids["list"],
            "ParentId": str(file.parent_id),
            **times,
            "Version": file.version,
            "FileValue": file.blob_name,
            "FileSize": str(file.size),
            **users,
            "MD5Hash": file.md5_base64,
        }
        if file.checksum_base64:
            attributes["Checksum"] = file.checksum_base64
        ET.SubElement(spobject, "File", attributes)

        item = self.add_spobject("SPListItem", str(file.item_id), self.ids["list"], url)
        list_item = ET.SubElement(item, "ListItem", {
            "FileUrl": web_relative,
            "DocType": "File",
            "ParentFolderId": str(file.parent_id),
            "Order": str(file.int_id * 100),
            "Id": str(file.item_id),
            "ParentWebId": self.ids["web"],
            "ParentListId": self.ids["list"],
            "Name": file.name,
            "DirName": parent_dir.lstrip("/"),
            "IntId": str(file.int_id),
            "DocId": str(file.object_id),
            "Version": file.version,
            **users,
            **times,
            "ModerationStatus": "Approved",
        })
        ET.SubElement(list_item, "Fields")

    def add_security(self, items: Sequence[PackageItem], roles: Sequence[PackageRole]) -> None:
        """Add the DeploymentRoles and DeploymentRoleAssignments objects for unique scopes."""
        list_id = self.ids["list"]
        roles_object = self.add_spobject(
            "DeploymentRoles", str(uuid.uuid5(uuid.NAMESPACE_URL, f"{list_id}|DeploymentRoles")),
            self.ids["web"], self.web_url)
        roles_element = ET.SubElement(roles_object, "Roles")
        for role in roles:
            ET.SubElement(roles_element, "Role", {
                "RoleId": str(role.id),
                "Title": role.title,
                "PermMask": role.perm_mask,
                "Hidden": "false",
                "RoleOrder": str(role.order),
            })
        assignments_object = self.add_spobject(
            "DeploymentRoleAssignments",
            str(uuid.uuid5(uuid.NAMESPACE_URL, f"{list_id}|DeploymentRoleAssignments")),
            self.ids["web"], self.web_url)
        assignments_element = ET.SubElement(assignments_object, "RoleAssignments")
        for item in items:
            if item.role_assignments is None:
                continue
            scope = ET.SubElement(assignments_element, "RoleAssignment", {
                "ScopeId": str(uuid.uuid5(item.item_id, "scope")),
                "RoleDefWebId": self.ids["web"],
                "RoleDefWebUrl": self.web_url,
                "ObjectId": str(item.item_id),
                "ObjectType": LIST_ITEM_OBJECT_TYPE,
                "ObjectUrl": _join_url(self.list_url, item.path),
                "AnonymousPermMask": "0",
            })
            for assignment in item.role_assignments:
                ET.SubElement(scope, "Assignment", {
                    "RoleId": str(assignment.role_id),
                    "PrincipalId": str(assignment.principal_id),
                })


def target_url(web_url: str, web_relative: str) -> str:
    """Return the server-relative URL (leading "/") of a web-relative URL."""
    base = web_url.rstrip("/")
    return f"{base}/{web_relative.strip('/')}" if web_relative.strip("/") else (base or "/")


def build_package(
    target: TargetIds,
    items: Sequence[PackageItem],
    users: Sequence[PackageUser],
    roles: Sequence[PackageRole] = (),
) -> dict[str, bytes]:
    """Build the XML files of one package; returns ``{file name: UTF-8 bytes}``.

    ``items`` are written in the given order, which must put every folder before its
    children. ``roles`` defines every role that the items' role assignments use. Raises
    PackageError for duplicate ids, IntIds, blob names or user logins, for authors and
    principals that are not in ``users``, and for roles that are not in ``roles``.
    """
    _check_inputs(items, users)
    _check_role_assignments(items, users, roles)
    manifest = _ManifestWriter(target)
    manifest.add_library()
    for item in items:
        if isinstance(item, PackageFolder):
            manifest.add_folder(item)
        else:
            manifest.add_file(item)
    has_security = any(item.role_assignments is not None for item in items)
    if has_security:
        manifest.add_security(items, roles)
    files = {
        MANIFEST_FILE: _serialize(manifest.root),
        EXPORT_SETTINGS_FILE: _export_settings(target, include_security=has_security),
        SYSTEM_DATA_FILE: _system_data(target, manifest.web_url, object_count=len(manifest.root)),
        USER_GROUP_FILE: _user_group(users),
        ROOT_OBJECT_MAP_FILE: _root_object_map(target, manifest.web_url),
        REQUIREMENTS_FILE: _serialize(ET.Element("Requirements", {"xmlns": NS_REQUIREMENTS})),
        LOOKUP_LIST_MAP_FILE: _serialize(ET.Element("LookupLists", {"xmlns": NS_LOOKUP_LIST_MAP})),
        VIEW_FORMS_LIST_FILE: _serialize(ET.Element("ViewFormsList", {"xmlns": NS_VIEW_FORMS_LIST})),
    }
    logger.debug("package built: %d objects, %d users", len(items), len(users))
    return files


def _check_inputs(items: Sequence[PackageItem], users: Sequence[PackageUser]) -> None:
    user_ids: set[int] = set()
    logins: set[str] = set()
    for user in users:
        if user.id in user_ids:
            raise PackageError(f"duplicate user id {user.id} in UserGroup.xml input")
        login = user.claim.lower()
        if login in logins:
            raise PackageError(
                f"duplicate user login {user.claim!r}: UserGroup.xml allows one entry per person"
            )
        user_ids.add(user.id)
        logins.add(login)
    seen_ids: set[uuid.UUID] = set()
    int_ids: set[int] = set()
    blobs: set[str] = set()
    for item in items:
        for value in (item.object_id, item.item_id):
            if value in seen_ids:
                raise PackageError(f"duplicate GUID {value} in package (item {item.path!r})")
            seen_ids.add(value)
        if item.int_id < 1 or item.int_id in int_ids:
            raise PackageError(f"invalid or duplicate IntId {item.int_id} (item {item.path!r})")
        int_ids.add(item.int_id)
        for user_id in (item.author_id, item.editor_id):
            if user_id != SYSTEM_ACCOUNT_USER_ID and user_id not in user_ids:
                raise PackageError(
                    f"user id {user_id} of item {item.path!r} is not in the package users; add "
                    "the user or use the system account id"
                )
        if isinstance(item, PackageFile):
            key = item.blob_name.lower()
            if key in blobs:
                raise PackageError(f"duplicate FileValue {item.blob_name!r} (item {item.path!r})")
            blobs.add(key)


def _check_role_assignments(
    items: Sequence[PackageItem], users: Sequence[PackageUser], roles: Sequence[PackageRole]
) -> None:
    user_ids = {user.id for user in users}
    role_ids = {role.id for role in roles}
    for item in items:
        for assignment in item.role_assignments or ():
            if assignment.principal_id not in user_ids:
                raise PackageError(
                    f"principal id {assignment.principal_id} of item {item.path!r} is not in the "
                    "package users; add the user or group to UserGroup.xml")
            if assignment.role_id not in role_ids:
                raise PackageError(
                    f"role id {assignment.role_id} of item {item.path!r} is not in the package "
                    "roles; pass its role definition")


def _export_settings(target: TargetIds, include_security: bool = False) -> bytes:
    root = ET.Element("ExportSettings", {
        "xmlns": NS_EXPORT_SETTINGS,
        "SiteUrl": target.site_url,
        "FileLocation": "",
        "IncludeSecurity": "All" if include_security else "None",
        "SourceType": "FileShare",
        "IgnoreWebParts": "true",
    })
    ET.SubElement(root, "ExportObjects")
    return _serialize(root)


def _system_data(target: TargetIds, web_url: str, object_count: int) -> bytes:
    root = ET.Element("SystemData", {"xmlns": NS_SYSTEM_DATA})
    ET.SubElement(root, "SchemaVersion", {**SCHEMA_VERSION, "ObjectsProcessed": str(object_count)})
    manifests = ET.SubElement(root, "ManifestFiles")
    ET.SubElement(manifests, "ManifestFile", {"Name": MANIFEST_FILE})
    system_objects = ET.SubElement(root, "SystemObjects")
    for object_id, object_type, url in (
        (target.web_root_folder_id, "Folder", web_url),
        (target.web_id, "Web", web_url),
        (target.list_id, "List", target.list_root_folder_url),
    ):
        ET.SubElement(system_objects, "SystemObject", {"Id": str(object_id), "Type": object_type, "Url": url})
    ET.SubElement(root, "RootWebOnlyLists")
    return _serialize(root)


def _user_group(users: Sequence[PackageUser]) -> bytes:
    root = ET.Element("UserGroupMap", {"xmlns": NS_USER_GROUP})
    users_element = ET.SubElement(root, "Users")
    for user in users:
        attributes = {
            "Id": str(user.id),
            "Name": user.name,
            "Login": user.claim,
            "Email": user.email,
            "IsDomainGroup": _bool(user.is_domain_group),
            "IsSiteAdmin": _bool(user.is_site_admin),
            "IsDeleted": _bool(user.is_deleted),
            "Flags": "0",
        }
        if user.system_id:
            attributes["SystemId"] = user.system_id
        ET.SubElement(users_element, "User", attributes)
    ET.SubElement(root, "Groups")
    return _serialize(root)


def _root_object_map(target: TargetIds, web_url: str) -> bytes:
    root = ET.Element("RootObjects", {"xmlns": NS_ROOT_OBJECT_MAP})
    ET.SubElement(root, "RootObject", {
        "Id": str(target.list_id),
        "Type": "List",
        "ParentId": str(target.web_id),
        "WebUrl": web_url,
        "Url": target.list_root_folder_url,
        "IsDependency": "false",
    })
    return _serialize(root)


# -- validation -------------------------------------------------------------------------------

_DATETIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})?$")
_INT_RE = re.compile(r"^[+-]?\d+$")
_GUID_RE = re.compile(r"^\{?[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\}?$")
_DATETIME_ATTRIBUTES = ("TimeCreated", "TimeLastModified")
_INT_ATTRIBUTES = ("ListItemIntId", "IntId")


def _local(tag: str) -> tuple[str, str]:
    if tag.startswith("{"):
        namespace, _, name = tag[1:].partition("}")
        return namespace, name
    return "", tag


def _parse(name: str, data: bytes) -> ET.Element:
    try:
        return ET.fromstring(data)
    except ET.ParseError as error:
        raise PackageError(f"{name} is not well-formed XML: {error}") from error


def validate_package(files: dict[str, bytes], known_ids: Iterable[str] = ()) -> None:
    """Check a built package before upload; raises PackageError naming the first problem.

    Checks:

    * every required file is present and well-formed, with the right root element and namespace;
    * SystemData.xml lists the manifest files, and each of them exists;
    * every attribute on ``SPObject``, ``Folder``, ``List`` and ``DocumentLibrary`` is one the
      constrained schema declares, and their required attributes are present;
    * dates and integers have the schema's lexical form, and every GUID is well formed;
    * every ``ParentId``, ``ParentFolderId``, ``ParentListId``, ``ParentWebId`` and ``DocId``
      refers to an object of this package, a system object, the root object map or
      ``known_ids`` (ids of folders created by earlier packages);
    * GUIDs, IntIds and ``FileValue`` names are unique;
    * users are unique by login, and every Author/ModifiedBy is a listed user or the system
      account;
    * every role ``Assignment`` names a ``Role`` of the package and a listed user, and its
      ``RoleAssignment`` names an object of the package or the target.
    """
    for name in REQUIRED_FILES:
        if name not in files:
            raise PackageError(f"package is missing the required file {name}")
    roots: dict[str, ET.Element] = {}
    for name, data in files.items():
        if not name.lower().endswith(".xml"):
            continue
        root = _parse(name, data)
        roots[name] = root
        expected = ROOT_ELEMENTS.get(name)
        if expected is not None and _local(root.tag) != expected:
            raise PackageError(
                f"{name} has root element {root.tag!r}, expected {{{expected[0]}}}{expected[1]}"
            )

    export_settings = roots[EXPORT_SETTINGS_FILE]
    for attribute in ("SiteUrl", "SourceType"):
        if not export_settings.get(attribute):
            raise PackageError(f"{EXPORT_SETTINGS_FILE} is missing the attribute {attribute}")

    known = {value.lower().strip("{}") for value in known_ids}
    manifest_names = _manifest_names(roots[SYSTEM_DATA_FILE])
    for element in roots[SYSTEM_DATA_FILE].iter(f"{{{NS_SYSTEM_DATA}}}SystemObject"):
        known.add(element.get("Id", "").lower().strip("{}"))
    for element in roots[ROOT_OBJECT_MAP_FILE].iter(f"{{{NS_ROOT_OBJECT_MAP}}}RootObject"):
        known.add(element.get("Id", "").lower().strip("{}"))
        known.add(element.get("ParentId", "").lower().strip("{}"))

    user_ids = _user_ids(roots[USER_GROUP_FILE])
    manifests = []
    for manifest_name in manifest_names:
        if manifest_name not in roots:
            raise PackageError(f"{SYSTEM_DATA_FILE} lists {manifest_name}, which is not in the package")
        root = roots[manifest_name]
        if _local(root.tag) != (NS_MANIFEST, "SPObjects"):
            raise PackageError(f"{manifest_name} has root element {root.tag!r}, expected SPObjects")
        manifests.append((manifest_name, root))
    _validate_manifests(manifests, known, user_ids)


def _manifest_names(system_data: ET.Element) -> list[str]:
    names = [
        element.get("Name", "")
        for element in system_data.iter(f"{{{NS_SYSTEM_DATA}}}ManifestFile")
    ]
    if not names:
        raise PackageError(f"{SYSTEM_DATA_FILE} lists no ManifestFile")
    return names


def _user_ids(user_group: ET.Element) -> set[str]:
    ids: set[str] = set()
    logins: set[str] = set()
    for user in user_group.iter(f"{{{NS_USER_GROUP}}}User"):
        login = (user.get("Login") or "").lower()
        if login in logins:
            raise PackageError(f"{USER_GROUP_FILE} lists the login {user.get('Login')!r} twice")
        logins.add(login)
        user_id = user.get("Id", "")
        if user_id in ids:
            raise PackageError(f"{USER_GROUP_FILE} lists the user id {user_id!r} twice")
        ids.add(user_id)
    return ids


def _validate_manifests(
    manifests: list[tuple[str, ET.Element]], known: set[str], user_ids: set[str]
) -> None:
    defined: set[str] = set()
    references: list[tuple[str, str, str, str]] = []  # (file, element, attribute, id)
    int_ids: dict[str, str] = {}
    file_values: dict[str, str] = {}
    ns = f"{{{NS_MANIFEST}}}"
    for manifest_name, root in manifests:
        for spobject in root:
            where = f"{manifest_name}: SPObject Id={spobject.get('Id')!r}"
            if spobject.tag != ns + "SPObject":
                raise PackageError(f"{manifest_name}: unexpected element {spobject.tag!r} under SPObjects")
            _check_attributes(where, "SPObject", spobject)
            object_id = spobject.get("Id", "")
            _check_guid(where, "Id", object_id)
            if object_id.lower() in defined:
                raise PackageError(f"{where}: the Id is used by another SPObject")
            defined.add(object_id.lower())
            for attribute in ("ParentId", "ParentWebId"):
                if spobject.get(attribute):
                    references.append((manifest_name, where, attribute, spobject.get(attribute, "")))
            for child in spobject:
                _, child_name = _local(child.tag)
                child_where = f"{where} {child_name}"
                _check_attributes(child_where, child_name, child)
                for attribute in _DATETIME_ATTRIBUTES:
                    value = child.get(attribute)
                    if value is not None and not _DATETIME_RE.match(value):
                        raise PackageError(f"{child_where}: {attribute}={value!r} is not an xs:dateTime")
                for attribute in _INT_ATTRIBUTES:
                    value = child.get(attribute)
                    if value is not None and not _INT_RE.match(value):
                        raise PackageError(f"{child_where}: {attribute}={value!r} is not an xs:int")
                for attribute in ("Author", "ModifiedBy"):
                    value = child.get(attribute)
                    if value is not None and value != str(SYSTEM_ACCOUNT_USER_ID) and value not in user_ids:
                        raise PackageError(
                            f"{child_where}: {attribute}={value!r} is not a user in {USER_GROUP_FILE}"
                        )
                for attribute in ("ParentFolderId", "ParentListId", "ParentWebId", "DocId",
                                  "ParentId", "ContainingDocumentLibrary", "ListId"):
                    value = child.get(attribute)
                    if value:
                        references.append((manifest_name, child_where, attribute, value))
                if child_name == "ListItem" and child.get("IntId"):
                    int_id = child.get("IntId", "")
                    if int_id in int_ids and int_ids[int_id] != child.get("DocId"):
                        raise PackageError(f"{child_where}: IntId {int_id} is used by another list item")
                    int_ids[int_id] = child.get("DocId", "")
                if child_name == "File" and child.get("FileValue"):
                    value = child.get("FileValue", "")
                    if value.lower() in file_values:
                        raise PackageError(f"{child_where}: FileValue {value!r} is used by another file")
                    file_values[value.lower()] = child.get("Id", "")
                if child_name in ("Folder", "DocumentLibrary", "List", "File") and child.get("Id"):
                    defined.add(child.get("Id", "").lower())
    all_known = defined | known
    for manifest_name, where, attribute, value in references:
        _check_guid(where, attribute, value)
        if value.lower().strip("{}") not in all_known:
            raise PackageError(
                f"{where}: {attribute}={value!r} refers to an object that is neither in the package "
                "nor a target id; package the parent folder first or pass its id as known"
            )
    _validate_role_assignments(manifests, user_ids, all_known)


def _validate_role_assignments(
    manifests: list[tuple[str, ET.Element]], user_ids: set[str], known: set[str]
) -> None:
    """Check that every Assignment names a package role and user, and its item is known."""
    ns = f"{{{NS_MANIFEST}}}"
    role_ids = {
        role.get("RoleId", "")
        for _, root in manifests for role in root.iter(ns + "Role")
    }
    for manifest_name, root in manifests:
        for scope in root.iter(ns + "RoleAssignment"):
            where = f"{manifest_name}: RoleAssignment ObjectId={scope.get('ObjectId')!r}"
            for attribute in ("ScopeId", "ObjectId"):
                _check_guid(where, attribute, scope.get(attribute, ""))
            if scope.get("ObjectId", "").lower().strip("{}") not in known:
                raise PackageError(f"{where}: the object is not in the package or the target; "
                                   "package the item or remove its RoleAssignment")
            for assignment in scope.iter(ns + "Assignment"):
                if assignment.get("PrincipalId", "") not in user_ids:
                    raise PackageError(
                        f"{where}: PrincipalId={assignment.get('PrincipalId')!r} is not a user in "
                        f"{USER_GROUP_FILE}")
                if assignment.get("RoleId", "") not in role_ids:
                    raise PackageError(
                        f"{where}: RoleId={assignment.get('RoleId')!r} is not a Role of the package")


def _check_attributes(where: str, element: str, node: ET.Element) -> None:
    declared = DECLARED_ATTRIBUTES.get(element)
    if declared is None:
        return
    for attribute in node.attrib:
        if attribute not in declared:
            raise PackageError(
                f"{where}: attribute {attribute!r} is not declared on {element} in the manifest "
                "schema, and the import service rejects the job for it; remove the attribute"
            )
    for attribute in REQUIRED_ATTRIBUTES.get(element, ()):
        if not node.get(attribute):
            raise PackageError(f"{where}: required attribute {attribute!r} is missing on {element}")


def _check_guid(where: str, attribute: str, value: str) -> None:
    if not _GUID_RE.match(value):
        raise PackageError(f"{where}: {attribute}={value!r} is not a GUID")
