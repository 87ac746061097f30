"""Test kit for the sandbox Migration API and import timer job.

It starts a real Azurite over TLS and mounts the migration handlers in a small aiohttp app with a
stand-in tenant. It also contains a small Migration API client written from the protocol
reference: package XML with lxml, AES-256-CBC with cryptography, uploads with azure-storage-blob.
The client shares no code with ``spmt_tui.engine`` or with the sandbox's own XML and crypto code,
so the two sides check each other.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from azure.storage.blob import (
    BlobServiceClient,
    ContainerClient,
    ContainerSasPermissions,
    ContentSettings,
    generate_container_sas,
)
from azure.storage.queue import QueueClient
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from lxml import etree

from spmt_tui.sandbox import azurite as azurite_module
from spmt_tui.sandbox.ca import TlsFiles, ensure_tls
from spmt_tui.sandbox.context import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    RequestContext,
    StorageAccount,
    TenantSettings,
)
from spmt_tui.sandbox.faults import Faults
from spmt_tui.sandbox.importer import Importer
from spmt_tui.sandbox.migration import register
from spmt_tui.sandbox.store import Library, Site, TenantStore

REPO = Path(__file__).resolve().parents[2]
XSD_DIR = REPO.parent / "shared" / "reference" / "xsd"
AZURITE_PROBE = Path("/tmp/azurite-probe/node_modules/.bin")

ADMIN_UPN = "admin@sandbox.example"
READER_UPN = "reader@sandbox.example"
ALICE_UPN = "alice@sandbox.example"
DIRECTORY = {ADMIN_UPN: "Sandbox Admin", READER_UPN: "Reader", ALICE_UPN: "Alice Example"}

NS = {
    "manifest": "urn:deployment-manifest-schema",
    "export": "urn:deployment-exportsettings-schema",
    "system": "urn:deployment-systemdata-schema",
    "users": "urn:deployment-usergroupmap-schema",
    "roots": "urn:deployment-rootobjectmap-schema",
    "requirements": "urn:deployment-requirements-schema",
    "lookups": "urn:deployment-lookuplistmap-schema",
    "viewforms": "urn:deployment-viewformlist-schema",
}
XSD_FILES = {
    "Manifest.xml": "DeploymentManifest.xsd",
    "ExportSettings.xml": "DeploymentExportSettings.xsd",
    "RootObjectMap.xml": "DeploymentRootObjectMap.xsd",
}


# -- Azurite -----------------------------------------------------------------------------------


@dataclass
class StorageEnv:
    tls: TlsFiles
    storage: StorageAccount
    process: azurite_module.AzuriteProcess


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_azurite(base: Path) -> StorageEnv:
    """Start Azurite (blob and queue) over TLS on free ports of 127.0.0.1."""
    try:
        azurite_module.find_azurite_bin()
    except azurite_module.AzuriteError:
        os.environ.setdefault("SPMT_TUI_AZURITE_BIN", str(AZURITE_PROBE))
    tls = ensure_tls(base)
    process = azurite_module.AzuriteProcess(
        blob_port=free_port(), queue_port=free_port(), location=base / "azurite",
        cert=tls.server_cert, key=tls.server_key,
    )
    asyncio.run(process.start())
    storage = StorageAccount(AZURITE_ACCOUNT, AZURITE_KEY, process.blob_url, process.queue_url, tls.ca_cert)
    return StorageEnv(tls, storage, process)


# -- a stand-in tenant and REST dispatcher -----------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Same fields as the identity provider's Principal."""

    kind: str
    name: str
    object_id: str = ""
    display_name: str = ""


@dataclass
class FakeTenant:
    store: TenantStore
    storage: StorageAccount
    settings: TenantSettings
    faults: Faults
    data_dir: Path

    def identity_knows_user(self, upn: str) -> bool:
        return upn.lower() in DIRECTORY

    def display_name_of(self, upn: str) -> str:
        return DIRECTORY.get(upn.lower(), upn)


