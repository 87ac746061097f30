"""Preserving file-share permissions: POSIX owner, group and ACL entries become SharePoint roles.

The end-to-end tests give a share's items different permissions with chmod and POSIX ACLs
(through ``setfacl`` when it is installed, else by writing the ``system.posix_acl_access``
attribute, which the kernel checks), migrate it with a user mapping file into the sandbox, and
read the result through the sandbox's REST API the way SharePoint Online shows it:
``ListItemAllFields?$select=HasUniqueRoleAssignments`` and
``ListItemAllFields/RoleAssignments?$expand=Member,RoleDefinitionBindings``. The sandbox's own
checks of role assignments (principal in UserGroup.xml, role known, IncludeSecurity) are tested
with packages built by the sandbox tests' independent package builder.
"""

from __future__ import annotations

import csv
import grp
import os
import pwd
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import pytest
from lxml import etree

from harness import Sandbox, validate_kept_packages
from parity_kit import rest, run, settings, task, unique, user_email, write_tree
from spmt_tui.engine import permissions as perms
from spmt_tui.engine import task_runner
from spmt_tui.engine.progress import LogEvent
from spmt_tui.engine.source import FileShareSource
from spmt_tui.engine.users import load_user_mapping
from spmt_tui.sandbox import roles
from spmt_tui.spo.sharepoint import UserInfo

sys.path.insert(0, str(Path(__file__).parent / "sandbox"))
import migration_kit as kit  # noqa: E402

GROUP_TARGET = "Team Permissions"
SETFACL = shutil.which("setfacl")


# -- helpers ------------------------------------------------------------------------------------


def encode_acl(entries: list[tuple[int, int, int]]) -> bytes:
    """Encode ``(tag, perm, id)`` entries in the Linux ACL attribute format (version 2)."""
    body = b"".join(struct.pack("<HHI", tag, perm, qualifier) for tag, perm, qualifier in entries)
    return struct.pack("<I", perms.ACL_EA_VERSION) + body


def set_acl(path: Path, users: dict[int, int] | None = None, groups: dict[int, int] | None = None) -> None:
    """Add named user and group entries (id -> rwx bits) to the access ACL of ``path``."""
    users, groups = users or {}, groups or {}
    if SETFACL:
        specs = [f"u:{uid}:{rwx(bits)}" for uid, bits in users.items()]
        specs += [f"g:{gid}:{rwx(bits)}" for gid, bits in groups.items()]
        subprocess.run([SETFACL, "-m", ",".join(specs), str(path)], check=True)
        return
    mode = os.stat(path).st_mode
    owning_group = (mode >> 3) & 7
    mask = owning_group
    for bits in (*users.values(), *groups.values()):
        mask |= bits
    entries = [(perms.ACL_USER_OBJ, (mode >> 6) & 7, perms.ACL_UNDEFINED_ID)]
    entries += [(perms.ACL_USER, bits, uid) for uid, bits in sorted(users.items())]
    entries.append((perms.ACL_GROUP_OBJ, owning_group, perms.ACL_UNDEFINED_ID))
    entries += [(perms.ACL_GROUP, bits, gid) for gid, bits in sorted(groups.items())]
    entries.append((perms.ACL_MASK, mask, perms.ACL_UNDEFINED_ID))
    entries.append((perms.ACL_OTHER, mode & 7, perms.ACL_UNDEFINED_ID))
    os.setxattr(path, perms.ACL_ACCESS_XATTR, encode_acl(entries))


def rwx(bits: int) -> str:
    return "".join(letter if bits & value else "-" for letter, value in (("r", 4), ("w", 2), ("x", 1)))


def acl_supported(folder: Path) -> bool:
    probe = folder / "acl-probe"
    probe.write_text("p")
    try:
        set_acl(probe, users={os.geteuid(): 4})
    except (OSError, subprocess.CalledProcessError):
        return False
    finally:
        probe.unlink()
    return True


