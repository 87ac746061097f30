"""Name, path and size rules that the sandbox import job enforces, as SharePoint Online does.

The sandbox checks these on the server side, independently of any client-side scanner. A
client that lets a bad name through gets the same per-item error from the sandbox as from the
service.
Where the published rules are uncertain, the sandbox accepts the item (see the constants).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Whole decoded server-relative path (site + library + folders + name), counted on the literal
# characters (a space counts as one character, not as "%20"). Microsoft's troubleshooting text
# also writes "fewer than 400", so exactly 400 is ambiguous. The sandbox accepts 400.
MAX_PATH_LENGTH = 400

# 250 GB per file. Whether GB means 10^9 or 2^30 bytes is not stated, so the sandbox takes the
# larger reading.
MAX_FILE_SIZE = 250 * 1024**3

# Characters SharePoint Online rejects anywhere in a file or folder name.
INVALID_NAME_CHARACTERS = frozenset('"*:<>?/\\|')

# DOS device names, rejected case-insensitively with or without an extension ("CON.txt").
DEVICE_NAMES = frozenset(
    ["CON", "PRN", "AUX", "NUL"]
    + [f"COM{digit}" for digit in range(10)]
    + [f"LPT{digit}" for digit in range(10)]
)

# Whole names rejected case-insensitively.
RESERVED_NAMES = frozenset([".lock", "desktop.ini"])

# Only the ASCII space is rejected at the start or end of a name. The service accepts an
# ideographic space (U+3000) at the start.
_EDGE_SPACE = " "

# NOTE: some clients and third-party summaries also reject names ending in a period, folder names
# ending in "_files" (thicket folders), names longer than 255 characters and control characters.
# None of these is confirmed for the Migration API, so the sandbox accepts them.

_VTI = re.compile("_vti_", re.IGNORECASE)


@dataclass(frozen=True)
class RuleViolation:
    """A rejected name, path or size: ``code`` is stable for tests, ``message`` is for people."""

    code: str
    message: str


def check_name(name: str, *, is_folder: bool, at_library_root: bool = False) -> RuleViolation | None:
    """Return the first rule that ``name`` (one path segment) breaks, or None when it is valid."""
    kind = "folder" if is_folder else "file"
    if not name:
        return RuleViolation("empty_name", f"The {kind} name is empty.")
    if name in (".", ".."):
        return RuleViolation("reserved_name", f"The {kind} name '{name}' is not allowed.")
    invalid = sorted({char for char in name if char in INVALID_NAME_CHARACTERS})
    if invalid:
        return RuleViolation(
            "invalid_character",
            f"The {kind} name '{name}' contains characters that are not allowed: {' '.join(invalid)}",
        )

    if name.startswith(_EDGE_SPACE) or name.endswith(_EDGE_SPACE):
        return RuleViolation(
            "edge_space", f"The {kind} name '{name}' starts or ends with a space, which is not allowed."
        )

    lowered = name.lower()
    if lowered in RESERVED_NAMES:
        return RuleViolation("reserved_name", f"The {kind} name '{name}' is reserved.")
    root = name.split(".", 1)[0].upper()
    if root in DEVICE_NAMES:
        return RuleViolation("reserved_name", f"The {kind} name '{name}' is a reserved device name.")

    if name.startswith("~$"):
        return RuleViolation("reserved_name", f"Names starting with '~$' are not allowed: '{name}'.")
    if is_folder and name.startswith("~"):
        return RuleViolation("reserved_name", f"Folder names starting with '~' are not allowed: '{name}'.")
    if _VTI.search(name):
        return RuleViolation("reserved_name", f"The {kind} name '{name}' contains '_vti_', which is not allowed.")
    if is_folder and at_library_root and lowered == "forms":
        return RuleViolation(
            "reserved_name", "A folder named 'forms' is not allowed at the root of a library."
        )
    return None


def check_path(server_relative_url: str) -> RuleViolation | None:
    """Return a violation when the server-relative path is longer than ``MAX_PATH_LENGTH``."""
    length = len(server_relative_url)
    if length > MAX_PATH_LENGTH:
        return RuleViolation(
            "path_too_long",
            f"The path is {length} characters long; the limit is {MAX_PATH_LENGTH}: {server_relative_url}",
        )
    return None


def check_size(size: int) -> RuleViolation | None:
    """Return a violation when a file of ``size`` bytes is larger than ``MAX_FILE_SIZE``."""
    if size > MAX_FILE_SIZE:
        return RuleViolation(
            "file_too_large", f"The file is {size} bytes; the limit is {MAX_FILE_SIZE} bytes."
        )
    return None
