"""Command-line front end of the engine: ``migrate``, ``sessions`` and ``resume``."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from spmt_tui.engine.settings import Settings, SettingsError, add_arguments, load_config, settings_from_args

AUTH_METHODS = ("device-code", "certificate", "password", "account")


def add_commands(commands: argparse._SubParsersAction) -> None:
    migrate = commands.add_parser(
        "migrate",
        help="migrate a folder into a SharePoint Online document library",
        description="Scan SOURCE, package it, encrypt and upload it, and import it through the "
        "Migration API into the library, following every job to its end. Exit status 0 when every "
        "item migrated or was skipped by a rule.",
    )
    migrate.add_argument("source", nargs="?", help="folder to migrate (a local path or a mounted share)")
    migrate.add_argument("--site", help="destination site URL, e.g. https://contoso.sharepoint.com/sites/x "
                         "(default: the tenant profile's site_url)")
    migrate.add_argument("--library", default="Documents",
                         help="destination document library title (default: %(default)s)")
    migrate.add_argument("--folder", default="", help="folder inside the library, created if missing")
    migrate.add_argument("--tasks", type=Path,
                         help="bulk task file instead of SOURCE: SPMT CSV (8 columns), Migration "
                         "Manager CSV (6 columns) or JSON with per-task Settings; --site, --library "
                         "and --folder do not apply")
    add_arguments(migrate)
    _add_common(migrate)
    migrate.set_defaults(handler=run_migrate)

    sessions = commands.add_parser(
        "sessions", help="list migration sessions with their state",
        description="List the sessions in the working folder. With --tenant-profile (and the sign-in "
        "options), also list the sessions mirrored in the tenant that this working folder does not "
        "have, marked remote with the machine that ran them last.")
    sessions.add_argument("--working-folder", type=Path, default=None,
                          help="folder that contains the sessions (default: the per-user data folder)")
    _add_common(sessions, uploads=False)
    sessions.set_defaults(handler=run_sessions)

    resume = commands.add_parser(
        "resume", help="resume an interrupted session",
        description="Resume a session of the working folder. A session that only the tenant's mirror "
        "has (it ran on another machine) is rebuilt here when --tenant-profile is given: its "
        "submitted jobs are followed to their end, then an incremental round migrates what is missing.")
    resume.add_argument("session", nargs="?",
                        help="session id (default: the most recent interrupted session)")
    resume.add_argument("--source-map", action="append", metavar="OLD=NEW",
                        help="for a session rebuilt from the tenant: read sources under the absolute "
                        "path OLD from NEW on this machine (repeatable)")
    resume.add_argument("--take-over", action="store_true",
                        help="rebuild a mirrored session even though its mirror item reports it running "
                        "on another machine (use when that machine is down)")
    _add_common(resume)
    resume.set_defaults(handler=run_resume)


def _add_common(parser: argparse.ArgumentParser, *, uploads: bool = True) -> None:
    parser.add_argument("--tenant-profile", type=Path,
                        help="tenant profile JSON (the sandbox writes DIR/tenant.json)")
    parser.add_argument("--auth", choices=AUTH_METHODS, default=None,
                        help="sign-in method: device-code (default for people), certificate "
                        "(app-only, unattended), password (legacy; MFA tenants reject it), account "
                        "(an account saved by `spmt-tui login`)")
    parser.add_argument("--certificate", type=Path,
                        help="PEM or PFX for --auth certificate (default: the profile's app certificate)")
    parser.add_argument("--certificate-passphrase-env", metavar="VAR",
                        help="environment variable that contains the certificate's passphrase")
    parser.add_argument("--username", help="user for --auth password (default: the profile's user)")
    parser.add_argument("--password-env", metavar="VAR",
                        help="environment variable that contains the password for --auth password")
    parser.add_argument("--account", help="saved account name for --auth account")
    parser.add_argument("--token-cache", choices=("auto", "keyring", "encrypted-file", "plaintext-file", "memory"),
                        default="auto",
                        help="where to keep tokens between runs: auto (the OS keyring, else a file "
                        "encrypted with SPMT_TUI_CACHE_PASSPHRASE, else memory only), keyring, "
                        "encrypted-file, plaintext-file (unencrypted) or memory (default: auto)")
    parser.add_argument("--config", type=Path, help="TOML file with default settings")
    if uploads:
        parser.add_argument("--remember-custom-azure-key", action="store_true",
                            help="save the access key of the custom Azure storage account in the OS "
                            "keyring (or the file encrypted with SPMT_TUI_CACHE_PASSPHRASE) for later "
                            "runs; without it a key typed at the prompt is kept for this run only")
    if not any(a.dest == "working_folder" for a in parser._actions):
        parser.add_argument("--working-folder", type=Path, default=None,
                            help="folder for sessions, logs and reports")


def _profile_dict(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text(encoding="utf-8"))


def _check_working_folder(folder: Path) -> None:
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SettingsError(f"invalid --working-folder {folder}: it cannot be created "
                            f"({error.strerror or error}); choose a folder you can write to") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SettingsError(f"invalid --working-folder {folder}: it is not writable by this account")


def _sign_in_record(args: argparse.Namespace, profile_path: Path | None) -> dict[str, Any]:
    """Return how this run signs in, for the session to store; it never contains a secret."""
    method = args.auth or ("account" if profile_path is None else "device-code")
    record: dict[str, Any] = {"method": method}
    for name in ("username", "password_env", "certificate", "certificate_passphrase_env", "account",
                 "token_cache"):
        value = getattr(args, name, None)
        if value is not None:
            record[name] = str(value)
    return record


def _apply_sign_in_record(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """Fill the sign-in options a resume was not given from the session's stored record."""
    if args.auth is not None or not record:
        return
    args.auth = record.get("method")
    for name in ("username", "password_env", "certificate_passphrase_env", "account", "token_cache"):
        if getattr(args, name, None) in (None, "auto") and record.get(name):
            setattr(args, name, record[name])
    if args.certificate is None and record.get("certificate"):
        args.certificate = Path(record["certificate"])


