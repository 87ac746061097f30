"""Helpers for the bulk task, settings and user mapping tests: run a migration in this process
against the sandbox tenant, call its REST API, and read what arrived and what was reported."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import requests

from harness import Sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationResult, MigrationTask
from spmt_tui.engine.progress import EventSink, null_sink
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile
from spmt_tui.sandbox.export import export_library

USER_AGENT = "NONISV|spmt-tui|spmt-tui-tests"


def unique(prefix: str) -> str:
    """Return a folder or library name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def write_tree(root: Path, files: dict[str, bytes | str], mtime: float | None = None) -> Path:
    """Create ``files`` (relative path -> content) under ``root``; set every mtime when given."""
    for relative, content in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    root.mkdir(parents=True, exist_ok=True)
    return root


def provider(sandbox: Sandbox) -> UsernamePasswordProvider:
    """Sign in as the tenant's admin user with a token cache kept in memory."""
    data = json.loads(sandbox.profile_path.read_text())
    return UsernamePasswordProvider(AuthSettings.from_profile(data), data["user"]["username"],
                                    data["user"]["password"], store=MemoryStore())


def user_email(sandbox: Sandbox, role: str) -> str:
    """Return the UPN of a sandbox user: ``admin``, ``member``, ``jane.doe`` or ``john.roe``."""
    for user in sandbox.profile["users"]:
        if user["username"].split("@")[0] == role:
            return user["username"]
    raise KeyError(f"the sandbox has no user {role!r}")


def settings(work: Path, **values: Any) -> Settings:
    """Settings for a quick test run, with the working folder ``work``."""
    return Settings(working_folder=work, job_poll_seconds=0.5, **values)


async def run(sandbox: Sandbox, tasks: list[MigrationTask], run_settings: Settings,
              sink: EventSink = null_sink) -> tuple[Migration, MigrationResult]:
    """Run a new migration session in this process and return it with its result."""
    migration = Migration(tasks, run_settings, load_profile(sandbox.profile_path), provider(sandbox),
                          sink=sink)
    return migration, await migration.run()


async def rerun(sandbox: Sandbox, migration: Migration, sink: EventSink = null_sink) -> tuple[Migration, MigrationResult]:
    """Run a finished or stopped session again: the next round, with its stored settings."""
    again = Migration.open_session(migration.session_id, migration.settings,
                                   load_profile(sandbox.profile_path), provider(sandbox), sink=sink)
    return again, await again.run()


def task(sandbox: Sandbox, source: Path, folder: str, library: str = "Documents",
         **own_settings: Any) -> MigrationTask:
    return MigrationTask(str(source), sandbox.site_url, library, folder, dict(own_settings))


def arrived(sandbox: Sandbox, out: Path, folder: str = "", library: str = "Documents") -> dict[str, bytes]:
    """Export a library and return the files under ``folder`` (relative path -> bytes)."""
    export_library(sandbox.data_dir, library, out)
    base = out / folder if folder else out
    if not base.exists():
        return {}
    return {path.relative_to(base).as_posix(): path.read_bytes()
            for path in sorted(base.rglob("*")) if path.is_file()}


def read_report(migration: Migration, name: str, task_index: int = 0) -> list[dict[str, str]]:
    """Read one task's report file, e.g. ``ItemReport_R1.csv``, as dicts."""
    key = migration_task_key(migration, task_index)
    path = migration.report_dir / f"TaskReport_{key}" / name
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle))


def migration_task_key(migration: Migration, task_index: int) -> str:
    from spmt_tui.state.store import ReadOnlyStore

    store = ReadOnlyStore.open(migration.session_dir / "session.db")
    try:
        return store.tasks()[task_index]["task_key"]
    finally:
        store.close()


def by_name(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    """Index ItemReport rows by source file name."""
    return {row["File name"]: row for row in rows}


async def rest(sandbox: Sandbox, method: str, api_path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the sandbox's REST API as the admin user; returns the ``d`` object."""
    token = await provider(sandbox).get_token()
    url = f"{sandbox.site_url}/_api/{api_path}"
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json;odata=verbose",
               "User-Agent": USER_AGENT}

    def call() -> requests.Response:
        return requests.request(method, url, json=body, headers=headers, verify=sandbox.ca_bundle,
                                timeout=30)

    response = await asyncio.to_thread(call)
    assert response.status_code < 300, f"{method} {api_path}: {response.status_code} {response.text}"
    return response.json()["d"]


async def create_library(sandbox: Sandbox, title: str) -> None:
    await rest(sandbox, "POST", "web/lists", {"Title": title, "BaseTemplate": 101})


async def file_users(sandbox: Sandbox, server_relative_url: str) -> tuple[str, str]:
    """Return the emails of a file's Author and ModifiedBy, read through REST."""
    literal = quote(server_relative_url.replace("'", "''"))
    data = await rest(sandbox, "GET", f"web/GetFileByServerRelativeUrl('{literal}')")
    return data["Author"]["Email"], data["ModifiedBy"]["Email"]