class MiniRest:
    """Dispatches ``/sites/demo/_api/site/<Method>(args)`` to registered handlers.

    The ``X-Caller`` header picks the caller: ``admin`` (site collection administrator),
    ``reader`` (member without admin rights) or ``app`` (app-only principal).
    """

    def __init__(self, tenant: FakeTenant, site: Site) -> None:
        self.tenant = tenant
        self.site = site
        self.methods: dict[str, tuple[Any, tuple[str, ...]]] = {}

    def register(self, name: str, handler: Any, methods: tuple[str, ...] = ("POST",)) -> None:
        self.methods[name.lower()] = (handler, methods)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        _site, _, api = request.path.partition("/_api/")
        name, _, args = api.partition("(")
        handler, methods = self.methods[name.lower()]
        if request.method not in methods:
            return web.json_response({"error": "method not allowed"}, status=405)
        body: dict[str, Any] = {}
        raw = await request.read()
        if raw:
            body = json.loads(raw)
        for part in filter(None, args.rstrip(")").split(",")):
            key, _, value = part.partition("=")
            value = value.strip()
            if value.startswith("guid'"):
                value = value[4:]
            body[key.strip()] = value.strip("'")
        store = self.tenant.store
        caller = request.headers.get("X-Caller", "admin")
        if caller == "app":
            principal = Caller("app", "11111111-2222-3333-4444-555555555555")
            user = store.ensure_user(self.site.id, "i:0i.t|ms.sp.ext|app", "", "App")
        else:
            upn = ADMIN_UPN if caller == "admin" else READER_UPN
            principal = Caller("user", upn)
            user = store.user_by_login(self.site.id, f"i:0#.f|membership|{upn}")
            assert user is not None
        ctx = RequestContext(tenant=self.tenant, site=self.site, principal=principal, user=user)
        return await handler(request, ctx, body)


@dataclass
class Env:
    """One test's tenant: store, site, library, HTTP client and (optionally) running importer."""

    tenant: FakeTenant
    site: Site
    library: Library
    client: TestClient
    importer: Importer
    storage_env: StorageEnv

    @property
    def ca(self) -> str:
        return str(self.storage_env.tls.ca_cert)

    async def call(
        self, method: str, body: dict[str, Any] | None = None, *, caller: str = "admin",
        http: str = "POST", args: str = "",
    ) -> tuple[int, Any]:
        response = await self.client.request(
            http, f"/sites/demo/_api/site/{method}{args}", json=body,
            headers={"X-Caller": caller, "Accept": "application/json;odata=verbose"},
        )
        return response.status, await response.json()


@contextlib.asynccontextmanager
async def sandbox_env(
    tmp_path: Path, storage_env: StorageEnv, *, start_importer: bool = True, **settings: Any
) -> AsyncIterator[Env]:
    data_dir = tmp_path / "tenant"
    data_dir.mkdir(parents=True, exist_ok=True)
    store = TenantStore(data_dir)
    site = store.create_site("/sites/demo", "Demo")
    library = store.create_library(site, "Documents", "Shared Documents")
    store.ensure_user(site.id, f"i:0#.f|membership|{ADMIN_UPN}", ADMIN_UPN, "Sandbox Admin", is_site_admin=True)
    store.ensure_user(site.id, f"i:0#.f|membership|{READER_UPN}", READER_UPN, "Reader")
    defaults: dict[str, Any] = {"import_delay": 0.05, "progress_every": 2, "import_workers": 2}
    tenant = FakeTenant(store, storage_env.storage, TenantSettings(**{**defaults, **settings}),
                        Faults(seed=7), data_dir)
    rest = MiniRest(tenant, site)
    register(rest, tenant)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rest.handle)
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    importer = Importer(tenant)
    if start_importer:
        await importer.start()
    try:
        yield Env(tenant, site, library, client, importer, storage_env)
    finally:
        await importer.stop()
        await client.close()
        store.close()


# -- crypto and hashing, written from the reference --------------------------------------------


def encrypt(key: bytes, plain: bytes) -> tuple[bytes, bytes]:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    data = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv, encryptor.update(data) + encryptor.finalize()


