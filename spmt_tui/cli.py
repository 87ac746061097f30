"""Command line of spmt-tui. With no command it opens the terminal UI."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from spmt_tui import __version__
from spmt_tui.logs import configure_logging


def _add_sandbox(commands: argparse._SubParsersAction) -> None:
    from spmt_tui.sandbox.faults import FAULT_KINDS

    kinds = "; ".join(f"{kind}: {text}" for kind, text in FAULT_KINDS.items())
    sandbox = commands.add_parser(
        "sandbox",
        help="run the local sandbox tenant (SharePoint Online emulator on Azurite)",
        description="Run a local SharePoint Online tenant with the Import Migration API over "
        "HTTPS on 127.0.0.1, backed by Azurite. Prints 'ready <site-url>' when it listens and "
        "writes DIR/tenant.json, the tenant profile that clients pass to --tenant-profile.",
    )
    sandbox.add_argument("--data", type=Path, default=Path(".demo/tenant"),
                         help="folder for the tenant's database, content, CA and Azurite data "
                         "(default: %(default)s)")
    sandbox.add_argument("--port", type=int, default=8443,
                         help="HTTPS port on 127.0.0.1; Azurite takes the next two ports "
                         "(default: %(default)s)")
    sandbox.add_argument("--faults", default="",
                         help=f"comma-separated kind=rate pairs, rate from 0 to 1, e.g. "
                         f"429=0.1,503=0.05,drop=0.02. Kinds: {kinds}. A storage_* kind starts "
                         "a proxy in front of Azurite that the handed-out SAS URIs name, and only "
                         "requests signed with a SAS (the client's) are faulted; give a rate of 0 "
                         "to start it without faults")
    sandbox.add_argument("--fault-seed", type=int, default=None,
                         help="seed of the fault schedule's random numbers, for repeatable runs")
    sandbox.add_argument("--azurite-url", default=None,
                         help="blob endpoint of an Azurite that is already running, e.g. "
                         "https://127.0.0.1:10000/devstoreaccount1 (its queue endpoint is taken "
                         "as the next port unless --azurite-queue-url is given)")
    sandbox.add_argument("--azurite-queue-url", default=None, help="queue endpoint of that Azurite")
    sandbox.add_argument("--site", action="append", default=[], metavar="URL",
                         help="create another site collection, e.g. /sites/finance (repeatable); "
                         "each gets a library Documents")
    sandbox.add_argument("--library", action="append", default=[], metavar="SITE=TITLE",
                         help="create a document library, e.g. /sites/demo=Archive (repeatable)")
    sandbox.add_argument("--import-delay", type=float, default=2.0,
                         help="seconds between JobQueued and JobStart (default: %(default)s)")
    sandbox.add_argument("--token-lifetime", type=int, default=3600,
                         help="access token lifetime in seconds (default: %(default)s)")
    sandbox.add_argument("--sas-lifetime", type=int, default=None, metavar="SECONDS",
                         help="container SAS lifetime (default: 3 days, as SharePoint Online)")
    sandbox.add_argument("--container-retention", type=float, default=None, metavar="SECONDS",
                         help="purge provisioned containers this long after creation, unless an "
                              "unfinished job reads them (default: 30 days; SharePoint Online "
                              "purges them after 30 to 90 days)")
    sandbox.add_argument("--slow-seconds", type=float, default=2.0,
                         help="delay of a call hit by the 'slow' fault (default: %(default)s)")
    sandbox.add_argument("-v", "--verbose", action="store_true", help="log every request")
    sandbox_commands = sandbox.add_subparsers(dest="sandbox_command")
    export = sandbox_commands.add_parser(
        "export", help="write a library as a folder tree with the stored Modified times")
    export.add_argument("--data", type=Path, required=True, help="the sandbox's data folder")
    export.add_argument("--library", required=True, help="library title, e.g. Documents")
    export.add_argument("--site", default="/sites/demo", help="site URL (default: %(default)s)")
    export.add_argument("out", type=Path, help="folder to write into")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spmt-tui",
        description="Migrate file shares into SharePoint Online from a terminal. "
        "Without a command, opens the terminal UI.",
    )
    parser.add_argument("--version", action="version", version=f"spmt-tui {__version__}")
    ui = parser.add_argument_group("terminal UI (when no command is given)")
    ui.add_argument("--tenant-profile", type=Path, default=None,
                    help="tenant profile to sign in with (the sandbox writes DIR/tenant.json)")
    ui.add_argument("--source", default=None, help="pre-fill the source folder of a new migration")
    ui.add_argument("--theme", default=None, help="colour theme (dark, light, high-contrast)")
    ui.add_argument("--working-folder", type=Path, default=None,
                    help="folder for sessions, logs and reports (default: the per-user data folder)")
    commands = parser.add_subparsers(dest="command")
    _add_sandbox(commands)
    try:
        from spmt_tui.engine.cli import add_commands as add_engine_commands
    except ImportError:
        pass
    else:
        add_engine_commands(commands)
    try:
        from spmt_tui.auth.cli import add_commands as add_auth_commands
    except ImportError:
        pass
    else:
        add_auth_commands(commands)
    try:
        from spmt_tui.tui.cli import add_commands as add_tui_commands
    except ImportError:
        pass
    else:
        add_tui_commands(commands)
    return parser


def _sandbox_option_problem(args: argparse.Namespace) -> str | None:
    """Return what is wrong with the sandbox's options, or None."""
    if not 1 <= args.port <= 65533:
        return f"invalid --port {args.port}: use 1 to 65533 (Azurite takes the two ports after it)"
    if args.token_lifetime < 1:
        return f"invalid --token-lifetime {args.token_lifetime}: use a number of seconds, 1 or more"
    if not args.import_delay >= 0:
        return f"invalid --import-delay {args.import_delay}: use 0 or more seconds"
    if args.sas_lifetime is not None and args.sas_lifetime < 1:
        return f"invalid --sas-lifetime {args.sas_lifetime}: use 1 or more seconds"
    if args.container_retention is not None and not args.container_retention >= 1:
        return f"invalid --container-retention {args.container_retention}: use 1 or more seconds"
    if not args.slow_seconds >= 0:
        return f"invalid --slow-seconds {args.slow_seconds}: use 0 or more seconds"
    for site in args.site:
        if not site.startswith("/") or site.rstrip("/") in ("", "/sites") or " " in site:
            return f"invalid --site {site!r}: give a server-relative URL such as /sites/finance"
    return None


