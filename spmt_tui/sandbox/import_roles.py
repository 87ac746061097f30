"""Planning and applying the role assignments of an import package (unique permissions).

A package gives an item unique permissions with a ``RoleAssignment`` in a
``DeploymentRoleAssignments`` object: ``ObjectId`` names the item (its list item GUID, or the
GUID of its file or folder), and each ``Assignment`` gives a ``RoleId`` to a ``PrincipalId``,
the ``Id`` of a ``User`` in UserGroup.xml. Role ids are those of the package's
``DeploymentRoles`` object, matched to the site's role definitions by title, or ids of the
site's role definitions.

Rules the sandbox enforces:

* role assignments are imported only when ExportSettings.xml has ``IncludeSecurity`` ``WssOnly``
  or ``All``; with ``None`` (or without the attribute) they are ignored with one warning;
* a principal that is not in UserGroup.xml, a role that exists neither in the package nor in the
  site, and an item that is neither in the package nor in the library are errors, and the item
  keeps inheriting;
* a principal that could not be resolved (System Account) is left out with a warning;
* a list takes at most 50,000 unique scopes; items beyond that are errors.

NOTE: only list items (``ObjectType`` 2) are supported; assignments on the list itself (1) are
rejected, so the library's permissions never change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from spmt_tui.sandbox import roles
from spmt_tui.sandbox.import_plan import (
    ERROR_FILE_NOT_FOUND,
    ERROR_INVALID_ARGUMENT,
    SYSTEM_ACCOUNT_ID,
    FileStep,
    FolderStep,
    _guid,
)
from spmt_tui.sandbox.schema import XmlElement

if TYPE_CHECKING:
    from spmt_tui.sandbox.import_plan import Planner
    from spmt_tui.sandbox.importer import ImportRun

log = logging.getLogger("spmt.sandbox.importer")

LIST_ITEM_OBJECT_TYPE = "2"
# NOTE: the service's code is not published; this is the Windows ERROR_NOT_ENOUGH_QUOTA.
ERROR_QUOTA_EXCEEDED = -2147023080  # 0x80070718


@dataclass
class ScopeStep:
    """Unique permissions for one file or folder: ``(site principal id, site role id)`` pairs."""

    object_id: str  # file or folder GUID
    object_type: str  # "File" or "Folder"
    list_id: str
    url: str
    scope_id: str
    assignments: list[tuple[int, int]] = field(default_factory=list)
    objects: int = 0  # the role assignment objects are counted when planned

    @property
    def id(self) -> str:
        """The item's GUID, as the other steps name their object."""
        return self.object_id