def decrypt(key: bytes, iv: bytes, cipher: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    data = decryptor.update(cipher) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(data) + unpadder.finalize()


def quick_xor_hash(data: bytes) -> str:
    """QuickXorHash, byte by byte as its specification describes (slow; for small test data)."""
    state = 0
    mask = (1 << 160) - 1
    for index, value in enumerate(data):
        shift = (index * 11) % 160
        state ^= ((value << shift) | (value >> (160 - shift))) & mask
    digest = bytearray(state.to_bytes(20, "little"))
    for index, value in enumerate(len(data).to_bytes(8, "little")):
        digest[12 + index] ^= value
    return base64.b64encode(bytes(digest)).decode()


# -- package builder ---------------------------------------------------------------------------


def manifest_time(value: dt.datetime) -> str:
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class PackageUser:
    id: int
    name: str
    login: str
    email: str = ""
    system_id: str | None = None
    is_deleted: bool = False


@dataclass
class FolderSpec:
    path: str
    id: str
    item_id: str
    int_id: int
    parent_id: str | None = None
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass
class FileSpec:
    path: str
    versions: list[bytes]
    id: str
    item_id: str
    int_id: int
    created: dt.datetime
    modified: dt.datetime
    author: int
    editor: int
    parent_id: str | None = None
    file_values: list[str] = field(default_factory=list)
    attrs: dict[str, str] = field(default_factory=dict)
    with_list_item: bool = True

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]


