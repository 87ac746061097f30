"""Bulk task files: read SPMT and Migration Manager task files into :class:`MigrationTask` lists.

Three formats are read, chosen by the file's content (a file that starts with ``{`` or ``[`` is
JSON):

* **SPMT CSV**: 8 columns per row and no header row: Source, Source DocLib, Source SubFolder,
  Target Web, Target DocLib, Target SubFolder, RegisterAsHubSite, AssociateWithHubURL.
* **Migration Manager CSV**: the first 6 of those columns, with an optional header row.
* **JSON**: ``{"Tasks": [{"SourcePath", "TargetPath", "TargetList", "TargetListRelativePath",
  "Settings": {...}}]}``. ``Settings`` contains the task's own settings under SPMT's keys (for
  example ``MigrateHiddenItems`` or ``SkipFilesWithExtensions``) or under the field names of
  :class:`~spmt_tui.engine.settings.Settings`. Keys are matched ignoring case.

Files are UTF-8, with or without a byte order mark. Sources are file share folders on this
machine. A relative source path is taken relative to the task file's folder, and a Windows path
(``\\\\server\\share`` or ``D:\\...``) is rejected with a hint to mount the share. Columns 2, 3,
7 and 8 apply to SharePoint Server sources and hub sites only, so they must be empty.

:func:`load_tasks` checks the whole file before it returns. It raises one
:class:`TaskFileError` that lists every problem with its line and column (the CSV field number,
or the character column of a JSON key), so nothing runs until the file is valid. A task with the
same source and destination as an earlier one is a problem too. The module has no UI code, so
the CLI and the TUI both call it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import json.scanner
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from spmt_tui.engine.custom_storage import check_key, remember_key
from spmt_tui.engine.migration import MigrationTask
from spmt_tui.engine.settings import TASK_SETTINGS, Settings, SettingsError, parse_time
from spmt_tui.engine.users import UserMappingError, load_user_mapping, utf8_error_position

log = logging.getLogger("spmt.engine.tasks")

SPMT_COLUMNS = (
    "Source", "Source DocLib", "Source SubFolder", "Target Web", "Target DocLib",
    "Target SubFolder", "RegisterAsHubSite", "AssociateWithHubURL",
)
MM_COLUMNS = SPMT_COLUMNS[:6]

JSON_TASK_KEYS = ("SourcePath", "TargetPath", "TargetList", "TargetListRelativePath", "Settings",
                  "MigrationType", "Items")

# SPMT task settings that have no effect on a file share source: accepted and ignored.
IGNORED_JSON_SETTINGS = {
    "migratefileversionhistory": "file shares have no version history",
    "keepfileversions": "file shares have no version history",
    "skiplistwithaudienceenabled": "it applies to SharePoint Server sources only",
    "migrateonenotenotebook": "OneNote folders are migrated as plain folders and files",
    "migrateallwebstructures": "it applies to SharePoint Server sources only",
    "enableazuredirectorylookup": "users are mapped by the user mapping file only",
}
# The access key of a task's custom Azure storage account. It is not a setting, so it is held in
# this process's memory only and never stored with the session.
ACCESS_KEY_JSON = "customazureaccesskey"

# SPMT task settings that spmt-tui cannot honour. Each maps to the one accepted value, which turns
# the feature off (None when no value is accepted), and to the reason given for any other value.
UNSUPPORTED_JSON_SETTINGS = {
    "filteroutpathspecialcharacters": (None, "this key means different things in different "
                                             "SPMT versions; use ReplacementOfInvalidChar with a "
                                             "character to rename invalid names, or leave it out to "
                                             "skip them"),
}


@dataclass(frozen=True)
class TaskFileIssue:
    """One problem in a task file.

    ``line`` counts from 1. ``column`` is the 1-based field number in a CSV file and the 1-based
    character column in a JSON file. ``field`` names the column or the JSON key.
    """

    line: int
    column: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column} ({self.field}): {self.message}"


class TaskFileError(ValueError):
    """A task file is invalid; ``issues`` lists every problem, in file order."""

    def __init__(self, path: str | os.PathLike[str], issues: list[TaskFileIssue]) -> None:
        self.path = Path(path)
        self.issues = sorted(issues, key=lambda issue: (issue.line, issue.column))
        listed = "\n".join(f"  {issue}" for issue in self.issues)
        super().__init__(f"task file {self.path} has {len(self.issues)} error(s):\n{listed}")


def load_tasks(path: str | os.PathLike[str]) -> list[MigrationTask]:
    """Read a task file and return its tasks in file order; raises TaskFileError."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise TaskFileError(path, [TaskFileIssue(1, 1, "file", f"cannot read the task file: "
                                                 f"{error.strerror}")]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line, column = utf8_error_position(raw, error)
        raise TaskFileError(path, [TaskFileIssue(
            line, column, "file", "the file is not valid UTF-8; save it as UTF-8 (CSV UTF-8 in "
            "Excel)")]) from None
    reader = (_JsonTaskReader if text.lstrip().startswith(("{", "[")) else _CsvTaskReader)(path, text)
    tasks, issues = reader.read()
    _check_duplicates(tasks, issues)
    if not tasks and not issues:
        issues.append(TaskFileIssue(1, 1, "file", "the file has no tasks"))
    if issues:
        raise TaskFileError(path, issues)
    for account, key in getattr(reader, "access_keys", {}).items():
        remember_key(account, key)
    log.info("task file %s: %d task(s)", path, len(tasks))
    return [task for _, _, task in tasks]


