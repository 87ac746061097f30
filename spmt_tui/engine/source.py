"""Migration sources: the abstract :class:`Source` interface and the local :class:`FileShareSource`.

A source produces :class:`SourceItem` records in batches through async iteration, opens item
content for reading and re-checks an item's size and modification time before it is packaged.
The interface is shaped so a SharePoint Server library source can implement it as well: items
may carry a source-side id and a list of versions.

Walk order contract, shared by every source: a folder's record comes before the records of its
children, and the children of one folder come as one contiguous run in sorted (ordinal) name
order. :class:`~spmt_tui.engine.rules.ScanRules` relies on both.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import stat as stat_module
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from enum import Enum
from operator import attrgetter
from typing import BinaryIO

from spmt_tui.engine.permissions import PosixAccess, read_acl

logger = logging.getLogger("spmt.engine.source")

DEFAULT_BATCH_SIZE = 10000
"""Items per batch handed from the walker thread to the event loop.

Each hand-off between the thread and the event loop costs about 0.3 ms on the project machine,
so small batches slow the walk down; 10,000 items take about 25 ms to list.
"""

_FILE_ATTRIBUTE_HIDDEN = 0x2  # Windows stat().st_file_attributes flag
# os.stat_result has st_birthtime on macOS, BSD and (from Python 3.12) Windows, not on Linux.
_HAS_BIRTHTIME = hasattr(os.stat_result, "st_birthtime")
_MISSING = object()


class _SkipEntry(Exception):
    """An entry that is recorded with an error and not stat'ed."""


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class ItemKind(str, Enum):
    """Kind of a source item."""

    FILE = "file"
    FOLDER = "folder"


class SourceError(Exception):
    """The source as a whole cannot be used (for example its root folder is missing)."""


@dataclass(slots=True, frozen=True)
class SourceVersion:
    """One historical version of an item, for sources that keep versions (SharePoint Server)."""

    label: str  # "1.0", "1.1", "2.0", ...
    size: int
    modified_ts: float
    author: str | None = None
    comment: str | None = None


@dataclass(slots=True)
class SourceItem:
    """One scanned file or folder.

    ``parent`` is the tuple of folder names from the source root to the item's folder; siblings
    share one tuple object. Times are POSIX timestamps in seconds (UTC); the ``created`` and
    ``modified`` properties return them as aware datetimes. ``error`` is set when the item could
    not be read: for a folder that could not be listed, the walker yields a second record for
    the same path with ``error`` set, after the first one.
    """

    parent: tuple[str, ...]
    name: str
    is_folder: bool
    size: int
    created_ts: float | None
    modified_ts: float | None
    hidden: bool = False
    symlink: bool = False
    owner: str | None = None
    # False when the source has no creation time and ``created_ts`` is the modification time.
    created_exact: bool = True
    error: str | None = None
    item_id: str | None = None  # source-side id, for example a SharePoint Server list item GUID
    versions: tuple[SourceVersion, ...] = ()
    access: PosixAccess | None = None  # set only when the source collects permissions

    @property
    def kind(self) -> ItemKind:
        """``ItemKind.FOLDER`` or ``ItemKind.FILE``."""
        return ItemKind.FOLDER if self.is_folder else ItemKind.FILE

    @property
    def parts(self) -> tuple[str, ...]:
        """Path of the item relative to the source root, as a tuple of names."""
        return self.parent + (self.name,)

    @property
    def relative_path(self) -> str:
        """Path of the item relative to the source root, "/"-joined."""
        return "/".join(self.parent + (self.name,))

    @property
    def created(self) -> datetime | None:
        """Creation time as an aware UTC datetime, or None when unknown."""
        return _to_datetime(self.created_ts)

    @property
    def modified(self) -> datetime | None:
        """Modification time as an aware UTC datetime, or None when unknown."""
        return _to_datetime(self.modified_ts)


