"""SharePoint Online scan rules for file-share items.

The rules decide, before anything is read or uploaded, whether an item can migrate, must be
renamed, is filtered out by a setting, or fails. They do no I/O.

Two entry points:

* :func:`check_item` checks one item given its whole relative path. It is a pure function and
  re-checks every ancestor folder name, so it is meant for single items and tests.
* :class:`ScanRules` checks a walk directory by directory (:meth:`ScanRules.evaluate_directory`
  or :meth:`ScanRules.evaluate` for a flat batch). It remembers the destination name and state
  of every folder it has seen, so a child of a failed folder fails with "parent folder not
  migrated" and a child of a renamed folder lands under the new name. Its fast path checks a
  whole directory listing with a few C-level string operations, because the scanner has to keep
  up with ``os.scandir``.

Decisions that the sources leave open, each kept in one named constant or table:

* Path length: the decoded server-relative destination path (``/sites/...``, host not counted)
  may be up to :data:`MAX_PATH_LENGTH` characters, and exactly 400 passes. Microsoft's limits
  text states "400 characters" while SPMT's troubleshooting text states "fewer than 400". Length is
  counted in UTF-16 code units, as .NET strings count, so a character outside the Basic
  Multilingual Plane counts 2.
* File size: 250 GB is read as 250 GiB (250 * 2**30 bytes).
* Spaces: only ASCII space (U+0020) counts as a leading or trailing space. A leading
  ideographic space (U+3000) is accepted by the service, so it is left alone.
* Names ending in a dot are rejected for files and folders.
* Device names (``CON``, ``NUL``, ``COM0``-``COM9``, ...) are reserved with or without an
  extension (``NUL.txt``, ``NUL.tar.gz``), case-insensitively. ``COM10``, ``CONTRACT.txt`` and
  ``my.lock.txt`` are legal: only the exact name before the first dot is compared.
* ``desktop.ini`` and Office owner files (``~$*``) are skipped as unsupported, not failed,
  because they are system or temporary files that are never meant to migrate.
* Timestamps must lie between :data:`EARLIEST_TIMESTAMP` and :data:`LATEST_TIMESTAMP`, the
  range SharePoint date columns accept. A missing timestamp fails too.
* Names that differ only in letter case collide (SharePoint compares names case-insensitively).
  The first name in ordinal order keeps its name; with a replacement character the others get a
  `` (1)``, `` (2)``... suffix, without one they fail. Colliding folders are renamed, never merged.
* With a replacement character set, these problems are fixed by renaming: invalid characters
  (each replaced), leading or trailing spaces and trailing dots (stripped), ``_vti_`` (written
  as ``_vti-``), a leading ``~`` on a folder (replaced) and device names (the character is
  appended to the part before the first dot). Reserved names ``.lock``, ``forms`` at the library
  root and thicket folders cannot be fixed by renaming and fail.

Filters (hidden items, created/modified-after dates, skipped extensions) give the outcome
``skip`` with category ``FILTERED OUT`` and are checked before the naming rules, so a filtered
item does not also show up as a naming failure. Date and extension filters apply to files only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from bisect import bisect_right
from collections import Counter
from itertools import accumulate, compress, groupby
from operator import attrgetter
from typing import NamedTuple, Protocol

logger = logging.getLogger("spmt.engine.rules")

MAX_PATH_LENGTH = 400
"""Maximum length of the decoded server-relative destination path; a path of exactly 400 passes."""

MAX_FILE_SIZE = 250 * 2**30
"""Maximum file size, 250 GiB. NOTE: Microsoft writes "250 GB" without saying 10**9 or 2**30."""

EARLIEST_TIMESTAMP = datetime(1900, 1, 1, tzinfo=timezone.utc)
LATEST_TIMESTAMP = datetime(8900, 12, 31, 23, 59, 59, tzinfo=timezone.utc)
# NOTE: the accepted range is the one SharePoint date columns accept (1900-01-01 to 8900-12-31).
# No source states the range the Import Migration API accepts for TimeCreated/TimeLastModified.
_EARLIEST_TS = EARLIEST_TIMESTAMP.timestamp()
_LATEST_TS = LATEST_TIMESTAMP.timestamp()

INVALID_CHARACTERS = frozenset('"*:<>?/\\|')
"""Characters SharePoint Online rejects anywhere in a name (control characters come on top)."""

RESERVED_DEVICE_NAMES = frozenset(
    ["con", "prn", "aux", "nul"]
    + [f"com{digit}" for digit in range(10)]
    + [f"lpt{digit}" for digit in range(10)]
)
THICKET_SUFFIXES = ("_files", "_file")
VTI_MARKER = "_vti_"
VTI_REPLACEMENT = "_vti-"

# SPMT and Migration Manager codes for scan failures.
CODE_FILE_TOO_BIG = "0x0111000A"
CODE_PATH_TOO_LONG = "0x0111000B"
CODE_PARENT_NOT_MIGRATED = "0x0111000F"
CODE_INVALID_CHARACTERS = "0x01110010"
CODE_INVALID_TIMESTAMP = "0x01110011"
CODE_SOURCE_UNREADABLE = "0x01110003"
# Codes the references do not give a number for, named in the style of SPMT's scan codes.
CODE_THICKET_FOLDER = "THICKET_FOLDER_UNSUPPORTED"
CODE_LEADING_TRAILING_SPACE = "NAME_LEADING_TRAILING_SPACE"
CODE_TRAILING_DOT = "NAME_TRAILING_DOT"
CODE_RESERVED_NAME = "NAME_RESERVED"
CODE_VTI_IN_NAME = "NAME_CONTAINS_VTI"
CODE_FORMS_AT_ROOT = "FORMS_FOLDER_AT_LIBRARY_ROOT"
CODE_TILDE_FOLDER = "FOLDER_NAME_STARTS_WITH_TILDE"
CODE_NAME_CONFLICT = "NAME_CONFLICT_IGNORING_CASE"
CODE_SYSTEM_FILE = "SYSTEM_FILE_UNSUPPORTED"
CODE_OFFICE_OWNER_FILE = "OFFICE_OWNER_FILE_UNSUPPORTED"
CODE_SYMLINK = "SYMLINK_UNSUPPORTED"
CODE_FILTERED_HIDDEN = "FILTERED_HIDDEN"
CODE_FILTERED_CREATED = "FILTERED_CREATED_BEFORE"
CODE_FILTERED_MODIFIED = "FILTERED_MODIFIED_BEFORE"
CODE_FILTERED_EXTENSION = "FILTERED_EXTENSION"

# Result categories, written to the "Result category" report column.
CATEGORY_SCAN_FAILURE = "SCAN FAILURE"
CATEGORY_FILTERED = "FILTERED OUT"
CATEGORY_UNSUPPORTED = "NOT SUPPORTED"
CATEGORY_RENAMED = "RENAMED"
CATEGORY_SOURCE_MISSING = "SOURCE MISSING"  # deleted at the source between scan and upload


class Outcome(str, Enum):
    """Scan decision for one item."""

    PASS = "pass"  # migrate, possibly under a new name
    SKIP = "skip"  # not migrated on purpose: filtered out or unsupported
    FAIL = "fail"  # breaks a SharePoint rule and cannot migrate as it is


class Finding(NamedTuple):
    """One rule hit: an SPMT-style code, a report category and a reason that names the fix."""

    code: str
    category: str
    reason: str


class RuleResult(NamedTuple):
    """Scan decision for one item.

    ``new_name`` is the destination name when it differs from the source name. For a pass
    without findings the shared :data:`PASSED` instance is returned.
    """

    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    new_name: str | None = None

    @property
    def code(self) -> str | None:
        """Code of the first finding that decided the outcome, if any."""
        return self.findings[0].code if self.findings else None

    @property
    def category(self) -> str | None:
        """Category of the first finding, if any."""
        return self.findings[0].category if self.findings else None

    @property
    def message(self) -> str:
        """All reasons joined into one report message."""
        return " ".join(finding.reason for finding in self.findings)


PASSED = RuleResult(Outcome.PASS)


class Candidate(Protocol):
    """Attributes the rules read from a scanned item; :class:`~spmt_tui.engine.source.SourceItem` has them.

    Times are POSIX timestamps in seconds (UTC) rather than datetimes, because building two
    datetime objects per item costs more than all the rules together. None means unknown.
    """

    @property
    def name(self) -> str: ...
    @property
    def is_folder(self) -> bool: ...
    @property
    def size(self) -> int: ...
    @property
    def created_ts(self) -> float | None: ...
    @property
    def modified_ts(self) -> float | None: ...
    @property
    def hidden(self) -> bool: ...
    @property
    def symlink(self) -> bool: ...


def parse_extension_list(value: str | Iterable[str] | None) -> frozenset[str]:
    """Parse SPMT's colon-separated extension list (``"tmp:bak"``) into lower-case extensions.

    A leading dot on an entry is tolerated and removed.
    """
    if value is None:
        return frozenset()
    entries = value.split(":") if isinstance(value, str) else list(value)
    return frozenset(entry.strip().lstrip(".").lower() for entry in entries if entry.strip())


def _to_utc_timestamp(value: datetime | None, setting: str) -> float | None:
    if value is None:
        return None
    if value.tzinfo is None:
        raise ValueError(f"invalid {setting} {value.isoformat()}: the datetime must be timezone-aware")
    return value.timestamp()


@dataclass(frozen=True)
class ScanSettings:
    """Scan settings, named after SPMT's settings of the same meaning.

    ``replacement_char`` on means invalid names are renamed; None means they fail.
    """

    include_hidden: bool = True
    created_after: datetime | None = None
    modified_after: datetime | None = None
    skipped_extensions: frozenset[str] = field(default_factory=frozenset)
    replacement_char: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "skipped_extensions", parse_extension_list(self.skipped_extensions))
        char = self.replacement_char
        if char is not None:
            if len(char) != 1 or char in INVALID_CHARACTERS or _is_control(char) or char in " .~":
                raise ValueError(
                    f"invalid replacement character {char!r}: use one character that is legal in a "
                    "SharePoint name and is not a space, '.' or '~', for example '_' or '-'"
                )
        _to_utc_timestamp(self.created_after, "created_after")
        _to_utc_timestamp(self.modified_after, "modified_after")


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


_CONTROL_CLASS = r"\x00-\x1f\x7f-\x9f"
_INVALID_CLASS = r'"*:<>?\\|' + _CONTROL_CLASS
_INVALID_RE = re.compile(f"[{_INVALID_CLASS}/]")
# The fast path screens a whole directory listing joined with "/", which cannot occur in a name
# from any source, and framed as "/name1/name2/". CPython runs these searches quickly because
# each starts with a literal or a character class. They over-match on purpose (for example
# "_file" at the end of a file name), and the slow path decides.
_SUSPECT_CHARACTERS_RE = re.compile(f"[{_INVALID_CLASS}]")
_SUSPECT_NAME_START_RE = re.compile(
    r"/(?:[ ~]|forms/|\.lock/|desktop\.ini/|(?:con|prn|aux|nul|com[0-9]|lpt[0-9])[./])"
)
_SUSPECT_UNDERSCORE_RE = re.compile(r"_(?:vti_|files?/)")
_SUSPECT_NAME_END_RE = re.compile(r"[ .]/")  # the two substring tests of _listing_is_suspect


def _listing_is_suspect(joined: str, framed_lower: str) -> bool:
    """Return True if any name in a "/"-joined listing may break a naming rule."""
    return bool(
        _SUSPECT_CHARACTERS_RE.search(joined)
        or " /" in framed_lower
        or "./" in framed_lower
        or _SUSPECT_NAME_START_RE.search(framed_lower)
        or _SUSPECT_UNDERSCORE_RE.search(framed_lower)
    )


def _rows_matching(pattern: re.Pattern[str], text: str, shift: int, starts: list[int], rows: set[int]) -> None:
    """Add to ``rows`` the row of every match of ``pattern`` in a "/"-joined listing.

    ``starts`` contains each name's offset in the listing and ``shift`` the offset of the listing in
    ``text``. Each search starts one character after the previous match, so matches that share
    the "/" between two names are all found.
    """
    position = 0
    while (match := pattern.search(text, position)) is not None:
        rows.add(bisect_right(starts, match.start() - shift) - 1)
        position = match.start() + 1


_get_is_folder = attrgetter("is_folder")
_get_symlink = attrgetter("symlink")
_get_size = attrgetter("size")
_get_hidden = attrgetter("hidden")
_get_created = attrgetter("created_ts")
_get_modified = attrgetter("modified_ts")


def utf16_length(text: str) -> int:
    """Return the length of ``text`` in UTF-16 code units, as SharePoint counts it."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-16-le")) // 2