def other_principals() -> tuple[str, int, str, int, str]:
    """Return names and ids of two users other than the current one and a group other than its own."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    users = sorted((entry.pw_uid, entry.pw_name) for entry in pwd.getpwall()
                   if entry.pw_uid != os.geteuid() and entry.pw_name != me)
    groups = sorted((entry.gr_gid, entry.gr_name) for entry in groups_without_user_names()
                    if entry.gr_gid != os.getegid())
    if len(users) < 2 or not groups:
        pytest.skip("this machine needs two other named users and another named group")
    (acl_uid, acl_user), (stranger_uid, stranger) = users[0], users[1]
    group_gid, group_name = groups[0]
    return acl_user, acl_uid, stranger, stranger_uid, f"{group_name}:{group_gid}"


def item_url(folder: str, relative: str) -> str:
    return f"/sites/demo/Shared Documents/{folder}/{relative}"


async def list_item(sandbox: Sandbox, url: str, is_folder: bool, suffix: str) -> Any:
    kind = "GetFolderByServerRelativeUrl" if is_folder else "GetFileByServerRelativeUrl"
    literal = quote(url.replace("'", "''"))
    return await rest(sandbox, "GET", f"web/{kind}('{literal}')/ListItemAllFields{suffix}")


async def has_unique(sandbox: Sandbox, url: str, is_folder: bool = False) -> bool:
    data = await list_item(sandbox, url, is_folder, "?$select=HasUniqueRoleAssignments")
    return data["HasUniqueRoleAssignments"]


async def assignments(sandbox: Sandbox, url: str, is_folder: bool = False) -> dict[str, tuple[int, list[str]]]:
    """Return ``{member login: (PrincipalType, [role names])}`` of an item's role assignments."""
    data = await list_item(sandbox, url, is_folder,
                           "/RoleAssignments?$expand=Member,RoleDefinitionBindings")
    return {
        entry["Member"]["LoginName"]: (entry["Member"]["PrincipalType"],
                                       [role["Name"] for role in entry["RoleDefinitionBindings"]["results"]])
        for entry in data["results"]
    }


def write_mapping(path: Path, rows: list[str]) -> Path:
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def kept_manifests(work: Path) -> list[ET.Element]:
    return [ET.parse(path).getroot() for path in sorted(work.glob("sessions/*/packages/*/Manifest.xml"))]


def kept_security_settings(work: Path) -> set[str]:
    return {ET.parse(path).getroot().get("IncludeSecurity", "")
            for path in work.glob("sessions/*/packages/*/ExportSettings.xml")}


def user_not_mapped(report_dir: Path) -> dict[str, list[str]]:
    path = report_dir / "details" / "UserNotMapped.csv"
    if not path.exists():
        return {}
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return {row[0]: row for row in list(csv.reader(handle))[1:]}


# -- the POSIX side -----------------------------------------------------------------------------


def test_acl_parser_reads_kernel_acl(tmp_path: Path) -> None:
    if not acl_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} does not support POSIX ACLs")
    path = tmp_path / "f.txt"
    path.write_text("x")
    os.chmod(path, 0o640)
    set_acl(path, users={1: 6}, groups={4: 4})
    raw = perms.read_acl(str(path))
    assert raw is not None
    entries = {(entry.tag, entry.qualifier): entry.perm for entry in perms.parse_posix_acl(raw)}
    assert entries == {
        (perms.ACL_USER_OBJ, None): 6,
        (perms.ACL_USER, 1): 6,
        (perms.ACL_GROUP_OBJ, None): 4,
        (perms.ACL_GROUP, 4): 4,
        (perms.ACL_MASK, None): 6,
        (perms.ACL_OTHER, None): 0,
    }
    plain = tmp_path / "plain.txt"
    plain.write_text("p")
    assert perms.read_acl(str(plain)) is None


def test_acl_parser_rejects_bad_values() -> None:
    with pytest.raises(perms.AclFormatError, match="4 \\+ 8"):
        perms.parse_posix_acl(b"\x02\x00\x00\x00\x01")
    with pytest.raises(perms.AclFormatError, match="version 1"):
        perms.parse_posix_acl(struct.pack("<I", 1))
    with pytest.raises(perms.AclFormatError, match="tag 0x40"):
        perms.parse_posix_acl(encode_acl([(0x40, 7, 0)]))


@pytest.mark.parametrize(("rights", "is_folder", "is_owner", "expected"), [
    (0o6, False, True, perms.FULL_CONTROL),
    (0o4, False, True, perms.READ_ROLE),
    (0o6, False, False, perms.CONTRIBUTE),
    (0o2, False, False, perms.CONTRIBUTE),
    (0o4, False, False, perms.READ_ROLE),
    (0o1, False, False, None),
    (0o7, True, False, perms.CONTRIBUTE),
    (0o6, True, False, perms.READ_ROLE),  # a folder without x cannot take new children
    (0o5, True, False, perms.READ_ROLE),
    (0o1, True, False, None),  # traverse only: a special right, dropped
    (0o0, True, True, None),
])
def test_role_for_rights(rights: int, is_folder: bool, is_owner: bool,
                         expected: perms.RoleDefinition | None) -> None:
    assert perms.role_for(rights, is_folder, is_owner) == expected


