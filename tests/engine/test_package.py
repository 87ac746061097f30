"""Import package building, planning and validation, checked against Microsoft's XSDs.

NOTE: schemas are available only for Manifest.xml, ExportSettings.xml and RootObjectMap.xml.
Those three files are validated whole with lxml. SystemData.xml, UserGroup.xml,
Requirements.xml, LookupListMap.xml and ViewFormsList.xml have no schema, so these tests check
their well-formedness, root element, namespace and content instead.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from spmt_tui.engine import package as pkg
from spmt_tui.engine.crypto import BlobEncryptor, new_iv
from spmt_tui.engine.package import (
    PackageError,
    PackageFile,
    PackageFolder,
    PackageUser,
    TargetIds,
    build_package,
    object_ids,
    plan_packages,
    validate_package,
)

lxml_etree = pytest.importorskip("lxml.etree")

XSD_DIR = Path(__file__).resolve().parents[3] / "shared" / "reference" / "xsd"
SCHEMA_FILES = {
    pkg.MANIFEST_FILE: "DeploymentManifest.xsd",
    pkg.EXPORT_SETTINGS_FILE: "DeploymentExportSettings.xsd",
    pkg.ROOT_OBJECT_MAP_FILE: "DeploymentRootObjectMap.xsd",
}

SITE = "https://127.0.0.1:8443/sites/demo"
TARGET = TargetIds(
    site_url=SITE,
    web_id=uuid.UUID("11111111-1111-1111-1111-111111111111"),
    web_url="/sites/demo",
    web_root_folder_id=uuid.UUID("22222222-2222-2222-2222-222222222222"),
    list_id=uuid.UUID("33333333-3333-3333-3333-333333333333"),
    list_title="Documents",
    list_root_folder_id=uuid.UUID("44444444-4444-4444-4444-444444444444"),
    list_root_folder_url="/sites/demo/Shared Documents",
)
WHEN = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=timezone.utc)
USERS = [PackageUser(1, "Alice", "alice@contoso.example", "alice@contoso.example")]
KEY = bytes(range(32))


@pytest.fixture(scope="module")
def schemas() -> dict[str, object]:
    if not XSD_DIR.is_dir():
        pytest.skip(f"XSD folder {XSD_DIR} is missing, so packages cannot be checked against the schemas")
    return {name: lxml_etree.XMLSchema(lxml_etree.parse(str(XSD_DIR / xsd)))
            for name, xsd in SCHEMA_FILES.items()}


def assert_schema_valid(files: dict[str, bytes], schemas: dict[str, object]) -> None:
    for name, schema in schemas.items():
        document = lxml_etree.fromstring(files[name])
        if not schema.validate(document):  # type: ignore[attr-defined]
            raise AssertionError(f"{name} fails its XSD: {schema.error_log}")  # type: ignore[attr-defined]


def make_folder(path: str, int_id: int, parent: uuid.UUID = TARGET.list_root_folder_id) -> PackageFolder:
    object_id, item_id = object_ids(SITE, TARGET.list_id, path)
    return PackageFolder(object_id, item_id, int_id, path.rsplit("/", 1)[-1], path, parent, WHEN, WHEN, 1, 1)


def make_file(path: str, int_id: int, parent: uuid.UUID, content: bytes = b"hello") -> PackageFile:
    object_id, item_id = object_ids(SITE, TARGET.list_id, path)
    encryptor = BlobEncryptor(KEY, new_iv())
    encryptor.update(content)
    encryptor.finalize()
    return PackageFile(object_id, item_id, int_id, path.rsplit("/", 1)[-1], path, parent, len(content),
                       WHEN, WHEN, 1, 1, pkg.blob_name_for(object_id), encryptor.md5_base64,
                       encryptor.checksum_base64)


def sample_items() -> list[pkg.PackageItem]:
    folder = make_folder("A", 1)
    return [folder, make_file("A/f.txt", 2, folder.object_id), make_file("A/empty.txt", 3, folder.object_id, b""),
            make_file("top & <odd>.txt", 4, TARGET.list_root_folder_id)]


def test_object_ids_are_deterministic() -> None:
    first = object_ids(SITE, TARGET.list_id, "A/f.txt")
    assert first == object_ids(SITE + "/", str(TARGET.list_id).upper(), "/a/F.txt")
    assert first[0] != first[1]
    assert first[0].version == 5
    assert object_ids(SITE, TARGET.list_id, "A/g.txt")[0] != first[0]


def test_package_has_all_files_and_validates(schemas: dict[str, object]) -> None:
    files = build_package(TARGET, sample_items(), USERS)
    assert set(files) == {
        "Manifest.xml", "ExportSettings.xml", "SystemData.xml", "UserGroup.xml", "RootObjectMap.xml",
        "Requirements.xml", "LookupListMap.xml", "ViewFormsList.xml",
    }
    validate_package(files)
    assert_schema_valid(files, schemas)


def test_manifest_content(schemas: dict[str, object]) -> None:
    items = sample_items()
    files = build_package(TARGET, items, USERS)
    ns = {"m": pkg.NS_MANIFEST}
    root = ET.fromstring(files["Manifest.xml"])
    objects = root.findall("m:SPObject", ns)
    assert [spobject.get("ObjectType") for spobject in objects] == [
        "SPFolder", "SPDocumentLibrary", "SPFolder", "SPListItem", "SPFile", "SPListItem",
        "SPFile", "SPListItem", "SPFile", "SPListItem",
    ]
    file_object = objects[4]
    assert file_object.get("Url") == "/sites/demo/Shared Documents/A/f.txt"
    assert file_object.get("ParentWebUrl") == "/sites/demo"
    file_element = file_object.find("m:File", ns)
    assert file_element is not None
    expected = items[1]
    assert isinstance(expected, PackageFile)
    assert file_element.get("Url") == "Shared Documents/A/f.txt"
    assert file_element.get("FileValue") == f"{expected.object_id}.dat"
    assert file_element.get("FileSize") == "5"
    assert file_element.get("MD5Hash") == expected.md5_base64
    assert file_element.get("Checksum") == expected.checksum_base64
    assert file_element.get("TimeCreated") == "2024-01-02T03:04:05"
    assert file_element.get("ParentId") == str(items[0].object_id)
    item_element = objects[5].find("m:ListItem", ns)
    assert item_element is not None
    assert item_element.get("IntId") == "2"
    assert item_element.get("Order") == "200"
    assert item_element.get("DocId") == str(expected.object_id)
    assert item_element.get("DirName") == "sites/demo/Shared Documents/A"
    assert item_element.get("ParentListId") == str(TARGET.list_id)
    folder_item = objects[3].find("m:ListItem", ns)
    assert folder_item is not None
    assert folder_item.get("DocType") == "Folder"
    assert folder_item.get("ContentTypeId") == "0x0120"
    odd = objects[8].find("m:File", ns)
    assert odd is not None
    assert odd.get("Name") == "top & <odd>.txt"


# CASE-09: the manifest records size 0
def test_empty_file_recorded_with_size_zero() -> None:
    files = build_package(TARGET, sample_items(), USERS)
    root = ET.fromstring(files["Manifest.xml"])
    sizes = {element.get("Name"): element.get("FileSize") for element in root.iter(f"{{{pkg.NS_MANIFEST}}}File")}
    assert sizes["empty.txt"] == "0"


def test_side_files(schemas: dict[str, object]) -> None:
    files = build_package(TARGET, sample_items(), USERS)
    export = ET.fromstring(files["ExportSettings.xml"])
    assert export.get("SourceType") == "FileShare"
    assert export.get("IgnoreWebParts") == "true"
    assert export.get("SiteUrl") == SITE
    users = ET.fromstring(files["UserGroup.xml"])
    user = users.find(f"{{{pkg.NS_USER_GROUP}}}Users/{{{pkg.NS_USER_GROUP}}}User")
    assert user is not None
    assert user.get("Login") == "i:0#.f|membership|alice@contoso.example"
    system = ET.fromstring(files["SystemData.xml"])
    names = [element.get("Name") for element in system.iter(f"{{{pkg.NS_SYSTEM_DATA}}}ManifestFile")]
    assert names == ["Manifest.xml"]
    root_map = ET.fromstring(files["RootObjectMap.xml"])
    root_object = root_map.find(f"{{{pkg.NS_ROOT_OBJECT_MAP}}}RootObject")
    assert root_object is not None
    assert root_object.get("Id") == str(TARGET.list_id)
    assert root_object.get("ParentId") == str(TARGET.web_id)
    for name, (namespace, tag) in pkg.ROOT_ELEMENTS.items():
        assert ET.fromstring(files[name]).tag == f"{{{namespace}}}{tag}"


def test_root_web_urls(schemas: dict[str, object]) -> None:
    target = TargetIds(SITE, TARGET.web_id, "/", TARGET.web_root_folder_id, TARGET.list_id, "Documents",
                       TARGET.list_root_folder_id, "/Shared Documents")
    files = build_package(target, sample_items(), USERS)
    validate_package(files)
    assert_schema_valid(files, schemas)
    root = ET.fromstring(files["Manifest.xml"])
    urls = [element.get("Url") for element in root.iter(f"{{{pkg.NS_MANIFEST}}}SPObject")]
    assert "/Shared Documents/A/f.txt" in urls
    assert all(url.startswith("/") and "//" not in url for url in urls)


# CASE-22: the attributes we write are the ones the XSD declares
def test_declared_attribute_table_matches_xsd(schemas: dict[str, object]) -> None:
    xs = "{http://www.w3.org/2001/XMLSchema}"
    tree = lxml_etree.parse(str(XSD_DIR / "DeploymentManifest.xsd"))

    def attributes_of(type_name: str) -> set[str]:
        node = tree.find(f"{xs}complexType[@name='{type_name}']")
        assert node is not None, type_name
        return {attribute.get("name") for attribute in node.iter(f"{xs}attribute")}

    assert pkg.DECLARED_ATTRIBUTES["SPObject"] == attributes_of("SPGenericObject")
    assert pkg.DECLARED_ATTRIBUTES["Folder"] == attributes_of("SPFolder")
    assert pkg.DECLARED_ATTRIBUTES["List"] == attributes_of("SPList")
    assert pkg.DECLARED_ATTRIBUTES["DocumentLibrary"] == attributes_of("SPList") | attributes_of("SPDocumentLibrary")


# CASE-22: an undeclared manifest attribute is rejected at package time, named
@pytest.mark.parametrize("element", ["SPObject", "Folder", "DocumentLibrary"])
def test_undeclared_attribute_rejected(element: str, schemas: dict[str, object]) -> None:
    files = build_package(TARGET, sample_items(), USERS)
    root = lxml_etree.fromstring(files["Manifest.xml"])
    node = root.find(f".//{{{pkg.NS_MANIFEST}}}{element}")
    node.set("Description", "not in the schema")
    files["Manifest.xml"] = lxml_etree.tostring(root, xml_declaration=True, encoding="utf-8")
    with pytest.raises(PackageError, match="'Description' is not declared"):
        validate_package(files)
    assert not schemas["Manifest.xml"].validate(root)  # type: ignore[attr-defined]


def test_extra_file_attribute_tolerated(schemas: dict[str, object]) -> None:
    files = build_package(TARGET, sample_items(), USERS)
    root = lxml_etree.fromstring(files["Manifest.xml"])
    root.find(f".//{{{pkg.NS_MANIFEST}}}File").set("InitializationVector", "AAAA")
    files["Manifest.xml"] = lxml_etree.tostring(root, xml_declaration=True, encoding="utf-8")
    validate_package(files)
    assert schemas["Manifest.xml"].validate(root)  # type: ignore[attr-defined]


def test_unknown_parent_rejected() -> None:
    orphan_parent = uuid.uuid4()
    files = build_package(TARGET, [make_file("X/f.txt", 5, orphan_parent)], USERS)
    with pytest.raises(PackageError, match="refers to an object"):
        validate_package(files)
    validate_package(files, known_ids=[str(orphan_parent)])


def test_missing_required_file_rejected() -> None:
    files = build_package(TARGET, sample_items(), USERS)
    del files["UserGroup.xml"]
    with pytest.raises(PackageError, match="UserGroup.xml"):
        validate_package(files)


def test_malformed_xml_rejected() -> None:
    files = build_package(TARGET, sample_items(), USERS)
    files["Manifest.xml"] = files["Manifest.xml"][:-20]
    with pytest.raises(PackageError, match="not well-formed"):
        validate_package(files)


def test_duplicate_file_value_rejected() -> None:
    items = sample_items()
    duplicate = items[2]
    assert isinstance(duplicate, PackageFile)
    files = build_package(TARGET, items, USERS)
    text = files["Manifest.xml"].decode().replace(f'FileValue="{duplicate.blob_name}"',
                                                  f'FileValue="{items[1].blob_name}"')  # type: ignore[union-attr]
    files["Manifest.xml"] = text.encode()
    with pytest.raises(PackageError, match="FileValue"):
        validate_package(files)


def test_builder_rejects_bad_inputs() -> None:
    items = sample_items()
    with pytest.raises(PackageError, match="duplicate user login"):
        build_package(TARGET, items, USERS + [PackageUser(2, "Alice 2", "ALICE@contoso.example")])
    with pytest.raises(PackageError, match="IntId"):
        build_package(TARGET, [items[0], make_folder("B", 1)], USERS)
    with pytest.raises(PackageError, match="not in the package users"):
        build_package(TARGET, items, [])
    naive = PackageFolder(uuid.uuid4(), uuid.uuid4(), 9, "N", "N", TARGET.list_root_folder_id,
                          datetime(2024, 1, 1), WHEN, 1, 1)
    with pytest.raises(PackageError, match="timezone-aware"):
        build_package(TARGET, [naive], USERS)


def test_system_account_author_allowed(schemas: dict[str, object]) -> None:
    folder = make_folder("S", 7)
    folder = PackageFolder(folder.object_id, folder.item_id, 7, "S", "S", folder.parent_id, WHEN, WHEN,
                           pkg.SYSTEM_ACCOUNT_USER_ID, pkg.SYSTEM_ACCOUNT_USER_ID)
    files = build_package(TARGET, [folder], [])
    validate_package(files)
    assert_schema_valid(files, schemas)


class Planned:
    def __init__(self, name: str, size: int = 0, is_folder: bool = False) -> None:
        self.name, self.size, self.is_folder = name, size, is_folder

    def __repr__(self) -> str:
        return self.name


def test_plan_limits_files_and_bytes() -> None:
    items = [Planned("F", is_folder=True)] + [Planned(f"f{index}", 10) for index in range(7)]
    packages = list(plan_packages(items, max_files=3, max_bytes=1000))
    assert [len(package) for package in packages] == [3, 3, 2]
    packages = list(plan_packages(items, max_files=100, max_bytes=25))
    assert [[item.name for item in package] for package in packages] == [
        ["F", "f0", "f1"], ["f2", "f3"], ["f4", "f5"], ["f6"],
    ]


def test_plan_large_file_alone_and_order_kept() -> None:
    items = [Planned("A", is_folder=True), Planned("small1", 5), Planned("big", 500),
             Planned("B", is_folder=True), Planned("small2", 5)]
    packages = list(plan_packages(items, max_files=250, max_bytes=1000, large_file_alone=400))
    assert [[item.name for item in package] for package in packages] == [
        ["A", "small1"], ["big"], ["B", "small2"],
    ]
    flat = [item.name for package in packages for item in package]
    assert flat == [item.name for item in items]


def test_plan_default_sends_oversized_file_alone() -> None:
    items = [Planned("a", 1), Planned("huge", 300 * 2**20), Planned("b", 1)]
    packages = list(plan_packages(items))
    assert [[item.name for item in package] for package in packages] == [["a"], ["huge"], ["b"]]


def test_plan_rejects_bad_limits() -> None:
    with pytest.raises(ValueError):
        list(plan_packages([], max_files=0))


def test_many_packages_all_validate(schemas: dict[str, object]) -> None:
    """Folders packaged earlier are passed as known ids to later packages."""
    items: list[pkg.PackageItem] = []
    next_int = 1
    for folder_index in range(3):
        folder = make_folder(f"D{folder_index}", next_int)
        next_int += 1
        items.append(folder)
        for file_index in range(4):
            items.append(make_file(f"D{folder_index}/f{file_index}.txt", next_int, folder.object_id))
            next_int += 1
    known: list[str] = []
    for package_items in plan_packages(items, max_files=4):
        files = build_package(TARGET, package_items, USERS)
        validate_package(files, known_ids=known)
        assert_schema_valid(files, schemas)
        known += [str(item.object_id) for item in package_items if item.is_folder]