def _run_sandbox(args: argparse.Namespace) -> int:
    from spmt_tui.sandbox.faults import FaultSpecError, parse_fault_spec

    if args.sandbox_command == "export":
        from spmt_tui.sandbox.export import ExportError, export_library

        try:
            result = export_library(args.data, args.library, args.out, site_url=args.site)
        except ExportError as error:
            print(f"spmt-tui sandbox export: {error}", file=sys.stderr)
            return 2
        print(f"exported {result.files} files ({result.bytes} bytes) and {result.folders} "
              f"folders to {args.out}")
        return 0
    try:
        faults = parse_fault_spec(args.faults)
    except FaultSpecError as error:
        print(f"spmt-tui sandbox: --faults: {error}", file=sys.stderr)
        return 2
    problem = _sandbox_option_problem(args)
    if problem:
        print(f"spmt-tui sandbox: {problem}", file=sys.stderr)
        return 2
    from spmt_tui.sandbox.server import SandboxOptions, run_sandbox

    configure_logging(level=logging.DEBUG if args.verbose else logging.INFO,
                      log_file=args.data / "sandbox.log", stderr=args.verbose)
    options = SandboxOptions(
        data_dir=args.data,
        port=args.port,
        faults=faults,
        fault_seed=args.fault_seed,
        azurite_url=args.azurite_url,
        azurite_queue_url=args.azurite_queue_url,
        sites=args.site,
        libraries=args.library,
        import_delay=args.import_delay,
        token_lifetime=args.token_lifetime,
        sas_lifetime_seconds=args.sas_lifetime,
        container_retention_seconds=args.container_retention,
        slow_seconds=args.slow_seconds,
    )
    from spmt_tui.sandbox.azurite import AzuriteError

    try:
        return asyncio.run(run_sandbox(options))
    except KeyboardInterrupt:
        return 130
    except (AzuriteError, OSError) as error:
        print(f"spmt-tui sandbox: {error}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sandbox":
        return _run_sandbox(args)
    if args.command is None:
        try:
            from spmt_tui.tui.cli import run_app
        except ImportError:
            parser.print_help()
            return 2
        return run_app(args)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    return int(handler(args) or 0)
