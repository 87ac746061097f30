"""Generic lists (BaseTemplate 100) of the sandbox tenant: their fields and list items over REST.

SharePoint Online serves these shapes (verbose OData) and the sandbox does the same:

- ``POST _api/web/lists`` with ``BaseTemplate: 100`` (and ``Hidden``) creates a list;
- ``GET/POST _api/web/lists/getbytitle('x')/fields`` lists and adds fields (``FieldTypeKind``);
- ``GET .../items`` with ``$filter``, ``$select``, ``$top`` pages through items and gives the
  next page's URL in ``__next`` (``$skiptoken=Paged=TRUE&p_ID=<last id>``);
- ``POST .../items`` adds an item whose ``__metadata.type`` must be the list's
  ``ListItemEntityTypeFullName``;
- ``POST .../items(N)`` with ``X-HTTP-Method: MERGE`` (or ``PATCH``) updates it and needs
  ``IF-MATCH`` (``*`` or the item's ETag); ``X-HTTP-Method: DELETE`` deletes it.

The list row is stored in the ``lists`` table with the document libraries. Fields and items have
tables of their own, created on first use.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import urllib.parse
import uuid
from typing import Any

from aiohttp import web

from spmt_tui.sandbox.store import Library, Site, TenantStore, now_text

GENERIC_LIST = 100

LIST_TABLES = """
CREATE TABLE IF NOT EXISTS list_options (
    list_id TEXT PRIMARY KEY,
    hidden INTEGER NOT NULL DEFAULT 0,
    entity_type TEXT NOT NULL,        -- EntityTypeName, e.g. TasksList
    next_item_id INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS list_fields (
    list_id TEXT NOT NULL,
    internal_name TEXT NOT NULL,
    title TEXT NOT NULL,
    type_kind INTEGER NOT NULL,       -- SP.FieldType
    field_id TEXT NOT NULL,
    PRIMARY KEY (list_id, internal_name)
);
CREATE TABLE IF NOT EXISTS list_items (
    list_id TEXT NOT NULL,
    id INTEGER NOT NULL,
    guid TEXT NOT NULL,
    version INTEGER NOT NULL,         -- the ETag is "<version>"
    created TEXT NOT NULL,
    modified TEXT NOT NULL,
    author_id INTEGER,
    editor_id INTEGER,
    fields TEXT NOT NULL,             -- JSON object: internal name -> value
    PRIMARY KEY (list_id, id)
);
"""

# SP.FieldType values the sandbox accepts for new fields.
FIELD_TEXT = 2
FIELD_NOTE = 3
FIELD_DATETIME = 4
FIELD_BOOLEAN = 8
FIELD_NUMBER = 9
FIELD_TYPES = {
    FIELD_TEXT: "SP.FieldText",
    FIELD_NOTE: "SP.FieldMultiLineText",
    FIELD_DATETIME: "SP.FieldDateTime",
    FIELD_BOOLEAN: "SP.Field",
    FIELD_NUMBER: "SP.FieldNumber",
}
TEXT_MAX_LENGTH = 255
PAGE_MAX = 5000

# Characters SharePoint removes from a list title to make its URL name.
_URL_INVALID = re.compile(r"[~\"#%&*:<>?/\\{|}]")
_READ_ONLY_FIELDS = {"id", "guid", "created", "modified", "authorid", "editorid", "attachments",
                     "filesystemobjecttype", "contenttypeid", "odata__uiversionstring"}
GENERIC_ITEM_CONTENT_TYPE = "0x0100"

class ListError(Exception):
    """A REST call on a generic list failed; ``code`` and ``message`` go into SharePoint's error body."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _invalid_query(message: str) -> ListError:
    return ListError(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException", message)


def _sp_exception(status: int, message: str) -> ListError:
    return ListError(status, "-2146232832, Microsoft.SharePoint.SPException", message)


def xml_encode_name(name: str) -> str:
    """Encode ``name`` as SharePoint builds internal and entity names.

    Each character other than an ASCII letter, digit or underscore becomes ``_xHHHH_``.
    """
    return "".join(char if char.isascii() and (char.isalnum() or char == "_") else f"_x{ord(char):04x}_"
                   for char in name)


def ensure_tables(store: TenantStore) -> None:
    """Create the generic-list tables once per store."""
    if getattr(store, "_generic_list_tables", False):
        return
    with store.transaction() as db:
        for statement in LIST_TABLES.split(";"):
            if statement.strip():
                db.execute(statement)
    store._generic_list_tables = True  # type: ignore[attr-defined]


# -- lists --------------------------------------------------------------------------------------


def create_generic_list(store: TenantStore, site: Site, title: str, *, hidden: bool) -> Library:
    """Create a generic list under ``<site>/Lists/<url name>`` and return it."""
    ensure_tables(store)
    url_name = _URL_INVALID.sub("", title).strip(" .") or "List"
    root_url = f"{site.url.rstrip('/')}/Lists/{url_name}"
    entity = xml_encode_name(url_name[:1].upper() + url_name[1:]) + "List"
    library = Library(id=str(uuid.uuid4()), site_id=site.id, title=title, root_folder_id=str(uuid.uuid4()),
                      root_folder_url=root_url, base_template=GENERIC_LIST, versioning=False,
                      created=now_text())
    with store.transaction() as db:
        db.execute("INSERT INTO lists (id, site_id, title, root_folder_id, root_folder_url, base_template, "
                   "versioning, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   (library.id, site.id, title, library.root_folder_id, root_url, GENERIC_LIST, 0,
                    library.created))
        db.execute("INSERT INTO folders (id, list_id, url, name, parent_id, created, modified) "
                   "VALUES (?, ?, ?, ?, NULL, ?, ?)",
                   (library.root_folder_id, library.id, root_url, url_name, library.created, library.created))
        db.execute("INSERT INTO list_options (list_id, hidden, entity_type) VALUES (?, ?, ?)",
                   (library.id, int(hidden), entity))
    return library


def list_properties(store: TenantStore, library: Library) -> dict[str, Any]:
    """Return the SP.List properties that depend on the list's kind: Hidden, ItemCount, entity names."""
    ensure_tables(store)
    rows = store.query("SELECT hidden, entity_type FROM list_options WHERE list_id = ?", (library.id,))
    if not rows:
        entity = xml_encode_name(library.root_folder_url.rsplit("/", 1)[-1])
        return {"Hidden": False, "EntityTypeName": entity, "ListItemEntityTypeFullName": f"SP.Data.{entity}Item"}
    count = store.query("SELECT COUNT(*) FROM list_items WHERE list_id = ?", (library.id,))[0][0]
    entity = rows[0]["entity_type"]
    return {"Hidden": bool(rows[0]["hidden"]), "ItemCount": count, "EntityTypeName": entity,
            "ListItemEntityTypeFullName": f"SP.Data.{entity}Item"}


def _entity_full_name(store: TenantStore, library: Library) -> str:
    return str(list_properties(store, library)["ListItemEntityTypeFullName"])


# -- fields -------------------------------------------------------------------------------------


def _fields(store: TenantStore, library: Library) -> dict[str, dict[str, Any]]:
    """Return the list's fields by lower-case internal name, Title included."""
    ensure_tables(store)
    fields = {"title": {"internal_name": "Title", "title": "Title", "type_kind": FIELD_TEXT,
                        "field_id": "fa564e0f-0c70-4ab9-b863-0177e6ddd247"}}
    for row in store.query("SELECT * FROM list_fields WHERE list_id = ? ORDER BY rowid", (library.id,)):
        fields[row["internal_name"].lower()] = dict(row)
    return fields


def _field_json(base: str, library: Library, field: dict[str, Any]) -> dict[str, Any]:
    kind = int(field["type_kind"])
    return {
        "__metadata": {"type": FIELD_TYPES.get(kind, "SP.Field"),
                       "uri": f"{base}/web/lists(guid'{library.id}')/fields(guid'{field['field_id']}')"},
        "Id": field["field_id"],
        "Title": field["title"],
        "InternalName": field["internal_name"],
        "StaticName": field["internal_name"],
        "EntityPropertyName": field["internal_name"],
        "FieldTypeKind": kind,
        "Hidden": False,
        "ReadOnlyField": False,
    }


def add_field(store: TenantStore, library: Library, body: dict[str, Any]) -> dict[str, Any]:
    """Add a field from an SP.Field body (``Title``, ``FieldTypeKind``) and return its record."""
    title = str(body.get("Title") or "").strip()
    if not title:
        raise _sp_exception(400, "Title is required to create a field")
    try:
        kind = int(body.get("FieldTypeKind", 0))
    except (TypeError, ValueError):
        raise _invalid_query(f"invalid FieldTypeKind {body.get('FieldTypeKind')!r}") from None
    if kind not in FIELD_TYPES:
        supported = ", ".join(str(k) for k in sorted(FIELD_TYPES))
        raise _sp_exception(400, f"the sandbox does not create fields of FieldTypeKind {kind}; "
                                 f"it supports {supported}")
    internal = xml_encode_name(title)[:32]
    existing = _fields(store, library)
    if internal.lower() in existing or title.lower() in {f["title"].lower() for f in existing.values()}:
        raise ListError(400, "-2130575340, Microsoft.SharePoint.SPException",
                        f'A duplicate field name "{internal}" was found.')
    field = {"internal_name": internal, "title": title, "type_kind": kind, "field_id": str(uuid.uuid4())}
    store.execute("INSERT INTO list_fields (list_id, internal_name, title, type_kind, field_id) "
                  "VALUES (?, ?, ?, ?, ?)", (library.id, internal, title, kind, field["field_id"]))
    return field


# -- values -------------------------------------------------------------------------------------


def _coerce(field: dict[str, Any], value: Any) -> Any:
    """Check and convert one field value as SharePoint stores it; raise ListError when invalid."""
    if value is None:
        return None
    kind = int(field["type_kind"])
    name = field["internal_name"]
    if kind in (FIELD_TEXT, FIELD_NOTE):
        if not isinstance(value, str):
            value = str(value)
        if kind == FIELD_TEXT and len(value) > TEXT_MAX_LENGTH:
            raise _sp_exception(400, f"The value of field {name} is {len(value)} characters long; a single "
                                     f"line of text holds at most {TEXT_MAX_LENGTH}.")
        # NOTE: SharePoint limits multiple lines of text to 63,999 characters when the field is
        # not rich text; the sandbox does not enforce that limit.
        return value
    if kind == FIELD_NUMBER:
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise _sp_exception(400, f"The value {value!r} of field {name} is not a number.") from None
        return int(number) if number.is_integer() else number
    if kind == FIELD_BOOLEAN:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "false", "0"):
            return str(value).lower() in ("true", "1")
        raise _sp_exception(400, f"The value {value!r} of field {name} is not a Boolean.")
    if kind == FIELD_DATETIME:
        try:
            moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise _sp_exception(400, f"The value {value!r} of field {name} is not a date and time.") from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return value