def make_credentials(args: argparse.Namespace, profile_path: Path | None) -> Any:
    """Build the token provider that the arguments ask for."""
    from spmt_tui.auth.cache import CacheStoreError, MemoryStore, choose_store
    from spmt_tui.auth.tokens import (
        AuthSettings,
        CertificateProvider,
        DeviceCodeProvider,
        UsernamePasswordProvider,
    )

    method = args.auth or ("account" if profile_path is None else "device-code")
    if method == "account":
        from spmt_tui.auth.commands import provider_for_account

        return provider_for_account(args.account)
    if profile_path is None:
        raise SettingsError(f"--auth {method} needs --tenant-profile")
    profile = _profile_dict(profile_path)
    choice = getattr(args, "token_cache", "auto") or "auto"
    try:
        store = choose_store(choice)
    except CacheStoreError as error:
        if choice != "auto":
            raise SettingsError(f"--token-cache {choice}: {error}") from None
        print("spmt-tui: no secure token cache is available, so tokens are kept in memory for "
              "this run only (use --token-cache to choose a store)", file=sys.stderr)
        store = MemoryStore()
    if method == "certificate":
        settings = AuthSettings.from_profile(profile, app_only=True, profile_dir=profile_path.parent)
        certificate = args.certificate or Path((profile.get("app") or {}).get("certificate", ""))
        if not str(certificate):
            raise SettingsError("--auth certificate needs --certificate or app.certificate in the profile")
        passphrase = None
        if args.certificate_passphrase_env:
            passphrase = os.environ.get(args.certificate_passphrase_env)
            if passphrase is None:
                raise SettingsError(f"--certificate-passphrase-env {args.certificate_passphrase_env}: "
                                    "that environment variable is not set")
        return CertificateProvider(settings, certificate, passphrase=passphrase, store=store)
    settings = AuthSettings.from_profile(profile, profile_dir=profile_path.parent)
    if method == "password":
        user = profile.get("user") or {}
        username = args.username or user.get("username")
        if not username:
            raise SettingsError("--auth password needs --username or user.username in the profile")
        if args.password_env:
            password = os.environ.get(args.password_env)
            if password is None:
                raise SettingsError(f"--password-env {args.password_env}: that environment variable "
                                    "is not set; export it with the password first")
        else:
            password = user.get("password")
        return UsernamePasswordProvider(settings, username, password, store=store)

    def show(prompt: Any) -> None:
        print(f"\nTo sign in, open {prompt.verification_uri} and enter the code {prompt.user_code}\n",
              file=sys.stderr, flush=True)

    return DeviceCodeProvider(settings, show, store=store)