class RolePlanner:
    """Check the package's roles and role assignments and build the scope steps."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        self.run: ImportRun = planner.run
        self.store = planner.store
        assert self.run.site is not None
        self.site = self.run.site

    def plan(self, role_objects: list[XmlElement], assignment_objects: list[XmlElement]) -> list[ScopeStep]:
        self.run.count_objects(len(role_objects) + len(assignment_objects))
        scopes = [
            scope
            for spobject in assignment_objects
            for container in spobject.children_named("RoleAssignments")
            for scope in container.children_named("RoleAssignment")
        ]
        if not scopes:
            return []
        export_settings = self.planner.package.export_settings
        security = (export_settings.get("IncludeSecurity") if export_settings is not None else None) or "None"
        if security not in ("WssOnly", "All"):
            self.run.warn(
                f"ExportSettings.xml has IncludeSecurity={security!r}, so the {len(scopes)} role "
                "assignment(s) of the package were not imported; set it to All to import them."
            )
            return []
        role_ids = self._role_ids(role_objects)
        planned = self._planned_objects()
        existing_count = {
            library_id: roles.unique_scope_count(self.store, library_id) for library_id in self.planner.libraries
        }
        steps: list[ScopeStep] = []
        for scope in scopes:
            self.run.checkpoint()
            step = self._plan_scope(scope, role_ids, planned)
            if step is None:
                continue
            list_key = step.list_id.lower()
            if not roles.has_unique_scope(self.store, step.object_id):
                existing_count[list_key] = existing_count.get(list_key, 0) + 1
                if existing_count[list_key] > roles.UNIQUE_SCOPES_PER_LIST:
                    self.run.object_error(
                        step.object_type, step.url, step.object_id, ERROR_QUOTA_EXCEEDED,
                        f"The list already has {roles.UNIQUE_SCOPES_PER_LIST:,} unique permission "
                        "scopes, the most a list supports; the item keeps inheriting.")
                    continue
            steps.append(step)
            self.run.counters.count_type("RoleAssignment")
        return steps

    def _role_ids(self, role_objects: list[XmlElement]) -> dict[str, int]:
        """Map package role ids to site role ids (site ids map to themselves)."""
        definitions = roles.role_definitions(self.store, self.site.id)
        by_title = {role.name.lower(): role.id for role in definitions}
        mapping = {str(role.id): role.id for role in definitions}
        for spobject in role_objects:
            for container in spobject.children_named("Roles"):
                for role in container.children_named("Role"):
                    package_id = (role.get("RoleId") or "").strip()
                    title = role.get("Title") or ""
                    site_id = by_title.get(title.lower())
                    if site_id is None:
                        # NOTE: custom role definitions are not created by the sandbox.
                        self.run.warn(f"Role '{title}' (RoleId {package_id}) does not exist in "
                                      f"{self.site.url}; assignments of it are rejected.")
                        mapping.pop(package_id, None)
                        continue
                    mapping[package_id] = site_id
        return mapping

    def _planned_objects(self) -> dict[str, FolderStep | FileStep]:
        """Index this package's planned folders and files by object GUID and list item GUID."""
        index: dict[str, FolderStep | FileStep] = {}
        for step in self.planner.steps:
            if isinstance(step, FileStep) and step.cancelled:
                continue
            if isinstance(step, (FolderStep, FileStep)):
                index[step.id.lower()] = step
                if step.item_id:
                    index[step.item_id.lower()] = step
        return index

    def _find_object(self, object_id: str, planned: dict[str, FolderStep | FileStep]) -> tuple[str, str, str, str] | None:
        """Return ``(object GUID, "File" or "Folder", list id, url)`` of a package or library item."""
        step = planned.get(object_id)
        if step is not None:
            kind = "Folder" if isinstance(step, FolderStep) else "File"
            return step.id, kind, step.list_id, step.url
        for table, kind in (("files", "File"), ("folders", "Folder")):
            rows = self.store.query(
                f"SELECT id, list_id, url FROM {table} WHERE lower(id) = ? OR lower(item_id) = ?",
                (object_id, object_id),
            )
            if rows and rows[0]["list_id"].lower() in self.planner.libraries:
                return rows[0]["id"], kind, rows[0]["list_id"], rows[0]["url"]
        return None

    def _plan_scope(
        self, scope: XmlElement, role_ids: dict[str, int], planned: dict[str, FolderStep | FileStep]
    ) -> ScopeStep | None:
        object_text = scope.get("ObjectId") or ""
        object_url = scope.get("ObjectUrl") or ""
        object_id = _guid(object_text)
        if object_id is None:
            self.run.object_error("RoleAssignment", object_url, object_text, ERROR_INVALID_ARGUMENT,
                                  f"The role assignment's ObjectId {object_text!r} is not a GUID.")
            return None
        if (scope.get("ObjectType") or "").strip() != LIST_ITEM_OBJECT_TYPE:
            self.run.object_error(
                "RoleAssignment", object_url, object_id, ERROR_INVALID_ARGUMENT,
                f"Role assignments of ObjectType {scope.get('ObjectType')!r} are not supported; "
                f"the sandbox imports those of list items (ObjectType {LIST_ITEM_OBJECT_TYPE}).")
            return None
        found = self._find_object(object_id, planned)
        if found is None:
            self.run.object_error("RoleAssignment", object_url, object_id, ERROR_FILE_NOT_FOUND,
                                  f"The item {object_id} of the role assignment is neither in the "
                                  "package nor in the library.")
            return None
        target_id, kind, list_id, url = found
        assignments: list[tuple[int, int]] = []
        for assignment in scope.children_named("Assignment"):
            package_principal = (assignment.get("PrincipalId") or "").strip()
            package_role = (assignment.get("RoleId") or "").strip()
            principal = self.run.user_map.get(package_principal)
            if principal is None:
                self.run.object_error(kind, url, target_id, ERROR_INVALID_ARGUMENT,
                                      f"PrincipalId {package_principal} of the role assignment is not "
                                      "a User in UserGroup.xml; the item keeps inheriting.")
                return None
            role = role_ids.get(package_role)
            if role is None:
                self.run.object_error(kind, url, target_id, ERROR_INVALID_ARGUMENT,
                                      f"RoleId {package_role} of the role assignment is neither a Role "
                                      f"of the package nor a role of {self.site.url}; the item keeps "
                                      "inheriting.")
                return None
            if principal == SYSTEM_ACCOUNT_ID:
                self.run.warn(f"PrincipalId {package_principal} could not be resolved; its role on "
                              "the item was not granted.", object_type=kind, url=url, object_id=target_id)
                continue
            if (principal, role) not in assignments:
                assignments.append((principal, role))
        scope_id = _guid(scope.get("ScopeId")) or target_id
        return ScopeStep(target_id, kind, list_id, url, scope_id, assignments)


def apply_scope(run: ImportRun, step: ScopeStep) -> None:
    """Give one item its unique permissions, in one transaction; reports an error when it is gone."""
    store = run.store
    with store.transaction() as db:
        table = "folders" if step.object_type == "Folder" else "files"
        exists = db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (step.object_id,)).fetchone()
        if exists is not None:
            roles.set_unique_scope(db, step.object_id, step.list_id, step.scope_id, step.assignments)
    run.counters.sql_queries += 3
    if exists is None:
        run.object_error(step.object_type, step.url, step.object_id, ERROR_FILE_NOT_FOUND,
                         "The item was not imported, so its role assignments were not applied.")
