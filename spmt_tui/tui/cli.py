"""Command-line entry of the terminal UI.

``spmt-tui`` without a command calls ``run_app``; ``spmt-tui ui`` does the same and accepts
the UI options and every setting flag. ``add_arguments`` defines the UI options on any parser
(the top-level parser uses it for ``spmt-tui --theme NAME``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from spmt_tui.engine.settings import SettingsError, add_arguments as add_setting_arguments
from spmt_tui.engine.settings import load_config, settings_from_args


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Define ``--theme``, ``--tenant-profile``, ``--source`` and ``--config`` on ``parser``."""
    parser.add_argument("--theme", default=None, metavar="NAME",
                        help="colour theme: dark (default), light, high-contrast, or the name of any "
                             "Textual theme; the last choice is remembered")
    parser.add_argument("--tenant-profile", type=Path, default=None, metavar="FILE",
                        help="tenant profile (tenant.json) that pre-fills the sign-in step")
    parser.add_argument("--source", default=None, metavar="FOLDER",
                        help="pre-fill the source folder of a new migration")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="TOML file with default settings (default: "
                             "$XDG_CONFIG_HOME/spmt-tui/config.toml)")


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add ``spmt-tui ui``."""
    parser = commands.add_parser(
        "ui", help="open the terminal UI (the same as running spmt-tui without a command)",
        description="Open the terminal UI. Setting flags pre-fill the Settings step.")
    add_arguments(parser)
    add_setting_arguments(parser)
    parser.set_defaults(handler=run_app)


def run_app(args: argparse.Namespace) -> int:
    """Run the Textual app until the user quits; return the exit code."""
    from spmt_tui.logs import configure_logging
    from spmt_tui.tui.app import SpmtApp
    from spmt_tui.tui.themes import load_themes

    try:
        settings = settings_from_args(args, load_config(getattr(args, "config", None)))
    except SettingsError as error:
        print(f"spmt-tui: {error}", file=sys.stderr)
        return 2
    theme = getattr(args, "theme", None)
    if theme:
        from textual.theme import BUILTIN_THEMES

        from spmt_tui.tui.themes import resolve_theme_name

        theme = resolve_theme_name(theme)
        known = sorted(set(load_themes()) | set(BUILTIN_THEMES))
        if theme not in known:
            print(f"spmt-tui: unknown theme {theme!r}; choose one of {', '.join(known)}", file=sys.stderr)
            return 2
    profile = getattr(args, "tenant_profile", None)
    if profile is not None and not Path(profile).exists():
        print(f"spmt-tui: tenant profile {profile} not found", file=sys.stderr)
        return 2
    # The screen belongs to Textual, so log records go to a file only, never to stderr.
    configure_logging(level=logging.INFO, log_file=Path(settings.working_folder) / "logs" / "tui.log",
                      stderr=False)
    app = SpmtApp(theme_name=theme, tenant_profile=profile, settings=settings,
                  source=getattr(args, "source", None))
    return int(app.run() or 0)
