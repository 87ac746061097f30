"""SharePoint REST (``/_api/...``) of the sandbox tenant.

Only what a migration client needs is served, in the ``application/json;odata=verbose`` shape:
context info, web and site, document libraries with their root folders, folders and files with
their properties and content, users, the current user, effective permissions, and list items
ordered by id. Method calls on ``SP.Site`` that other modules register (the Migration API) are
dispatched here too.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import secrets
import urllib.parse
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from spmt_tui.sandbox import lists as generic_lists
from spmt_tui.sandbox import rest_roles
from spmt_tui.sandbox.context import RequestContext, SiteHandler
from spmt_tui.sandbox.store import Library, Site, SiteUser, TenantStore, now_text

log = logging.getLogger("spmt.sandbox.rest")

# SP.BasePermissions masks as SharePoint reports them.
FULL_MASK = {"High": "2147483647", "Low": "4294967295"}
READ_MASK = {"High": "176", "Low": "138612833"}
ADD_LIST_ITEMS = 0x2

SYSTEM_ACCOUNT_ID = 1073741823


def odata_response(name: str | None, value: Any, status: int = 200) -> web.Response:
    """Wrap ``value`` as SharePoint's verbose JSON: ``{"d": {name: value}}`` or ``{"d": value}``."""
    body = {"d": {name: value}} if name else {"d": value}
    return _json(body, status)


def _json(body: Any, status: int) -> web.Response:
    return web.Response(body=json.dumps(body).encode("utf-8"), status=status, headers=_odata_headers())


def _odata_headers() -> dict[str, str]:
    return {"Content-Type": "application/json;odata=verbose;charset=utf-8"}


def sp_error(status: int, code: str, message: str) -> web.Response:
    """Return SharePoint's verbose error body with ``code`` and ``message``."""
    body = {
        "error": {
            "code": code,
            "message": {"lang": "en-US", "value": message},
            "innererror": {"message": message, "type": code.split(", ")[-1], "stacktrace": ""},
        }
    }
    return _json(body, status)


class RestError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return sp_error(self.status, self.code, self.message)


def not_found(message: str) -> RestError:
    return RestError(404, "-2147024894, System.IO.FileNotFoundException", message)


@dataclass(frozen=True)
class Segment:
    name: str
    args: str | None


_SEGMENT = re.compile(r"([^/(]+)(\((.*?)\))?(?=/|$)")


def split_segments(path: str) -> list[Segment]:
    """Split ``web/lists(guid'x')/RootFolder`` into segments, keeping slashes inside quotes."""
    segments: list[Segment] = []
    i = 0
    while i < len(path):
        if path[i] == "/":
            i += 1
            continue
        j = i
        while j < len(path) and path[j] not in "/(":
            j += 1
        name = path[i:j]
        args: str | None = None
        if j < len(path) and path[j] == "(":
            depth, quoted, k = 0, False, j
            while k < len(path):
                char = path[k]
                if char == "'":
                    # Two quotes in a row are an escaped quote inside an OData string literal.
                    if quoted and k + 1 < len(path) and path[k + 1] == "'":
                        k += 2
                        continue
                    quoted = not quoted
                elif not quoted and char == "(":
                    depth += 1
                elif not quoted and char == ")":
                    depth -= 1
                    if depth == 0:
                        break
                k += 1
            args = path[j + 1 : k]
            j = k + 1
        segments.append(Segment(name, args))
        i = j
    return segments


def parse_args(args: str | None) -> dict[str, str]:
    """Parse OData call arguments: ``'x'``, ``guid'x'``, ``a='x',b=0`` into a mapping.

    A lone positional argument is stored under the key ``""``.
    """
    if not args:
        return {}
    result: dict[str, str] = {}
    parts: list[str] = []
    current, quoted = [], False
    i = 0
    while i < len(args):
        char = args[i]
        if char == "'":
            if quoted and i + 1 < len(args) and args[i + 1] == "'":
                current.append("''")
                i += 2
                continue
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    for part in parts:
        key, sep, value = part.partition("=")
        if not sep or "'" in key:
            key, value = "", part
        result[key.strip().lower()] = _literal(value.strip())
    return result