def _values_from_body(store: TenantStore, library: Library, body: dict[str, Any]) -> dict[str, Any]:
    entity = _entity_full_name(store, library)
    metadata = body.get("__metadata")
    if isinstance(metadata, dict) and metadata.get("type") not in (None, entity):
        raise _invalid_query(f"A type named '{metadata.get('type')}' could not be resolved by the model. "
                             f"When a model is available, each type name must resolve to a valid type "
                             f"(this list's items are {entity}).")
    fields = _fields(store, library)
    values: dict[str, Any] = {}
    for name, value in body.items():
        if name == "__metadata":
            continue
        field = fields.get(name.lower())
        if field is None or name != field["internal_name"]:
            if name.lower() in _READ_ONLY_FIELDS:
                raise _invalid_query(f"The property '{name}' cannot be set on type '{entity}'.")
            raise _invalid_query(f"The property '{name}' does not exist on type '{entity}'. Make sure to "
                                 "only use property names that are defined by the type.")
        values[field["internal_name"]] = _coerce(field, value)
    return values


# -- items --------------------------------------------------------------------------------------


def _item_json(base: str, entity: str, library: Library, row: Any, select: list[str] | None) -> dict[str, Any]:
    item_id = int(row["id"])
    path = f"Web/Lists(guid'{library.id}')/Items({item_id})"
    data: dict[str, Any] = {
        "FileSystemObjectType": 0,
        "Id": item_id,
        "ID": item_id,
        "ContentTypeId": GENERIC_ITEM_CONTENT_TYPE,
        "Title": None,
        **json.loads(row["fields"]),
        "Modified": row["modified"],
        "Created": row["created"],
        "AuthorId": row["author_id"],
        "EditorId": row["editor_id"],
        "OData__UIVersionString": f"{row['version']}.0",
        "Attachments": False,
        "GUID": row["guid"],
    }
    if select:
        # Property names are case-sensitive; a name that matches none exactly matches ignoring case.
        chosen: dict[str, Any] = {}
        for name in select:
            keys = [name] if name in data else [key for key in data if key.lower() == name.lower()]
            for key in keys:
                chosen[key] = data[key]
        data = chosen
    metadata = {"id": path, "uri": f"{base}/{path}", "etag": f'"{row["version"]}"', "type": entity}
    return {"__metadata": metadata, **data}