# A folder waiting to be listed: absolute path, parts tuple, its own record (None for the
# root), and the (st_dev, st_ino) pairs of the folders on its path (used with follow_symlinks).
_PendingFolder = tuple[str, tuple[str, ...], SourceItem | None, frozenset[tuple[int, int]]]


def _to_datetime(value: float | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value, timezone.utc)


class SourceBatch:
    """Items of one walk step, stored column by column.

    A walk produces millions of items, and one object per item costs more than the
    ``os.scandir`` walk itself (measured: about 0.5 µs per item, mostly allocation and garbage
    collection), so sources fill parallel lists instead. Indexing or iterating a batch builds
    :class:`SourceItem` objects on demand for code that prefers them.

    ``runs`` contains ``(parent parts, start, end)`` for each contiguous run of siblings, and
    every row belongs to exactly one run. ``errors`` maps row numbers to a read error (rare). A folder
    that could not be listed appears twice: first as a normal row, later as a row of its own
    with an entry in ``errors``.
    """

    __slots__ = (
        "names", "is_folder", "sizes", "created", "modified", "hidden", "symlink", "owners",
        "errors", "runs", "created_exact", "item_ids", "versions", "access",
    )

    def __init__(self, created_exact: bool = True) -> None:
        self.names: list[str] = []
        self.is_folder: list[bool] = []
        self.sizes: list[int] = []
        self.created: list[float | None] = []
        self.modified: list[float | None] = []
        self.hidden: list[bool] = []
        self.symlink: list[bool] = []
        self.owners: list[str | None] = []
        self.errors: dict[int, str] = {}
        self.runs: list[tuple[tuple[str, ...], int, int]] = []
        # False when the source has no creation times and ``created`` repeats ``modified``.
        self.created_exact = created_exact
        self.item_ids: list[str | None] | None = None  # source-side ids, for sources that have them
        self.versions: dict[int, tuple[SourceVersion, ...]] = {}
        # One entry per row when the source collects permissions, else None.
        self.access: list[PosixAccess | None] | None = None

    def __len__(self) -> int:
        return len(self.names)

    def append(self, parent: tuple[str, ...], item: SourceItem) -> None:
        """Append one item as its own run, or extend the last run if it has the same parent."""
        index = len(self.names)
        self.names.append(item.name)
        self.is_folder.append(item.is_folder)
        self.sizes.append(item.size)
        self.created.append(item.created_ts)
        self.modified.append(item.modified_ts)
        self.hidden.append(item.hidden)
        self.symlink.append(item.symlink)
        self.owners.append(item.owner)
        if item.error is not None:
            self.errors[index] = item.error
        if item.item_id is not None:
            if self.item_ids is None:
                self.item_ids = [None] * index
            self.item_ids.append(item.item_id)
        elif self.item_ids is not None:
            self.item_ids.append(None)
        if item.versions:
            self.versions[index] = item.versions
        if item.access is not None and self.access is None:
            self.access = [None] * index
        if self.access is not None:
            self.access.append(item.access)
        if self.runs and self.runs[-1][2] == index and self.runs[-1][0] == parent and item.error is None:
            run_parent, run_start, _ = self.runs[-1]
            self.runs[-1] = (run_parent, run_start, index + 1)
        else:
            self.runs.append((parent, index, index + 1))

    def parent_of(self, index: int) -> tuple[str, ...]:
        """Return the parent parts of row ``index``."""
        for parent, start, end in self.runs:
            if start <= index < end:
                return parent
        raise IndexError(f"row {index} is outside the batch of {len(self)} items")

    def item(self, index: int, parent: tuple[str, ...] | None = None) -> SourceItem:
        """Build the :class:`SourceItem` for row ``index``."""
        if parent is None:
            parent = self.parent_of(index)
        return SourceItem(
            parent, self.names[index], self.is_folder[index], self.sizes[index],
            self.created[index], self.modified[index], self.hidden[index], self.symlink[index],
            self.owners[index], self.created_exact, self.errors.get(index),
            self.item_ids[index] if self.item_ids is not None else None,
            self.versions.get(index, ()),
            self.access[index] if self.access is not None else None,
        )

    def __getitem__(self, index: int) -> SourceItem:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} is outside the batch of {len(self)} items")
        return self.item(index)

    def __iter__(self) -> Iterator[SourceItem]:
        for parent, start, end in self.runs:
            for index in range(start, end):
                yield self.item(index, parent)