class PackageBuilder:
    """Builds an Import Migration API package for one document library of one web."""

    def __init__(
        self, site: Site, library: Library, *, web_id: str | None = None,
        users: list[PackageUser] | None = None, source_type: str | None = "FileShare",
    ) -> None:
        self.site = site
        self.library = library
        self.web_id = web_id or site.web_id
        self.users = users if users is not None else [
            PackageUser(1, "Alice Example", f"i:0#.f|membership|{ALICE_UPN}", ALICE_UPN)
        ]
        self.source_type = source_type
        self.folders: list[FolderSpec] = []
        self.files: list[FileSpec] = []
        self.next_int_id = 1
        self.list_item_extra: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}  # FileValue -> plain bytes

    @property
    def library_root(self) -> str:
        return self.library.root_folder_url

    @property
    def library_relative_root(self) -> str:
        return self.library_root[len(self.site.url.rstrip("/")) + 1 :]

    def _take_int_id(self, int_id: int | None) -> int:
        if int_id is None:
            int_id = self.next_int_id
        self.next_int_id = max(self.next_int_id, int_id + 1)
        return int_id

    def folder(self, path: str, *, folder_id: str | None = None, int_id: int | None = None,
               parent_id: str | None = None, **attrs: str) -> FolderSpec:
        spec = FolderSpec(path, folder_id or str(uuid.uuid4()), str(uuid.uuid4()),
                          self._take_int_id(int_id), parent_id, attrs)
        self.folders.append(spec)
        return spec

    def file(
        self, path: str, data: bytes | list[bytes], *, file_id: str | None = None, int_id: int | None = None,
        created: dt.datetime | None = None, modified: dt.datetime | None = None, author: int = 1,
        editor: int | None = None, parent_id: str | None = None, with_list_item: bool = True, **attrs: str,
    ) -> FileSpec:
        versions = data if isinstance(data, list) else [data]
        created = created or dt.datetime(2021, 3, 28, 1, 30, tzinfo=dt.timezone.utc)
        spec = FileSpec(
            path, versions, file_id or str(uuid.uuid4()), str(uuid.uuid4()), self._take_int_id(int_id),
            created, modified or created + dt.timedelta(days=1), author,
            editor if editor is not None else author, parent_id, attrs=attrs, with_list_item=with_list_item,
        )
        spec.file_values = [f"{uuid.uuid4()}.dat" for _ in versions]
        for value, content in zip(spec.file_values, versions):
            self.blobs[value] = content
        self.files.append(spec)
        return spec

    # XML

    def _folder_id_of(self, library_path: str) -> str:
        if not library_path:
            return self.library.root_folder_id
        for folder in self.folders:
            if folder.path == library_path:
                return folder.id
        raise KeyError(library_path)

    def manifest(self) -> etree._Element:
        ns = NS["manifest"]
        root = etree.Element(f"{{{ns}}}SPObjects", nsmap={None: ns})
        web_url = self.site.url
        common = {"ParentWebId": self.web_id, "ParentWebUrl": web_url}

        def spobject(object_id: str, object_type: str, parent_id: str, url: str) -> etree._Element:
            return etree.SubElement(root, f"{{{ns}}}SPObject", Id=object_id, ObjectType=object_type,
                                    ParentId=parent_id, Url=url, **common)

        root_folder = spobject(self.library.root_folder_id, "SPFolder", self.site.web_root_folder_id,
                               self.library_root)
        etree.SubElement(
            root_folder, f"{{{ns}}}Folder", Id=self.library.root_folder_id, Url=self.library_relative_root,
            Name=self.library_relative_root, ParentFolderId=self.site.web_root_folder_id,
            ContainingDocumentLibrary=self.library.id, TimeCreated="2024-01-01T00:00:00",
            TimeLastModified="2024-01-01T00:00:00", SortBehavior="1", **common,
        )
        library = spobject(self.library.id, "SPDocumentLibrary", self.web_id, self.library_root)
        library_element = etree.SubElement(
            library, f"{{{ns}}}DocumentLibrary", Id=self.library.id, BaseTemplate="DocumentLibrary",
            RootFolderId=self.library.root_folder_id, RootFolderUrl=self.library_root,
            ParentWebId=self.web_id, ParentWebUrl=web_url, Title=self.library.title,
        )
        etree.SubElement(library_element, f"{{{ns}}}ContentTypes")
        for folder in self.folders:
            parent_path = folder.path.rsplit("/", 1)[0] if "/" in folder.path else ""
            parent_id = folder.parent_id or self._folder_id_of(parent_path)
            url = f"{self.library_root}/{folder.path}"
            relative = f"{self.library_relative_root}/{folder.path}"
            element = spobject(folder.id, "SPFolder", parent_id, url)
            etree.SubElement(
                element, f"{{{ns}}}Folder", Id=folder.id, Url=relative, Name=folder.path.rsplit("/", 1)[-1],
                ParentFolderId=parent_id, ContainingDocumentLibrary=self.library.id,
                ListItemIntId=str(folder.int_id), TimeCreated="2022-05-01T08:00:00",
                TimeLastModified="2022-05-02T08:00:00", SortBehavior="1", Author="1", ModifiedBy="1",
                **common, **folder.attrs,
            )
            item = spobject(folder.item_id, "SPListItem", self.library.id, url)
            etree.SubElement(
                item, f"{{{ns}}}ListItem", FileUrl=relative, DocType="Folder", ParentFolderId=parent_id,
                Order=str(folder.int_id * 100), Id=folder.item_id, ParentWebId=self.web_id,
                ParentListId=self.library.id, Name=folder.path.rsplit("/", 1)[-1],
                DirName=f"{self.library_root.lstrip('/')}/{parent_path}".rstrip("/"), IntId=str(folder.int_id),
                DocId=folder.id, Version="1.0", ContentTypeId="0x0120", Author="1", ModifiedBy="1",
                TimeCreated="2022-05-01T08:00:00", TimeLastModified="2022-05-02T08:00:00",
                ModerationStatus="Approved",
            ).append(etree.Element(f"{{{ns}}}Fields"))
        for spec in self.files:
            self._file_objects(spobject, spec, ns, common)
        return root

    def _file_objects(self, spobject: Any, spec: FileSpec, ns: str, common: dict[str, str]) -> None:
        parent_path = spec.path.rsplit("/", 1)[0] if "/" in spec.path else ""
        parent_id = spec.parent_id or self._folder_id_of(parent_path)
        url = f"{self.library_root}/{spec.path}"
        relative = f"{self.library_relative_root}/{spec.path}"
        element = spobject(spec.id, "SPFile", parent_id, url)

        current = f"{len(spec.versions)}.0"
        attrs = {
            "Url": relative, "Id": spec.id, "Name": spec.name, "ListItemIntId": str(spec.int_id),
            "ListId": self.library.id, "ParentId": parent_id, "TimeCreated": manifest_time(spec.created),
            "TimeLastModified": manifest_time(spec.modified), "Version": current, "Author": str(spec.author),
            "ModifiedBy": str(spec.editor), **common,
        }
        if len(spec.versions) == 1:
            attrs["FileValue"] = spec.file_values[0]
            attrs["FileSize"] = str(len(spec.versions[0]))
        attrs.update(spec.attrs)
        file_element = etree.SubElement(element, f"{{{ns}}}File", **attrs)

        if len(spec.versions) > 1:
            versions = etree.SubElement(file_element, f"{{{ns}}}Versions")
            for number, (value, content) in enumerate(zip(spec.file_values, spec.versions), start=1):
                moment = spec.created + dt.timedelta(hours=number)
                etree.SubElement(
                    versions, f"{{{ns}}}File", Url=relative, Id=spec.id, Name=spec.name, ParentId=parent_id,
                    FileValue=value, FileSize=str(len(content)), Version=f"{number}.0",
                    TimeCreated=manifest_time(spec.created), TimeLastModified=manifest_time(moment),
                    Author=str(spec.author), ModifiedBy=str(spec.editor), **common,
                )

        if not spec.with_list_item:
            return
        item = spobject(spec.item_id, "SPListItem", self.library.id, url)
        etree.SubElement(
            item, f"{{{ns}}}ListItem", FileUrl=relative, DocType="File", ParentFolderId=parent_id,
            Order=str(spec.int_id * 100), Id=spec.item_id, ParentWebId=self.web_id,
            ParentListId=self.library.id, Name=spec.name,
            DirName=f"{self.library_root.lstrip('/')}/{parent_path}".rstrip("/"), IntId=str(spec.int_id),
            DocId=spec.id, Version=current, Author=str(spec.author), ModifiedBy=str(spec.editor),
            TimeCreated=manifest_time(spec.created), TimeLastModified=manifest_time(spec.modified),
            ModerationStatus="Approved", **self.list_item_extra,
        ).append(etree.Element(f"{{{ns}}}Fields"))

    def xml_files(self) -> dict[str, bytes]:
        files: dict[str, etree._Element] = {"Manifest.xml": self.manifest()}
        export = etree.Element(f"{{{NS['export']}}}ExportSettings", nsmap={None: NS["export"]},
                               SiteUrl="http://fileshare/sites/user", FileLocation="C:\\", IncludeSecurity="All")
        if self.source_type:
            export.set("SourceType", self.source_type)
        etree.SubElement(export, f"{{{NS['export']}}}ExportObjects")
        files["ExportSettings.xml"] = export

        system = etree.Element(f"{{{NS['system']}}}SystemData", nsmap={None: NS["system"]})
        etree.SubElement(system, f"{{{NS['system']}}}SchemaVersion", Version="15.0.0.0", Build="16.0.3111.1200",
                         DatabaseVersion="11552", SiteVersion="15")
        manifest_files = etree.SubElement(system, f"{{{NS['system']}}}ManifestFiles")
        etree.SubElement(manifest_files, f"{{{NS['system']}}}ManifestFile", Name="Manifest.xml")
        system_objects = etree.SubElement(system, f"{{{NS['system']}}}SystemObjects")
        etree.SubElement(system_objects, f"{{{NS['system']}}}SystemObject", Id=self.web_id, Type="Web",
                         Url=self.site.url)
        etree.SubElement(system_objects, f"{{{NS['system']}}}SystemObject", Id=self.library.id, Type="List",
                         Url=self.library_root)
        etree.SubElement(system, f"{{{NS['system']}}}RootWebOnlyLists")
        files["SystemData.xml"] = system

        users = etree.Element(f"{{{NS['users']}}}UserGroupMap", nsmap={None: NS["users"]})
        users_element = etree.SubElement(users, f"{{{NS['users']}}}Users")
        for user in self.users:
            attrs = {"Id": str(user.id), "Name": user.name, "Login": user.login, "Email": user.email,
                     "IsDomainGroup": "false", "IsSiteAdmin": "false", "IsDeleted": str(user.is_deleted).lower()}
            if user.system_id:
                attrs["SystemId"] = user.system_id
            etree.SubElement(users_element, f"{{{NS['users']}}}User", **attrs)
        etree.SubElement(users, f"{{{NS['users']}}}Groups")
        files["UserGroup.xml"] = users

        roots = etree.Element(f"{{{NS['roots']}}}RootObjects", nsmap={None: NS["roots"]})
        etree.SubElement(roots, f"{{{NS['roots']}}}RootObject", Id=self.library.id, Type="List",
                         ParentId=self.web_id, WebUrl=self.site.url, Url=self.library_root, IsDependency="false")
        files["RootObjectMap.xml"] = roots

        files["Requirements.xml"] = etree.Element(f"{{{NS['requirements']}}}Requirements",
                                                  nsmap={None: NS["requirements"]})
        files["LookupListMap.xml"] = etree.Element(f"{{{NS['lookups']}}}LookupLists", nsmap={None: NS["lookups"]})
        files["ViewFormsList.xml"] = etree.Element(f"{{{NS['viewforms']}}}ViewFormsList",
                                                   nsmap={None: NS["viewforms"]})
        return {
            name: etree.tostring(element, xml_declaration=True, encoding="utf-8")
            for name, element in files.items()
        }


