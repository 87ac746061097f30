"""Permissions in the sandbox tenant: role definitions, unique scopes and role assignments.

SharePoint keeps permissions per securable object. An item either inherits from its parent or
has unique role assignments (its own scope); each assignment gives one principal (a user or a
directory group) one or more role definitions. The sandbox stores:

* ``role_definitions``: the built-in roles of each site, created with the site's first use;
* ``unique_scopes``: one row per file or folder that has unique permissions;
* ``role_assignments``: the (principal, role) pairs of each unique scope.

Principals are rows of ``users``; a login that starts with ``c:0`` is a directory group.
NOTE: the library's own role assignments (site owners, members, visitors) are not modelled, so an
item that inherits up to the library reports no role assignments.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from spmt_tui.sandbox.store import SiteUser, TenantStore

ROLES_SCHEMA = """
CREATE TABLE IF NOT EXISTS role_definitions (
    site_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    high INTEGER NOT NULL,            -- BasePermissions.High
    low INTEGER NOT NULL,             -- BasePermissions.Low
    kind INTEGER NOT NULL,            -- RoleTypeKind
    role_order INTEGER NOT NULL,
    PRIMARY KEY (site_id, id)
);
CREATE TABLE IF NOT EXISTS unique_scopes (
    object_id TEXT PRIMARY KEY,       -- lower-case file or folder GUID
    list_id TEXT NOT NULL,
    scope_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS unique_scopes_list ON unique_scopes(list_id);
CREATE TABLE IF NOT EXISTS role_assignments (
    object_id TEXT NOT NULL,          -- lower-case file or folder GUID with a unique scope
    principal_id INTEGER NOT NULL,    -- users.id of the site
    role_id INTEGER NOT NULL,         -- role_definitions.id of the site
    PRIMARY KEY (object_id, principal_id, role_id)
);
"""

UNIQUE_SCOPES_PER_LIST = 50_000
"""Unique permission scopes a list supports in SharePoint Online."""

# SharePoint's built-in role definitions: id, name, description, BasePermissions high and low,
# RoleTypeKind and order. NOTE: the values are SharePoint's as remembered from
# _api/web/RoleDefinitions output, not read from a live tenant here.
BUILT_IN_ROLES = (
    (1073741829, "Full Control", "Has full control.", 2147483647, 4294967295, 5, 1),
    (1073741830, "Edit", "Can add, edit and delete lists; can view, add, update and delete list "
     "items and documents.", 432, 1011030767, 6, 48),
    (1073741827, "Contribute", "Can view, add, update, and delete list items and documents.",
     432, 1011028719, 3, 64),
    (1073741826, "Read", "Can view pages and list items and download documents.", 176, 138612833,
     2, 128),
)

PRINCIPAL_USER = 1
PRINCIPAL_SECURITY_GROUP = 4


@dataclass(frozen=True)
class RoleDefinition:
    id: int
    name: str
    description: str
    high: int
    low: int
    kind: int
    order: int


def role_definitions(store: TenantStore, site_id: str) -> list[RoleDefinition]:
    """Return the site's role definitions, creating the built-in ones on first use."""
    rows = store.query("SELECT * FROM role_definitions WHERE site_id = ? ORDER BY role_order", (site_id,))
    if not rows:
        with store.transaction() as db:
            for values in BUILT_IN_ROLES:
                db.execute("INSERT OR IGNORE INTO role_definitions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (site_id, *values))
        rows = store.query("SELECT * FROM role_definitions WHERE site_id = ? ORDER BY role_order", (site_id,))
    return [_role(row) for row in rows]


def unique_scope_count(store: TenantStore, list_id: str) -> int:
    return int(store.query("SELECT COUNT(*) FROM unique_scopes WHERE list_id = ?", (list_id.lower(),))[0][0])


def set_unique_scope(
    db: sqlite3.Connection, object_id: str, list_id: str, scope_id: str, assignments: list[tuple[int, int]]
) -> None:
    """Give an object unique permissions with ``(principal id, role id)`` assignments (in a transaction)."""
    key = object_id.lower()
    db.execute("DELETE FROM role_assignments WHERE object_id = ?", (key,))
    db.execute("INSERT OR REPLACE INTO unique_scopes VALUES (?, ?, ?)", (key, list_id.lower(), scope_id))
    db.executemany("INSERT OR IGNORE INTO role_assignments VALUES (?, ?, ?)",
                   [(key, principal, role) for principal, role in assignments])


def clear_unique_scope(db: sqlite3.Connection, object_id: str) -> None:
    """Make an object inherit again (in a transaction); used when a file is deleted or replaced."""
    key = object_id.lower()
    db.execute("DELETE FROM role_assignments WHERE object_id = ?", (key,))
    db.execute("DELETE FROM unique_scopes WHERE object_id = ?", (key,))


def has_unique_scope(store: TenantStore, object_id: str) -> bool:
    return bool(store.query("SELECT 1 FROM unique_scopes WHERE object_id = ?", (object_id.lower(),)))


def effective_scope_object(store: TenantStore, object_id: str, folder_id: str | None) -> str | None:
    """Return the id of the object whose scope applies: the object, else its nearest unique folder.

    ``folder_id`` is the object's parent folder. Returns None when the object inherits from the
    library.
    """
    if has_unique_scope(store, object_id):
        return object_id
    current = folder_id
    while current:
        if has_unique_scope(store, current):
            return current
        row = store.folder_by_id(current)
        current = row["parent_id"] if row is not None else None
    return None


def role_assignments(store: TenantStore, site_id: str, object_id: str) -> list[tuple[SiteUser, list[RoleDefinition]]]:
    """Return the principals of a unique scope with their role definitions, by principal id."""
    definitions = {role.id: role for role in role_definitions(store, site_id)}
    rows = store.query(
        "SELECT principal_id, role_id FROM role_assignments WHERE object_id = ? ORDER BY principal_id, role_id",
        (object_id.lower(),),
    )
    grouped: dict[int, list[RoleDefinition]] = {}
    for row in rows:
        role = definitions.get(row["role_id"])
        if role is not None:
            grouped.setdefault(row["principal_id"], []).append(role)
    result = []
    for principal_id, roles in grouped.items():
        user = store.user_by_id(site_id, principal_id)
        if user is not None:
            result.append((user, roles))
    return result


def principal_type(user: SiteUser) -> int:
    """Return SharePoint's PrincipalType: 1 for a user, 4 for a directory (security) group."""
    return PRINCIPAL_SECURITY_GROUP if user.login.lower().startswith("c:0") else PRINCIPAL_USER


def role_json(role: RoleDefinition) -> dict[str, Any]:
    return {
        "__metadata": {"type": "SP.RoleDefinition"},
        "Id": role.id,
        "Name": role.name,
        "Description": role.description,
        "BasePermissions": {"__metadata": {"type": "SP.BasePermissions"},
                            "High": str(role.high), "Low": str(role.low)},
        "RoleTypeKind": role.kind,
        "Hidden": False,
        "Order": role.order,
    }


def _role(row: sqlite3.Row) -> RoleDefinition:
    return RoleDefinition(row["id"], row["name"], row["description"], row["high"], row["low"],
                          row["kind"], row["role_order"])