def _device_stem(name: str) -> str:
    return name.split(".", 1)[0].lower()


class _NameCheck(NamedTuple):
    findings: list[Finding]
    unfixable: bool
    skip: bool


def _check_name(name: str, is_folder: bool, at_library_root: bool, renaming: bool) -> _NameCheck:
    """Check one name against the naming rules; ``renaming`` only changes the reason texts."""
    findings: list[Finding] = []
    unfixable = False
    skip = False
    lower = name.lower()
    fix_hint = "it will be renamed" if renaming else (
        "rename it at the source or set a replacement character for invalid names"
    )

    if not is_folder and lower == "desktop.ini":
        findings.append(Finding(CODE_SYSTEM_FILE, CATEGORY_UNSUPPORTED,
                                "'desktop.ini' is a Windows folder settings file and is not migrated."))
        return _NameCheck(findings, True, True)
    if not is_folder and name.startswith("~$"):
        findings.append(Finding(CODE_OFFICE_OWNER_FILE, CATEGORY_UNSUPPORTED,
                                f"'{name}' is a temporary Office owner (lock) file and is not migrated."))
        return _NameCheck(findings, True, True)

    bad = sorted({char for char in name if char in INVALID_CHARACTERS or _is_control(char)})
    if bad:
        shown = ", ".join(repr(char) for char in bad)
        findings.append(Finding(CODE_INVALID_CHARACTERS, CATEGORY_SCAN_FAILURE,
                                f"Name '{name}' contains invalid characters {shown}; {fix_hint}."))
    if name.startswith(" ") or name.endswith(" "):
        findings.append(Finding(CODE_LEADING_TRAILING_SPACE, CATEGORY_SCAN_FAILURE,
                                f"Name '{name}' has a leading or trailing space, which SharePoint "
                                f"does not allow; {fix_hint}."))
    if name.rstrip(" ").endswith("."):
        findings.append(Finding(CODE_TRAILING_DOT, CATEGORY_SCAN_FAILURE,
                                f"Name '{name}' ends with a dot, which SharePoint does not allow; "
                                f"{fix_hint}."))
    if VTI_MARKER in lower:
        findings.append(Finding(CODE_VTI_IN_NAME, CATEGORY_SCAN_FAILURE,
                                f"Name '{name}' contains '_vti_', which SharePoint reserves; "
                                f"{fix_hint}."))
    if lower == ".lock":
        unfixable = True
        findings.append(Finding(CODE_RESERVED_NAME, CATEGORY_SCAN_FAILURE,
                                "Name '.lock' is reserved in SharePoint; rename it at the source."))
    elif _device_stem(name) in RESERVED_DEVICE_NAMES:
        findings.append(Finding(CODE_RESERVED_NAME, CATEGORY_SCAN_FAILURE,
                                f"Name '{name}' uses the reserved device name "
                                f"'{name.split('.', 1)[0]}'; {fix_hint}."))
    if is_folder:
        if name.startswith("~"):
            findings.append(Finding(CODE_TILDE_FOLDER, CATEGORY_SCAN_FAILURE,
                                    f"Folder name '{name}' starts with '~', which SharePoint does "
                                    f"not allow; {fix_hint}."))
        if lower.endswith(THICKET_SUFFIXES):
            unfixable = True
            findings.append(Finding(CODE_THICKET_FOLDER, CATEGORY_SCAN_FAILURE,
                                    f"Folder name '{name}' ends with '_files' or '_file' (a thicket "
                                    "folder), which SharePoint cannot create; rename it at the source."))
        if at_library_root and lower == "forms":
            unfixable = True
            findings.append(Finding(CODE_FORMS_AT_ROOT, CATEGORY_SCAN_FAILURE,
                                    "A folder named 'forms' is not allowed at the root of a "
                                    "document library; rename it at the source or migrate it "
                                    "into a subfolder."))
    return _NameCheck(findings, unfixable, skip)