class _Printer:
    """Progress on the terminal: one live block on a TTY, a plain line every few seconds otherwise."""

    def __init__(self, migration: Any) -> None:
        self.migration = migration
        self.tty = sys.stderr.isatty()
        self.interval = 0.5 if self.tty else 5.0
        self._lines = 0

    def line(self) -> str:
        snap = self.migration.stats.snapshot()
        c = snap.counts
        rate = snap.rate_bytes / 2**20
        eta = f" eta {snap.eta_seconds:.0f}s" if snap.eta_seconds else ""
        throttled = f" throttled {snap.throttled}" if snap.throttled else ""
        # The message of a waiting phase (source gone, disk full) tells the user what to do, so it
        # comes first, where a terminal-wide line does not cut it off.
        waiting = f" {snap.message} |" if snap.phase.startswith("waiting") and snap.message else ""
        return (f"[{snap.phase}]{waiting} scanned {c['scanned']} packaged {c['packaged']} uploaded "
                f"{c['uploaded']} submitted {c['submitted']} migrated {c['migrated']} skipped "
                f"{c['skipped']} failed {c['failed']} | {snap.bytes_uploaded / 2**20:.1f} MiB "
                f"{rate:.1f} MiB/s jobs {snap.jobs_running}{throttled}{eta}")

    async def run(self) -> None:
        while True:
            self.print()
            await asyncio.sleep(self.interval)

    def print(self) -> None:
        text = self.line()
        if self.tty:
            sys.stderr.write("\r\x1b[2K" + text[: os.get_terminal_size(2).columns - 1])
        else:
            sys.stderr.write(time.strftime("%H:%M:%S ") + text + "\n")
        sys.stderr.flush()


async def _sign_in_on_terminal(credentials: Any) -> None:
    print("\nThe sign-in expired and could not be refreshed; sign in again to continue.",
          file=sys.stderr, flush=True)
    await credentials.sign_in()


async def _run_with_progress(migration: Any) -> Any:
    if sys.stdin.isatty() and getattr(migration.credentials, "kind", "user") == "user":
        migration.sign_in_handler = _sign_in_on_terminal
    printer = _Printer(migration)
    ticker = asyncio.create_task(printer.run())
    try:
        return await migration.run()
    finally:
        ticker.cancel()
        printer.print()
        if printer.tty:
            sys.stderr.write("\n")


