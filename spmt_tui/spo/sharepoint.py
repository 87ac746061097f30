"""SharePoint Online REST calls a migration needs, including the Migration API on ``SP.Site``.

Response shapes follow ``application/json;odata=verbose`` (``{"d": ...}``). Where Microsoft has
not documented a shape (ProvisionMigrationContainers, CreateMigrationJobEncrypted), the parser
accepts both ``{"d": {"<Method>": value}}`` and ``{"d": value}``.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any

from spmt_tui.spo.http import HttpError, SharePointHttp

log = logging.getLogger("spmt.spo")

ADD_LIST_ITEMS = 0x2

# SPMigrationJobState values returned by GetMigrationJobStatus.
JOB_STATE_NONE = 0
JOB_STATE_QUEUED = 2
JOB_STATE_PROCESSING = 4

JOB_NOT_FOUND = "-2147213145"
JOB_STATUS_EXPIRED = "-2147213146"


@dataclass(frozen=True)
class WebInfo:
    id: str
    title: str
    url: str
    server_relative_url: str
    root_folder_id: str


@dataclass(frozen=True)
class LibraryInfo:
    id: str
    title: str
    base_template: int
    root_folder_id: str
    root_folder_url: str
    versioning: bool


@dataclass(frozen=True)
class UserInfo:
    id: int
    login: str
    title: str
    email: str
    is_site_admin: bool


@dataclass(frozen=True)
class FolderInfo:
    id: str
    name: str
    server_relative_url: str


@dataclass(frozen=True)
class FileInfo:
    id: str
    name: str
    server_relative_url: str
    length: int
    time_last_modified: str


@dataclass(frozen=True)
class ProvisionedContainers:
    data_uri: str
    metadata_uri: str
    key: bytes

    def __repr__(self) -> str:  # Never show the key or the SAS signatures.
        return "ProvisionedContainers(<secret>)"


def _unwrap(data: Any, name: str | None = None) -> Any:
    if not isinstance(data, dict):
        return data
    value = data.get("d", data)
    if name and isinstance(value, dict) and name in value:
        value = value[name]
    return value


def _results(data: Any) -> list[dict[str, Any]]:
    value = _unwrap(data)
    if isinstance(value, dict) and "results" in value:
        return list(value["results"])
    if isinstance(data, dict) and "value" in data:
        return list(data["value"])
    return []


def odata_string(value: str) -> str:
    """Quote ``value`` as an OData string literal inside a URL path."""
    return urllib.parse.quote(value.replace("'", "''"), safe="/")


class SharePointClient:
    """Calls on one site collection, e.g. ``https://contoso.sharepoint.com/sites/x``."""

    def __init__(self, site_url: str, http: SharePointHttp) -> None:
        self.site_url = site_url.rstrip("/")
        self.http = http
        self.api = f"{self.site_url}/_api"

    async def _get(self, path: str) -> Any:
        return (await self.http.request("GET", f"{self.api}/{path}")).data

    async def _post(self, path: str, body: Any = None, *, retry_500: bool = True) -> Any:
        return (await self.http.request("POST", f"{self.api}/{path}", json_body=body,
                                        retry_500=retry_500)).data

    # -- web, site, user -----------------------------------------------------------------------

    async def web(self) -> WebInfo:
        data = _unwrap(await self._get("web"))
        root = _unwrap(await self._get("web/RootFolder"))
        return WebInfo(
            id=data["Id"],
            title=data.get("Title", ""),
            url=data.get("Url", self.site_url),
            server_relative_url=data["ServerRelativeUrl"],
            root_folder_id=root["UniqueId"],
        )

    async def current_user(self) -> UserInfo:
        return _user(_unwrap(await self._get("web/currentuser")))

    async def ensure_user(self, login: str) -> UserInfo:
        return _user(_unwrap(await self._post("web/ensureuser", {"logonName": login})))

    async def libraries(self) -> list[LibraryInfo]:
        data = await self._get("web/lists?$expand=RootFolder&$filter=BaseTemplate%20eq%20101")
        return [_library(item) for item in _results(data) if int(item.get("BaseTemplate", 0)) == 101]

    async def library(self, title: str) -> LibraryInfo:
        data = await self._get(f"web/lists/getbytitle('{odata_string(title)}')?$expand=RootFolder")
        return _library(_unwrap(data))

    async def create_library(self, title: str) -> LibraryInfo:
        body = {"__metadata": {"type": "SP.List"}, "Title": title, "BaseTemplate": 101,
                "EnableVersioning": True}
        return _library(_unwrap(await self._post("web/lists", body)))

    async def can_add_items(self, list_id: str) -> bool:
        data = _unwrap(await self._get(f"web/lists(guid'{list_id}')/EffectiveBasePermissions"))
        return bool(int(data.get("Low", "0")) & ADD_LIST_ITEMS)

    async def max_item_id(self, list_id: str) -> int:
        data = await self._get(f"web/lists(guid'{list_id}')/items?$select=Id&$orderby=Id%20desc&$top=1")
        items = _results(data)
        return int(items[0]["Id"]) if items else 0

    async def folder(self, server_relative_url: str) -> FolderInfo | None:
        try:
            data = _unwrap(await self._get(
                f"web/GetFolderByServerRelativeUrl('{odata_string(server_relative_url)}')"))
        except HttpError as error:
            if error.status == 404:
                return None
            raise
        if not data.get("Exists", True):
            return None
        return FolderInfo(data["UniqueId"], data.get("Name", ""), data["ServerRelativeUrl"])

    async def folder_files(self, server_relative_url: str) -> list[FileInfo]:
        data = await self._get(
            f"web/GetFolderByServerRelativeUrl('{odata_string(server_relative_url)}')/Files")
        return [
            FileInfo(item["UniqueId"], item["Name"], item["ServerRelativeUrl"], int(item["Length"]),
                     item["TimeLastModified"])
            for item in _results(data)
        ]

    async def folder_folders(self, server_relative_url: str) -> list[FolderInfo]:
        data = await self._get(
            f"web/GetFolderByServerRelativeUrl('{odata_string(server_relative_url)}')/Folders")
        return [FolderInfo(item["UniqueId"], item["Name"], item["ServerRelativeUrl"])
                for item in _results(data)]

    # -- generic lists and their items -----------------------------------------------------------

    async def list_by_title(self, title: str) -> dict[str, Any] | None:
        """Return a list's SP.List properties, or None when the site has no list with that title."""
        try:
            return _unwrap(await self._get(f"web/lists/getbytitle('{odata_string(title)}')"))
        except HttpError as error:
            if error.status == 404:
                return None
            raise

    async def create_generic_list(self, title: str, *, hidden: bool, description: str = "") -> dict[str, Any]:
        """Create a generic list (BaseTemplate 100); ``hidden`` keeps it out of the site's navigation."""
        body = {"__metadata": {"type": "SP.List"}, "Title": title, "BaseTemplate": 100,
                "Hidden": hidden, "Description": description}
        return _unwrap(await self._post("web/lists", body, retry_500=False))

    async def list_field_names(self, list_title: str) -> set[str]:
        """Return the internal names of a list's fields."""
        data = await self._get(f"web/lists/getbytitle('{odata_string(list_title)}')/fields")
        return {str(item.get("InternalName", "")) for item in _results(data)}

    async def create_field(self, list_title: str, field_title: str, kind: int) -> None:
        """Add a field of SP.FieldType ``kind`` (2 text, 3 note, 4 date and time, 9 number)."""
        body = {"__metadata": {"type": "SP.Field"}, "Title": field_title, "FieldTypeKind": kind}
        await self._post(f"web/lists/getbytitle('{odata_string(list_title)}')/fields", body, retry_500=False)

    async def list_items(
        self, list_title: str, *, filter: str | None = None, select: tuple[str, ...] = (), top: int = 100
    ) -> list[dict[str, Any]]:
        """Return every item that matches ``filter``, following the service's next-page links."""
        query = [("$top", str(top))]
        if filter:
            query.append(("$filter", filter))
        if select:
            query.append(("$select", ",".join(select)))
        url: str | None = (f"{self.api}/web/lists/getbytitle('{odata_string(list_title)}')/items?"
                           + urllib.parse.urlencode(query, quote_via=urllib.parse.quote))
        items: list[dict[str, Any]] = []
        while url:
            data = (await self.http.request("GET", url)).data
            items.extend(_results(data))
            url = _next_link(data)
        return items

    async def add_list_item(self, list_title: str, entity_type: str, values: dict[str, Any]) -> dict[str, Any]:
        """Add an item; ``entity_type`` is the list's ListItemEntityTypeFullName."""
        body = {"__metadata": {"type": entity_type}, **values}
        # A 500 may mean the item was added; retrying could add it twice.
        return _unwrap(await self._post(f"web/lists/getbytitle('{odata_string(list_title)}')/items", body,
                                        retry_500=False))

    async def update_list_item(
        self, list_title: str, item_id: int, entity_type: str, values: dict[str, Any], *, etag: str = "*"
    ) -> None:
        """Merge ``values`` into an item; ``etag`` "*" overwrites whatever version is stored."""
        url = f"{self.api}/web/lists/getbytitle('{odata_string(list_title)}')/items({int(item_id)})"
        body = {"__metadata": {"type": entity_type}, **values}
        await self.http.request("POST", url, json_body=body,
                                headers={"IF-MATCH": etag, "X-HTTP-Method": "MERGE"})

    # -- Migration API ---------------------------------------------------------------------------

    async def provision_containers(self) -> ProvisionedContainers:
        data = _unwrap(await self._post("site/ProvisionMigrationContainers"),
                       "ProvisionMigrationContainers")
        key = data["EncryptionKey"]
        if isinstance(key, str):
            key_bytes = base64.b64decode(key)
        else:
            key_bytes = bytes(key)
        if len(key_bytes) != 32:
            raise HttpError("POST", "ProvisionMigrationContainers", 200, "invalid_key",
                            f"expected a 32-byte AES key, got {len(key_bytes)} bytes")
        return ProvisionedContainers(data["DataContainerUri"], data["MetadataContainerUri"], key_bytes)

    async def provision_queue(self) -> str:
        data = _unwrap(await self._post("site/ProvisionMigrationQueue"), "ProvisionMigrationQueue")
        return data["JobQueueUri"] if isinstance(data, dict) else str(data)

    async def create_migration_job_encrypted(
        self, web_id: str, containers: ProvisionedContainers, queue_uri: str | None
    ) -> str:
        body = {
            "options": {"AES256CBCKey": base64.b64encode(containers.key).decode("ascii")},
            "gWebId": web_id,
            "azureContainerSourceUri": containers.data_uri,
            "azureContainerManifestUri": containers.metadata_uri,
            "azureQueueReportUri": queue_uri,
        }
        # A 500 here may mean the job was created; retrying blindly could submit twice.
        data = _unwrap(await self._post("site/CreateMigrationJobEncrypted", body, retry_500=False),
                       "CreateMigrationJobEncrypted")
        if not data:
            raise HttpError("POST", "CreateMigrationJobEncrypted", 200, "null",
                            "the service returned no job id")
        return str(data).strip("{}")

    async def job_status(self, job_id: str) -> int:
        data = _unwrap(await self._post("site/GetMigrationJobStatus", {"id": job_id}),
                       "GetMigrationJobStatus")
        return int(data)

    async def job_progress(self, job_id: str, next_token: str = "0") -> tuple[list[dict[str, Any]], str]:
        """Return the job's events after ``next_token`` and the token to ask with next time."""
        # Microsoft's sample sends a numeric token unquoted (nextToken=0); keep that form.
        token = next_token if next_token.isdigit() else f"'{odata_string(next_token)}'"
        url = f"site/GetMigrationJobProgress(jobId='{job_id}',nextToken={token})"
        response = await self.http.request("GET", f"{self.api}/{url}", retry_500=False)
        data = _unwrap(response.data, "GetMigrationJobProgress")
        logs = data.get("Logs", [])
        if isinstance(logs, dict):
            logs = logs.get("results", [])
        events = []
        for entry in logs:
            try:
                events.append(json.loads(entry) if isinstance(entry, str) else dict(entry))
            except ValueError:
                log.warning("job %s: skipped an event that is not JSON", job_id)
        return events, str(data.get("NextToken", next_token))

    async def delete_job(self, job_id: str) -> bool:
        data = _unwrap(await self._post("site/DeleteMigrationJob", {"id": job_id}), "DeleteMigrationJob")
        return bool(data)


def _next_link(data: Any) -> str | None:
    """Return the next page's URL: ``d.__next`` (verbose) or ``odata.nextLink`` (minimal metadata)."""
    if not isinstance(data, dict):
        return None
    value = data.get("d")
    if isinstance(value, dict) and value.get("__next"):
        return str(value["__next"])
    link = data.get("odata.nextLink") or data.get("@odata.nextLink")
    return str(link) if link else None


def _user(data: dict[str, Any]) -> UserInfo:
    return UserInfo(
        id=int(data["Id"]),
        login=data.get("LoginName", ""),
        title=data.get("Title", ""),
        email=data.get("Email", "") or "",
        is_site_admin=bool(data.get("IsSiteAdmin", False)),
    )


def _library(data: dict[str, Any]) -> LibraryInfo:
    root = data.get("RootFolder") or {}
    return LibraryInfo(
        id=data["Id"],
        title=data["Title"],
        base_template=int(data.get("BaseTemplate", 101)),
        root_folder_id=root.get("UniqueId", ""),
        root_folder_url=root.get("ServerRelativeUrl", ""),
        versioning=bool(data.get("EnableVersioning", True)),
    )
