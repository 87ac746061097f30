"""Signing in again in the app when a migration's tokens can no longer be refreshed."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
from textual.widgets import Button, Input, Select, Static

from harness import Sandbox, start_sandbox
from spmt_tui.auth.tokens import AuthError, SignInRequired
from spmt_tui.engine.settings import Settings
from spmt_tui.sandbox.export import export_library
from spmt_tui.tui.app import SpmtApp
from spmt_tui.tui.reauth import SignInAgain
from spmt_tui.tui.screens.reauth import ReauthModal
from spmt_tui.tui.screens.signin import SignInScreen
from spmt_tui.tui.services import PasswordSlot
from spmt_tui.tui.widgets.device_code import DeviceCodePanel
from test_tui_sandbox import make_share, tui_env, wait_until, walk_to_progress  # noqa: F401
from tui_fakes import FakeServices, fake_signed_in


@pytest.fixture
def short_token_sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    # Access tokens live 3 s, so every token request refreshes, and each import job takes
    # 1 s, so the migration still needs tokens well after the refresh tokens are revoked.
    box = start_sandbox(tmp_path / "tenant", "--token-lifetime", "3", "--import-delay", "1")
    try:
        yield box
    finally:
        box.stop()


def approve_device_code(box: Sandbox, code: str, uri: str) -> None:
    """Complete the user step of a device code sign-in, as a person would in a browser."""
    user = box.profile["user"]
    form = {"user_code": code, "username": user["username"], "password": user["password"]}
    response = requests.post(uri, data=form, verify=box.ca_bundle, timeout=30)
    assert response.status_code == 200, response.text


async def device_code_shown(pilot: Any, panel: DeviceCodePanel, what: str) -> tuple[str, str]:
    code = await wait_until(pilot, lambda: panel.user_code, what=what)
    assert panel.display
    assert code in str(panel.render())
    return code, panel.verification_uri


async def test_revoked_refresh_asks_sign_in(short_token_sandbox: Sandbox, tui_env: Settings,
                                            tmp_path: Path) -> None:
    box = short_token_sandbox
    files = 80
    share = make_share(tmp_path, files=files)
    tui_env.package_max_files = 10
    tui_env.jobs_in_flight = 2
    tui_env.job_poll_seconds = 0.5
    app = SpmtApp(settings=tui_env, tenant_profile=box.profile_path, remember_theme=False)
    async with app.run_test(size=(100, 34)) as pilot:
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, SignInScreen), what="the Sign in step")
        # With 3-second tokens every request refreshes, and the encrypted file cache would
        # derive its key with scrypt on each refresh, so keep the tokens in memory.
        app.screen.query_one("#token-cache", Select).value = "memory"
        await pilot.press("ctrl+n")
        panel = app.screen.query_one(DeviceCodePanel)
        code, uri = await device_code_shown(pilot, panel, "the first device code")
        await asyncio.to_thread(approve_device_code, box, code, uri)
        await walk_to_progress(pilot, share, "reauth")
        run = app.active_run
        await wait_until(pilot, lambda: run.migration is not None or run.error, what="the engine")
        assert run.error == ""

        revoked = await asyncio.to_thread(box.admin, "revoke-refresh-tokens", {})
        assert revoked["revoked"] >= 1

        modal = await wait_until(pilot, lambda: app.screen if isinstance(app.screen, ReauthModal)
                                 else None, timeout=90, what="the sign-in dialog")
        assert not run.finished, "the migration ended before it needed a new token"
        assert run.migration.stats.snapshot().phase == "sign-in required"
        assert box.profile["user"]["username"] in str(modal.query_one("#reauth-body", Static).render())
        panel = modal.query_one(DeviceCodePanel)
        new_code, uri = await device_code_shown(pilot, panel, "the device code in the dialog")
        assert new_code != code
        assert not run.finished

        await asyncio.to_thread(approve_device_code, box, new_code, uri)
        await wait_until(pilot, lambda: not isinstance(app.screen, ReauthModal), timeout=60,
                         what="the dialog to close after the sign-in")
        await wait_until(pilot, lambda: run.finished, timeout=240, what="the migration to finish")
        assert run.error == ""
        assert run.result.status == "completed", run.result.message
        assert run.result.counts["failed"] == 0
        assert run.result.counts["migrated"] == files + 2  # the files and two folders
        await pilot.pause(0.3)

    exported = tmp_path / "exported"
    export_library(box.data_dir, "Documents", exported)
    arrived = {path.relative_to(exported / "reauth").as_posix(): path.read_bytes()
               for path in (exported / "reauth").rglob("*") if path.is_file()}
    expected = {path.relative_to(share).as_posix(): path.read_bytes()
                for path in share.rglob("*") if path.is_file()}
    assert arrived == expected


class PasswordCredentials:
    """Token provider double whose ``sign_in`` accepts only one password from its slot.

    ``SignInAgain`` calls it on the engine's loop, like ``UsernamePasswordProvider``.
    """

    kind = "user"

    def __init__(self, slot: PasswordSlot, right: str) -> None:
        self.slot = slot
        self.right = right
        self.attempts: list[str] = []

    async def sign_in(self) -> str:
        password = self.slot()
        self.attempts.append(password)
        if password != self.right:
            raise AuthError("the username or password of admin@sandbox.example is wrong")
        return "token"

    def whoami(self) -> str:
        return "admin@sandbox.example"


async def test_password_sign_in_again_dialog() -> None:
    slot = PasswordSlot()
    signed_in = fake_signed_in("password")
    signed_in.password_slot = slot
    credentials = PasswordCredentials(slot, "right-password")
    app = SpmtApp(services=FakeServices(), remember_theme=False)
    outcome: list[BaseException | None] = []

    def engine_thread(handler: SignInAgain) -> None:
        # The engine awaits the handler in its own thread and event loop.
        try:
            asyncio.run(handler(credentials))
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001 - the test reports it below
            outcome.append(error)

    async with app.run_test(size=(80, 24)) as pilot:
        handler = SignInAgain(app, signed_in, lambda: "the refresh token was revoked")
        thread = threading.Thread(target=engine_thread, args=(handler,), daemon=True)
        thread.start()
        modal = await wait_until(pilot, lambda: app.screen if isinstance(app.screen, ReauthModal)
                                 else None, what="the sign-in dialog")
        assert "revoked" in str(modal.query_one("#reauth-reason", Static).render())
        field = modal.query_one("#reauth-password", Input)
        assert field.password
        await wait_until(pilot, lambda: app.focused is field, what="focus on the password field")

        await pilot.press(*"wrong")
        await pilot.press("enter")
        status = modal.query_one("#reauth-status", Static)
        await wait_until(pilot, lambda: "wrong" in str(status.render()), what="the failure")
        assert credentials.attempts == ["wrong"]
        assert isinstance(app.screen, ReauthModal)
        assert field.value == ""

        field.focus()
        await pilot.press(*"right-password")
        await pilot.click("#reauth-retry")
        await wait_until(pilot, lambda: not isinstance(app.screen, ReauthModal), what="the dialog to close")
        thread.join(10)
        assert outcome == [None]
        assert credentials.attempts == ["wrong", "right-password"]
        await pilot.pause(0.2)


class EndlessDeviceCode:
    """Token provider double whose device code sign-in never completes."""

    kind = "user"
    on_prompt = None

    async def sign_in(self) -> str:
        await asyncio.sleep(3600)
        raise SignInRequired("the device code expired")

    def whoami(self) -> str:
        return "admin@sandbox.example"


async def test_stop_in_sign_in_dialog_cancels() -> None:
    app = SpmtApp(services=FakeServices(migration_options={"steps": 0}), remember_theme=False)
    async with app.run_test(size=(80, 24)) as pilot:
        app.plan.signed_in = fake_signed_in("device-code")
        app.plan.source = "/srv/a"
        app.start_migration(app.plan)
        run = await wait_until(pilot, lambda: app.active_run if app.active_run.migration else None,
                               what="the engine")
        handler = SignInAgain(app, app.plan.signed_in)
        engine: dict[str, Any] = {}
        result: list[BaseException | None] = []

        def engine_thread() -> None:
            async def wait_for_sign_in() -> None:
                engine["loop"] = asyncio.get_running_loop()
                engine["task"] = asyncio.current_task()
                await handler(EndlessDeviceCode())

            try:
                asyncio.run(wait_for_sign_in())
                result.append(None)
            except BaseException as error:  # noqa: BLE001 - the test checks it below
                result.append(error)

        # Migration.cancel() cancels the engine's main task, which awaits the handler.
        fake_cancel = run.migration.cancel

        def cancel() -> None:
            fake_cancel()
            engine["loop"].call_soon_threadsafe(engine["task"].cancel)

        run.migration.cancel = cancel
        thread = threading.Thread(target=engine_thread, daemon=True)
        thread.start()
        modal = await wait_until(pilot, lambda: app.screen if isinstance(app.screen, ReauthModal)
                                 else None, what="the sign-in dialog")
        assert modal.query_one("#reauth-retry", Button).disabled
        await pilot.click("#reauth-stop")
        await pilot.pause()
        assert "resumed" in str(app.screen.query_one(".dialog-body", Static).render())
        await pilot.click("#confirm")
        await wait_until(pilot, lambda: result, what="the handler to end")
        assert isinstance(result[0], asyncio.CancelledError)
        await wait_until(pilot, lambda: not isinstance(app.screen, ReauthModal), what="the dialog to close")
        await wait_until(pilot, lambda: run.finished, what="the migration to stop")
        assert run.result.status == "cancelled"
        thread.join(10)
        await pilot.pause(0.2)
