"""UI preferences kept between runs in ``$XDG_CONFIG_HOME/spmt-tui/ui.json``.

Only presentation choices live here (the theme name); never a URL with a secret, a password
or a token.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger("spmt.tui.prefs")


def prefs_path() -> Path:
    """Return the preferences file path (``~/.config/spmt-tui/ui.json`` when XDG is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "spmt-tui" / "ui.json"


@dataclass
class UiPrefs:
    theme: str | None = None


def load_prefs(path: Path | None = None) -> UiPrefs:
    """Read the preferences; a missing or unreadable file gives the defaults (logged)."""
    path = path or prefs_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return UiPrefs()
    except (OSError, ValueError) as error:
        log.warning("ignoring UI preferences %s: %s", path, error)
        return UiPrefs()
    theme = data.get("theme") if isinstance(data, dict) else None
    return UiPrefs(theme=theme if isinstance(theme, str) else None)


def save_prefs(prefs: UiPrefs, path: Path | None = None) -> None:
    """Write the preferences atomically; a failure is logged, because it must not stop the UI."""
    path = path or prefs_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(json.dumps(asdict(prefs), indent=2) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    except OSError as error:
        log.warning("cannot save UI preferences to %s: %s", path, error)