_COMPARISON = re.compile(
    r"\s*([A-Za-z_][A-Za-z0-9_]*)\s+(eq|ne|gt|ge|lt|le)\s+('(?:[^']|'')*'|datetime'[^']*'|-?\d+(?:\.\d+)?|true|false|null)\s*",
    re.IGNORECASE)


def parse_filter(text: str) -> list[tuple[str, str, Any]]:
    """Parse ``Field op literal [and Field op literal ...]``, the $filter form the sandbox supports."""
    clauses: list[tuple[str, str, Any]] = []
    rest = text.strip()
    while rest:
        match = _COMPARISON.match(rest)
        if match is None:
            raise _invalid_query(f"The query string \"$filter\" has an invalid or unsupported expression: "
                                 f"{text!r}. The sandbox supports Field eq|ne|gt|ge|lt|le literal, "
                                 "joined by 'and'.")
        name, op, literal = match.group(1), match.group(2).lower(), match.group(3)
        if literal.lower().startswith("datetime'"):
            value: Any = _coerce({"type_kind": FIELD_DATETIME, "internal_name": name}, literal[9:-1])
        elif literal.startswith("'"):
            value = literal[1:-1].replace("''", "'")
        elif literal.lower() in ("true", "false"):
            value = literal.lower() == "true"
        elif literal.lower() == "null":
            value = None
        else:
            value = float(literal)
        clauses.append((name, op, value))
        rest = rest[match.end():]
        if rest:
            joiner = re.match(r"and\s+", rest, re.IGNORECASE)
            if joiner is None:
                raise _invalid_query(f"The query string \"$filter\" has an unsupported expression: {text!r}; "
                                     "the sandbox joins comparisons with 'and' only.")
            rest = rest[joiner.end():]
    return clauses