# A task as read, with the position of the row or JSON object it came from.
_Located = tuple[int, int, MigrationTask]


def _check_duplicates(tasks: list[_Located], issues: list[TaskFileIssue]) -> None:
    first: dict[tuple[str, str, str, str], int] = {}
    for line, column, task in tasks:
        key = (task.source, task.site_url.lower(), task.library.lower(), task.folder.lower())
        if key in first:
            issues.append(TaskFileIssue(line, column, "task", f"duplicate task: the same source "
                                        f"and destination as line {first[key]}"))
        else:
            first[key] = line


# -- values shared by both formats --------------------------------------------------------------

_WINDOWS_PATH = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\|//)")


def _source_path(value: str, base: Path) -> tuple[str | None, str]:
    """Return the absolute source folder, or None and what is wrong with ``value``."""
    text = value.strip()
    if not text:
        return None, "the source is empty; give the folder to migrate"
    if text.lower().startswith(("http://", "https://")):
        return None, (f"{text} is a URL, but only file share sources are supported; give a "
                      "folder on this machine")
    if _WINDOWS_PATH.match(text):
        return None, (f"{text} is a Windows path; mount the share on this machine (for example "
                      "with mount -t cifs) and give its local path, e.g. /mnt/fs01/projects")
    path = Path(text).expanduser()
    if not path.is_absolute():
        path = base / path
    folder = os.path.normpath(path)
    if not os.path.exists(folder):
        return None, f"source folder {folder} not found; check the path and that the share is mounted"
    if not os.path.isdir(folder):
        return None, f"source {folder} is not a folder; give the folder to migrate"
    if not os.access(folder, os.R_OK | os.X_OK):
        return None, f"source folder {folder} is not readable by this account"
    return folder, ""


def _site_url(value: str) -> tuple[str | None, str]:
    """Return the destination site URL without a trailing slash, or None and the problem."""
    text = value.strip()
    if not text:
        return None, "the target site URL is empty"
    if "@" in text and "://" not in text:
        return None, (f"{text} is an email address; give the OneDrive or site URL, e.g. "
                      "https://contoso-my.sharepoint.com/personal/jane_contoso_com")
    parts = urlsplit(text)
    if parts.scheme.lower() not in ("https", "http") or not parts.hostname:
        return None, f"invalid target site URL {text!r}: use https://host/sites/name"
    if parts.query or parts.fragment or "/_layouts/" in parts.path.lower():
        return None, (f"invalid target site URL {text!r}: give the site URL alone, without "
                      "_layouts pages, query or fragment")
    return text.rstrip("/"), ""