def _literal(text: str) -> str:
    match = re.fullmatch(r"(?:guid)?'(.*)'", text, flags=re.S)
    if match:
        return match.group(1).replace("''", "'")
    return text


class RestApi:
    """Routes ``/<site>/_api/...`` requests: registered ``SP.Site`` methods, then the object model."""

    def __init__(self, tenant: Any) -> None:
        self.tenant = tenant
        self.methods: dict[str, tuple[SiteHandler, tuple[str, ...]]] = {}

    def register(self, name: str, handler: SiteHandler, methods: tuple[str, ...] = ("POST",)) -> None:
        self.methods[name.lower()] = (handler, methods)

    @property
    def store(self) -> TenantStore:
        return self.tenant.store

    async def handle(self, request: web.Request) -> web.StreamResponse:
        site_path, _, api_path = request.path.partition("/_api")
        api_path = api_path.lstrip("/")
        site = self.store.site_by_url(site_path or "/")
        if site is None:
            return sp_error(
                404, "-2147024894, System.IO.FileNotFoundException",
                f"site {site_path or '/'} not found in this tenant",
            )
        principal = self.tenant.identity.authenticate(request)
        fault = await self.tenant.faults.before_rest_call(request)
        if fault is not None:
            return fault
        user = self._site_user(site, principal)
        ctx = RequestContext(tenant=self.tenant, site=site, principal=principal, user=user)
        body: dict[str, Any] = {}
        if request.can_read_body:
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError:
                    return sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                                    "the request body is not valid JSON")
                if not isinstance(body, dict):
                    return sp_error(400, "-1, Microsoft.SharePoint.Client.InvalidClientQueryException",
                                    "the request body must be a JSON object")
        segments = split_segments(api_path)
        ctx.extra["body"] = body
        try:
            if len(segments) >= 2 and segments[0].name.lower() == "site":
                registered = self.methods.get(f"site/{segments[1].name.lower()}")
                if registered is not None:
                    handler, methods = registered
                    if request.method not in methods:
                        raise RestError(405, "-1, System.NotSupportedException",
                                        f"{segments[1].name} does not accept {request.method}")
                    merged = {**body, **parse_args(segments[1].args)}
                    return await handler(request, ctx, merged)
            return await self._object_model(request, ctx, segments, body)
        except RestError as error:
            if error.status >= 500:
                log.error("REST %s %s failed: %s", request.method, request.path, error.message)
            return error.response()

    def _site_user(self, site: Site, principal: Any) -> SiteUser:
        if principal.kind == "app":
            return self.store.ensure_user(
                site.id, f"i:0i.t|ms.sp.ext|{principal.name}", "", principal.display_name or "App",
                is_site_admin=True,
            )
        login = f"i:0#.f|membership|{principal.name}"
        existing = self.store.user_by_login(site.id, login)
        if existing is not None:
            return existing
        return self.store.ensure_user(site.id, login, principal.name, principal.display_name or principal.name)

    # -- the object model ----------------------------------------------------------------

    async def _object_model(
        self, request: web.Request, ctx: RequestContext, segments: list[Segment], body: dict[str, Any]
    ) -> web.StreamResponse:
        if not segments:
            raise not_found("nothing requested after /_api/")
        head = segments[0].name.lower()
        rest = segments[1:]
        if head == "contextinfo":
            if request.method != "POST":
                raise RestError(405, "-1, System.NotSupportedException", "contextinfo needs POST")
            return odata_response("GetContextWebInformation", self._context_info(request, ctx.site))
        if head == "site":
            if rest:
                raise not_found(f"SP.Site has no member {rest[0].name}")
            return odata_response(None, self._site_json(request, ctx.site))
        if head == "web":
            return await self._web(request, ctx, rest, body)
        raise not_found(f"unknown REST resource {segments[0].name}")

    def _base(self, request: web.Request, site: Site) -> str:
        return f"{request.scheme}://{request.host}{site.url}/_api"

    def _context_info(self, request: web.Request, site: Site) -> dict[str, Any]:
        digest = "0x" + secrets.token_hex(64).upper() + "," + now_text()
        origin = f"{request.scheme}://{request.host}"
        return {
            "__metadata": {"type": "SP.ContextWebInformation"},
            "FormDigestValue": digest,
            "FormDigestTimeoutSeconds": 1800,
            "LibraryVersion": "16.0.0.0",
            "SiteFullUrl": origin + site.url,
            "WebFullUrl": origin + site.url,
        }

    def _site_json(self, request: web.Request, site: Site) -> dict[str, Any]:
        origin = f"{request.scheme}://{request.host}"
        return {
            "__metadata": {"type": "SP.Site", "uri": self._base(request, site) + "/site"},
            "Id": site.id,
            "Url": origin + site.url,
            "ServerRelativeUrl": site.url,
        }

    def _web_json(self, request: web.Request, site: Site) -> dict[str, Any]:
        origin = f"{request.scheme}://{request.host}"
        return {
            "__metadata": {"type": "SP.Web", "uri": self._base(request, site) + "/web"},
            "Id": site.web_id,
            "Title": site.title,
            "Url": origin + site.url,
            "ServerRelativeUrl": site.url,
            "UIVersion": 15,
            "RootFolder": {"__deferred": {"uri": self._base(request, site) + "/web/RootFolder"}},
        }

    async def _web(
        self, request: web.Request, ctx: RequestContext, rest: list[Segment], body: dict[str, Any]
    ) -> web.StreamResponse:
        site = ctx.site
        if not rest:
            return odata_response(None, self._web_json(request, site))
        member = rest[0].name.lower()
        args = parse_args(rest[0].args)
        tail = rest[1:]
        if member == "rootfolder":
            return odata_response(None, {
                "__metadata": {"type": "SP.Folder"},
                "UniqueId": site.web_root_folder_id,
                "Name": "",
                "ServerRelativeUrl": site.url,
                "Exists": True,
            })
        if member == "currentuser":
            return odata_response(None, self._user_json(ctx.user))
        if member == "siteusers":
            return odata_response(None, {"results": [self._user_json(u) for u in self.store.users(site.id)]})
        if member == "getuserbyid":
            user = self.store.user_by_id(site.id, int(args.get("", "0")))
            if user is None:
                raise not_found(f"user id {args.get('')} not found in {site.url}")
            return odata_response(None, self._user_json(user))
        if member == "ensureuser":
            return self._ensure_user(ctx, {**body, **args})
        if member == "effectivebasepermissions":
            return odata_response(None, self._permissions(ctx.user))
        if member == "roledefinitions":
            return odata_response(None, rest_roles.role_definitions_json(self.store, site))
        if member == "lists":
            return await self._lists(request, ctx, args, tail, body)
        if member == "getfolderbyserverrelativeurl":
            return await self._folder(request, ctx, args.get("", ""), tail)
        if member == "getfolderbyserverrelativepath":
            return await self._folder(request, ctx, args.get("decodedurl", ""), tail)
        if member == "getfilebyserverrelativeurl":
            return await self._file(request, ctx, args.get("", ""), tail)
        if member == "getfilebyserverrelativepath":
            return await self._file(request, ctx, args.get("decodedurl", ""), tail)
        raise not_found(f"SP.Web has no member {rest[0].name} in the sandbox")

    def _user_json(self, user: SiteUser) -> dict[str, Any]:
        return {
            "__metadata": {"type": "SP.User"},
            "Id": user.id,
            "LoginName": user.login,
            "Title": user.title,
            "Email": user.email,
            "UserPrincipalName": user.email or None,
            "IsSiteAdmin": user.is_site_admin,
            "PrincipalType": 1,
        }

    def _permissions(self, user: SiteUser) -> dict[str, Any]:
        mask = FULL_MASK if user.is_site_admin else READ_MASK
        return {"__metadata": {"type": "SP.BasePermissions"}, **mask}

    def _ensure_user(self, ctx: RequestContext, params: dict[str, Any]) -> web.Response:
        logon = str(params.get("logonName") or params.get("logonname") or params.get("") or "").strip()
        if not logon:
            raise RestError(400, "-2146232832, Microsoft.SharePoint.SPException",
                            "ensureuser needs logonName")
        upn = logon.split("|")[-1]
        if not self.tenant.identity_knows_user(upn):
            raise RestError(404, "-2146232832, Microsoft.SharePoint.SPException",
                            f"The specified user {logon} could not be found.")
        user = self.store.ensure_user(ctx.site.id, f"i:0#.f|membership|{upn}", upn,
                                      self.tenant.display_name_of(upn))
        return odata_response(None, self._user_json(user))

    # -- lists -----------------------------------------------------------------------------

    def _list_json(self, request: web.Request, library: Library, expand: set[str]) -> dict[str, Any]:
        base = self._base(request, self.store_site(library.site_id))
        uri = f"{base}/web/lists(guid'{library.id}')"
        count = self.store.query(
            "SELECT (SELECT COUNT(*) FROM files WHERE list_id = ?) "
            "+ (SELECT COUNT(*) FROM folders WHERE list_id = ? AND parent_id IS NOT NULL)",
            (library.id, library.id),
        )[0][0]
        data: dict[str, Any] = {
            "__metadata": {"type": "SP.List", "uri": uri},
            "Id": library.id,
            "Title": library.title,
            "BaseTemplate": library.base_template,
            "BaseType": 1,
            "Hidden": False,
            "EnableVersioning": library.versioning,
            "ItemCount": count,
            "Created": library.created,
            "RootFolder": {"__deferred": {"uri": uri + "/RootFolder"}},
        }
        data.update(generic_lists.list_properties(self.store, library))
        if "rootfolder" in expand:
            data["RootFolder"] = self._root_folder_json(library)
        return data

    def store_site(self, site_id: str) -> Site:
        for site in self.store.sites():
            if site.id == site_id:
                return site
        raise not_found(f"site {site_id} not found")

    def _root_folder_json(self, library: Library) -> dict[str, Any]:
        return {
            "__metadata": {"type": "SP.Folder"},
            "UniqueId": library.root_folder_id,
            "Name": library.root_folder_url.rsplit("/", 1)[-1],
            "ServerRelativeUrl": library.root_folder_url,
            "Exists": True,
        }

    async def _lists(
        self,
        request: web.Request,
        ctx: RequestContext,
        args: dict[str, str],
        tail: list[Segment],
        body: dict[str, Any],
    ) -> web.StreamResponse:
        expand = {part.strip().lower() for part in request.query.get("$expand", "").split(",") if part}
        site = ctx.site
        if "" in args:
            library = self.store.library(args[""])
            if library is None or library.site_id != site.id:
                raise not_found(f"List with id {args['']} does not exist at site {site.url}")
            return await self._list_member(request, ctx, library, tail, expand)
        if not tail:
            if request.method == "POST":
                return self._create_list(request, ctx, body)
            libraries = self.store.libraries(site.id)
            return odata_response(None, {"results": [self._list_json(request, lib, expand) for lib in libraries]})
        member = tail[0].name.lower()
        if member == "getbytitle":
            title = parse_args(tail[0].args).get("", "")
            library = self.store.library_by_title(site.id, title)
            if library is None:
                raise not_found(f"List '{title}' does not exist at site with URL '{site.url}'.")
            return await self._list_member(request, ctx, library, tail[1:], expand)
        raise not_found(f"SP.ListCollection has no member {tail[0].name}")

    def _create_list(self, request: web.Request, ctx: RequestContext, body: dict[str, Any]) -> web.Response:
        if not ctx.user.is_site_admin:
            raise RestError(403, "-2147024891, System.UnauthorizedAccessException",
                            "Access denied. You do not have permission to create lists on this site.")
        title = str(body.get("Title") or "").strip()
        if not title:
            raise RestError(400, "-2146232832, Microsoft.SharePoint.SPException", "Title is required")
        if int(body.get("BaseTemplate", 101)) not in (101, generic_lists.GENERIC_LIST):
            raise RestError(400, "-2146232832, Microsoft.SharePoint.SPException",
                            "the sandbox creates document libraries (BaseTemplate 101) and generic "
                            "lists (BaseTemplate 100) only")
        if self.store.library_by_title(ctx.site.id, title) is not None:
            raise RestError(409, "-2130575342, Microsoft.SharePoint.SPException",
                            f"A list, survey, discussion board, or document library with the specified title '{title}' already exists in this Web site.")
        if int(body.get("BaseTemplate", 101)) == generic_lists.GENERIC_LIST:
            created = generic_lists.create_generic_list(self.store, ctx.site, title,
                                                        hidden=bool(body.get("Hidden", False)))
            log.info("created list %s in %s", title, ctx.site.url)
            return odata_response(None, self._list_json(request, created, set()), status=201)
        url_name = re.sub(r"[^A-Za-z0-9 _-]", "", title) or "Library"
        library = self.store.create_library(ctx.site, title, url_name,
                                            versioning=bool(body.get("EnableVersioning", True)))
        log.info("created library %s in %s", title, ctx.site.url)
        return odata_response(None, self._list_json(request, library, {"rootfolder"}), status=201)

    async def _list_member(
        self,
        request: web.Request,
        ctx: RequestContext,
        library: Library,
        tail: list[Segment],
        expand: set[str],
    ) -> web.StreamResponse:
        if not tail:
            return odata_response(None, self._list_json(request, library, expand))
        member = tail[0].name.lower()
        if member == "rootfolder":
            if len(tail) > 1:
                return await self._folder(request, ctx, library.root_folder_url, tail[1:])
            return odata_response(None, self._root_folder_json(library))
        if member == "effectivebasepermissions":
            return odata_response(None, self._permissions(ctx.user))
        if library.base_template == generic_lists.GENERIC_LIST and member in ("items", "fields"):
            return await self._generic_list_member(request, ctx, library, tail)
        if member == "items":
            return self._items(request, library)
        raise not_found(f"SP.List has no member {tail[0].name} in the sandbox")

    async def _generic_list_member(
        self, request: web.Request, ctx: RequestContext, library: Library, tail: list[Segment]
    ) -> web.StreamResponse:
        """Serve ``fields`` and ``items`` of a generic list (spmt_tui/sandbox/lists.py)."""
        body: dict[str, Any] = ctx.extra.get("body") or {}
        base = self._base(request, self.store_site(library.site_id))
        can_write = ctx.user.is_site_admin
        try:
            if tail[0].name.lower() == "fields":
                if len(tail) > 1:
                    raise not_found(f"SP.FieldCollection has no member {tail[1].name} in the sandbox")
                return await generic_lists.handle_fields(request, self.store, base, library, can_write, body)
            if len(tail) > 1:
                raise not_found(f"SP.ListItem has no member {tail[1].name} in the sandbox")
            return await generic_lists.handle_items(request, self.store, base, library, tail[0].args,
                                                    can_write, ctx.user.id, body)
        except generic_lists.ListError as error:
            raise RestError(error.status, error.code, error.message) from None

    def _items(self, request: web.Request, library: Library) -> web.Response:
        top = int(request.query.get("$top", "100"))
        order = request.query.get("$orderby", "Id").strip().lower()
        descending = order.endswith(" desc")
        rows = self.store.query(
            "SELECT int_id, object_id FROM item_ids WHERE list_id = ? ORDER BY int_id "
            + ("DESC" if descending else "ASC") + " LIMIT ?",
            (library.id, max(0, min(top, 5000))),
        )
        results = [
            {"__metadata": {"type": "SP.Data.DocumentsItem"}, "Id": row["int_id"], "ID": row["int_id"],
             "GUID": row["object_id"]}
            for row in rows
        ]
        return odata_response(None, {"results": results})

    # -- folders and files ------------------------------------------------------------------

    def _folder_json(self, row: Any) -> dict[str, Any]:
        item_count = self.store.query(
            "SELECT (SELECT COUNT(*) FROM files WHERE folder_id = ?) "
            "+ (SELECT COUNT(*) FROM folders WHERE parent_id = ?)",
            (row["id"], row["id"]),
        )[0][0]
        return {
            "__metadata": {"type": "SP.Folder"},
            "UniqueId": row["id"],
            "Name": row["name"],
            "ServerRelativeUrl": row["url"],
            "TimeCreated": row["created"],
            "TimeLastModified": row["modified"],
            "ItemCount": item_count,
            "Exists": True,
        }

    def _file_json(self, row: Any, site: Site) -> dict[str, Any]:
        author = self.store.user_by_id(site.id, row["author_id"]) if row["author_id"] else None
        editor = self.store.user_by_id(site.id, row["editor_id"]) if row["editor_id"] else None
        return {
            "__metadata": {"type": "SP.File"},
            "UniqueId": row["id"],
            "Name": row["name"],
            "ServerRelativeUrl": row["url"],
            "Length": str(row["length"]),
            "TimeCreated": row["created"],
            "TimeLastModified": row["modified"],
            "UIVersionLabel": row["version"],
            "ListItemAllFields": {"Id": row["int_id"], "GUID": row["item_id"]},
            "Author": self._user_json(author) if author else None,
            "ModifiedBy": self._user_json(editor) if editor else None,
        }

    async def _folder(
        self, request: web.Request, ctx: RequestContext, url: str, tail: list[Segment]
    ) -> web.StreamResponse:
        url = _server_relative(url)
        row = self.store.folder_by_url(url)
        if row is None:
            raise not_found(f"File Not Found. Folder {url} does not exist.")
        if not tail:
            return odata_response(None, self._folder_json(row))
        member = tail[0].name.lower()
        if member == "folders":
            children = self.store.child_folders(row["id"])
            return odata_response(None, {"results": [self._folder_json(child) for child in children]})
        if member == "files":
            files = self.store.child_files(row["id"])
            return odata_response(None, {"results": [self._file_json(child, ctx.site) for child in files]})
        if member == "listitemallfields":
            return self._list_item(request, ctx, row, True, tail[1:])
        raise not_found(f"SP.Folder has no member {tail[0].name} in the sandbox")

    async def _file(
        self, request: web.Request, ctx: RequestContext, url: str, tail: list[Segment]
    ) -> web.StreamResponse:
        url = _server_relative(url)
        row = self.store.file_by_url(url)
        if row is None:
            raise not_found(f"File Not Found. {url} does not exist.")
        if not tail:
            return odata_response(None, self._file_json(row, ctx.site))
        member = tail[0].name.lower()
        if member in ("$value", "openbinarystream"):
            response = web.FileResponse(self.store.content_path(row["content"]))
            response.content_type = "application/octet-stream"
            return response
        if member == "author":
            user = self.store.user_by_id(ctx.site.id, row["author_id"])
            return odata_response(None, self._user_json(user) if user else None)
        if member == "modifiedby":
            user = self.store.user_by_id(ctx.site.id, row["editor_id"])
            return odata_response(None, self._user_json(user) if user else None)
        if member == "listitemallfields":
            return self._list_item(request, ctx, row, False, tail[1:])
        raise not_found(f"SP.File has no member {tail[0].name} in the sandbox")

    def _list_item(
        self, request: web.Request, ctx: RequestContext, row: Any, is_folder: bool, tail: list[Segment]
    ) -> web.Response:
        """Serve a file's or folder's ``ListItemAllFields`` (spmt_tui/sandbox/rest_roles.py)."""
        uri = f"{self._base(request, ctx.site)}/web/lists(guid'{row['list_id']}')/items({row['int_id']})"
        data = rest_roles.list_item_member(request, self.store, ctx.site, row, is_folder, uri, tail)
        if data is None:
            raise not_found(f"SP.ListItem has no member {tail[0].name} in the sandbox")
        return odata_response(None, data)


def _server_relative(url: str) -> str:
    url = urllib.parse.unquote(url)
    if "://" in url:
        url = urllib.parse.urlsplit(url).path
    return "/" + url.strip("/")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
