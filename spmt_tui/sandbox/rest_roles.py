"""REST views of permissions: a file's or folder's list item, its role assignments, role definitions.

Served paths (under ``/<site>/_api/web/``):

* ``GetFileByServerRelativeUrl('...')/ListItemAllFields`` (and the same under
  ``GetFolderByServerRelativeUrl``): the list item with ``HasUniqueRoleAssignments``;
* ``.../ListItemAllFields/RoleAssignments``: the role assignments that apply to the item, its own
  when it has unique permissions, else those of its nearest ancestor folder that has them;
  ``$expand=Member,RoleDefinitionBindings`` expands the principal and its roles;
* ``RoleDefinitions``: the site's role definitions.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from spmt_tui.sandbox import roles
from spmt_tui.sandbox.store import Site, SiteUser, TenantStore


def _expand(request: web.Request) -> set[str]:
    return {part.strip().lower() for part in request.query.get("$expand", "").split(",") if part.strip()}


def _select(data: dict[str, Any], request: web.Request) -> dict[str, Any]:
    """Keep only the ``$select`` fields (and ``__metadata``) when the request names any."""
    wanted = {part.strip().lower() for part in request.query.get("$select", "").split(",") if part.strip()}
    if not wanted or "*" in wanted:
        return data
    return {key: value for key, value in data.items() if key == "__metadata" or key.lower() in wanted}


def list_item_json(store: TenantStore, row: Any, is_folder: bool, uri: str) -> dict[str, Any]:
    """Return the SP.ListItem of a file or folder row."""
    return {
        "__metadata": {"type": "SP.ListItem", "uri": uri},
        "Id": row["int_id"],
        "ID": row["int_id"],
        "GUID": row["item_id"],
        "FileSystemObjectType": 1 if is_folder else 0,
        "HasUniqueRoleAssignments": roles.has_unique_scope(store, row["id"]),
        "RoleAssignments": {"__deferred": {"uri": uri + "/RoleAssignments"}},
    }


def member_json(user: SiteUser) -> dict[str, Any]:
    kind = roles.principal_type(user)
    return {
        "__metadata": {"type": "SP.Group" if kind != roles.PRINCIPAL_USER else "SP.User"},
        "Id": user.id,
        "LoginName": user.login,
        "Title": user.title,
        "Email": user.email,
        "PrincipalType": kind,
    }


def role_assignments_json(
    store: TenantStore, site: Site, row: Any, is_folder: bool, uri: str, expand: set[str]
) -> dict[str, Any]:
    """Return the role assignments in effect for a file or folder row."""
    parent = row["parent_id"] if is_folder else row["folder_id"]
    scope_object = roles.effective_scope_object(store, row["id"], parent)
    results = []
    if scope_object is not None:
        for user, definitions in roles.role_assignments(store, site.id, scope_object):
            entry_uri = f"{uri}/GetByPrincipalId({user.id})"
            entry: dict[str, Any] = {
                "__metadata": {"type": "SP.RoleAssignment", "uri": entry_uri},
                "PrincipalId": user.id,
                "Member": {"__deferred": {"uri": entry_uri + "/Member"}},
                "RoleDefinitionBindings": {"__deferred": {"uri": entry_uri + "/RoleDefinitionBindings"}},
            }
            if "member" in expand:
                entry["Member"] = member_json(user)
            if "roledefinitionbindings" in expand:
                entry["RoleDefinitionBindings"] = {"results": [roles.role_json(role) for role in definitions]}
            results.append(entry)
    return {"results": results}


def list_item_member(
    request: web.Request, store: TenantStore, site: Site, row: Any, is_folder: bool, uri: str,
    tail: list[Any],
) -> dict[str, Any] | None:
    """Serve ``ListItemAllFields`` and its ``RoleAssignments``; None for other members."""
    if not tail:
        return _select(list_item_json(store, row, is_folder, uri), request)
    if len(tail) == 1 and tail[0].name.lower() == "roleassignments":
        return role_assignments_json(store, site, row, is_folder, uri + "/RoleAssignments", _expand(request))
    return None


def role_definitions_json(store: TenantStore, site: Site) -> dict[str, Any]:
    return {"results": [roles.role_json(role) for role in roles.role_definitions(store, site.id)]}