def _library(value: str) -> tuple[str | None, str]:
    text = value.strip()
    if not text:
        return None, "the target library is empty; give the library title, e.g. Documents"
    if text.lower() == "shared documents":
        return None, ("invalid document library 'Shared Documents': give the library's title "
                      "Documents, not its URL name")
    return text, ""


_INVALID_FOLDER_CHARACTERS = re.compile(r'[\x00-\x1f"*:<>?|]')


def _folder(value: str) -> tuple[str | None, str]:
    """Return the target folder "/"-joined (backslashes count as separators), or the problem."""
    parts = [part for part in value.replace("\\", "/").split("/") if part.strip()]
    if any(part.strip() in (".", "..") for part in parts):
        return None, f"invalid target folder {value!r}: '.' and '..' are not allowed"
    if _INVALID_FOLDER_CHARACTERS.search(value):
        return None, (f"invalid target folder {value!r}: SharePoint names cannot contain control "
                      'characters or any of " * : < > ? |')
    return "/".join(parts), ""


# -- CSV ----------------------------------------------------------------------------------------


class _CsvTaskReader:
    """Reader of SPMT (8 columns, no header) and Migration Manager (6 columns) CSV task files."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = path.parent.resolve()
        self.text = text
        self.issues: list[TaskFileIssue] = []

    def read(self) -> tuple[list[_Located], list[TaskFileIssue]]:
        tasks: list[_Located] = []
        width: int | None = None
        first_data_line = 0
        reader = csv.reader(io.StringIO(self.text, newline=""))
        end_of_previous = 0
        for record in reader:
            line = end_of_previous + 1
            end_of_previous = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            if width is None:
                if len(record) == 6 and self._is_header(record):
                    continue
                if len(record) not in (6, 8):
                    self._bad_width(line, record, None)
                    continue
                width, first_data_line = len(record), line
            elif len(record) != width:
                self._bad_width(line, record, (width, first_data_line))
                continue
            task = self._task(line, record)
            if task is not None:
                tasks.append((line, 1, task))
        return tasks, self.issues

    @staticmethod
    def _is_header(record: list[str]) -> bool:
        """Return True for a Migration Manager header row such as ``Source,...,Target Web,...``."""
        target = record[3].strip().lower()
        return record[0].strip().lower().startswith("source") and "://" not in target

    def _bad_width(self, line: int, record: list[str], expected: tuple[int, int] | None) -> None:
        """Report a row with the wrong number of columns at its first missing or extra column.

        ``expected`` is the width and line of the file's first row, None on the first row.
        """
        found = len(record)
        if expected is None:
            width = 6 if found < 6 else 8
            message = (f"expected 8 columns (SPMT) or 6 columns (Migration Manager), found {found}; "
                       "every column must be present, even when empty")
            if found == 1 and ";" in record[0]:
                message += ", and columns are separated by commas"
        else:
            width, first = expected
            kind = "SPMT" if width == 8 else "Migration Manager"
            message = (f"expected {width} columns like line {first} ({kind} format), found {found}; "
                       "every column must be present, even when empty")
        column = found + 1 if found < width else width + 1
        name = SPMT_COLUMNS[column - 1] if column <= width else "extra column"
        self.issues.append(TaskFileIssue(line, column, name, message))

    def _add(self, line: int, column: int, message: str) -> None:
        self.issues.append(TaskFileIssue(line, column, SPMT_COLUMNS[column - 1], message))

    def _task(self, line: int, record: list[str]) -> MigrationTask | None:
        found = len(self.issues)
        source, problem = _source_path(record[0], self.base)
        if problem:
            self._add(line, 1, problem)
        for column in (2, 3):
            if record[column - 1].strip():
                self._add(line, column, f"must be empty for a file share source; it applies to "
                          f"SharePoint Server sources only (found {record[column - 1].strip()!r})")
        site, problem = _site_url(record[3])
        if problem:
            self._add(line, 4, problem)
        library, problem = _library(record[4])
        if problem:
            self._add(line, 5, problem)
        folder, problem = _folder(record[5])
        if problem:
            self._add(line, 6, problem)
        for column in range(7, len(record) + 1):
            if record[column - 1].strip():
                self._add(line, column, "hub site registration and association apply to site "
                          "migrations only; leave this column empty for a file share source")
        if len(self.issues) > found or source is None or site is None or library is None \
                or folder is None:
            return None
        return MigrationTask(source, site, library, folder)


# -- JSON ---------------------------------------------------------------------------------------


class _Positions:
    """Offsets of every JSON object in a document, so keys can be given a line and column."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.spans: dict[int, tuple[int, int]] = {}  # id(dict) -> (offset of "{", offset after "}")

    def parse(self) -> Any:
        """Parse the document like ``json.loads``, recording where each object starts and ends."""
        decoder = json.JSONDecoder()
        parse_object: Callable[..., tuple[dict[str, Any], int]] = decoder.parse_object

        def recording_parse_object(s_and_end: tuple[str, int], *args: Any) -> tuple[dict[str, Any], int]:
            value, end = parse_object(s_and_end, *args)
            self.spans[id(value)] = (s_and_end[1] - 1, end)
            return value, end

        decoder.parse_object = recording_parse_object  # type: ignore[method-assign]
        # The C scanner calls its own object parser, so the pure Python one is needed here.
        decoder.scan_once = json.scanner.py_make_scanner(decoder)  # type: ignore[attr-defined]
        start = len(self.text) - len(self.text.lstrip())
        value, end = decoder.raw_decode(self.text, start)
        rest = self.text[end:]
        if rest.strip():
            raise json.JSONDecodeError("Extra data", self.text, end + len(rest) - len(rest.lstrip()))
        return value

    def line_column(self, offset: int) -> tuple[int, int]:
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return line, column

    def of_object(self, value: dict[str, Any]) -> tuple[int, int]:
        """Return the line and column of an object's ``{``."""
        return self.line_column(self.spans.get(id(value), (0, 0))[0])

    def of_key(self, value: dict[str, Any], key: str) -> tuple[int, int]:
        """Return the line and column of ``key`` in ``value``, outside nested objects."""
        start, end = self.spans.get(id(value), (0, 0))
        nested = [span for span in self.spans.values() if start < span[0] and span[1] <= end]
        pattern = re.compile(re.escape(json.dumps(key, ensure_ascii=False)) + r"\s*:")
        for match in pattern.finditer(self.text, start, end):
            if not any(inner_start <= match.start() < inner_end for inner_start, inner_end in nested):
                return self.line_column(match.start())
        return self.line_column(start)