def groups_without_user_names() -> list[grp.struct_group]:
    """Return groups whose names are no user's name, so a mapping row can only mean the group."""
    user_names = {entry.pw_name for entry in pwd.getpwall()}
    found = [entry for entry in grp.getgrall() if entry.gr_name not in user_names]
    if len(found) < 2:
        pytest.skip("this machine needs two groups whose names are not user names")
    return found


def test_mapper_masks_and_drops_other(tmp_path: Path) -> None:
    jane, john = "jane@contoso.example", "john@contoso.example"
    mapped_group, unmapped_group = groups_without_user_names()[:2]
    mapping = load_user_mapping(write_mapping(tmp_path / "map.csv", [
        f"{pwd.getpwuid(0).pw_name},{jane},FALSE",
        f"{pwd.getpwuid(1).pw_name},{john},FALSE",
        f"{mapped_group.gr_name},Admins,TRUE",
    ]))
    resolved = {upn: UserInfo(n, f"i:0#.f|membership|{upn}", upn.split("@")[0], upn, False)
                for n, upn in enumerate((jane, john), start=7)}
    mapper = perms.PermissionMapper(mapping, resolved)
    # Owner rw-, named user 1 rwx masked to r--, owning group r--, another named group rw- masked
    # to r--, other rw-: other is dropped, the mask caps the named user and the groups.
    undefined = perms.ACL_UNDEFINED_ID
    acl = encode_acl([(perms.ACL_USER_OBJ, 6, undefined), (perms.ACL_USER, 7, 1),
                      (perms.ACL_GROUP_OBJ, 4, undefined), (perms.ACL_GROUP, 6, unmapped_group.gr_gid),
                      (perms.ACL_MASK, 4, undefined), (perms.ACL_OTHER, 6, undefined)])
    access = perms.PosixAccess(0o646, 0, mapped_group.gr_gid, acl)
    scope, not_mapped = mapper.scope_of(access, is_folder=False)
    by_login = {principal.login: role for principal, role in scope}
    assert by_login == {
        f"i:0#.f|membership|{jane}": perms.FULL_CONTROL,
        f"i:0#.f|membership|{john}": perms.READ_ROLE,
        "c:0t.c|tenant|Admins": perms.READ_ROLE,
    }
    assert [name for name, _ in not_mapped] == [unmapped_group.gr_name]
    assert "POSIX group" in not_mapped[0][1]
    # Without an ACL the owning group gets the group bits of the mode.
    scope, _ = mapper.scope_of(perms.PosixAccess(0o664, 1, mapped_group.gr_gid), is_folder=False)
    assert {principal.login: role for principal, role in scope} == {
        f"i:0#.f|membership|{john}": perms.FULL_CONTROL,
        "c:0t.c|tenant|Admins": perms.CONTRIBUTE,
    }


async def test_walk_reads_acls_only_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not acl_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} does not support POSIX ACLs")
    share = write_tree(tmp_path / "share", {"a.txt": "a", "sub/b.txt": "b"})
    os.chmod(share / "a.txt", 0o600)
    set_acl(share / "sub" / "b.txt", users={1: 4})
    calls: list[str] = []
    real_getxattr = os.getxattr

    def counting_getxattr(path: Any, attribute: str, *args: Any, **kwargs: Any) -> bytes:
        calls.append(str(path))
        return real_getxattr(path, attribute, *args, **kwargs)

    monkeypatch.setattr(os, "getxattr", counting_getxattr)

    async def walk(source: FileShareSource) -> list[Any]:
        return [item async for batch in source.walk() for item in batch]

    items = await walk(FileShareSource(share))
    assert calls == []
    assert [item.access for item in items] == [None, None, None]

    items = await walk(FileShareSource(share, collect_permissions=True))
    assert len(calls) == 3
    by_path = {item.relative_path: item.access for item in items}
    assert by_path["a.txt"] == perms.PosixAccess(0o600, os.geteuid(), os.getegid(), None)
    assert by_path["sub"] is not None and by_path["sub"].acl is None
    acl = by_path["sub/b.txt"].acl
    assert acl is not None
    assert (perms.ACL_USER, 1) in {(entry.tag, entry.qualifier) for entry in perms.parse_posix_acl(acl)}