def xsd_errors(files: dict[str, bytes]) -> dict[str, str]:
    """Validate the package files that have a published XSD; return the first error of each."""
    errors: dict[str, str] = {}
    for name, xsd in XSD_FILES.items():
        if name not in files:
            continue
        schema = etree.XMLSchema(etree.parse(str(XSD_DIR / xsd)))
        document = etree.fromstring(files[name])
        if not schema.validate(document):
            errors[name] = str(schema.error_log.last_error)
    return errors


@dataclass
class Upload:
    """How to upload a package; the fields select the faults a test needs."""

    encrypt: bool = True
    no_snapshot: set[str] = field(default_factory=set)
    wrong_md5: set[str] = field(default_factory=set)


def _container(uri: str, ca: str) -> ContainerClient:
    return ContainerClient.from_container_url(uri, connection_verify=ca)


def upload_blob(container: ContainerClient, name: str, plain: bytes, key: bytes | None, *,
                snapshot: bool = True, md5_override: bytes | None = None) -> bytes:
    """Upload one blob as the protocol reference describes: encrypted, IV metadata, Content-MD5, snapshot."""
    metadata: dict[str, str] = {}
    data = plain
    if key is not None:
        iv, data = encrypt(key, plain)
        metadata["IV"] = base64.b64encode(iv).decode()
    blob = container.get_blob_client(name)
    blob.upload_blob(data, overwrite=True, metadata=metadata,
                     content_settings=ContentSettings(content_md5=bytearray(hashlib.md5(data).digest())))
    if md5_override is not None:
        # Storage checks Content-MD5 on upload, so a wrong value can only be set afterwards.
        blob.set_http_headers(ContentSettings(content_md5=bytearray(md5_override)))
    if snapshot:
        blob.create_snapshot()
    return data