class _JsonTaskReader:
    """Reader of the ``{"Tasks": [...]}`` task files of SPMT and Migration Manager."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.base = path.parent.resolve()
        self.positions = _Positions(text)
        self.issues: list[TaskFileIssue] = []
        # Storage account -> access key from the tasks' CustomAzureAccessKey (memory only).
        self.access_keys: dict[str, str] = {}

    def read(self) -> tuple[list[_Located], list[TaskFileIssue]]:
        try:
            document = self.positions.parse()
        except json.JSONDecodeError as error:
            return [], [TaskFileIssue(error.lineno, error.colno, "JSON", f"invalid JSON: {error.msg}")]
        if not isinstance(document, dict):
            return [], [TaskFileIssue(1, 1, "JSON", 'the file must contain an object {"Tasks": [...]}')]
        keys = self._keys(document, ("Tasks",), "top level")
        if "tasks" not in keys:
            return [], self.issues + [TaskFileIssue(1, 1, "Tasks", 'the key "Tasks" is missing; '
                                                    'write {"Tasks": [ ... ]}')]
        tasks_value = document[keys["tasks"]]
        if not isinstance(tasks_value, list):
            line, column = self.positions.of_key(document, keys["tasks"])
            return [], self.issues + [TaskFileIssue(line, column, "Tasks", '"Tasks" must be a list '
                                                    "of task objects")]
        tasks: list[_Located] = []
        for index, entry in enumerate(tasks_value):
            if not isinstance(entry, dict):
                line, column = self.positions.of_key(document, keys["tasks"])
                self.issues.append(TaskFileIssue(line, column, f"Tasks[{index}]",
                                                 f"task {index + 1} is not an object"))
                continue
            task = self._task(index, entry)
            if task is not None:
                line, column = self.positions.of_object(entry)
                tasks.append((line, column, task))
        return tasks, self.issues

    def _issue(self, value: dict[str, Any], key: str | None, name: str, message: str) -> None:
        if key is None:
            line, column = self.positions.of_object(value)
        else:
            line, column = self.positions.of_key(value, key)
        self.issues.append(TaskFileIssue(line, column, name, message))

    def _keys(self, value: dict[str, Any], known: tuple[str, ...], where: str) -> dict[str, str]:
        """Return ``{lower-case key: key as written}``, reporting unknown and repeated keys."""
        known_lower = {name.lower() for name in known}
        found: dict[str, str] = {}
        for key in value:
            lower = key.lower()
            if lower in found:
                self._issue(value, key, key, f"key {key!r} is given twice in the {where}")
            elif lower not in known_lower:
                self._issue(value, key, key, f"unknown key {key!r} in the {where}; known keys: "
                            f"{', '.join(known)}")
            else:
                found[lower] = key
        return found

    def _task(self, index: int, entry: dict[str, Any]) -> MigrationTask | None:
        where = f"Tasks[{index}]"
        found = len(self.issues)
        keys = self._keys(entry, JSON_TASK_KEYS, f"task {index + 1}")
        checks = (("SourcePath", lambda text: _source_path(text, self.base)),
                  ("TargetPath", _site_url), ("TargetList", _library),
                  ("TargetListRelativePath", _folder))
        values: dict[str, str | None] = {"TargetListRelativePath": ""}

        for name, check in checks:
            key = keys.get(name.lower())
            if key is None:
                if name != "TargetListRelativePath":
                    self._issue(entry, None, f"{where}.{name}", f"the key {name!r} is missing")
                continue
            if not isinstance(entry[key], str):
                self._issue(entry, key, f"{where}.{name}", f"{name} must be a string")
                continue
            values[name], problem = check(entry[key])
            if problem:
                self._issue(entry, key, f"{where}.{name}", problem)

        if "items" in keys:
            self._issue(entry, keys["items"], f"{where}.Items", "Items lists SharePoint Server lists "
                        "and subsites, but only file share sources are supported; remove it")
        if "migrationtype" in keys:
            kind = entry[keys["migrationtype"]]
            if not isinstance(kind, str) or kind.lower() != "content":
                self._issue(entry, keys["migrationtype"], f"{where}.MigrationType",
                            f"invalid MigrationType {kind!r}: only Content is supported")
        overrides: dict[str, Any] = {}
        if "settings" in keys:
            overrides = self._settings(entry[keys["settings"]], entry, keys["settings"], where)

        if len(self.issues) > found:
            return None
        return MigrationTask(values["SourcePath"] or "", values["TargetPath"] or "",
                             values["TargetList"] or "", values["TargetListRelativePath"] or "",
                             overrides)

    def _settings(self, value: Any, entry: dict[str, Any], key: str, where: str) -> dict[str, Any]:
        """Return a task's settings as Settings field names and values; reports every problem."""
        if not isinstance(value, dict):
            self._issue(entry, key, f"{where}.Settings", "Settings must be an object")
            return {}
        names = _setting_names()
        overrides: dict[str, Any] = {}
        seen: set[str] = set()
        access_key: tuple[str, Any] | None = None
        for written, raw in value.items():
            lower = written.lower()
            name = f"{where}.Settings.{written}"
            if lower in seen:
                self._issue(value, written, name, f"setting {written!r} is given twice")
                continue
            seen.add(lower)
            if lower == ACCESS_KEY_JSON:
                access_key = (written, raw)
                continue
            if lower in IGNORED_JSON_SETTINGS:
                log.info("task file %s: %s %s is ignored because %s", self.path, where, written,
                         IGNORED_JSON_SETTINGS[lower])
                continue
            if lower in UNSUPPORTED_JSON_SETTINGS:
                default, message = UNSUPPORTED_JSON_SETTINGS[lower]
                if default is None or raw not in (default, None):
                    self._issue(value, written, name, f"{written}: {message}")
                continue
            field_name = names.get(lower)
            if field_name is None:
                self._issue(value, written, name, f"unknown setting {written!r}; task settings: "
                            f"{', '.join(sorted(_json_keys()))}")
                continue
            problem = self._setting_value(field_name, raw, overrides)
            # Custom storage on without an account is checked with the session's settings,
            # which may name the account.
            if not problem and field_name in overrides and field_name != "custom_azure_storage":
                try:
                    Settings().with_overrides({field_name: overrides[field_name]})
                except SettingsError as error:
                    problem = str(error)
            if problem:
                self._issue(value, written, name, f"{written}: {problem}")
        if access_key is not None:
            self._access_key(value, where, access_key, overrides)
        return overrides

    def _access_key(self, value: dict[str, Any], where: str, entry: tuple[str, Any],
                    overrides: dict[str, Any]) -> None:
        """Hold a task's CustomAzureAccessKey for its account; messages never contain the key."""
        written, raw = entry
        name = f"{where}.Settings.{written}"
        account = overrides.get("custom_azure_account")
        if raw in (None, ""):
            return
        if not account:
            self._issue(value, written, name, f"{written} needs CustomAzureStorageAccount in the "
                        "same Settings, so the key is used for that account only")
            return
        try:
            key = check_key(account, raw)
        except SettingsError as error:
            self._issue(value, written, name, f"{written}: {error}")
            return
        if self.access_keys.get(account, key) != key:
            self._issue(value, written, name, f"{written}: another task gives a different key for "
                        f"storage account {account!r}; give each account one key")
            return
        self.access_keys[account] = key

    def _setting_value(self, field_name: str, raw: Any, overrides: dict[str, Any]) -> str:
        """Convert one setting into ``overrides``; return the problem, or "" when it is valid."""
        kinds = {
            "include_hidden": bool, "incremental": bool, "follow_symlinks": bool,
            "preserve_permissions": bool,
            "skip_extensions": str, "replace_invalid_char": str, "default_user": str,
            "user_mapping_file": str, "created_after": str, "modified_after": str,
            "custom_azure_storage": bool, "custom_azure_delete_after": bool,
            "custom_azure_account": str, "custom_azure_blob_endpoint": str,
            "custom_azure_queue_endpoint": str,
        }
        kind = kinds[field_name]
        if raw is None and field_name in ("replace_invalid_char", "default_user", "user_mapping_file",
                                          "created_after", "modified_after"):
            overrides[field_name] = None
            return ""
        if kind is bool and isinstance(raw, str) and raw.strip().lower() in ("true", "false"):
            raw = raw.strip().lower() == "true"
        if not isinstance(raw, kind):
            return f"expected {'true or false' if kind is bool else 'a string'}, found {json.dumps(raw)}"
        if field_name in ("created_after", "modified_after"):
            try:
                overrides[field_name] = parse_time(raw)
            except SettingsError as error:
                return str(error)
            return ""
        if field_name == "user_mapping_file":
            path = Path(raw).expanduser()
            path = path if path.is_absolute() else self.base / path
            try:
                load_user_mapping(path)
            except UserMappingError as error:
                return "; ".join(str(issue) for issue in error.issues) + f" (in {path})"
            overrides[field_name] = path
            return ""
        overrides[field_name] = raw
        return ""


def _setting_names() -> dict[str, str]:
    """Return ``{lower-case JSON key or field name: Settings field name}`` for per-task settings."""
    names: dict[str, str] = {}
    for item in dataclasses.fields(Settings):
        if item.name in TASK_SETTINGS:
            names[item.name.lower()] = item.name
            if item.metadata.get("json_key"):
                names[item.metadata["json_key"].lower()] = item.name
    return names


def _json_keys() -> list[str]:
    return [item.metadata.get("json_key") or item.name for item in dataclasses.fields(Settings)
            if item.name in TASK_SETTINGS]