def _fix_name(name: str, is_folder: bool, char: str) -> str:
    """Rename ``name`` so the fixable naming rules pass, using replacement character ``char``."""
    fixed = _INVALID_RE.sub(char, name)
    fixed = re.sub(VTI_MARKER, lambda match: match.group(0)[:-1] + "-", fixed, flags=re.IGNORECASE)
    while True:
        stripped = fixed.strip(" ").rstrip(".")
        if stripped == fixed:
            break
        fixed = stripped
    if is_folder and fixed.startswith("~"):
        fixed = char + fixed[1:]
    if not fixed:
        fixed = char
    stem, dot, rest = fixed.partition(".")
    if stem.lower() in RESERVED_DEVICE_NAMES:
        fixed = stem + char + dot + rest
    return fixed


def _with_suffix(name: str, is_folder: bool, number: int) -> str:
    """Return ``name`` with `` (n)`` before the extension (files) or at the end (folders)."""
    if not is_folder:
        stem, dot, extension = name.rpartition(".")
        if dot and stem:
            return f"{stem} ({number}).{extension}"
    return f"{name} ({number})"


class _Listing(NamedTuple):
    """The children of one folder, column by column (same order in every column)."""

    names: list[str]
    is_folder: list[bool]
    sizes: list[int]
    created: list[float | None]
    modified: list[float | None]
    hidden: list[bool]
    symlink: list[bool]