def upload_package(builder: PackageBuilder, files: dict[str, bytes], data_uri: str, manifest_uri: str,
                   key: bytes | None, ca: str, options: Upload | None = None) -> None:
    options = options or Upload()
    effective_key = key if options.encrypt else None
    data = _container(data_uri, ca)
    for value, plain in builder.blobs.items():
        upload_blob(data, value, plain, effective_key, snapshot=value not in options.no_snapshot,
                    md5_override=b"\x00" * 16 if value in options.wrong_md5 else None)
    manifest = _container(manifest_uri, ca)
    for name, content in files.items():
        upload_blob(manifest, name, content, effective_key, snapshot=name not in options.no_snapshot)


def set_checksums(builder: PackageBuilder) -> None:
    """Put each single-version file's QuickXorHash in its manifest ``Checksum`` attribute."""
    for spec in builder.files:
        if len(spec.versions) == 1:
            spec.attrs.setdefault("Checksum", quick_xor_hash(spec.versions[0]))


# -- job flow ----------------------------------------------------------------------------------


async def provision(env: Env) -> tuple[str, str, bytes]:
    status, body = await env.call("ProvisionMigrationContainers")
    assert status == 200, body
    info = body["d"]["ProvisionMigrationContainers"]
    return info["DataContainerUri"], info["MetadataContainerUri"], base64.b64decode(info["EncryptionKey"])


async def provision_queue(env: Env) -> str:
    status, body = await env.call("ProvisionMigrationQueue")
    assert status == 200, body
    return body["d"]["ProvisionMigrationQueue"]["JobQueueUri"]


