"""Pilot tests that walk the wizard to a finished migration against the sandbox tenant."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import requests
from textual.pilot import Pilot
from textual.widgets import Input, OptionList, RadioSet

from spmt_tui.engine.settings import Settings
from spmt_tui.tui.app import SpmtApp
from spmt_tui.tui.screens.destination import DestinationScreen
from spmt_tui.tui.screens.progress import ProgressScreen
from spmt_tui.tui.screens.report import ReportScreen
from spmt_tui.tui.screens.sessions import SessionsScreen
from spmt_tui.tui.screens.settings_form import SettingsScreen
from spmt_tui.tui.screens.signin import SignInScreen
from spmt_tui.tui.screens.source import SourceScreen
from spmt_tui.tui.widgets.device_code import DeviceCodePanel

PASSPHRASE = "tui-test-passphrase"


async def wait_until(pilot: Pilot, condition: Callable[[], Any], timeout: float = 60.0,
                     what: str = "condition") -> Any:
    """Pump the app until ``condition()`` is truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        await pilot.pause(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def make_share(root: Path, files: int = 24) -> Path:
    """Create a small file share: files spread over two sub-folders."""
    share = root / "share"
    for number in range(files):
        folder = share / ("alpha" if number % 2 else "beta")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"note-{number:03d}.txt").write_text(f"file {number}\n" * (number + 1))
    return share


@pytest.fixture
def tui_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a working folder in the test's folder; tokens in an encrypted file."""
    monkeypatch.setenv("SPMT_TUI_CACHE_PASSPHRASE", PASSPHRASE)
    settings = Settings()
    settings.working_folder = tmp_path / "work"
    return settings


async def choose_password_method(pilot: Pilot) -> None:
    radio = pilot.app.screen.query_one("#method", RadioSet)
    radio.focus()
    await pilot.press("down", "down", "enter")
    await pilot.pause()
    assert radio.pressed_index == 2


async def type_text(pilot: Pilot, text: str) -> None:
    await pilot.press(*[character for character in text])


async def walk_to_progress(pilot: Pilot, share: Path, folder: str) -> None:
    """From the Source step, fill in the wizard and press Migrate."""
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, SourceScreen), what="the Source step")
    await type_text(pilot, str(share))
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, DestinationScreen), what="the Destination step")
    libraries = app.screen.query_one("#libraries", OptionList)
    await wait_until(pilot, lambda: libraries.option_count > 0, what="the library list")
    app.screen.query_one("#folder", Input).focus()
    await type_text(pilot, folder)
    await pilot.press("enter")
    await wait_until(pilot, lambda: isinstance(app.screen, SettingsScreen), what="the Settings step")
    await pilot.press("ctrl+n")
    await pilot.pause()
    await pilot.press("ctrl+n")
    await wait_until(pilot, lambda: isinstance(app.screen, ProgressScreen), what="the Progress screen")


def secret_files(root: Path, secrets: list[str]) -> list[str]:
    """Return the files under ``root`` that contain any of ``secrets``."""
    found = []
    for path in root.rglob("*"):
        if not path.is_file():
            continue
        data = path.read_bytes()
        for secret in secrets:
            if secret.encode() in data:
                found.append(f"{path} contains a secret")
    return found