def _columns(batch: object) -> tuple[list, ...]:  # type: ignore[type-arg]
    return (
        batch.names, batch.is_folder, batch.sizes, batch.created,  # type: ignore[attr-defined]
        batch.modified, batch.hidden, batch.symlink,  # type: ignore[attr-defined]
    )


def _slice_listing(batch: object, start: int, end: int) -> _Listing:
    return _Listing(*(column[start:end] for column in _columns(batch)))


@dataclass(slots=True)
class FolderState:
    """State the rules keep for a folder seen earlier in the walk."""

    # Destination path relative to the target folder, "/"-joined ("" for the root). For a folder
    # that does not migrate it is the source path, used only in messages.
    destination: str
    length: int  # UTF-16 length of the full server-relative destination path
    blocked: RuleResult | None = None  # set when the folder does not migrate


class ScanRules:
    """Stateful rule checker for one walk of one source into one destination folder.

    ``destination_prefix`` is the server-relative URL of the target folder, for example
    ``/sites/demo/Shared Documents/Sub``. ``destination_is_library_root`` is True when that
    folder is the library root, which matters for the ``forms`` rule.

    Contract: children of one folder are passed together in one call to
    :meth:`evaluate_directory` (or consecutively to :meth:`evaluate`), after the folder itself.
    Name collisions are detected only within such a group.
    """

    def __init__(
        self,
        destination_prefix: str,
        settings: ScanSettings | None = None,
        *,
        destination_is_library_root: bool = True,
    ) -> None:
        prefix = "/" + destination_prefix.strip("/")
        self.destination_prefix = prefix
        self.settings = settings or ScanSettings()
        self.destination_is_library_root = destination_is_library_root
        self._created_after = _to_utc_timestamp(self.settings.created_after, "created_after")
        self._modified_after = _to_utc_timestamp(self.settings.modified_after, "modified_after")
        self._folders: dict[tuple[str, ...], FolderState] = {
            (): FolderState("", utf16_length(prefix))
        }
        # Matches ".<skipped extension>/" in a framed, lower-case listing ("/name1/name2/").
        extensions = sorted(map(re.escape, self.settings.skipped_extensions))
        self._skipped_extension_re = re.compile(rf"\.(?:{'|'.join(extensions)})/") if extensions else None

    # -- public API ---------------------------------------------------------------------------

    def folder_state(self, parts: Sequence[str]) -> FolderState | None:
        """Return what is known about the folder at ``parts`` (``()`` is the source root)."""
        return self._folders.get(tuple(parts))

    def destination_path(self, parent: Sequence[str], name: str, result: RuleResult) -> str:
        """Return the destination path of a child, relative to the target folder ("/"-joined)."""
        state = self._folders[tuple(parent)]
        final = result.new_name or name
        return f"{state.destination}/{final}" if state.destination else final

    def server_relative_url(self, relative_destination: str) -> str:
        """Return the decoded server-relative URL for a destination path relative to the target."""
        if not relative_destination:
            return self.destination_prefix
        return f"{self.destination_prefix}/{relative_destination}"

    def evaluate(self, batch: Sequence[Candidate]) -> list[RuleResult]:
        """Evaluate a batch of items from a walk; returns one result per item, in order.

        ``batch`` is either a :class:`~spmt_tui.engine.source.SourceBatch` (columns and runs are
        read directly, which is the fast way) or a sequence of items with a ``parent``
        attribute, where consecutive items with the same parent form one directory group.
        Rows with a read error fail with :data:`CODE_SOURCE_UNREADABLE`.
        """
        runs = getattr(batch, "runs", None)
        if runs is None or not hasattr(batch, "names"):
            return self._evaluate_objects(batch)
        results: list[RuleResult] = []
        errors: dict[int, str] = batch.errors  # type: ignore[attr-defined]
        for parent, start, end in runs:
            error_rows = [index for index in errors if start <= index < end] if errors else []
            if not error_rows:
                results.extend(self._evaluate_listing(tuple(parent), _slice_listing(batch, start, end)))
                continue
            rows = [index for index in range(start, end) if index not in errors]
            listing = _Listing(*([column[index] for index in rows] for column in _columns(batch)))
            run_results = dict(zip(rows, self._evaluate_listing(tuple(parent), listing)))
            for index in error_rows:
                run_results[index] = self._unreadable(
                    tuple(parent), batch.names[index], batch.is_folder[index], errors[index]  # type: ignore[attr-defined]
                )
            results.extend(run_results[index] for index in range(start, end))
        return results

    def evaluate_directory(
        self, parent: Sequence[str], children: Sequence[Candidate]
    ) -> list[RuleResult]:
        """Evaluate all children of the folder ``parent``; returns one result per child, in order."""
        listing = _Listing(
            [child.name for child in children],
            list(map(_get_is_folder, children)),
            list(map(_get_size, children)),
            list(map(_get_created, children)),
            list(map(_get_modified, children)),
            list(map(_get_hidden, children)),
            list(map(_get_symlink, children)),
        )
        return self._evaluate_listing(tuple(parent), listing)

    def record_unreadable_folder(self, parts: Sequence[str], error: str) -> RuleResult:
        """Mark a folder that could not be listed as failed; returns its new result."""
        key = tuple(parts)
        return self._unreadable(key[:-1], key[-1], True, error)

    def _unreadable(self, parent: tuple[str, ...], name: str, is_folder: bool, error: str) -> RuleResult:
        path = "/".join(parent + (name,))
        what = "Folder" if is_folder else "File"
        action = "list" if is_folder else "read"
        result = RuleResult(
            Outcome.FAIL,
            (Finding(CODE_SOURCE_UNREADABLE, CATEGORY_SCAN_FAILURE,
                     f"{what} '{path}' could not be read ({error}); check that the migration "
                     f"account can {action} it."),),
        )
        if is_folder:
            key = parent + (name,)
            state = self._folders.get(key)
            if state is None:
                self._folders[key] = FolderState(path, 0, result)
            else:
                state.blocked = result
        return result

    def _evaluate_objects(self, items: Sequence[Candidate]) -> list[RuleResult]:
        results: list[RuleResult] = []
        for parent, group in groupby(items, key=attrgetter("parent")):
            children = list(group)
            error_free = [child for child in children if getattr(child, "error", None) is None]
            evaluated = iter(self.evaluate_directory(parent, error_free))
            for child in children:
                error = getattr(child, "error", None)
                if error is None:
                    results.append(next(evaluated))
                else:
                    results.append(self._unreadable(tuple(parent), child.name, child.is_folder, error))
        return results

    def _evaluate_listing(self, parent_key: tuple[str, ...], listing: _Listing) -> list[RuleResult]:
        state = self._folders.get(parent_key)
        if state is None:
            raise KeyError(
                f"folder {'/'.join(parent_key)!r} was not evaluated before its children; "
                "pass every folder before its contents"
            )
        if not listing.names:
            return []
        if state.blocked is not None:
            return self._block_children(parent_key, state, listing)
        if self._listing_is_clean(state, listing):
            self._pass_folders(parent_key, state, compress(listing.names, listing.is_folder))
            return [PASSED] * len(listing.names)
        rows = self._rows_to_check(state, listing)
        if rows is None or len(rows) * 2 > len(listing.names):
            children = [_SingleItem(*row) for row in zip(*listing)]
            return self._evaluate_slow(parent_key, state, children)
        return self._evaluate_rows(parent_key, state, listing, rows)

    def _pass_folders(self, parent_key: tuple[str, ...], state: FolderState, names: Iterable[str]) -> None:
        prefix = f"{state.destination}/" if state.destination else ""
        for name in names:
            self._folders[parent_key + (name,)] = FolderState(
                prefix + name, state.length + 1 + utf16_length(name)
            )

    def _evaluate_rows(
        self, parent_key: tuple[str, ...], state: FolderState, listing: _Listing, rows: set[int]
    ) -> list[RuleResult]:
        """Check only ``rows`` item by item; every other row passes unchanged.

        The passing names are reserved first, as the per-item path would let unchanged names
        claim theirs first, so renamed rows still get a numbered suffix on a collision.
        """
        names = listing.names
        checked = sorted(rows)
        passing = [index for index in range(len(names)) if index not in rows]
        self._pass_folders(parent_key, state,
                           (names[index] for index in passing if listing.is_folder[index]))
        reserved = {names[index].lower(): names[index] for index in passing}
        children = [_SingleItem(*(column[index] for column in listing)) for index in checked]
        results = [PASSED] * len(names)
        for index, result in zip(checked, self._evaluate_slow(parent_key, state, children, reserved)):
            results[index] = result
        return results

    def _rows_to_check(self, state: FolderState, listing: _Listing) -> set[int] | None:
        """Return the rows that may hit a rule, including every name that collides ignoring case.

        Each test mirrors one test of :meth:`_listing_is_clean` and may over-match, never
        under-match. Returns None (check every row) when lower-casing changes a name's length,
        because match offsets in the lower-case listing then no longer line up with the names.
        """
        names = listing.names
        joined = "/".join(names)
        lowered = joined.lower()
        if len(lowered) != len(joined):
            return None
        framed = f"/{lowered}/"
        starts = list(accumulate((len(name) + 1 for name in names[:-1]), initial=0))
        rows: set[int] = set()
        _rows_matching(_SUSPECT_CHARACTERS_RE, joined, 0, starts, rows)
        # Matches of these start at the "/" before a name, or on its last character.
        _rows_matching(_SUSPECT_NAME_START_RE, framed, 0, starts, rows)
        _rows_matching(_SUSPECT_NAME_END_RE, framed, 1, starts, rows)
        _rows_matching(_SUSPECT_UNDERSCORE_RE, framed, 1, starts, rows)
        if self._skipped_extension_re is not None:
            _rows_matching(self._skipped_extension_re, framed, 1, starts, rows)
        if state.length + 1 + utf16_length(joined) > MAX_PATH_LENGTH:
            rows.update(index for index, name in enumerate(names)
                        if state.length + 1 + utf16_length(name) > MAX_PATH_LENGTH)
        if lowered != joined:
            # Both names of a pair that differs only in case go to the per-item path, which
            # decides which one keeps the name.
            lower_names = lowered.split("/")
            counts = Counter(lower_names)
            rows.update(index for index, name in enumerate(lower_names) if counts[name] > 1)
        rows.update(compress(range(len(names)), listing.symlink))
        rows.update(index for index, size in enumerate(listing.sizes) if size > MAX_FILE_SIZE)
        if not self.settings.include_hidden:
            rows.update(compress(range(len(names)), listing.hidden))
        for column, after in ((listing.created, self._created_after), (listing.modified, self._modified_after)):
            earliest = _EARLIEST_TS if after is None else max(_EARLIEST_TS, after)
            rows.update(index for index, value in enumerate(column)
                        if value is None or value < earliest or value > _LATEST_TS)
        return rows

    # -- fast path ----------------------------------------------------------------------------

    def _listing_is_clean(self, state: FolderState, listing: _Listing) -> bool:
        """Return True when no child in ``listing`` can hit any rule or filter.

        Every check is a C-level pass over a whole column (``min``/``max``/``any``, regex and
        substring search), because a Python loop per item would make the scan measurably
        slower than the ``os.scandir`` walk that feeds it.
        """
        names = listing.names
        joined = "/".join(names)
        lowered = joined.lower()
        if _listing_is_suspect(joined, f"/{lowered}/"):
            return False
        if state.length + 1 + utf16_length(joined) > MAX_PATH_LENGTH:
            # The whole listing is longer than the path limit, so look at the longest name.
            if joined.isascii():
                longest = max(map(len, names))
            else:
                longest = max(map(utf16_length, names))
            if state.length + 1 + longest > MAX_PATH_LENGTH:
                return False
        if lowered != joined and len(set(lowered.split("/"))) != len(names):
            return False
        if any(listing.symlink) or max(listing.sizes) > MAX_FILE_SIZE:
            return False
        settings = self.settings
        if not settings.include_hidden and any(listing.hidden):
            return False
        created = listing.created
        modified = listing.modified
        if None in created or None in modified:
            return False
        earliest_created = min(created)  # type: ignore[type-var]
        earliest_modified = min(modified)  # type: ignore[type-var]
        if earliest_created < _EARLIEST_TS or earliest_modified < _EARLIEST_TS:
            return False
        if max(created) > _LATEST_TS or max(modified) > _LATEST_TS:  # type: ignore[type-var]
            return False
        # Date filters apply to files only. An old folder merely sends the listing to the slow
        # path, which gives the right result.
        if self._created_after is not None and earliest_created < self._created_after:
            return False
        if self._modified_after is not None and earliest_modified < self._modified_after:
            return False
        # One search over the framed listing; a folder with such an extension over-matches and
        # merely takes the per-item path.
        if self._skipped_extension_re is not None and self._skipped_extension_re.search(f"/{lowered}/"):
            return False
        return True

    # -- slow path ----------------------------------------------------------------------------

    def _block_children(
        self, parent_key: tuple[str, ...], state: FolderState, listing: _Listing
    ) -> list[RuleResult]:
        blocked = state.blocked
        assert blocked is not None
        if blocked.findings and blocked.findings[0].code == CODE_PARENT_NOT_MIGRATED:
            result = blocked  # already names the top-most failed folder
        else:
            outcome = Outcome.FAIL if blocked.outcome is Outcome.FAIL else Outcome.SKIP
            category = CATEGORY_SCAN_FAILURE if outcome is Outcome.FAIL else blocked.category
            result = RuleResult(
                outcome,
                (Finding(CODE_PARENT_NOT_MIGRATED, category or CATEGORY_SCAN_FAILURE,
                         f"Parent folder '{'/'.join(parent_key)}' is not migrated because of "
                         f"{blocked.code}: {blocked.message} Fix that folder to migrate this item."),),
            )
        for name in compress(listing.names, listing.is_folder):
            key = parent_key + (name,)
            self._folders[key] = FolderState("/".join(key), 0, result)
        return [result] * len(listing.names)

    def _evaluate_slow(
        self, parent_key: tuple[str, ...], state: FolderState, children: Sequence[Candidate],
        reserved: dict[str, str] | None = None,
    ) -> list[RuleResult]:
        """Check ``children`` one by one; ``reserved`` maps lower-case names already taken."""
        settings = self.settings
        char = settings.replacement_char
        at_root = not parent_key and self.destination_is_library_root
        results: list[RuleResult | None] = [None] * len(children)
        wanted: list[str | None] = [None] * len(children)
        renamed_findings: list[tuple[Finding, ...]] = [()] * len(children)

        for index, child in enumerate(children):
            early = self._check_filters_and_limits(child)
            if early is not None:
                results[index] = early
                continue
            check = _check_name(child.name, child.is_folder, at_root, renaming=char is not None)
            if check.skip:
                results[index] = RuleResult(Outcome.SKIP, tuple(check.findings))
                continue
            if not check.findings:
                wanted[index] = child.name
                continue
            if char is None:
                results[index] = RuleResult(Outcome.FAIL, tuple(check.findings))
                continue
            if check.unfixable:
                # Report with the texts that ask for a rename at the source.
                plain = _check_name(child.name, child.is_folder, at_root, renaming=False)
                results[index] = RuleResult(Outcome.FAIL, tuple(plain.findings))
                continue
            new_name = _fix_name(child.name, child.is_folder, char)
            recheck = _check_name(new_name, child.is_folder, at_root, renaming=False)
            if recheck.findings:
                results[index] = RuleResult(Outcome.FAIL, tuple(check.findings + recheck.findings))
                continue
            wanted[index] = new_name
            renamed_findings[index] = tuple(
                Finding(finding.code, CATEGORY_RENAMED,
                        finding.reason.replace("it will be renamed", f"migrated as '{new_name}'"))
                for finding in check.findings
            )

        self._assign_names(children, wanted, renamed_findings, results, reserved)
        final: list[RuleResult] = []
        prefix = f"{state.destination}/" if state.destination else ""
        for index, child in enumerate(children):
            result = results[index]
            name = wanted[index]
            if result is None and name is not None:
                length = state.length + 1 + utf16_length(name)
                if length > MAX_PATH_LENGTH:
                    url = f"{self.destination_prefix}/{prefix}{name}"
                    result = RuleResult(
                        Outcome.FAIL,
                        (Finding(CODE_PATH_TOO_LONG, CATEGORY_SCAN_FAILURE,
                                 f"Target path is too long: '{url}' has {length} characters, the "
                                 f"limit is {MAX_PATH_LENGTH}; shorten folder or file names or "
                                 "migrate into a shorter destination."),),
                    )
                else:
                    new_name = name if name != child.name else None
                    findings = renamed_findings[index]
                    result = RuleResult(Outcome.PASS, findings, new_name) if (findings or new_name) else PASSED
                    if child.is_folder:
                        self._folders[parent_key + (child.name,)] = FolderState(prefix + name, length)
            assert result is not None
            if child.is_folder and result.outcome is not Outcome.PASS:
                key = parent_key + (child.name,)
                self._folders[key] = FolderState("/".join(key), 0, result)
            final.append(result)
        return final

    def _assign_names(
        self,
        children: Sequence[Candidate],
        wanted: list[str | None],
        renamed_findings: list[tuple[Finding, ...]],
        results: list[RuleResult | None],
        reserved: dict[str, str] | None = None,
    ) -> None:
        """Resolve destination names that collide ignoring case, in place.

        Names in ``reserved`` (lower-case name to source name) are taken before any child.
        Unchanged names claim their name first, in ordinal order, and renamed ones follow. Every
        later claimant gets a numbered suffix when a replacement character is set, else it fails.
        """
        char = self.settings.replacement_char
        taken: dict[str, str] = dict(reserved) if reserved else {}
        order = sorted(
            (index for index, name in enumerate(wanted) if name is not None),
            key=lambda index: (wanted[index] != children[index].name, children[index].name),
        )
        for index in order:
            name = wanted[index]
            assert name is not None
            child = children[index]
            key = name.lower()
            if key not in taken:
                taken[key] = child.name
                continue
            if char is None:
                results[index] = RuleResult(
                    Outcome.FAIL,
                    (Finding(CODE_NAME_CONFLICT, CATEGORY_SCAN_FAILURE,
                             f"Name '{child.name}' is the same as '{taken[key]}' when letter case is "
                             "ignored, and SharePoint compares names ignoring case; rename one of "
                             "them or set a replacement character for invalid names."),),
                )
                wanted[index] = None
                continue
            number = 1
            while True:
                candidate = _with_suffix(name, child.is_folder, number)
                if candidate.lower() not in taken:
                    break
                number += 1
            taken[candidate.lower()] = child.name
            wanted[index] = candidate
            renamed_findings[index] = renamed_findings[index] + (
                Finding(CODE_NAME_CONFLICT, CATEGORY_RENAMED,
                        f"Name '{child.name}' collides with '{taken[key]}' ignoring letter case; "
                        f"migrated as '{candidate}'."),
            )

    def _check_filters_and_limits(self, child: Candidate) -> RuleResult | None:
        """Return the result for symlinks, filters, size and timestamps, or None to go on."""
        settings = self.settings
        name = child.name
        if child.symlink:
            return RuleResult(Outcome.SKIP, (Finding(
                CODE_SYMLINK, CATEGORY_UNSUPPORTED,
                f"'{name}' is a symbolic link; links are not followed or migrated. Copy the "
                "target into the source if it should migrate."),))
        if not settings.include_hidden and child.hidden:
            return RuleResult(Outcome.SKIP, (Finding(
                CODE_FILTERED_HIDDEN, CATEGORY_FILTERED,
                f"'{name}' is hidden and the setting 'Include hidden files' is off."),))
        created = child.created_ts
        modified = child.modified_ts
        if not child.is_folder:
            if self._created_after is not None and created is not None and created < self._created_after:
                return RuleResult(Outcome.SKIP, (Finding(
                    CODE_FILTERED_CREATED, CATEGORY_FILTERED,
                    f"'{name}' was created {_format_ts(created)}, before the filter date "
                    f"{_format_ts(self._created_after)} of 'Migrate files created after'."),))
            if self._modified_after is not None and modified is not None and modified < self._modified_after:
                return RuleResult(Outcome.SKIP, (Finding(
                    CODE_FILTERED_MODIFIED, CATEGORY_FILTERED,
                    f"'{name}' was modified {_format_ts(modified)}, before the filter date "
                    f"{_format_ts(self._modified_after)} of 'Migrate files modified after'."),))
            stem, dot, extension = name.rpartition(".")
            if dot and extension.lower() in settings.skipped_extensions:
                return RuleResult(Outcome.SKIP, (Finding(
                    CODE_FILTERED_EXTENSION, CATEGORY_FILTERED,
                    f"'{name}' has the extension '{extension}', which is in the list of skipped "
                    "extensions."),))
            if child.size > MAX_FILE_SIZE:
                return RuleResult(Outcome.FAIL, (Finding(
                    CODE_FILE_TOO_BIG, CATEGORY_SCAN_FAILURE,
                    f"File size exceeds limit: '{name}' is {child.size} bytes, the limit is "
                    f"{MAX_FILE_SIZE} bytes (250 GiB); split or compress the file."),))
        for label, value in (("created", created), ("modified", modified)):
            if value is None:
                return RuleResult(Outcome.FAIL, (Finding(
                    CODE_INVALID_TIMESTAMP, CATEGORY_SCAN_FAILURE,
                    f"'{name}' has no {label} time; set a valid time on the source item."),))
            if not _EARLIEST_TS <= value <= _LATEST_TS:
                return RuleResult(Outcome.FAIL, (Finding(
                    CODE_INVALID_TIMESTAMP, CATEGORY_SCAN_FAILURE,
                    f"'{name}' has {label} time {_format_ts(value)}, outside the range SharePoint "
                    f"accepts ({EARLIEST_TIMESTAMP:%Y-%m-%d} to {LATEST_TIMESTAMP:%Y-%m-%d}); set a "
                    "valid time on the source item."),))
        return None