def _resolve_storage_keys(settings: Settings, tasks: list[Any], *, remember: bool) -> None:
    """Find the access key of every custom storage account the tasks use, asking on a terminal.

    Keys stay in this process's memory (and in the keyring with ``remember``); they are never
    written to the session, a config file or a log.
    """
    import getpass

    from spmt_tui.engine.custom_storage import (
        MissingAccessKey,
        accounts_needing_keys,
        find_key,
        remember_key,
        save_key,
    )

    for account in accounts_needing_keys(settings, [task.settings for task in tasks]):
        found = find_key(account)
        if found is None:
            if not sys.stdin.isatty():
                raise MissingAccessKey(account)
            remember_key(account, getpass.getpass(
                f"Access key of storage account {account} (input hidden): "))
            found = find_key(account)
        if remember and found is not None:
            where = save_key(account, found[0])
            print(f"saved the access key of storage account {account} in {where}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    base = load_config(args.config) if getattr(args, "config", None) else load_config()
    return settings_from_args(args, base)


def _report(result: Any, migration: Any) -> int:
    counts = result.counts
    summary = ", ".join(f"{key} {counts.get(key, 0)}" for key in ("scanned", "migrated", "skipped", "failed"))
    print(f"{result.status}: {summary}")
    if result.message:
        print(result.message)
    print(f"session {migration.session_id}; reports in {result.report_dir}")
    return result.exit_code


def _check_flag_combinations(args: argparse.Namespace, settings: Settings) -> None:
    """Reject flags given on the command line that would have no effect with the others."""
    if getattr(args, "custom_azure_account", None) and not settings.custom_azure_storage:
        raise SettingsError(
            f"--custom-azure-account {args.custom_azure_account} has no effect while custom Azure "
            "storage is off: add --custom-azure-storage, or remove --custom-azure-account")
    if getattr(args, "preserve_permissions", None) and settings.user_mapping_file is None:
        raise SettingsError(
            "--preserve-permissions needs --user-mapping-file: owners and ACL entries are mapped to "
            "SharePoint users through it (without one every item would inherit)")


def run_migrate(args: argparse.Namespace) -> int:
    from spmt_tui.engine.migration import Migration, MigrationTask
    from spmt_tui.engine.tasks import TaskFileError, load_tasks
    from spmt_tui.engine.users import UserMappingError, load_user_mapping
    from spmt_tui.profile import ProfileError, load_profile

    try:
        settings = _settings(args)
        _check_flag_combinations(args, settings)
        if args.tenant_profile is None and args.auth != "account":
            raise SettingsError("--tenant-profile is required (the sandbox writes DIR/tenant.json)")
        profile = load_profile(args.tenant_profile) if args.tenant_profile else None
        if settings.user_mapping_file is not None:
            load_user_mapping(settings.user_mapping_file)
        if args.tasks:
            if args.source:
                raise SettingsError("give either a SOURCE folder or --tasks FILE, not both")
            tasks = load_tasks(args.tasks)
        else:
            if not args.source:
                raise SettingsError("give a SOURCE folder or --tasks FILE")
            site = args.site or (profile.site_url if profile else None)
            if not site:
                raise SettingsError("--site is required when the profile has no site_url")
            if not site.lower().startswith("https://") or len(site) <= len("https://"):
                raise SettingsError(f"invalid --site {site!r}: give the site's https URL, e.g. "
                                    "https://contoso.sharepoint.com/sites/finance")
            tasks = [MigrationTask(os.path.abspath(args.source), site, args.library, args.folder)]
        _check_working_folder(settings.working_folder)
        for task in tasks:
            settings.with_overrides(task.settings)
        _resolve_storage_keys(settings, tasks, remember=args.remember_custom_azure_key)
        credentials = make_credentials(args, args.tenant_profile)
        migration = Migration(tasks, settings, profile, credentials)
        migration.sign_in_method = _sign_in_record(args, args.tenant_profile)
    except (SettingsError, ProfileError, TaskFileError, UserMappingError) as error:
        print(f"spmt-tui migrate: {error}", file=sys.stderr)
        return 2
    print(f"session {migration.session_id}, log {migration.log_path}", file=sys.stderr)
    try:
        result = asyncio.run(_run_with_progress(migration))
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: spmt-tui resume {migration.session_id}", file=sys.stderr)
        return 130
    return _report(result, migration)


def run_sessions(args: argparse.Namespace) -> int:
    from spmt_tui.engine.sessions import list_sessions

    folder = args.working_folder or Settings().working_folder
    sessions = list_sessions(folder)
    remote = []
    if args.tenant_profile or args.auth:
        try:
            remote = _tenant_sessions(args)
        except _tenant_errors() as error:
            print(f"spmt-tui sessions: {error}", file=sys.stderr)
            return 2
        local = {info.id for info in sessions}
        remote = [session for session in remote if session.id not in local]
    if not sessions and not remote:
        print(f"no sessions in {folder}" + (" nor in the tenant's mirror" if args.tenant_profile else ""))
        return 0
    for info in sessions:
        counts = info.counts
        print(f"{info.id}  {info.status:<12} {info.created:%Y-%m-%d %H:%M}  migrated "
              f"{counts.get('migrated', 0)} failed {counts.get('failed', 0)}  {'; '.join(info.tasks)}")
    for session in remote:
        counts = session.counts
        when = f"{session.updated.astimezone():%Y-%m-%d %H:%M}" if session.updated else "?"
        print(f"{session.id}  {session.state:<12} {when}  migrated {counts.get('migrated', 0)} failed "
              f"{counts.get('failed', 0)}  {'; '.join(session.tasks)}  (remote, on {session.host})")
    return 0


def _tenant_sessions(args: argparse.Namespace, session_id: str | None = None) -> list[Any]:
    """Sign in with the arguments' sign-in options and return the sessions mirrored in the tenant."""
    from spmt_tui.engine.mirror import fetch_sessions
    from spmt_tui.profile import load_profile

    if args.tenant_profile is None:
        raise SettingsError("reading the sessions mirrored in the tenant needs --tenant-profile")
    profile = load_profile(args.tenant_profile)
    credentials = make_credentials(args, args.tenant_profile)
    return asyncio.run(fetch_sessions(profile, credentials, session_id))


def _tenant_errors() -> tuple[type[Exception], ...]:
    from spmt_tui.auth.tokens import AuthError, SignInRequired
    from spmt_tui.engine.mirror import MirrorError
    from spmt_tui.profile import ProfileError

    return (SettingsError, ProfileError, MirrorError, AuthError, SignInRequired)


def run_resume(args: argparse.Namespace) -> int:
    from spmt_tui.engine.migration import Migration
    from spmt_tui.engine.sessions import list_sessions
    from spmt_tui.profile import ProfileError, load_profile

    settings = Settings()
    if args.working_folder:
        settings.working_folder = args.working_folder
    sessions = list_sessions(settings.working_folder)
    if args.session:
        chosen = next((s for s in sessions if s.id == args.session), None)
        if chosen is None:
            if args.tenant_profile:
                return _resume_from_tenant(args, settings, args.session)
            print(f"spmt-tui resume: session {args.session} not found in {settings.working_folder}; "
                  "to resume it from the tenant's mirror, add --tenant-profile and the sign-in options",
                  file=sys.stderr)
            return 2
    else:
        candidates = [s for s in sessions if s.status in ("interrupted", "paused", "failed", "cancelled",
                                                          "stopped_after_scan")]
        if not candidates:
            if args.tenant_profile:
                return _resume_from_tenant(args, settings, None)
            print(f"spmt-tui resume: no interrupted session in {settings.working_folder}", file=sys.stderr)
            return 2
        chosen = candidates[0]
    if chosen.status == "running":
        print(f"spmt-tui resume: session {chosen.id} is running in process {chosen.pid}", file=sys.stderr)
        return 2
    if args.source_map:
        print(f"spmt-tui resume: --source-map applies only when a session is rebuilt from the tenant's "
              f"mirror; session {chosen.id} exists in {settings.working_folder} with its own sources "
              f"({'; '.join(chosen.tasks)}): remove --source-map", file=sys.stderr)
        return 2
    _apply_sign_in_record(args, Migration.stored_sign_in(settings.working_folder, chosen.id))
    profile_path = args.tenant_profile or (Path(chosen.profile_path) if chosen.profile_path else None)
    try:
        profile = load_profile(profile_path) if profile_path else None
        credentials = make_credentials(args, profile_path)
    except (SettingsError, ProfileError) as error:
        print(f"spmt-tui resume: {error}", file=sys.stderr)
        return 2
    migration = Migration.open_session(chosen.id, settings, profile, credentials)
    migration.sign_in_method = _sign_in_record(args, profile_path)
    migration.take_over = args.take_over
    try:
        _resolve_storage_keys(migration.settings, migration.tasks, remember=args.remember_custom_azure_key)
    except SettingsError as error:
        print(f"spmt-tui resume: {error}", file=sys.stderr)
        return 2
    print(f"resuming session {chosen.id}", file=sys.stderr)
    return _run_resumed(migration)


def _run_resumed(migration: Any) -> int:
    try:
        result = asyncio.run(_run_with_progress(migration))
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: spmt-tui resume {migration.session_id}", file=sys.stderr)
        return 130
    return _report(result, migration)


def _resume_from_tenant(args: argparse.Namespace, settings: Settings, session_id: str | None) -> int:
    """Rebuild a session that only the tenant's mirror has, then resume it."""
    from spmt_tui.engine.migration import Migration
    from spmt_tui.engine.sessions import list_sessions
    from spmt_tui.engine.mirror import (
        LIST_TITLE,
        RESUMABLE_STATES,
        MirrorError,
        check_resumable,
        map_source,
        parse_source_map,
        rebuild_session,
    )
    from spmt_tui.profile import load_profile

    try:
        source_map = parse_source_map(args.source_map)
        remote = _tenant_sessions(args, session_id)
        local = {session.id for session in list_sessions(settings.working_folder)}
        if session_id is None:
            # A session this working folder has is resumed from its own database, never rebuilt.
            remote = [session for session in remote
                      if session.state in RESUMABLE_STATES and session.id not in local]
        if not remote:
            subject = f"session {session_id}" if session_id else "an interrupted session"
            raise MirrorError(f"{subject} was found neither in {settings.working_folder} nor in the list "
                              f"{LIST_TITLE!r} of the tenant profile's site")
        chosen = remote[0]
        sources = [str(task["source"]) for task in chosen.record.get("tasks") or []]
        for old, _new in source_map:
            if not any(map_source(source, [(old, "/")]) != source for source in sources):
                raise MirrorError(f"--source-map {old}=... matches no source of session {chosen.id} "
                                  f"(its sources: {'; '.join(sources)})")
        check_resumable(chosen, take_over=args.take_over)
        _check_working_folder(settings.working_folder)
        rebuild_session(chosen, settings.working_folder, args.tenant_profile, source_map)
        profile = load_profile(args.tenant_profile)
        credentials = make_credentials(args, args.tenant_profile)
        migration = Migration.open_session(chosen.id, settings, profile, credentials)
        migration.sign_in_method = _sign_in_record(args, args.tenant_profile)
        migration.take_over = True  # check_resumable above decided that this machine takes over
        _resolve_storage_keys(migration.settings, migration.tasks, remember=args.remember_custom_azure_key)
    except _tenant_errors() as error:
        print(f"spmt-tui resume: {error}", file=sys.stderr)
        return 2
    print(f"rebuilt session {chosen.id} from the tenant's mirror (last run on {chosen.host}); resuming",
          file=sys.stderr)
    return _run_resumed(migration)
