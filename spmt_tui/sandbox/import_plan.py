"""Planning an import: every package object checked against the target, without changing it.

The planner resolves parent folders, libraries, names and paths (``spmt_tui.sandbox.rules``),
IntIds, users and times, and reads, verifies and stores the content of each file version. It
returns the folder and file steps that ``spmt_tui.sandbox.import_apply`` writes; problems become
JobError and JobWarning events on the run.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import logging
import re
import uuid
from dataclasses import dataclass
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from spmt_tui.sandbox import rules
from spmt_tui.sandbox.import_package import ContainerView, JobFatal, PackageFiles, SnapshotBlob
from spmt_tui.sandbox.jobs import AesDecryptor, redact_sas
from spmt_tui.sandbox.schema import XmlElement
from spmt_tui.sandbox.store import Library, Site, time_text

if TYPE_CHECKING:
    from spmt_tui.sandbox.importer import ImportRun

log = logging.getLogger("spmt.sandbox.importer")

# Blobs read at once per job; storage round trips, not CPU, limit a job that reads one at a time.
PREFETCH_WORKERS = 8

SYSTEM_ACCOUNT_ID = 1073741823

# The child element each SPObject type carries.
OBJECT_CHILDREN = {
    "SPDocumentLibrary": "DocumentLibrary",
    "SPList": "List",
    "SPFolder": "Folder",
    "SPFile": "File",
    "SPListItem": "ListItem",
}

# Error codes (signed HRESULTs). Only FATAL_ERROR is a value seen in Microsoft's samples.
# NOTE: the per-object codes the service uses are not published. These are the Windows codes
# whose meaning matches each problem.
FATAL_ERROR = -2147213196
ERROR_FILE_NOT_FOUND = -2147024894  # 0x80070002
ERROR_PATH_NOT_FOUND = -2147024893  # 0x80070003
ERROR_INVALID_NAME = -2147024773  # 0x8007007B
ERROR_FILENAME_TOO_LONG = -2147024690  # 0x800700CE
ERROR_FILE_TOO_LARGE = -2147024665  # 0x800700DF
ERROR_CRC = -2147024873  # 0x80070017
ERROR_ALREADY_EXISTS = -2147024713  # 0x800700B7
ERROR_INVALID_DATA = -2147024883  # 0x8007000D
ERROR_INVALID_ARGUMENT = -2147024809  # 0x80070057

_CLAIMS_LOGIN = re.compile(r"(i:0#\.f\|membership\|[^@|\s]+@[^@|\s]+|c:0[^|]*\|.+)", re.IGNORECASE)
_FRACTION = re.compile(r"(\.\d{6})\d+")


# -- QuickXorHash -----------------------------------------------------------------------------

_QX_WIDTH_BITS = 160
_QX_SHIFT = 11
_QX_BLOCK = _QX_WIDTH_BITS  # bytes: byte i lands at bit (11 * i) mod 160, which repeats every 160
_QX_MASK = (1 << _QX_WIDTH_BITS) - 1


class QuickXorHash:
    """Microsoft's QuickXorHash (OneDrive/SharePoint), computed incrementally.

    Byte ``i`` of the input is XORed into a 160-bit state at bit ``(11 * i) mod 160`` (wrapping
    around), and the input length is XORed into the last 8 bytes of the little-endian result.
    Because the bit position repeats every 160 bytes, the input is first folded into one
    160-byte block with big-integer XORs, which keeps the work in C.
    """

    def __init__(self) -> None:
        self._folded = 0
        self._length = 0

    def update(self, data: bytes) -> None:
        if not data:
            return
        offset = self._length % _QX_BLOCK
        padded = bytes(offset) + data
        padded += bytes(-len(padded) % _QX_BLOCK)
        self._folded ^= _fold_blocks(padded)
        self._length += len(data)

    def digest(self) -> bytes:
        state = 0
        for index in range(_QX_BLOCK):
            value = (self._folded >> (8 * index)) & 0xFF
            if not value:
                continue
            position = (_QX_SHIFT * index) % _QX_WIDTH_BITS
            state ^= ((value << position) | (value >> (_QX_WIDTH_BITS - position))) & _QX_MASK
        result = bytearray(state.to_bytes(_QX_WIDTH_BITS // 8, "little"))
        for index, byte in enumerate(self._length.to_bytes(8, "little")):
            result[len(result) - 8 + index] ^= byte
        return bytes(result)

    def b64digest(self) -> str:
        return base64.b64encode(self.digest()).decode()


def _fold_blocks(data: bytes) -> int:
    """XOR all ``_QX_BLOCK``-byte blocks of ``data`` into one little-endian integer."""
    extra = 0
    while len(data) > _QX_BLOCK:
        if (len(data) // _QX_BLOCK) % 2:
            extra ^= int.from_bytes(data[-_QX_BLOCK:], "little")
            data = data[:-_QX_BLOCK]
        half = len(data) // 2
        merged = int.from_bytes(data[:half], "little") ^ int.from_bytes(data[half:], "little")
        data = merged.to_bytes(half, "little")
    return extra ^ int.from_bytes(data, "little")


# -- small helpers ----------------------------------------------------------------------------


def parse_manifest_time(text: str | None) -> dt.datetime | None:
    """Parse an ``xs:dateTime``; a value without a zone is taken as UTC."""
    if not text:
        return None
    cleaned = _FRACTION.sub(r"\1", text.strip())
    try:
        value = dt.datetime.fromisoformat(cleaned.replace("Z", "+00:00"))
    except ValueError:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    return value.astimezone(dt.timezone.utc)


def _guid(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(uuid.UUID(text.strip().strip("{}")))
    except ValueError:
        return None


def _version_key(label: str) -> tuple[int, int] | None:
    major, _, minor = label.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        return None
    return int(major), int(minor or 0)


def _join_url(web_url: str, relative: str) -> str:
    """Turn a web-relative URL into a server-relative one; server-relative input is kept."""
    if relative.startswith("/"):
        return relative.rstrip("/") or "/"
    base = web_url.rstrip("/")
    return f"{base}/{relative.strip('/')}"


def _parent_url(url: str) -> str:
    return url.rsplit("/", 1)[0] or "/"


def _leaf(url: str) -> str:
    return url.rsplit("/", 1)[-1]


class ContentError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# -- steps ------------------------------------------------------------------------------------


@dataclass
class ItemInfo:
    """The list item of a folder or file, from its ListItem object or the file's attributes.

    ``problem`` describes an inconsistency (IntIds that differ, an IntId that is not positive).
    """

    element: XmlElement | None
    item_id: str | None
    int_id: int | None
    problem: str | None = None


@dataclass
class FolderStep:
    objects: int
    id: str
    list_id: str
    url: str
    name: str
    parent_id: str
    item_id: str
    int_id: int | None
    created: str
    modified: str
    author_id: int
    editor_id: int
    exists: bool


@dataclass
class VersionPlan:
    label: str
    content: str
    length: int
    created: str
    modified: str
    author_id: int
    editor_id: int


@dataclass
class FileStep:
    objects: int
    id: str
    list_id: str
    folder_id: str
    url: str
    name: str
    item_id: str
    int_id: int | None
    versions: list[VersionPlan]
    cancelled: bool = False

    @property
    def current(self) -> VersionPlan:
        return self.versions[-1]


class Planner:
    """Check every package object against the target and build the steps to apply.

    Nothing in the tenant changes here except new content files, which are removed again if the
    package is blocked.
    """

    def __init__(self, run: ImportRun, package: PackageFiles, data: ContainerView) -> None:
        self.run = run
        self.store = run.store
        self.package = package
        self.data = data
        assert run.site is not None
        self.site: Site = run.site
        self.web_id = self.site.web_id.lower()
        self.libraries: dict[str, Library] = {
            library.id.lower(): library for library in self.store.libraries(self.site.id)
        }
        self.folders_by_id: dict[str, FolderStep] = {}
        self.folders_by_url: dict[str, str] = {}
        self.files_by_id: dict[str, FileStep] = {}
        self.files_by_url: dict[str, str] = {}
        self.int_ids: dict[tuple[str, int], str] = {}
        self.released: set[str] = set()
        self.items_by_doc: dict[str, XmlElement] = {}
        self.items_by_url: dict[str, XmlElement] = {}
        self.claimed_items: set[int] = set()
        self.steps: list[FolderStep | FileStep] = []
        self.prefetched: dict[str, Any] = {}

    # entry point

    def plan(self) -> list[Any]:
        """Check every SPObject of the manifests and return the steps to apply.

        Folders come first, then files, then the role assignment (unique permission) steps.

        Folders are planned parents first (by URL depth), so their order in the manifest does not
        matter. Raises JobFatal for problems that end the whole job.
        """
        objects = [
            (name, spobject)
            for name, root in self.package.manifests
            for spobject in root.children_named("SPObject")
        ]
        self.run.counters.expected_objects = len(objects)
        self._check_web_ids(objects)
        self.run.user_map = UserResolver(self.run, self.package.user_group).resolve()

        folders: list[XmlElement] = []
        files: list[XmlElement] = []
        items: list[XmlElement] = []
        role_objects: list[XmlElement] = []
        assignment_objects: list[XmlElement] = []
        for _name, spobject in objects:
            kind = spobject.get("ObjectType") or ""
            child = spobject.children[0] if spobject.children else None
            expected_child = OBJECT_CHILDREN.get(kind)
            if child is not None and expected_child is not None and child.name != expected_child:
                self._fail(kind, spobject.get("Url") or "", spobject.get("Id") or "", ERROR_INVALID_ARGUMENT,
                           f"An SPObject of type {kind} must contain a {expected_child} element, not "
                           f"{child.name}.", 1)
            elif kind in ("SPDocumentLibrary", "SPList") and child is not None:
                self._plan_library(spobject, child)
            elif kind == "SPFolder" and child is not None:
                folders.append(spobject)
            elif kind == "SPFile" and child is not None:
                files.append(spobject)
            elif kind == "SPListItem" and child is not None:
                items.append(child)
            elif kind == "DeploymentRoles":
                role_objects.append(spobject)
            elif kind == "DeploymentRoleAssignments":
                assignment_objects.append(spobject)
            else:
                # NOTE: content types are accepted but not applied.
                self.run.count_objects(1)
        self._check_root_objects()

        for item in items:
            doc_id = _guid(item.get("DocId"))
            if doc_id:
                self.items_by_doc.setdefault(doc_id, item)
            file_url = item.get("FileUrl")
            if file_url:
                self.items_by_url.setdefault(_join_url(self.site.url, file_url).lower(), item)

        for spobject in sorted(folders, key=self._depth):
            self.run.checkpoint()
            self._plan_folder(spobject)
        self._prefetch(files)
        for spobject in files:
            self.run.checkpoint()
            self._plan_file(spobject)
        for leftover in self.prefetched.values():
            # Blobs of files that failed a check before their content was needed.
            if not isinstance(leftover, ContentError):
                self.store.remove_content(leftover[1])
        self.prefetched.clear()
        for item in items:
            if id(item) not in self.claimed_items:
                self._unmatched_item(item)
        self._allocate_int_ids()
        planned = [step for step in self.steps if not (isinstance(step, FileStep) and step.cancelled)]
        # Imported here: import_roles builds on this module's steps.
        from spmt_tui.sandbox.import_roles import RolePlanner

        return planned + RolePlanner(self).plan(role_objects, assignment_objects)

    # checks of the whole package

    def _check_web_ids(self, objects: list[tuple[str, XmlElement]]) -> None:
        for name, spobject in objects:
            for element in (spobject, *spobject.children):
                web_id = element.get("ParentWebId")
                if web_id and _guid(web_id) != self.web_id:
                    raise JobFatal(
                        f"The parent web {web_id} was not found; the target web is {self.site.web_id} "
                        f"({self.site.url}).",
                        detail=f"{name}, line {element.line}",
                    )
        system_data = self.package.system_data
        if system_data is not None:
            for system_object in system_data.iter("SystemObject"):
                if system_object.get("Type") == "Web" and _guid(system_object.get("Id")) != self.web_id:
                    raise JobFatal(
                        f"The parent web {system_object.get('Id')} was not found; the target web is "
                        f"{self.site.web_id} ({self.site.url})."
                    )

    def _check_root_objects(self) -> None:
        root_map = self.package.root_object_map
        if root_map is None:
            return
        for root_object in root_map.iter("RootObject"):
            if root_object.get("Type") != "List":
                continue
            list_id = _guid(root_object.get("Id"))
            if list_id not in self.libraries:
                self.run.object_error(
                    "List", root_object.get("Url") or "", root_object.get("Id") or "",
                    ERROR_FILE_NOT_FOUND,
                    f"RootObjectMap.xml names list {root_object.get('Id')}, which does not exist in "
                    f"{self.site.url}.",
                )

    def _depth(self, spobject: XmlElement) -> int:
        child = spobject.children[0]
        url = child.get("Url") or spobject.get("Url") or ""
        return url.strip("/").count("/")

    # libraries

    def _plan_library(self, spobject: XmlElement, element: XmlElement) -> None:
        list_id = _guid(element.get("Id") or spobject.get("Id"))
        root_url = element.get("RootFolderUrl") or ""
        library = self.libraries.get(list_id or "")
        self.run.count_objects(1)
        if library is None:
            self.run.object_error(
                "List", root_url, element.get("Id") or "", ERROR_FILE_NOT_FOUND,
                f"List {element.get('Id')} does not exist in {self.site.url}; its items are not imported.",
            )
            return
        if root_url and _join_url(self.site.url, root_url).lower() != library.root_folder_url.lower():
            self.run.warn(
                f"DocumentLibrary RootFolderUrl {root_url} does not match the library's root folder "
                f"{library.root_folder_url}.",
                object_type="List", url=root_url, object_id=library.id,
            )
        self.run.counters.count_type("SPDocumentLibrary")

    # folders

    def _item_for(self, object_id: str, url: str) -> XmlElement | None:
        item = self.items_by_doc.get(object_id) or self.items_by_url.get(url.lower())
        if item is not None:
            self.claimed_items.add(id(item))
        return item

    def _plan_folder(self, spobject: XmlElement) -> None:
        element = spobject.children[0]
        folder_id = _guid(element.get("Id") or spobject.get("Id"))
        relative = element.get("Url") or spobject.get("Url") or ""
        url = _join_url(self.site.url, relative) if relative else ""
        item = self._item_for(folder_id or "", url) if folder_id else None
        objects = 1 + (1 if item is not None else 0)
        if folder_id is None or not url:
            self._fail("Folder", url, element.get("Id") or "", ERROR_INVALID_ARGUMENT,
                       "The folder has no valid Id or Url.", objects)
            return

        if folder_id == self.site.web_root_folder_id.lower() or any(
            folder_id == library.root_folder_id.lower() for library in self.libraries.values()
        ):
            self.run.count_objects(objects)
            return

        list_id = _guid(element.get("ContainingDocumentLibrary"))
        library = self.libraries.get(list_id or "")
        if library is None:
            self._fail("Folder", url, folder_id, ERROR_FILE_NOT_FOUND,
                       f"The folder's library {element.get('ContainingDocumentLibrary')} does not exist.",
                       objects)
            return
        if not url.lower().startswith(library.root_folder_url.lower() + "/"):
            self._fail("Folder", url, folder_id, ERROR_INVALID_ARGUMENT,
                       f"The folder URL is not inside the library {library.root_folder_url}.", objects)
            return
        parent = self._resolve_parent_folder(element.get("ParentFolderId"), url)
        if parent is None:
            self._fail("Folder", url, folder_id, ERROR_PATH_NOT_FOUND,
                       f"The parent folder {_parent_url(url)} was not found.", objects)
            return

        name = _leaf(url)
        violation = rules.check_name(
            name, is_folder=True, at_library_root=parent[1].lower() == library.root_folder_url.lower()
        ) or rules.check_path(url)
        if violation is not None:
            code = ERROR_FILENAME_TOO_LONG if violation.code == "path_too_long" else ERROR_INVALID_NAME
            self._fail("Folder", url, folder_id, code, violation.message, objects)
            return

        exists = self._check_folder_identity(folder_id, url, objects)
        if exists is None:
            return
        info = self._item_info(item, element.get("ListItemIntId"), folder_id)
        if not self._claim_int_id(library.id, info, folder_id, "Folder", url, objects):
            return

        created, modified, author_id, editor_id = self._times_and_users([element, item], "Folder", url)
        step = FolderStep(
            objects=objects, id=folder_id, list_id=library.id, url=url, name=name,
            parent_id=parent[0], item_id=info.item_id or str(uuid.uuid4()), int_id=info.int_id,
            created=created, modified=modified, author_id=author_id, editor_id=editor_id,
            exists=exists,
        )
        self.folders_by_id[folder_id] = step
        self.folders_by_url[url.lower()] = folder_id
        self.steps.append(step)

    def _resolve_parent_folder(self, parent_id_text: str | None, url: str) -> tuple[str, str] | None:
        """Return ``(id, url)`` of the parent folder, from the package or the tenant."""
        parent_url = _parent_url(url)
        parent_id = _guid(parent_id_text)
        if parent_id:
            planned = self.folders_by_id.get(parent_id)
            if planned is not None:
                found = (planned.id, planned.url)
            else:
                row = self.store.folder_by_id(parent_id)
                found = (row["id"], row["url"]) if row is not None else None
        else:
            planned_id = self.folders_by_url.get(parent_url.lower())
            if planned_id is not None:
                found = (planned_id, self.folders_by_id[planned_id].url)
            else:
                row = self.store.folder_by_url(parent_url)
                found = (row["id"], row["url"]) if row is not None else None
        if found is None or found[1].lower() != parent_url.lower():
            return None
        return found

    def _check_folder_identity(self, folder_id: str, url: str, objects: int) -> bool | None:
        """Return whether the folder exists already; None (after an error) on an id conflict."""
        by_url = self.folders_by_url.get(url.lower())
        row = self.store.folder_by_url(url)
        owner = by_url or (row["id"].lower() if row is not None else None)
        if owner is not None and owner != folder_id:
            self._fail("Folder", url, folder_id, ERROR_ALREADY_EXISTS,
                       f"A folder with another id ({owner}) already exists at {url}.", objects)
            return None
        existing = self.store.folder_by_id(folder_id)
        if existing is not None and existing["url"].lower() != url.lower():
            # NOTE: moving or renaming an existing folder through an import is not supported by
            # the sandbox.
            self._fail("Folder", url, folder_id, ERROR_ALREADY_EXISTS,
                       f"The folder id is already used by {existing['url']}.", objects)
            return None
        if self.store.file_by_url(url) is not None or url.lower() in self.files_by_url:
            self._fail("Folder", url, folder_id, ERROR_ALREADY_EXISTS, f"A file already exists at {url}.",
                       objects)
            return None
        return existing is not None or folder_id in self.folders_by_id

    # files

    def _plan_file(self, spobject: XmlElement) -> None:
        element = spobject.children[0]
        file_id = _guid(element.get("Id") or spobject.get("Id"))
        relative = element.get("Url") or spobject.get("Url") or ""
        url = _join_url(self.site.url, relative) if relative else ""
        item = self._item_for(file_id or "", url) if file_id else None
        objects = 1 + (1 if item is not None else 0)
        if file_id is None or not url:
            self._fail("File", url, element.get("Id") or "", ERROR_INVALID_ARGUMENT,
                       "The file has no valid Id or Url.", objects)
            return

        parent = self._resolve_parent_folder(element.get("ParentId"), url)
        if parent is None:
            self._fail("File", url, file_id, ERROR_PATH_NOT_FOUND,
                       f"The parent folder {_parent_url(url)} was not found.", objects)
            return
        library = self._library_of(element.get("ListId"), parent[0])
        if library is None or not url.lower().startswith(library.root_folder_url.lower() + "/"):
            self._fail("File", url, file_id, ERROR_FILE_NOT_FOUND,
                       f"The file's library {element.get('ListId') or ''} does not exist or does not "
                       "contain the file URL.", objects)
            return

        name = _leaf(url)
        violation = rules.check_name(name, is_folder=False) or rules.check_path(url)
        if violation is not None:
            code = ERROR_FILENAME_TOO_LONG if violation.code == "path_too_long" else ERROR_INVALID_NAME
            self._fail("File", url, file_id, code, violation.message, objects)
            return
        if self.store.folder_by_url(url) is not None or url.lower() in self.folders_by_url:
            self._fail("File", url, file_id, ERROR_ALREADY_EXISTS, f"A folder already exists at {url}.",
                       objects)
            return

        self._release_overwritten(file_id, url)
        info = self._item_info(item, element.get("ListItemIntId"), file_id)
        if not self._claim_int_id(library.id, info, file_id, "File", url, objects):
            return

        versions = self._plan_versions(element, item, library, url, file_id, objects)
        if versions is None:
            self._release_int_id(library.id, info.int_id, file_id)
            return
        step = FileStep(
            objects=objects, id=file_id, list_id=library.id, folder_id=parent[0], url=url, name=name,
            item_id=info.item_id or str(uuid.uuid4()), int_id=info.int_id, versions=versions,
        )
        self.files_by_id[file_id] = step
        self.files_by_url[url.lower()] = file_id
        self.steps.append(step)
        self.run.counters.expected_bytes += sum(version.length for version in versions)

    def _library_of(self, list_id_text: str | None, folder_id: str) -> Library | None:
        list_id = _guid(list_id_text)
        if list_id:
            return self.libraries.get(list_id)
        planned = self.folders_by_id.get(folder_id.lower())
        if planned is not None:
            return self.libraries.get(planned.list_id.lower())
        row = self.store.folder_by_id(folder_id)
        return self.libraries.get(row["list_id"].lower()) if row is not None else None

    def _release_overwritten(self, file_id: str, url: str) -> None:
        """Overwrite semantics: a file with the same id or the same URL is replaced."""
        for other_id in {self.files_by_url.get(url.lower()), file_id}:
            planned = self.files_by_id.get(other_id or "")
            if planned is not None and not planned.cancelled:
                planned.cancelled = True
                self.run.count_objects(planned.objects)
                self._release_int_id(planned.list_id, planned.int_id, planned.id)
                self.files_by_url.pop(planned.url.lower(), None)
                for version in planned.versions:
                    self.store.remove_content(version.content)
        for row in (self.store.file_by_id(file_id), self.store.file_by_url(url)):
            if row is not None:
                self.released.add(row["id"].lower())

    def _plan_versions(
        self, element: XmlElement, item: XmlElement | None, library: Library, url: str, file_id: str,
        objects: int,
    ) -> list[VersionPlan] | None:
        versions_element = element.child("Versions")
        sources = versions_element.children_named("File") if versions_element is not None else []
        if element.get("FileValue") and not any(
            source.get("Version") == element.get("Version", "1.0") for source in sources
        ):
            sources = [*sources, element]
        if not sources:
            self._fail("File", url, file_id, ERROR_INVALID_ARGUMENT, "The file has no FileValue.", objects)
            return None
        keyed: list[tuple[tuple[int, int], XmlElement]] = []
        for source in sources:
            label = source.get("Version") or "1.0"
            key = _version_key(label)
            if key is None:
                self._fail("File", url, file_id, ERROR_INVALID_ARGUMENT,
                           f"The version label '{label}' is not valid.", objects)
                return None
            keyed.append((key, source))
        keyed.sort(key=lambda pair: pair[0])
        if len(keyed) > 1 and not library.versioning:
            self.run.warn(
                f"Versioning is off in {library.title}; only the current version is imported.",
                object_type="File", url=url, object_id=file_id,
            )
            keyed = keyed[-1:]
        plans: list[VersionPlan] = []
        for index, (_key, source) in enumerate(keyed):
            is_current = index == len(keyed) - 1
            plan = self._plan_content(source, element if is_current else None, item if is_current else None,
                                      url, file_id, objects)
            if plan is None:
                for done in plans:
                    self.store.remove_content(done.content)
                return None
            plans.append(plan)
        return plans

    def _plan_content(
        self, source: XmlElement, outer: XmlElement | None, item: XmlElement | None, url: str, file_id: str,
        objects: int,
    ) -> VersionPlan | None:
        label = source.get("Version") or "1.0"
        file_value = source.get("FileValue") or ""
        try:
            content, length = self._fetch_content(source, outer, file_value)
        except ContentError as failure:
            self._fail("File", url, file_id, failure.code, f"Version {label}: {failure.message}", objects)
            return None
        violation = rules.check_size(length)
        if violation is not None:
            self.store.remove_content(content)
            self._fail("File", url, file_id, ERROR_FILE_TOO_LARGE, violation.message, objects)
            return None
        declared = source.get("FileSize") or (outer.get("FileSize") if outer is not None else None)
        if declared and declared.isdigit() and int(declared) != length:
            self.run.warn(
                f"Version {label}: FileSize is {declared} but the content has {length} bytes.",
                object_type="File", url=url, object_id=file_id,
            )
        # A version's own File element wins. For attributes it does not carry, the current version
        # falls back to the outer File element and then to its ListItem.
        created, modified, author_id, editor_id = self._times_and_users([source, outer, item], "File", url)
        return VersionPlan(label, content, length, created, modified, author_id, editor_id)

    def _fetch_content(self, source: XmlElement, outer: XmlElement | None, file_value: str) -> tuple[str, int]:
        """Read one version's blob, verify it and write the plain bytes; return (content, length)."""
        if not file_value:
            raise ContentError(ERROR_INVALID_ARGUMENT, "FileValue is missing.")
        attributes = source.attributes if outer is None else {**outer.attributes, **source.attributes}
        fetched = self.prefetched.pop(file_value, None)
        if fetched is None:
            fetched = self._download(file_value, attributes.get("InitializationVector"))
        if isinstance(fetched, ContentError):
            raise fetched
        blob, content, length, md5, checksum = fetched
        try:
            self._verify_hashes(blob, attributes, md5, checksum)
        except ContentError:
            self.store.remove_content(content)
            raise
        return content, length

    def _prefetch(self, files: list[XmlElement]) -> None:
        """Download, decrypt and hash every blob the files name, several at once.

        Reading blobs one by one made the import wait on a storage round trip per file; the
        results wait in ``prefetched`` until the file's own checks use them.
        """
        wanted: dict[str, str | None] = {}
        for spobject in files:
            element = spobject.children[0] if spobject.children else None
            if element is None:
                continue
            sources = [element, *(child for versions in element.children_named("Versions")
                                  for child in versions.children_named("File"))]
            for source in sources:
                file_value = source.get("FileValue")
                if file_value and file_value not in wanted:
                    wanted[file_value] = source.get("InitializationVector") or element.get("InitializationVector")
        if len(wanted) < 2:
            return
        with ThreadPoolExecutor(max_workers=PREFETCH_WORKERS, thread_name_prefix="import-read") as pool:
            futures = {name: pool.submit(self._download_or_error, name, iv) for name, iv in wanted.items()}
            for name, future in futures.items():
                self.prefetched[name] = future.result()

    def _download_or_error(self, file_value: str, iv_attribute: str | None) -> Any:
        try:
            return self._download(file_value, iv_attribute)
        except ContentError as failure:
            return failure

    def _download(
        self, file_value: str, iv_attribute: str | None
    ) -> tuple[SnapshotBlob, str, int, bytes, QuickXorHash]:
        """Download and decrypt one blob into a new content file; return it with its hashes."""
        blob = self.data.latest.get(file_value)
        if blob is None:
            if self.data.has_blob(file_value):
                raise ContentError(
                    ERROR_FILE_NOT_FOUND,
                    f"Blob {file_value} has no snapshot; the import reads only the latest snapshot.",
                )
            raise ContentError(ERROR_FILE_NOT_FOUND, f"Blob {file_value} was not found in the data container.")

        decryptor = None
        if self.run.job.encrypted:
            iv_text = self.data.iv_of(blob) or iv_attribute
            if not iv_text or self.run.job.key is None:
                raise ContentError(ERROR_INVALID_DATA, f"Blob {file_value} has no IV metadata.")
            try:
                decryptor = AesDecryptor(self.run.job.key, base64.b64decode(iv_text))
            except ValueError:
                raise ContentError(ERROR_INVALID_DATA, f"The IV of blob {file_value} is not valid.") from None

        content, path = self.store.new_content_path()
        self.run.new_content.append(content)
        md5 = hashlib.md5()
        checksum = QuickXorHash()
        length = 0
        try:
            with open(path, "wb") as output:
                for chunk in self.data.chunks(blob):
                    md5.update(chunk)
                    plain = decryptor.update(chunk) if decryptor else chunk
                    checksum.update(plain)
                    output.write(plain)
                    length += len(plain)
                if decryptor is not None:
                    tail = decryptor.finalize()
                    checksum.update(tail)
                    output.write(tail)
                    length += len(tail)
        except ValueError:
            self.store.remove_content(content)
            raise ContentError(
                ERROR_INVALID_DATA, f"Blob {file_value} could not be decrypted with the job key and its IV."
            ) from None
        except Exception as failure:  # noqa: BLE001 - a storage error fails only this file
            self.store.remove_content(content)
            log.error("job %s: reading blob %s failed: %s", self.run.job.id, file_value, redact_sas(str(failure)))
            raise ContentError(ERROR_FILE_NOT_FOUND, f"Blob {file_value} could not be read.") from None
        return blob, content, length, md5.digest(), checksum

    @staticmethod
    def _verify_hashes(
        blob: SnapshotBlob, attributes: dict[str, str], md5: bytes, checksum: QuickXorHash
    ) -> None:
        if blob.content_md5 is not None and blob.content_md5 != md5:
            raise ContentError(ERROR_CRC, f"The MD5 of blob {blob.name} does not match its Content-MD5.")
        declared_md5 = attributes.get("MD5Hash")
        if declared_md5 and declared_md5 != base64.b64encode(md5).decode():
            raise ContentError(
                ERROR_CRC, f"MD5Hash {declared_md5} does not match the MD5 of the uploaded (encrypted) blob."
            )
        declared_checksum = attributes.get("Checksum")
        if declared_checksum and declared_checksum != checksum.b64digest():
            raise ContentError(
                ERROR_CRC, f"Checksum {declared_checksum} does not match the QuickXorHash of the content."
            )

    # list items, IntIds, users

    def _item_info(self, item: XmlElement | None, int_id_text: str | None, object_id: str) -> ItemInfo:
        """Combine the document's ListItemIntId with its ListItem (schema-valid ints or None)."""
        int_id = int(int_id_text) if int_id_text else None
        if item is None:
            existing = self.store.file_by_id(object_id) or self.store.folder_by_id(object_id)
            if int_id is None and existing is not None:
                int_id = existing["int_id"]
            item_id = existing["item_id"] if existing is not None else None
            info = ItemInfo(None, item_id, int_id)
        else:
            item_int = int(item.get("IntId")) if item.get("IntId") else None
            info = ItemInfo(item, _guid(item.get("Id")), item_int if item_int is not None else int_id)
            if int_id is not None and item_int is not None and item_int != int_id:
                info.problem = f"The ListItem IntId {item_int} differs from the ListItemIntId {int_id}."
        if info.int_id is not None and info.int_id <= 0:
            info.problem = f"The list item IntId {info.int_id} is not positive."
        return info

    def _claim_int_id(
        self, list_id: str, info: ItemInfo, object_id: str, object_type: str, url: str, objects: int
    ) -> bool:
        """Reserve the object's IntId in its list; report an error and return False on a conflict."""
        if info.problem is not None:
            self._fail(object_type, url, object_id, ERROR_INVALID_ARGUMENT, info.problem, objects)
            return False
        int_id = info.int_id
        if int_id is None:
            return True
        key = (list_id.lower(), int_id)
        owner = self.int_ids.get(key)
        if owner is None:
            rows = self.store.query(
                "SELECT object_id FROM item_ids WHERE lower(list_id) = ? AND int_id = ?", key
            )
            if rows and rows[0]["object_id"].lower() not in self.released:
                owner = rows[0]["object_id"].lower()
        if owner is not None and owner != object_id:
            self._fail(object_type, url, object_id, ERROR_ALREADY_EXISTS,
                       f"List item IntId {int_id} is already used by object {owner}.", objects, int_id=int_id)
            return False
        self.int_ids[key] = object_id
        return True

    def _release_int_id(self, list_id: str, int_id: int | None, object_id: str) -> None:
        if int_id is not None and self.int_ids.get((list_id.lower(), int_id)) == object_id:
            del self.int_ids[(list_id.lower(), int_id)]

    def _allocate_int_ids(self) -> None:
        """Give the next free IntId of its list to every planned object that has none."""
        next_free: dict[str, int] = {}
        for step in self.steps:
            if step.int_id is not None or (isinstance(step, FileStep) and step.cancelled):
                continue
            list_key = step.list_id.lower()
            if list_key not in next_free:
                rows = self.store.query(
                    "SELECT COALESCE(MAX(int_id), 0) FROM item_ids WHERE lower(list_id) = ?", (list_key,)
                )
                planned = [key[1] for key in self.int_ids if key[0] == list_key]
                next_free[list_key] = max([int(rows[0][0]), *planned]) + 1
            step.int_id = next_free[list_key]
            next_free[list_key] += 1

    def _times_and_users(
        self, elements: list[XmlElement | None], object_type: str, url: str
    ) -> tuple[str, str, int, int]:
        def pick(name: str) -> str | None:
            for element in elements:
                if element is not None and element.get(name):
                    return element.get(name)
            return None

        now = dt.datetime.now(dt.timezone.utc)
        created = parse_manifest_time(pick("TimeCreated")) or now
        modified = parse_manifest_time(pick("TimeLastModified")) or created
        author = self._site_user(pick("Author"), object_type, url)
        editor = self._site_user(pick("ModifiedBy"), object_type, url)
        return time_text(created), time_text(modified), author, editor

    def _site_user(self, package_id: str | None, object_type: str, url: str) -> int:
        if not package_id:
            return self.run.system_user_id
        package_id = package_id.strip()
        if package_id == str(SYSTEM_ACCOUNT_ID):
            return SYSTEM_ACCOUNT_ID
        mapped = self.run.user_map.get(package_id)
        if mapped is not None:
            return mapped
        if package_id not in self.run.unknown_users:
            self.run.unknown_users.add(package_id)
            self.run.warn(
                f"User id {package_id} is not in UserGroup.xml; System Account is used instead.",
                object_type=object_type, url=url,
            )
        return SYSTEM_ACCOUNT_ID

    def _unmatched_item(self, item: XmlElement) -> None:
        url = _join_url(self.site.url, item.get("FileUrl") or "") if item.get("FileUrl") else ""
        list_id = _guid(item.get("ParentListId"))
        if list_id is not None and list_id not in self.libraries:
            message = f"The list item's list {item.get('ParentListId')} does not exist."
        else:
            # NOTE: a ListItem without its File or Folder in the same package (a metadata-only
            # update) is not supported by the sandbox.
            message = "The list item has no matching File or Folder object in the package."
        self._fail("ListItem", url, item.get("Id") or "", ERROR_FILE_NOT_FOUND, message, 1)

    def _fail(
        self, object_type: str, url: str, object_id: str, code: int, message: str, objects: int,
        *, int_id: int | None = None,
    ) -> None:
        self.run.object_error(object_type, url, object_id, code, message, int_id=int_id)
        self.run.count_objects(objects)