def _format_ts(value: float) -> str:
    try:
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{value!r} (POSIX seconds)"


class _SingleItem(NamedTuple):
    name: str
    is_folder: bool
    size: int
    created_ts: float | None
    modified_ts: float | None
    hidden: bool
    symlink: bool


def check_item(
    parts: Sequence[str],
    is_folder: bool,
    size: int,
    created: datetime | None,
    modified: datetime | None,
    hidden: bool,
    symlink: bool,
    destination_prefix: str,
    settings: ScanSettings | None = None,
    *,
    destination_is_library_root: bool = True,
) -> tuple[RuleResult, str]:
    """Check one item given its relative path ``parts``; pure, with no state kept between calls.

    Every ancestor folder name is checked too (as a plain folder with the item's times), so an
    item under an invalid folder fails with :data:`CODE_PARENT_NOT_MIGRATED`. Sibling collisions
    cannot be seen from one item. Returns the result and the destination path relative to
    ``destination_prefix``.
    """
    if not parts:
        raise ValueError("invalid item path: parts must contain at least the item name")
    rules = ScanRules(destination_prefix, settings, destination_is_library_root=destination_is_library_root)
    created_ts = _to_utc_timestamp(created, "created")
    modified_ts = _to_utc_timestamp(modified, "modified")
    for depth in range(len(parts) - 1):
        ancestor = _SingleItem(parts[depth], True, 0, created_ts, modified_ts, False, False)
        rules.evaluate_directory(parts[:depth], [ancestor])
    item = _SingleItem(parts[-1], is_folder, size, created_ts, modified_ts, hidden, symlink)
    result = rules.evaluate_directory(parts[:-1], [item])[0]
    return result, rules.destination_path(parts[:-1], parts[-1], result)