# -- end to end through the sandbox -------------------------------------------------------------


@pytest.fixture
def permission_share(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str]]]:
    """A share where readonly.txt, shared/ and team.txt have their own permissions."""
    if not acl_supported(tmp_path):
        pytest.skip(f"the file system of {tmp_path} does not support POSIX ACLs")
    acl_user, acl_uid, stranger, stranger_uid, group = other_principals()
    group_name, group_gid = group.rsplit(":", 1)
    share = write_tree(tmp_path / "share", {
        "plain.txt": "plain", "docs/a.txt": "a", "readonly.txt": "read only", "shared/inner.txt": "inner",
        "team.txt": "team", "unmapped.txt": "stranger can read",
    })
    for folder in (share, share / "docs", share / "shared"):
        os.chmod(folder, 0o755)
    for name in ("plain.txt", "docs/a.txt", "shared/inner.txt", "team.txt", "unmapped.txt"):
        os.chmod(share / name, 0o644)
    os.chmod(share / "readonly.txt", 0o444)
    set_acl(share / "shared", users={acl_uid: 7})
    set_acl(share / "shared" / "inner.txt", users={acl_uid: 6})
    set_acl(share / "team.txt", groups={int(group_gid): 6})
    set_acl(share / "unmapped.txt", users={stranger_uid: 4})
    names = {"acl_user": acl_user, "stranger": stranger, "group": group_name,
             "me": pwd.getpwuid(os.geteuid()).pw_name}
    yield share, names