class UserResolver:
    """Map the users of UserGroup.xml to site users, as the service does.

    A login that is a claims login is ensured in the site. A login that cannot be resolved
    becomes System Account with a warning, unless a SystemId is given, in which case a deleted
    user with the given values is created. Each person may appear once per package.
    """

    def __init__(self, run: ImportRun, user_group: XmlElement | None) -> None:
        self.run = run
        self.user_group = user_group

    def resolve(self) -> dict[str, int]:
        mapping: dict[str, int] = {}
        if self.user_group is None:
            return mapping
        assert self.run.site is not None
        site_id = self.run.site.id
        store = self.run.store
        seen_logins: dict[str, str] = {}
        for user in self.user_group.iter("User"):
            package_id = (user.get("Id") or "").strip()
            login = (user.get("Login") or "").strip()
            if package_id in mapping or login.lower() in seen_logins:
                raise JobFatal(
                    f"UserGroup.xml lists user '{login}' (Id {package_id}) more than once; each person "
                    "may appear only once per package."
                )
            seen_logins[login.lower()] = package_id
            name = user.get("Name") or login
            email = user.get("Email") or ""
            deleted = (user.get("IsDeleted") or "").lower() in ("true", "1")
            existing = store.user_by_login(site_id, login) if login else None
            self.run.counters.count_type("SPUser")
            if existing is not None:
                mapping[package_id] = existing.id
            elif deleted:
                mapping[package_id] = store.ensure_deleted_user(site_id, login, email, name).id
            elif self._resolvable(login):
                mapping[package_id] = store.ensure_user(site_id, login, email, name).id
            elif user.get("SystemId"):
                mapping[package_id] = store.ensure_deleted_user(site_id, login, email, name).id
                self.run.warn(
                    f"Failed to retrieve user '{login}' attributes from the SiteUsers; falling back to "
                    "passed in values"
                )
            else:
                mapping[package_id] = SYSTEM_ACCOUNT_ID
                self.run.warn(f"Failed to ensure user '{login}'")
        return mapping

    def _resolvable(self, login: str) -> bool:
        """Return whether the tenant directory can resolve a claims login.

        A tenant object without a directory (``identity_knows_user``) accepts every well-formed
        claims login; group claims (``c:0...``) are always accepted.
        """
        if not _CLAIMS_LOGIN.fullmatch(login):
            return False
        if not login.lower().startswith("i:0#.f|membership|"):
            return True
        knows_user = getattr(self.run.tenant, "identity_knows_user", None)
        return knows_user is None or bool(knows_user(login.split("|")[-1]))
