"""Pre-flight checks and destination look-up, done before anything is packaged.

As SPMT does: the source must be readable, the signed-in account must be a site collection
administrator of the destination (or an app with full control) and able to add items to the
library. Each failure stops the task with a message that names what to fix.
"""

from __future__ import annotations

import logging
import os
import uuid
from datetime import datetime, timezone
from dataclasses import dataclass, field
from pathlib import Path

from spmt_tui.spo.http import HttpError
from spmt_tui.spo.sharepoint import LibraryInfo, SharePointClient, WebInfo

log = logging.getLogger("spmt.engine.preflight")

CODE_SITE_ADMIN_REQUIRED = "0x02010017"
CODE_INVALID_SITE = "0x0201000F"
CODE_SOURCE_UNREADABLE = "0x01110003"
CODE_INVALID_LIBRARY = "0x02010023"
CODE_INVALID_FOLDER = "0x0201000E"


class PreflightError(Exception):
    """The task cannot start. ``code`` is SPMT's error code, and the message names what to fix."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class FolderTarget:
    """A folder of the destination path: its id, and whether it already exists there."""

    relative_path: str      # relative to the library root, "/"-joined
    id: str
    exists: bool


@dataclass
class Target:
    """Everything the packager needs to know about the destination of one task."""

    site_url: str
    web: WebInfo
    library: LibraryInfo
    folder_chain: list[FolderTarget] = field(default_factory=list)
    max_item_id: int = 0

    @property
    def folder_path(self) -> str:
        """The target folder relative to the library root ("" for the root)."""
        return self.folder_chain[-1].relative_path if self.folder_chain else ""

    @property
    def folder_id(self) -> str:
        return self.folder_chain[-1].id if self.folder_chain else self.library.root_folder_id

    @property
    def server_relative_url(self) -> str:
        """Server-relative URL of the target folder, e.g. ``/sites/x/Shared Documents/A``."""
        root = self.library.root_folder_url.rstrip("/")
        return f"{root}/{self.folder_path}" if self.folder_path else root


def check_source(path: str) -> None:
    root = Path(path)
    if not root.exists():
        raise PreflightError(CODE_SOURCE_UNREADABLE,
                             f"source {path} does not exist: check the path and that the share is mounted")
    if not root.is_dir():
        raise PreflightError(CODE_SOURCE_UNREADABLE,
                             f"source {path} is not a folder: give the folder to migrate")
    if not os.access(root, os.R_OK | os.X_OK):
        raise PreflightError(CODE_SOURCE_UNREADABLE,
                             f"source {path} is not readable by this account: grant read and list "
                             "permission or run as a user that has it")
    try:
        with os.scandir(root) as entries:
            next(entries, None)
    except OSError as error:
        raise PreflightError(CODE_SOURCE_UNREADABLE,
                             f"source {path} cannot be listed: {error.strerror or error}") from error


def check_target_folder(folder: str, library_url: str) -> list[str]:
    """Split ``--folder`` into names, rejecting any that SharePoint Online would refuse."""
    from spmt_tui.engine.rules import Outcome, check_item

    parts = [part for part in folder.replace("\\", "/").split("/") if part]
    for index, part in enumerate(parts):
        if part in (".", ".."):
            raise PreflightError(CODE_INVALID_FOLDER,
                                 f"invalid destination folder {folder!r}: '{part}' is not a folder "
                                 "name; give the path inside the library, e.g. Projects/2024")
        now = datetime.now(timezone.utc)
        result, _ = check_item(parts[: index + 1], True, 0, now, now, False, False, library_url)
        if result.outcome is not Outcome.PASS or result.new_name:
            raise PreflightError(CODE_INVALID_FOLDER,
                                 f"invalid destination folder {folder!r}: {result.message or part}")
    return parts


def folder_object_id(site_url: str, list_id: str, relative_path: str) -> str:
    """Deterministic GUID for a folder created by a migration (name-based UUID v5, URL namespace)."""
    key = f"{site_url.rstrip('/').lower()}|{list_id.lower()}|{relative_path.lower()}"
    return str(uuid.uuid5(uuid.NAMESPACE_URL, key))


async def resolve_target(
    client: SharePointClient, library_title: str, folder: str, *, app_only: bool
) -> Target:
    """Check access to the destination and find the ids the package must carry."""
    try:
        web = await client.web()
    except HttpError as error:
        if error.status in (401, 403):
            raise PreflightError(CODE_SITE_ADMIN_REQUIRED,
                                 f"access to {client.site_url} was denied ({error.message}): sign in "
                                 "with an account that is site collection administrator there") from error
        raise PreflightError(CODE_INVALID_SITE,
                             f"site {client.site_url} cannot be opened: {error.message}. Check the "
                             "site URL") from error
    if not app_only:
        user = await client.current_user()
        if not user.is_site_admin:
            raise PreflightError(
                CODE_SITE_ADMIN_REQUIRED,
                f"{user.email or user.login} is not a site collection administrator of "
                f"{client.site_url}: the Migration API needs one. Ask a SharePoint admin to add "
                "the account as site collection administrator, or sign in with another account",
            )
    try:
        library = await client.library(library_title)
    except HttpError as error:
        if error.status != 404:
            raise
        names = ", ".join(sorted(lib.title for lib in await client.libraries())) or "none"
        raise PreflightError(
            CODE_INVALID_LIBRARY,
            f"document library {library_title!r} not found in {client.site_url}; its libraries "
            f"are: {names}. Use the library's title (the default library is 'Documents')",
        ) from error
    if library.base_template != 101:
        raise PreflightError(CODE_INVALID_LIBRARY,
                             f"{library_title!r} is a list, not a document library")
    if not await client.can_add_items(library.id):
        raise PreflightError(
            CODE_SITE_ADMIN_REQUIRED,
            f"the signed-in account cannot add items to {library_title!r}: grant it "
            "Contribute or higher on the library",
        )
    target = Target(site_url=client.site_url, web=web, library=library)
    parts = check_target_folder(folder, library.root_folder_url)
    parent_exists = True
    path = ""
    for part in parts:
        path = f"{path}/{part}" if path else part
        existing = None
        if parent_exists:
            existing = await client.folder(f"{library.root_folder_url.rstrip('/')}/{path}")
        if existing is not None:
            target.folder_chain.append(FolderTarget(path, existing.id, True))
        else:
            parent_exists = False
            target.folder_chain.append(
                FolderTarget(path, folder_object_id(client.site_url, library.id, path), False))
    target.max_item_id = await client.max_item_id(library.id)
    return target