def _matches(data: dict[str, Any], clauses: list[tuple[str, str, Any]]) -> bool:
    lowered = {key.lower(): value for key, value in data.items()}
    for name, op, expected in clauses:
        actual = lowered.get(name.lower())
        if op == "eq" and actual != expected:
            return False
        if op == "ne" and actual == expected:
            return False
        if op in ("gt", "ge", "lt", "le"):
            if actual is None or expected is None:
                return False
            try:
                difference = (actual > expected) - (actual < expected)
            except TypeError:
                return False
            if not {"gt": difference > 0, "ge": difference >= 0, "lt": difference < 0,
                    "le": difference <= 0}[op]:
                return False
    return True


def _skiptoken_id(token: str) -> int:
    """Return p_ID from a ``Paged=TRUE&p_ID=N`` skip token (0 when absent)."""
    values = urllib.parse.parse_qs(token)
    try:
        return int(values.get("p_ID", ["0"])[0])
    except ValueError:
        raise _invalid_query(f"invalid $skiptoken {token!r}") from None


def query_items(store: TenantStore, base: str, library: Library, query: Any, request_url: str) -> dict[str, Any]:
    """Return one page of items for a GET on ``items`` with $filter, $select, $top and $skiptoken."""
    ensure_tables(store)
    try:
        top = int(query.get("$top", "100"))
    except ValueError:
        raise _invalid_query(f"invalid $top {query.get('$top')!r}: give a whole number") from None
    top = max(1, min(top, PAGE_MAX))

    after = _skiptoken_id(query.get("$skiptoken", ""))
    clauses = parse_filter(query.get("$filter", "")) if query.get("$filter") else []
    select = [name.strip() for name in query.get("$select", "").split(",") if name.strip()] or None
    entity = _entity_full_name(store, library)

    page: list[dict[str, Any]] = []
    more = False
    last_id = after
    rows = store.query("SELECT * FROM list_items WHERE list_id = ? AND id > ? ORDER BY id", (library.id, after))
    for row in rows:
        full = _item_json(base, entity, library, row, None)
        if clauses and not _matches(full, clauses):
            continue
        if len(page) == top:
            more = True
            break
        page.append(_item_json(base, entity, library, row, select))
        last_id = int(row["id"])

    result: dict[str, Any] = {"results": page}
    if more:
        parts = urllib.parse.urlsplit(request_url)
        params = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
                  if k != "$skiptoken"]
        params.append(("$skiptoken", f"Paged=TRUE&p_ID={last_id}"))
        result["__next"] = urllib.parse.urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urllib.parse.urlencode(params), ""))
    return result