async def test_preserved_permissions_in_sandbox(
    sandbox: Sandbox, tmp_path: Path, permission_share: tuple[Path, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A low recommended maximum shows the unique-scope warning with the three unique items here.
    monkeypatch.setattr(task_runner, "UNIQUE_SCOPES_RECOMMENDED", 2)
    events: list[Any] = []
    share, names = permission_share
    jane, john = user_email(sandbox, "jane.doe"), user_email(sandbox, "john.roe")
    mapping = write_mapping(tmp_path / "map.csv", [
        f"{names['me']},{jane},FALSE",
        f"{names['acl_user']},{john},FALSE",
        f"{names['group']},{GROUP_TARGET},TRUE",
    ])
    folder = unique("perms")
    work = tmp_path / "work"
    migration, result = await run(sandbox, [task(sandbox, share, folder)],
                                  settings(work, user_mapping_file=mapping, preserve_permissions=True),
                                  sink=events.append)
    assert result.status == "completed", result.message
    warnings = [event.message for event in events if isinstance(event, LogEvent) and event.level == "warning"]
    assert [message for message in warnings if "more than 2 items get unique permissions" in message]

    jane_login, john_login = f"i:0#.f|membership|{jane}", f"i:0#.f|membership|{john}"
    group_login = f"c:0t.c|tenant|{GROUP_TARGET}"
    inheriting = {"plain.txt": False, "docs": True, "docs/a.txt": False, "shared/inner.txt": False,
                  "unmapped.txt": False}
    for relative, is_folder in inheriting.items():
        assert (relative, await has_unique(sandbox, item_url(folder, relative), is_folder)) == (relative, False)
    assert await has_unique(sandbox, item_url(folder, "readonly.txt"))
    assert await has_unique(sandbox, item_url(folder, "shared"), is_folder=True)
    assert await has_unique(sandbox, item_url(folder, "team.txt"))

    assert await assignments(sandbox, item_url(folder, "readonly.txt")) == {jane_login: (1, ["Read"])}
    shared = await assignments(sandbox, item_url(folder, "shared"), is_folder=True)
    assert shared == {jane_login: (1, ["Full Control"]), john_login: (1, ["Contribute"])}
    # An inheriting item shows the role assignments of its nearest unique ancestor.
    assert await assignments(sandbox, item_url(folder, "shared/inner.txt")) == shared
    assert await assignments(sandbox, item_url(folder, "team.txt")) == {
        jane_login: (1, ["Full Control"]), group_login: (4, ["Contribute"])}

    not_mapped = user_not_mapped(migration.report_dir)
    assert names["stranger"] in not_mapped
    assert "not in the user mapping file" in not_mapped[names["stranger"]][1]
    assert "permissions are not migrated" in not_mapped[names["stranger"]][1]

    assert validate_kept_packages(work) > 0
    scopes = [element for root in kept_manifests(work) for element in root.iter()
              if element.tag.endswith("}RoleAssignment")]
    assert sorted(element.get("ObjectUrl", "").rpartition(f"{folder}/")[2] for element in scopes) == \
        ["readonly.txt", "shared", "team.txt"]
    assert kept_security_settings(work) == {"All"}


async def test_permissions_off_nothing_unique(
    sandbox: Sandbox, tmp_path: Path, permission_share: tuple[Path, dict[str, str]]
) -> None:
    share, names = permission_share
    jane, john = user_email(sandbox, "jane.doe"), user_email(sandbox, "john.roe")
    mapping = write_mapping(tmp_path / "map.csv", [
        f"{names['me']},{jane},FALSE", f"{names['acl_user']},{john},FALSE",
    ])
    folder = unique("perms-off")
    work = tmp_path / "work"
    migration, result = await run(sandbox, [task(sandbox, share, folder)],
                                  settings(work, user_mapping_file=mapping))
    assert result.status == "completed", result.message
    items = {"plain.txt": False, "docs": True, "docs/a.txt": False, "readonly.txt": False, "shared": True,
             "shared/inner.txt": False, "team.txt": False, "unmapped.txt": False}
    for relative, is_folder in items.items():
        assert (relative, await has_unique(sandbox, item_url(folder, relative), is_folder)) == (relative, False)
    assert validate_kept_packages(work) > 0
    assert not [element for root in kept_manifests(work) for element in root.iter()
                if element.tag.endswith("}RoleAssignments")]
    assert kept_security_settings(work) == {"None"}
    assert names["stranger"] not in user_not_mapped(migration.report_dir)


# -- the sandbox's own checks ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def storage_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kit.StorageEnv]:
    env = kit.start_azurite(tmp_path_factory.mktemp("azurite-permissions"))
    try:
        yield env
    finally:
        env.process.stop()


def add_security(files: dict[str, bytes], builder: kit.PackageBuilder,
                 scopes: list[tuple[kit.FileSpec, list[tuple[str, str]]]],
                 include_security: str = "All") -> dict[str, bytes]:
    """Add a Roles object (Contribute as package role 10) and one RoleAssignment per file."""
    ns = kit.NS["manifest"]
    manifest = etree.fromstring(files["Manifest.xml"])
    common = {"ParentWebId": builder.web_id, "ParentWebUrl": builder.site.url, "ParentId": builder.web_id,
              "Url": builder.site.url}
    role_object = etree.SubElement(manifest, f"{{{ns}}}SPObject", Id="6f9619ff-8b86-d011-b42d-00c04fc964ff",
                                   ObjectType="DeploymentRoles", **common)
    role_list = etree.SubElement(role_object, f"{{{ns}}}Roles")
    etree.SubElement(role_list, f"{{{ns}}}Role", RoleId="10", Title="Contribute", PermMask="1", Hidden="false")
    scope_object = etree.SubElement(manifest, f"{{{ns}}}SPObject", Id="6f9619ff-8b86-d011-b42d-00c04fc96500",
                                    ObjectType="DeploymentRoleAssignments", **common)
    scope_list = etree.SubElement(scope_object, f"{{{ns}}}RoleAssignments")
    for spec, pairs in scopes:
        scope = etree.SubElement(
            scope_list, f"{{{ns}}}RoleAssignment", ScopeId=spec.item_id, RoleDefWebId=builder.web_id,
            RoleDefWebUrl=builder.site.url, ObjectId=spec.item_id, ObjectType="2",
            ObjectUrl=f"{builder.library_relative_root}/{spec.path}")
        for principal, role in pairs:
            etree.SubElement(scope, f"{{{ns}}}Assignment", RoleId=role, PrincipalId=principal)
    export = etree.fromstring(files["ExportSettings.xml"])
    export.set("IncludeSecurity", include_security)
    return {**files, "Manifest.xml": etree.tostring(manifest, xml_declaration=True, encoding="utf-8"),
            "ExportSettings.xml": etree.tostring(export, xml_declaration=True, encoding="utf-8")}


async def test_sandbox_checks_role_assignments(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        good = builder.file("good.txt", b"g")
        stranger = builder.file("stranger.txt", b"s")
        unknown_role = builder.file("unknown-role.txt", b"u")
        site_role = builder.file("site-role.txt", b"r")
        kit.set_checksums(builder)
        files = add_security(builder.xml_files(), builder, [
            (good, [("1", "10")]),
            (stranger, [("99", "10")]),
            (unknown_role, [("1", "77")]),
            (site_role, [("1", "1073741826")]),  # the site's Read role, named by its own id
        ])
        assert kit.xsd_errors(files) == {}
        job_id, *_ = await kit.submit(env, builder, files=files)
        events, _ = await kit.wait_for_end(env, job_id)

        errors = {event["Url"].rpartition("/")[2]: event["Message"] for event in kit.by_event(events, "JobError")}
        assert sorted(errors) == ["stranger.txt", "unknown-role.txt"]
        assert "PrincipalId 99" in errors["stranger.txt"]
        assert "UserGroup.xml" in errors["stranger.txt"]
        assert "RoleId 77" in errors["unknown-role.txt"]
        store = env.tenant.store
        alice = store.user_by_login(env.site.id, f"i:0#.f|membership|{kit.ALICE_UPN}")
        assert alice is not None
        ids = {}
        for name in ("good.txt", "stranger.txt", "unknown-role.txt", "site-role.txt"):
            row = store.file_by_url(f"{env.library.root_folder_url}/{name}")
            assert row is not None, name
            ids[name] = row["id"]
        assert roles.has_unique_scope(store, ids["good.txt"])
        assert not roles.has_unique_scope(store, ids["stranger.txt"])
        assert not roles.has_unique_scope(store, ids["unknown-role.txt"])
        granted = {name: [(user.id, [role.name for role in found])
                          for user, found in roles.role_assignments(store, env.site.id, ids[name])]
                   for name in ("good.txt", "site-role.txt")}
        assert granted == {"good.txt": [(alice.id, ["Contribute"])], "site-role.txt": [(alice.id, ["Read"])]}

        # A file imported again without a scope inherits again.
        again = kit.PackageBuilder(env.site, env.library)
        again.file("good.txt", b"g2", file_id=good.id, int_id=good.int_id)
        kit.set_checksums(again)
        job_id, *_ = await kit.submit(env, again)
        await kit.wait_for_end(env, job_id)
        assert not roles.has_unique_scope(store, ids["good.txt"])


async def test_sandbox_ignores_roles_without_security(tmp_path: Path, storage_env: kit.StorageEnv) -> None:
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        spec = builder.file("a.txt", b"a")
        kit.set_checksums(builder)
        files = add_security(builder.xml_files(), builder, [(spec, [("1", "10")])], include_security="None")
        job_id, *_ = await kit.submit(env, builder, files=files)
        events, _ = await kit.wait_for_end(env, job_id)
        assert not kit.by_event(events, "JobError")
        warnings = [event["Message"] for event in kit.by_event(events, "JobWarning")]
        assert any("IncludeSecurity='None'" in message for message in warnings), warnings
        row = env.tenant.store.file_by_url(f"{env.library.root_folder_url}/a.txt")
        assert row is not None
        assert not roles.has_unique_scope(env.tenant.store, row["id"])



def test_task_file_turns_setting_on(tmp_path: Path) -> None:
    from spmt_tui.engine.tasks import load_tasks

    share = write_tree(tmp_path / "share", {"a.txt": "a"})
    tasks_file = tmp_path / "tasks.json"
    tasks_file.write_text(
        '{"Tasks": [{"SourcePath": "%s", "TargetPath": "https://127.0.0.1/sites/demo", '
        '"TargetList": "Documents", "Settings": {"PreservePermission": true}}]}' % share)
    assert load_tasks(tasks_file)[0].settings == {"preserve_permissions": True}


async def test_sandbox_limits_unique_scopes(
    tmp_path: Path, storage_env: kit.StorageEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(roles, "UNIQUE_SCOPES_PER_LIST", 1)
    async with kit.sandbox_env(tmp_path, storage_env) as env:
        builder = kit.PackageBuilder(env.site, env.library)
        first = builder.file("first.txt", b"1")
        second = builder.file("second.txt", b"2")
        kit.set_checksums(builder)
        files = add_security(builder.xml_files(), builder, [(first, [("1", "10")]), (second, [("1", "10")])])
        job_id, *_ = await kit.submit(env, builder, files=files)
        events, _ = await kit.wait_for_end(env, job_id)
        errors = kit.by_event(events, "JobError")
        assert [event["Url"].rpartition("/")[2] for event in errors] == ["second.txt"]
        assert "unique permission scopes" in errors[0]["Message"]
        assert roles.unique_scope_count(env.tenant.store, env.library.id) == 1
