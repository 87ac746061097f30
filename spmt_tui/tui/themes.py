"""Load the colour themes in ``themes/*.toml`` into Textual ``Theme`` objects.

A theme file contains the fields of ``textual.theme.Theme`` as top-level keys and extra CSS
variables in a ``[variables]`` table. The variables the stylesheet relies on (the item state
colours) get defaults, so a theme file that leaves them out still renders.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path
from typing import Any

from textual.color import Color, ColorParseError
from textual.theme import Theme

log = logging.getLogger("spmt.tui.themes")

THEMES_DIR = Path(__file__).resolve().parent / "theme_files"
"""Folder of the theme files shipped with the package (package data in the wheel).

``themes/`` at the repository root is a symbolic link to this folder.
"""

DEFAULT_THEME = "spmt-dark"

THEME_ALIASES = {"dark": "spmt-dark", "light": "spmt-light", "high-contrast": "spmt-high-contrast"}
"""Short names accepted by ``--theme``."""


def resolve_theme_name(name: str) -> str:
    """Return the registered theme name for ``name`` or one of its short aliases."""
    return THEME_ALIASES.get(name, name)


STATE_VARIABLE_DEFAULTS = {
    "state-pending": "#8b93a1",
    "state-active": "#56b6f2",
    "state-migrated": "#4fbf73",
    "state-skipped": "#c8a44a",
    "state-failed": "#ff6b62",
}
"""CSS variables that the item-state colours in ``app.tcss`` and the file list need."""

_COLOR_FIELDS = ("primary", "secondary", "warning", "error", "success", "accent", "foreground",
                 "background", "surface", "panel", "boost")
_NUMBER_FIELDS = ("luminosity_spread", "text_alpha")


class ThemeFileError(ValueError):
    """A theme file is missing, is not valid TOML, or has an invalid key or colour."""


def theme_from_mapping(data: dict[str, Any], source: str) -> Theme:
    """Build a ``Theme`` from the parsed content of a theme file; ``source`` names it in errors."""
    known = {item.name for item in dataclasses.fields(Theme)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ThemeFileError(
            f"unknown key(s) {', '.join(unknown)} in theme {source}; known: {', '.join(sorted(known))}")
    if not data.get("name") or not data.get("primary"):
        raise ThemeFileError(f"theme {source} needs both 'name' and 'primary'")
    for key in _COLOR_FIELDS:
        if key in data:
            _check_color(data[key], key, source)
    for key in _NUMBER_FIELDS:
        if key in data and not isinstance(data[key], (int, float)):
            raise ThemeFileError(f"invalid {key} {data[key]!r} in theme {source}: use a number")
    variables = dict(STATE_VARIABLE_DEFAULTS)
    for key, value in (data.get("variables") or {}).items():
        variables[str(key)] = str(value)
    arguments = {key: value for key, value in data.items() if key != "variables"}
    return Theme(variables=variables, **arguments)


def _check_color(value: Any, key: str, source: str) -> None:
    try:
        Color.parse(str(value))
    except ColorParseError:
        raise ThemeFileError(
            f"invalid colour {value!r} for {key} in theme {source}: use #rrggbb or a CSS colour name"
        ) from None


def load_theme_file(path: Path) -> Theme:
    """Read one theme file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ThemeFileError(f"theme file {path} not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ThemeFileError(f"invalid TOML in theme file {path}: {error}") from None
    return theme_from_mapping(data, str(path))


def load_themes(folder: Path = THEMES_DIR) -> dict[str, Theme]:
    """Read every ``*.toml`` in ``folder``; a broken file is logged and left out."""
    themes: dict[str, Theme] = {}
    for path in sorted(folder.glob("*.toml")):
        try:
            theme = load_theme_file(path)
        except ThemeFileError as error:
            log.warning("theme not loaded: %s", error)
            continue
        themes[theme.name] = theme
    if DEFAULT_THEME not in themes:
        # A damaged installation or a ``folder`` without the default theme gets here. The
        # fallback keeps the app usable with one plain dark theme.
        log.warning("theme %s not found in %s; using a built-in fallback", DEFAULT_THEME, folder)
        themes[DEFAULT_THEME] = Theme(name=DEFAULT_THEME, primary="#3b8eea",
                                      variables=dict(STATE_VARIABLE_DEFAULTS))
    return themes