def get_item_row(store: TenantStore, library: Library, item_id: int) -> Any:
    ensure_tables(store)
    rows = store.query("SELECT * FROM list_items WHERE list_id = ? AND id = ?", (library.id, item_id))
    if not rows:
        raise ListError(404, "-2130575338, Microsoft.SharePoint.SPException",
                        "Item does not exist. It may have been deleted by another user.")
    return rows[0]


def add_item(store: TenantStore, library: Library, body: dict[str, Any], user_id: int) -> Any:
    """Add a list item from a POST body and return its row."""
    values = _values_from_body(store, library, body)
    now = now_text()
    with store.transaction() as db:
        item_id = db.execute("SELECT next_item_id FROM list_options WHERE list_id = ?",
                             (library.id,)).fetchone()[0]
        db.execute("UPDATE list_options SET next_item_id = ? WHERE list_id = ?", (item_id + 1, library.id))
        db.execute("INSERT INTO list_items (list_id, id, guid, version, created, modified, author_id, editor_id, "
                   "fields) VALUES (?, ?, ?, 1, ?, ?, ?, ?, ?)",
                   (library.id, item_id, str(uuid.uuid4()), now, now, user_id, user_id, json.dumps(values)))
    return get_item_row(store, library, item_id)


def _check_etag(row: Any, if_match: str | None) -> None:
    current = f'"{row["version"]}"'
    if if_match is None or (if_match.strip() != "*" and if_match.strip() != current):
        shown = "" if if_match is None else if_match
        raise ListError(412, "-1, Microsoft.SharePoint.Client.ClientServiceException",
                        f"The request ETag value '{shown}' does not match the object's ETag value '{current}'.")


def update_item(store: TenantStore, library: Library, item_id: int, body: dict[str, Any],
                if_match: str | None, user_id: int) -> Any:
    """Merge the body's values into an item when IF-MATCH allows it; return the updated row."""
    values = _values_from_body(store, library, body)
    with store.transaction() as db:
        row = db.execute("SELECT * FROM list_items WHERE list_id = ? AND id = ?", (library.id, item_id)).fetchone()
        if row is None:
            raise ListError(404, "-2130575338, Microsoft.SharePoint.SPException",
                            "Item does not exist. It may have been deleted by another user.")
        _check_etag(row, if_match)
        merged = {**json.loads(row["fields"]), **values}
        db.execute("UPDATE list_items SET fields = ?, version = version + 1, modified = ?, editor_id = ? "
                   "WHERE list_id = ? AND id = ?", (json.dumps(merged), now_text(), user_id, library.id, item_id))
    return get_item_row(store, library, item_id)


