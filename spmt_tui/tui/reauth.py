"""Signing in again in the middle of a migration, between the engine thread and the UI.

The engine awaits ``Migration.sign_in_handler`` in its own thread and event loop when an access
token can no longer be refreshed silently (a revoked or expired refresh token). Every worker
that needs a token waits meanwhile, so no item fails. ``SignInAgain`` is that handler for
migrations run by the app: it posts ``ReauthEvent`` messages to the app, which shows
``ReauthModal``, and it receives the user's attempts through an ``asyncio.Queue`` of the engine
loop. Textual's ``post_message`` and the loop's ``call_soon_threadsafe`` are the only calls
that cross threads.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from textual.message import Message

from spmt_tui.auth.tokens import AuthError, DeviceCodePrompt

if TYPE_CHECKING:
    from textual.app import App

    from spmt_tui.tui.plan import SignedIn

log = logging.getLogger("spmt.tui.reauth")


@dataclass
class ReauthState:
    """What ``ReauthModal`` shows about one sign-in episode, and how to send an attempt.

    ``attempt`` is called on the UI thread with the typed password (empty for the other
    methods) and hands it to the engine's loop.
    """

    method: str
    principal: str
    reason: str
    attempt: Callable[[str], None]


class ReauthEvent(Message):
    """Posted from the engine thread: open, update or close the sign-in dialog.

    ``kind`` is ``open``, ``prompt`` (``prompt`` is set), ``working``, ``failed`` (``text`` is
    the error), or ``close``.
    """

    def __init__(self, state: ReauthState, kind: str, *, prompt: DeviceCodePrompt | None = None,
                 text: str = "") -> None:
        super().__init__()
        self.state = state
        self.kind = kind
        self.prompt = prompt
        self.text = text


class SignInAgain:
    """``Migration.sign_in_handler`` that asks the user of ``app`` to sign in again.

    The device code flow starts at once, so the code is on screen when the user looks. The
    password and certificate methods wait for the user to press the button (with the password
    typed in). A failed attempt shows its error and waits for the next one. Cancelling the
    migration cancels the wait, and the dialog closes.
    """

    def __init__(self, app: "App[Any]", signed_in: "SignedIn",
                 reason: Callable[[], str] = lambda: "") -> None:
        self.app = app
        self.method = signed_in.method
        self.principal = signed_in.principal
        self.password_slot = signed_in.password_slot
        self.reason = reason  # returns why the silent refresh failed (the engine's phase detail)

    async def __call__(self, credentials: Any) -> None:
        engine_loop = asyncio.get_running_loop()
        attempts: asyncio.Queue[str] = asyncio.Queue()

        def attempt(password: str) -> None:
            engine_loop.call_soon_threadsafe(attempts.put_nowait, password)

        state = ReauthState(self.method, credentials.whoami() or self.principal, self.reason(), attempt)
        self._post(state, "open")
        if self.method == "device-code":
            attempt("")
        saved_prompt = getattr(credentials, "on_prompt", None)
        if saved_prompt is not None:
            credentials.on_prompt = lambda prompt: self._post(state, "prompt", prompt=prompt)
        try:
            while True:
                password = await attempts.get()
                if self.method == "password":
                    if not password:
                        self._post(state, "failed", text="Type the password, then press Sign in.")
                        continue
                    if self.password_slot is not None:
                        self.password_slot.set(password)
                self._post(state, "working")
                try:
                    await credentials.sign_in()
                except AuthError as error:
                    log.warning("signing in again failed: %s", error)
                    self._post(state, "failed", text=str(error))
                    continue
                log.info("signed in again as %s; the migration continues", credentials.whoami())
                return
        finally:
            if saved_prompt is not None:
                credentials.on_prompt = saved_prompt
            self._post(state, "close")

    def _post(self, state: ReauthState, kind: str, **details: Any) -> None:
        # post_message is thread-safe and returns False once the app is closing.
        if not self.app.post_message(ReauthEvent(state, kind, **details)):
            log.info("the app is closing; sign-in dialog update %r dropped", kind)
