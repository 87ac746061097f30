"""Reading an import package from its containers: latest snapshots, decryption, schema checks.

The import reads only the latest snapshot of each blob, through the account key. Every package
XML file is decrypted with the job key and the blob's ``IV`` metadata, then validated against the
constrained schemas (``spmt_tui.sandbox.schema``). A violation ends the job with JobFatalError.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from spmt_tui.sandbox import schema
from spmt_tui.sandbox.jobs import AesDecryptor
from spmt_tui.sandbox.schema import XmlElement, XmlSchemaError

if TYPE_CHECKING:
    from spmt_tui.sandbox.importer import ImportRun

SP_EXCEPTION = "Microsoft.SharePoint.SPException"

# Optional package files whose absence the service reports as a warning. ExportSettings.xml,
# SystemData.xml and UserGroup.xml are required, and RootObjectMap.xml may be left out silently.
WARN_WHEN_MISSING = ("Requirements.xml", "LookupListMap.xml", "ViewFormsList.xml")

SOURCE_TYPES = frozenset(
    """AmazonS3 AzureStorage Box Dropbox Egnyte FileShare GoogleCloudStorage GoogleDrive
    MicrosoftStream OneDrive SharePointOnline SharePointOnPremServer Other""".split()
)


class JobFatal(Exception):
    """Ends the whole job with JobFatalError."""

    def __init__(self, message: str, *, error_type: str = SP_EXCEPTION, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type
        self.detail = detail


class JobInterrupted(Exception):
    """The sandbox is stopping; the job stays Processing and runs again after a restart."""


def metadata_value(metadata: dict[str, str] | None, name: str) -> str | None:
    """Return a blob metadata value; metadata names are case-insensitive in Azure Storage."""
    for key, value in (metadata or {}).items():
        if key.lower() == name.lower():
            return value
    return None


@dataclass(frozen=True)
class SnapshotBlob:
    """The latest snapshot of a blob: what the import reads."""

    name: str
    snapshot: str
    metadata: dict[str, str]
    content_md5: bytes | None
    size: int


class ContainerView:
    """The blobs of one container, listed once with their snapshots, read through the account key."""

    def __init__(self, service: Any, name: str) -> None:
        self.name = name
        self.client = service.get_container_client(name)
        self.latest: dict[str, SnapshotBlob] = {}
        self.base_metadata: dict[str, dict[str, str]] = {}
        for blob in self.client.list_blobs(include=["snapshots", "metadata"]):
            if blob.snapshot is None:
                self.base_metadata[blob.name] = dict(blob.metadata or {})
                continue
            current = self.latest.get(blob.name)
            if current is None or blob.snapshot > current.snapshot:
                md5 = blob.content_settings.content_md5 if blob.content_settings else None
                self.latest[blob.name] = SnapshotBlob(
                    blob.name, blob.snapshot, dict(blob.metadata or {}),
                    bytes(md5) if md5 else None, int(blob.size or 0),
                )

    def has_blob(self, name: str) -> bool:
        return name in self.latest or name in self.base_metadata

    def iv_of(self, blob: SnapshotBlob) -> str | None:
        # A snapshot keeps the metadata the blob had when it was taken. A client that set the IV
        # after snapshotting has it only on the base blob, and the sandbox accepts that.
        return metadata_value(blob.metadata, "IV") or metadata_value(
            self.base_metadata.get(blob.name), "IV"
        )

    def chunks(self, blob: SnapshotBlob) -> Iterable[bytes]:
        downloader = self.client.get_blob_client(blob.name, snapshot=blob.snapshot).download_blob()
        return downloader.chunks()


class PackageFiles:
    """The decrypted, schema-valid XML files of the package."""

    def __init__(self, run: ImportRun, view: ContainerView) -> None:
        self.run = run
        self.view = view
        self.export_settings: XmlElement | None = None
        self.system_data: XmlElement | None = None
        self.user_group: XmlElement | None = None
        self.root_object_map: XmlElement | None = None
        self.manifests: list[tuple[str, XmlElement]] = []

    def load(self) -> None:
        self.export_settings = self._read("ExportSettings.xml", required=True)
        self.system_data = self._read("SystemData.xml", required=True)
        self.user_group = self._read("UserGroup.xml", required=True)
        self.root_object_map = self._read("RootObjectMap.xml", required=False, warn_missing=False)
        for name in WARN_WHEN_MISSING:
            self._read(name, required=False)
        assert self.system_data is not None
        names: list[str] = []
        for manifest_file in self.system_data.iter("ManifestFile"):
            name = (manifest_file.get("Name") or "").strip()
            if name and name not in names:
                names.append(name)
        if not names:
            raise JobFatal("SystemData.xml lists no manifest files (ManifestFiles/ManifestFile/@Name).")
        for name in names:
            root = self._read(name, required=True, expected=(schema.MANIFEST_NS,))
            assert root is not None
            self.manifests.append((name, root))
        self._check_source_type()

    def _read(
        self, name: str, *, required: bool, expected: tuple[str, ...] | None = None,
        warn_missing: bool = True,
    ) -> XmlElement | None:
        blob = self.view.latest.get(name)
        if blob is None:
            if self.view.has_blob(name):
                message = f"{name} has no snapshot; the import reads only the latest snapshot of each blob."
            else:
                message = f"{name} was not found in the manifest container."
            if required:
                raise JobFatal(message)
            if warn_missing:
                self.run.warn(message)
            return None
        data = b"".join(self.view.chunks(blob))
        if self.run.job.encrypted:
            data = self._decrypt(name, blob, data)
        try:
            root = schema.parse_xml(data)
            schema.validate(root, expected_namespaces=expected or schema.FILE_NAMESPACES.get(name))
        except XmlSchemaError as failure:
            raise JobFatal(
                failure.report_text,
                error_type=failure.exception_type,
                detail=f"{name}, line {failure.line}, position {failure.column}",
            ) from None
        return root

    def _decrypt(self, name: str, blob: SnapshotBlob, data: bytes) -> bytes:
        iv_text = self.view.iv_of(blob)
        key = self.run.job.key
        if not iv_text or key is None:
            raise JobFatal(f"{name} has no IV metadata, so it cannot be decrypted.")
        try:
            decryptor = AesDecryptor(key, base64.b64decode(iv_text))
            return decryptor.update(data) + decryptor.finalize()
        except ValueError:
            raise JobFatal(
                f"{name} could not be decrypted with the job key and its IV; the key or the IV is wrong."
            ) from None

    def _check_source_type(self) -> None:
        assert self.export_settings is not None
        source_type = self.export_settings.get("SourceType")
        if not source_type:
            # Microsoft made SourceType mandatory in 2023; jobs without it are rejected.
            raise JobFatal("ExportSettings.xml has no SourceType attribute; it is required.")
        if source_type not in SOURCE_TYPES:
            self.run.warn(f"ExportSettings.xml has an unknown SourceType '{source_type}'.")
        elif source_type == "Other" and not self.export_settings.get("DetailedSource"):
            self.run.warn("ExportSettings.xml has SourceType 'Other' without DetailedSource.")