def delete_item(store: TenantStore, library: Library, item_id: int, if_match: str | None) -> None:
    with store.transaction() as db:
        row = db.execute("SELECT * FROM list_items WHERE list_id = ? AND id = ?", (library.id, item_id)).fetchone()
        if row is None:
            raise ListError(404, "-2130575338, Microsoft.SharePoint.SPException",
                            "Item does not exist. It may have been deleted by another user.")
        _check_etag(row, if_match)
        db.execute("DELETE FROM list_items WHERE list_id = ? AND id = ?", (library.id, item_id))


# -- REST -----------------------------------------------------------------------------------------


def _json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body).encode("utf-8"), status=status,
                        headers={"Content-Type": "application/json;odata=verbose;charset=utf-8", **(headers or {})})


def effective_method(request: web.Request) -> str:
    """Return the request's verb, with ``X-HTTP-Method`` applied to a POST."""
    tunneled = request.headers.get("X-HTTP-Method", "").strip().upper()
    if request.method == "POST" and tunneled:
        return tunneled
    return request.method.upper()


async def handle_items(request: web.Request, store: TenantStore, base: str, library: Library,
                       item_args: str | None, can_write: bool, user_id: int,
                       body: dict[str, Any]) -> web.Response:
    """Serve ``.../items`` and ``.../items(N)`` of a generic list."""
    method = effective_method(request)
    entity = _entity_full_name(store, library)
    if item_args is None:
        if method == "GET":
            return _json_response({"d": query_items(store, base, library, request.query, str(request.url))})
        if method == "POST":
            _require_write(can_write)
            row = add_item(store, library, body, user_id)
            return _json_response({"d": _item_json(base, entity, library, row, None)}, status=201,
                                  headers={"ETag": f'"{row["version"]}"'})
        raise ListError(405, "-1, System.NotSupportedException", f"items does not accept {method}")
    try:
        item_id = int(item_args.strip())
    except ValueError:
        raise _invalid_query(f"invalid list item id {item_args!r}: give a whole number") from None
    if method == "GET":
        row = get_item_row(store, library, item_id)
        select = [n.strip() for n in request.query.get("$select", "").split(",") if n.strip()] or None
        return _json_response({"d": _item_json(base, entity, library, row, select)},
                              headers={"ETag": f'"{row["version"]}"'})
    if method in ("MERGE", "PATCH"):
        _require_write(can_write)
        row = update_item(store, library, item_id, body, request.headers.get("IF-MATCH"), user_id)
        return web.Response(status=204, headers={"ETag": f'"{row["version"]}"'})
    if method == "DELETE":
        _require_write(can_write)
        delete_item(store, library, item_id, request.headers.get("IF-MATCH"))
        return web.Response(status=200)
    raise ListError(405, "-1, System.NotSupportedException", f"items({item_id}) does not accept {method}")


async def handle_fields(request: web.Request, store: TenantStore, base: str, library: Library,
                        can_write: bool, body: dict[str, Any]) -> web.Response:
    """Serve ``.../fields``: GET lists them, POST adds one."""
    method = effective_method(request)
    if method == "GET":
        fields = _fields(store, library).values()
        return _json_response({"d": {"results": [_field_json(base, library, f) for f in fields]}})
    if method == "POST":
        _require_write(can_write)
        field = add_field(store, library, body)
        return _json_response({"d": _field_json(base, library, field)}, status=201)
    raise ListError(405, "-1, System.NotSupportedException", f"fields does not accept {method}")


def _require_write(can_write: bool) -> None:
    if not can_write:
        raise ListError(403, "-2147024891, System.UnauthorizedAccessException",
                        "Access denied. You do not have permission to perform this action or access this resource.")