async def test_wizard_migrates_with_password(sandbox: Any, tui_env: Settings, tmp_path: Path) -> None:
    share = make_share(tmp_path)
    app = SpmtApp(settings=tui_env, tenant_profile=sandbox.profile_path, remember_theme=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the Sign in step")
        await choose_password_method(pilot)
        await pilot.press("ctrl+n")
        await walk_to_progress(pilot, share, "wizard-password")
        await wait_until(pilot, lambda: app.active_run is not None and app.active_run.finished,
                         timeout=180, what="the migration to finish")
        run = app.active_run
        assert run is not None
        assert run.error == ""
        assert run.result.status == "completed"
        assert run.result.counts["migrated"] == 24 + 2
        assert run.result.counts["failed"] == 0
        await wait_until(pilot, lambda: isinstance(app.screen, ReportScreen)
                         and app.screen.query("#report-files OptionList, OptionList#report-files")
                         and app.screen.query_one("#report-files", OptionList).option_count,
                         what="the Report screen and its file list")
        files = app.screen.query_one("#report-files", OptionList)
        names = [str(files.get_option_at_index(index).prompt) for index in range(files.option_count)]
        assert any("SummaryReport.csv" in name for name in names)
        assert any("ItemReport_R1.csv" in name for name in names)

        signed_in = app.plan.signed_in
        assert signed_in is not None
        library = next(lib for lib in (await app.services.site(signed_in, sandbox.site_url)).libraries
                       if lib.title == "Documents")
        folders = await app.services.folders(signed_in, sandbox.site_url,
                                             f"{library.root_folder_url}/wizard-password")
        assert sorted(folder.name for folder in folders) == ["alpha", "beta"]
        token = await signed_in.provider.get_token()

    password = sandbox.profile["user"]["password"]
    assert secret_files(tmp_path, [password, token, PASSPHRASE]) == []


async def test_device_code_sign_in(sandbox: Any, tui_env: Settings) -> None:
    app = SpmtApp(settings=tui_env, tenant_profile=sandbox.profile_path, remember_theme=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the Sign in step")
        await pilot.press("ctrl+n")
        panel = app.screen.query_one(DeviceCodePanel)
        code = await wait_until(pilot, lambda: panel.user_code, what="the device code")
        assert panel.display
        assert panel.verification_uri.endswith("/devicelogin")
        assert code in str(panel.render())

        user = sandbox.profile["user"]
        form = {"user_code": code, "username": user["username"], "password": user["password"]}
        response = await asyncio.to_thread(requests.post, panel.verification_uri, data=form,
                                           verify=sandbox.ca_bundle, timeout=30)
        assert response.status_code == 200
        await wait_until(pilot, lambda: isinstance(app.screen, SourceScreen), timeout=60,
                         what="the Source step after the device code sign-in")
        assert app.plan.signed_in is not None
        assert app.plan.signed_in.principal == user["username"]
        assert app.plan.signed_in.method == "device-code"


async def test_wrong_password_shows_error(sandbox: Any, tui_env: Settings) -> None:
    app = SpmtApp(settings=tui_env, tenant_profile=sandbox.profile_path, remember_theme=False)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the Sign in step")
        await choose_password_method(pilot)
        app.screen.query_one("#password", Input).value = "not-the-password"
        await pilot.press("ctrl+n")
        error = app.screen.query_one("#step-error")
        await wait_until(pilot, lambda: "Sign-in failed" in str(error.render()), what="the error")
        assert "wrong" in str(error.render())
        assert isinstance(app.screen, SignInScreen)
        assert app.plan.signed_in is None


async def test_resume_from_sessions(sandbox: Any, tui_env: Settings, tmp_path: Path) -> None:
    share = make_share(tmp_path, files=300)
    first = SpmtApp(settings=tui_env, tenant_profile=sandbox.profile_path, remember_theme=False)
    async with first.run_test(size=(100, 30)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(first.screen, SignInScreen), what="the Sign in step")
        await choose_password_method(pilot)
        await pilot.press("ctrl+n")
        await walk_to_progress(pilot, share, "wizard-resume")
        await wait_until(pilot, lambda: first.active_run.migration is not None, what="the engine")
        await pilot.press("p")
        await pilot.pause()
        assert first.active_run.paused
        await pilot.press("ctrl+q")
        await pilot.pause()
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: first.active_run.finished, timeout=60, what="the engine to stop")
    stopped = first.active_run.result
    assert stopped is not None
    assert stopped.status in ("cancelled", "interrupted")
    session_id = first.active_run.session_id

    second = SpmtApp(settings=tui_env, tenant_profile=sandbox.profile_path, remember_theme=False)
    async with second.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(second.screen, SessionsScreen), what="Sessions")
        assert second.screen.sessions[0].id == session_id
        await pilot.press("enter")
        await wait_until(pilot, lambda: second.active_run is not None and second.active_run.finished,
                         timeout=180, what="the resumed migration to finish")
        run = second.active_run
        assert run.error == ""
        assert run.session_id == session_id
        assert run.result.status == "completed"
        assert run.result.counts["migrated"] == 300 + 2
        await wait_until(pilot, lambda: isinstance(second.screen, ReportScreen), what="the Report screen")
