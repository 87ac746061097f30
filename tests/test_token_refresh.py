"""Tokens that expire, or cannot be refreshed, in the middle of a migration."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests

from harness import Sandbox, start_sandbox
from spmt_tui.auth.cache import MemoryStore
from spmt_tui.auth.tokens import AuthSettings, DeviceCodePrompt, DeviceCodeProvider, UsernamePasswordProvider
from spmt_tui.engine.migration import Migration, MigrationTask
from spmt_tui.engine.progress import PhaseEvent
from spmt_tui.engine.settings import Settings
from spmt_tui.profile import load_profile


@pytest.fixture
def short_token_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    # Access tokens live 3 s and each import job waits 4 s, so every job outlives a token.
    box = start_sandbox(tmp_path / "tenant", "--token-lifetime", "3", "--import-delay", "4")
    try:
        yield box
    finally:
        box.stop()


def _share(root: Path, count: int) -> Path:
    for number in range(count):
        path = root / f"folder{number % 2}" / f"file{number}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content {number}\n")
    return root


class CountingProvider(UsernamePasswordProvider):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distinct: set[str] = set()

    async def get_token(self) -> str:
        token = await super().get_token()
        self.distinct.add(token)
        return token


def _provider(box: Sandbox) -> CountingProvider:
    data = json.loads(box.profile_path.read_text())
    return CountingProvider(AuthSettings.from_profile(data), data["user"]["username"],
                            data["user"]["password"], store=MemoryStore())


async def test_expiring_token_refreshed_without_failures(short_token_sandbox: Sandbox,
                                                         tmp_path: Path) -> None:
    provider = _provider(short_token_sandbox)
    profile = load_profile(short_token_sandbox.profile_path)
    settings = Settings(working_folder=tmp_path / "work", package_max_files=10, jobs_in_flight=2,
                        job_poll_seconds=1.0)
    migration = Migration([MigrationTask(str(_share(tmp_path / "share", 40)), profile.site_url)],
                          settings, profile, provider)
    result = await migration.run()
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0
    assert result.counts["migrated"] == 42  # 40 files and 2 folders
    assert len(provider.distinct) > 1, "the token was never refreshed"


async def test_failed_refresh_pauses_until_sign_in(short_token_sandbox: Sandbox, tmp_path: Path) -> None:
    data = json.loads(short_token_sandbox.profile_path.read_text())
    prompts: list[DeviceCodePrompt] = []

    def approve(prompt: DeviceCodePrompt) -> None:
        # The admin opens the verification page and signs in, as a person would in a browser.
        prompts.append(prompt)
        form = {"user_code": prompt.user_code, "username": data["user"]["username"],
                "password": data["user"]["password"]}
        response = requests.post(prompt.verification_uri, data=form, verify=data["ca_bundle"], timeout=30)
        assert response.status_code == 200, response.text

    async def on_prompt(prompt: DeviceCodePrompt) -> None:
        await asyncio.to_thread(approve, prompt)

    provider = DeviceCodeProvider(AuthSettings.from_profile(data), on_prompt, store=MemoryStore())
    await provider.sign_in()
    profile = load_profile(short_token_sandbox.profile_path)
    phases: list[str] = []
    settings = Settings(working_folder=tmp_path / "work", package_max_files=10, jobs_in_flight=2,
                        job_poll_seconds=1.0)
    migration = Migration([MigrationTask(str(_share(tmp_path / "share", 20)), profile.site_url)],
                          settings, profile, provider,
                          sink=lambda event: phases.append(event.phase) if isinstance(event, PhaseEvent) else None)

    async def sign_in_again(credentials: Any) -> None:
        await credentials.sign_in()

    migration.sign_in_handler = sign_in_again

    async def revoke_soon() -> None:
        await asyncio.sleep(1.0)
        await asyncio.to_thread(short_token_sandbox.admin, "revoke-refresh-tokens", {})

    revoker = asyncio.create_task(revoke_soon())
    result = await migration.run()
    await revoker
    assert result.status == "completed", result.message
    assert result.counts["failed"] == 0
    assert len(prompts) >= 2, "the migration never asked to sign in again"
    assert "sign-in required" in phases