async def submit(env: Env, builder: PackageBuilder, *, queue: bool = False, options: Upload | None = None,
                 files: dict[str, bytes] | None = None) -> tuple[str, bytes, str | None, str]:
    """Provision containers, upload the package and create an encrypted job.

    Returns ``(job_id, key, queue_uri, manifest_uri)``.
    """
    data_uri, manifest_uri, key = await provision(env)
    queue_uri = await provision_queue(env) if queue else None
    files = files if files is not None else builder.xml_files()
    await asyncio.to_thread(upload_package, builder, files, data_uri, manifest_uri, key, env.ca, options)
    body: dict[str, Any] = {
        "options": {"AES256CBCKey": base64.b64encode(key).decode()},
        "gWebId": env.site.web_id,
        "azureContainerSourceUri": data_uri,
        "azureContainerManifestUri": manifest_uri,
    }
    if queue_uri:
        body["azureQueueReportUri"] = queue_uri
    status, response = await env.call("CreateMigrationJobEncrypted", body)
    assert status == 200, response
    return response["d"]["CreateMigrationJobEncrypted"], key, queue_uri, manifest_uri


async def progress_page(env: Env, job_id: str, token: str, *, http: str = "GET") -> tuple[int, Any]:
    return await env.call("GetMigrationJobProgress", http=http, args=f"(jobId='{job_id}',nextToken={token})")


async def wait_for_end(env: Env, job_id: str, timeout: float = 30.0) -> tuple[list[dict[str, str]], list[str]]:
    """Page through GetMigrationJobProgress until JobEnd; return the events and the tokens seen."""
    events: list[dict[str, str]] = []
    tokens: list[str] = []
    token = "0"
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await progress_page(env, job_id, token)
        assert status == 200, body
        page = body["d"]["GetMigrationJobProgress"]
        logs = page["Logs"]["results"]
        events.extend(json.loads(entry) for entry in logs)
        token = page["NextToken"]
        tokens.append(token)
        if any(event["Event"] == "JobEnd" for event in events):
            return events, tokens
        if not logs:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no JobEnd within {timeout} s; events: {[e['Event'] for e in events]}")
            await asyncio.sleep(0.1)


def read_queue(queue_uri: str, ca: str, key: bytes) -> list[dict[str, Any]]:
    """Read and delete every message of the queue; decrypt encrypted envelopes."""
    queue = QueueClient.from_queue_url(queue_uri, connection_verify=ca)
    events: list[dict[str, Any]] = []
    while True:
        batch = list(queue.receive_messages(max_messages=32, visibility_timeout=30))
        if not batch:
            return events
        for message in batch:
            envelope = json.loads(base64.b64decode(message.content))
            if envelope.get("Label") == "Encrypted":
                plain = decrypt(key, base64.b64decode(envelope["IV"]), base64.b64decode(envelope["Content"]))
                event = json.loads(plain)
                event["_envelope_job"] = envelope["JobId"]
                events.append(event)
            else:
                events.append(envelope)
            queue.delete_message(message)


def read_log(manifest_uri: str, ca: str, key: bytes, name: str) -> str:
    """Download and decrypt an import log the service wrote to the manifest container."""
    blob = _container(manifest_uri, ca).get_blob_client(name)
    data = blob.download_blob().readall()
    iv = base64.b64decode(blob.get_blob_properties().metadata["IV"])
    return decrypt(key, iv, data).decode()


def job_body(env: Env, data_uri: str, manifest_uri: str, key: bytes | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "gWebId": env.site.web_id,
        "azureContainerSourceUri": data_uri,
        "azureContainerManifestUri": manifest_uri,
    }
    if key is not None:
        body["options"] = {"AES256CBCKey": base64.b64encode(key).decode()}
    return body


def own_container_uri(env: Env, permission: str, *, expiry: dt.datetime | None = None) -> str:
    """Create a customer-owned container with the account key and return its SAS URI."""
    storage = env.tenant.storage
    service = BlobServiceClient(storage.blob_url, credential={"account_name": storage.name,
                                                            "account_key": storage.key},
                                connection_verify=env.ca)
    name = f"own-{time.time_ns()}"
    service.create_container(name)
    sas = generate_container_sas(
        storage.name, name, account_key=storage.key,
        permission=ContainerSasPermissions.from_string(permission),
        expiry=expiry or dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2), protocol="https",
    )
    return f"{storage.blob_url}/{name}?{sas}"


def by_event(events: list[dict[str, str]], name: str) -> list[dict[str, str]]:
    return [event for event in events if event["Event"] == name]