@dataclass(slots=True, frozen=True)
class ItemStat:
    """Size and modification time of an item, read again before packaging."""

    size: int
    modified_ts: float


class Source(ABC):
    """A place items are migrated from."""

    source_type: str = "Other"
    """Value of ``SourceType`` in the package's ExportSettings.xml."""

    @abstractmethod
    def walk(self, batch_size: int = DEFAULT_BATCH_SIZE) -> AsyncIterator[SourceBatch]:
        """Yield every item in batches of about ``batch_size`` rows, in this module's walk order."""

    @abstractmethod
    def open(self, item: SourceItem, version: SourceVersion | None = None) -> BinaryIO:
        """Open the item's content (or one version of it) for binary reading.

        Blocking: call it, and read from the result, in a worker thread.
        """

    @abstractmethod
    def stat(self, item: SourceItem) -> ItemStat | None:
        """Return the item's current size and modification time, or None if it is gone.

        Blocking: call it from a worker thread.
        """

    @abstractmethod
    def describe(self) -> str:
        """Return a one-line description for logs and reports, for example the root path."""


class FileShareSource(Source):
    """A local or mounted folder tree (for example an SMB share mounted under ``/mnt``).

    The walk is iterative (an explicit stack, so deep trees cannot exhaust Python's recursion
    limit) and runs in a worker thread one batch at a time. Behaviour:

    * Names in each folder are sorted by code point, so the order is the same on every run.
    * Symbolic links are not followed unless ``follow_symlinks`` is True. They are yielded as
      items with ``symlink=True``, and the scan rules skip them with a reason. With
      ``follow_symlinks=True`` a link to a folder already on the current path is reported as an
      error instead of being walked again.
    * A folder that cannot be listed is reported as an item with ``error`` set; the walk goes on.
    * Hidden means the name starts with ``.`` (the Linux convention); on Windows the hidden file
      attribute counts too.
    * Created time: ``st_birthtime`` where the platform reports it. Linux ``os.stat`` has no
      birth time (Python 3.11), so ``created_ts`` is then the modification time and
      ``created_exact`` is False. ``st_ctime`` is not used: on Linux it is the inode change
      time, which a copy, chmod or rename resets.
    """

    source_type = "FileShare"

    def __init__(self, root: str | os.PathLike[str], follow_symlinks: bool = False,
                 collect_permissions: bool = False) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.follow_symlinks = follow_symlinks
        # When set, every row gets a PosixAccess (one more getxattr call per item).
        self.collect_permissions = collect_permissions
        self._owner_names: dict[int, str | None] = {}

    def root_access(self) -> PosixAccess:
        """Return the permissions of the root folder itself; raises OSError when unreadable."""
        info = os.stat(self.root)
        return PosixAccess(info.st_mode & 0o7777, info.st_uid, info.st_gid, read_acl(self.root))

    def describe(self) -> str:
        """Return ``File share <root path>``."""
        return f"File share {self.root}"

    def path_of(self, item: SourceItem) -> str:
        """Return the item's absolute local path."""
        return os.path.join(self.root, *item.parent, item.name)

    def open(self, item: SourceItem, version: SourceVersion | None = None) -> BinaryIO:
        """Open the file for binary reading; file shares have no versions."""
        if version is not None:
            raise ValueError(f"file share items have no versions: {item.relative_path!r}")
        flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
        if not self.follow_symlinks:
            flags |= getattr(os, "O_NOFOLLOW", 0)
        descriptor = os.open(self.path_of(item), flags)
        return os.fdopen(descriptor, "rb")

    def stat(self, item: SourceItem) -> ItemStat | None:
        """Return the current size and mtime, or None when the file no longer exists."""
        try:
            result = os.stat(self.path_of(item), follow_symlinks=self.follow_symlinks)
        except FileNotFoundError:
            return None
        return ItemStat(result.st_size, result.st_mtime)

    async def walk(self, batch_size: int = DEFAULT_BATCH_SIZE) -> AsyncIterator[SourceBatch]:
        """Yield all items below the root in batches; raises SourceError if the root is unusable."""
        if batch_size < 1:
            raise ValueError(f"invalid batch_size {batch_size}: must be at least 1")
        if not os.path.isdir(self.root):
            raise SourceError(f"source folder not found or not a folder: {self.root}")
        try:
            os.scandir(self.root).close()
        except OSError as error:
            raise SourceError(f"cannot list source folder {self.root}: {error.strerror}") from error
        logger.info("walk started: %s", self.describe())
        root_stat = os.stat(self.root)
        stack: list[_PendingFolder] = [
            (self.root, (), None, frozenset({(root_stat.st_dev, root_stat.st_ino)}))
        ]
        total = 0
        while stack:
            batch = await asyncio.to_thread(self._next_batch, stack, batch_size)
            total += len(batch)
            if batch:
                yield batch
        logger.info("walk finished: %s, %d items", self.describe(), total)

    def _next_batch(self, stack: list[_PendingFolder], batch_size: int) -> SourceBatch:
        """List folders from the stack until about ``batch_size`` items are collected."""
        batch = SourceBatch(created_exact=_HAS_BIRTHTIME)
        if self.collect_permissions:
            batch.access = []
        while stack and len(batch) < batch_size:
            path, parts, record, ancestors = stack.pop()
            try:
                with os.scandir(path) as iterator:
                    entries = list(iterator)
            except OSError as error:
                message = f"{type(error).__name__}: {error.strerror or error}"
                logger.warning("cannot list folder %s: %s", path, message)
                if record is not None:
                    batch.append(record.parent, dataclasses.replace(record, error=message))
                continue
            entries.sort(key=_entry_name)
            start = len(batch)
            subfolders = self._list_entries(entries, parts, ancestors, batch)
            if len(batch) > start:
                batch.runs.append((parts, start, len(batch)))
            # Push in reverse so the first subfolder in name order is listed first.
            stack.extend(reversed(subfolders))
        return batch

    def _list_entries(
        self,
        entries: list[os.DirEntry[str]],
        parts: tuple[str, ...],
        ancestors: frozenset[tuple[int, int]],
        batch: SourceBatch,
    ) -> list[_PendingFolder]:
        """Add one row per entry to ``batch``; return the subfolders to walk.

        Rows whose stat fails, special files and symbolic link loops get an ``errors`` entry.
        The caller records the run boundaries.
        """
        subfolders: list[_PendingFolder] = []
        follow = self.follow_symlinks
        windows = os.name == "nt"
        owners = self._owner_names
        missing = _MISSING
        has_birthtime = _HAS_BIRTHTIME
        errors = batch.errors
        add_name = batch.names.append
        add_is_folder = batch.is_folder.append
        add_size = batch.sizes.append
        add_created = batch.created.append
        add_modified = batch.modified.append
        add_hidden = batch.hidden.append
        add_symlink = batch.symlink.append
        add_owner = batch.owners.append
        collect = batch.access is not None
        add_access = batch.access.append if batch.access is not None else None
        # Bit tests on st_mode instead of stat.S_ISDIR() and friends: this loop runs once per
        # item and function calls are a visible share of its cost.
        type_mask = stat_module.S_IFMT(0o177777)
        link_type = stat_module.S_IFLNK
        folder_type = stat_module.S_IFDIR
        file_type_regular = stat_module.S_IFREG
        for entry in entries:
            name = entry.name
            hidden = name[0] == "."
            undecodable = False
            if not name.isascii() and not _is_utf8(name):
                # os.scandir keeps undecodable bytes as surrogates, which SharePoint, SQLite and
                # the reports cannot carry. Report the item under an escaped name, and do not
                # walk into such a folder, because its children's paths cannot be written either.
                safe = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
                errors[len(batch.names)] = (
                    f"the name {safe!r} is not valid UTF-8; rename it at the source (for example "
                    "with convmv) so it can be migrated")
                name = safe
                undecodable = True
            try:
                if undecodable:
                    raise _SkipEntry
                info = entry.stat(follow_symlinks=False)
                file_type = info.st_mode & type_mask
                symlink = file_type == link_type
                if symlink and follow:
                    info = entry.stat(follow_symlinks=True)
                    file_type = info.st_mode & type_mask
            except (OSError, _SkipEntry) as error:
                if isinstance(error, OSError):
                    errors[len(batch.names)] = f"{type(error).__name__}: {error.strerror or error}"
                add_name(name)
                add_is_folder(False)
                add_size(0)
                if has_birthtime:
                    add_created(None)
                add_modified(None)
                add_hidden(hidden)
                add_symlink(False)
                add_owner(None)
                if collect:
                    add_access(None)
                continue
            if windows and getattr(info, "st_file_attributes", 0) & _FILE_ATTRIBUTE_HIDDEN:
                hidden = True
            modified = info.st_mtime
            owner = owners.get(info.st_uid, missing)
            if owner is missing:
                owner = self._owner_name(info.st_uid)
            created = info.st_birthtime if has_birthtime else modified
            is_folder = file_type == folder_type
            if symlink and not follow:
                is_folder = entry.is_dir()
            elif is_folder:
                key = (info.st_dev, info.st_ino)
                if follow and key in ancestors:
                    errors[len(batch.names)] = "symbolic link loop: the folder is its own ancestor"
                else:
                    subfolders.append((
                        entry.path, parts + (name,),
                        SourceItem(parts, name, True, 0, created, modified, hidden,
                                   symlink and not follow, owner, has_birthtime),
                        ancestors | {key} if follow else ancestors,
                    ))
            elif file_type != file_type_regular:
                errors[len(batch.names)] = "not a regular file (device, socket or pipe)"
            add_name(name)
            add_is_folder(is_folder)
            add_size(info.st_size if file_type == file_type_regular else 0)
            if has_birthtime:
                add_created(created)
            add_modified(modified)
            add_hidden(hidden)
            # A followed link is migrated as what it points to.
            add_symlink(symlink and not follow)
            add_owner(owner)
            if collect:
                add_access(self._access(entry.path, info, symlink and follow, errors, len(batch.names) - 1))
        if not has_birthtime:
            # Without birth times the created column repeats the modified column; one C-level
            # extend is cheaper than an append per item.
            batch.created.extend(batch.modified[len(batch.created):])
        return subfolders

    @staticmethod
    def _access(path: str, info: os.stat_result, through_link: bool, errors: dict[int, str],
                index: int) -> PosixAccess:
        """Return an entry's permissions; an unreadable ACL is recorded as the row's error."""
        try:
            acl = read_acl(path, follow_symlinks=through_link)
        except OSError as error:
            errors.setdefault(index, f"cannot read the ACL ({type(error).__name__}: "
                                     f"{error.strerror or error}), so the item is not migrated "
                                     "with unknown permissions; make it readable and run again")
            acl = None
        return PosixAccess(info.st_mode & 0o7777, info.st_uid, info.st_gid, acl)

    def _owner_name(self, uid: int) -> str | None:
        """Return the user name for ``uid`` (cached), or the number as text if it has no name."""
        try:
            return self._owner_names[uid]
        except KeyError:
            pass
        name: str | None
        try:
            import pwd

            name = pwd.getpwuid(uid).pw_name
        except (ImportError, KeyError):
            name = str(uid) if uid else None
        self._owner_names[uid] = name
        return name


_entry_name = attrgetter("name")
