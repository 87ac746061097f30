"""Dialog shown when a running migration needs the user to sign in again."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from spmt_tui.auth.tokens import DeviceCodePrompt
from spmt_tui.tui.reauth import ReauthEvent, ReauthState
from spmt_tui.tui.widgets.device_code import DeviceCodePanel

RETRY_LABELS = {"device-code": "New code", "password": "Sign in", "certificate": "Try again"}


class ReauthModal(ModalScreen[None]):
    """Asks for a new sign-in while the migration waits; closes when the engine continues.

    The engine side (``spmt_tui.tui.reauth.SignInAgain``) drives it with ``ReauthEvent``
    messages, which the app forwards to this screen. There is no Escape binding: the migration cannot continue without a sign-in, so the only
    ways out are signing in or stopping the migration.
    """

    def __init__(self, state: ReauthState) -> None:
        super().__init__()
        self.state = state
        self._ready = False
        self._pending: list[ReauthEvent] = []
        self._closed = False

    def compose(self) -> ComposeResult:
        state = self.state
        with Vertical(classes="dialog -wide", id="reauth-dialog"):
            yield Label("Sign in again to continue", classes="dialog-title")
            yield Static(
                f"The sign-in of [b]{escape(state.principal)}[/b] expired and could not be "
                "refreshed. The migration waits and no file fails meanwhile.",
                id="reauth-body")
            if state.reason:
                yield Static(f"[dim]{escape(state.reason)}[/dim]", id="reauth-reason")
            if state.method == "device-code":
                yield DeviceCodePanel(id="reauth-code")
            elif state.method == "password":
                yield Input(password=True, placeholder=f"password of {state.principal}",
                            id="reauth-password")
            else:
                yield Static("Check that the app registration still has this certificate, then "
                             "try again.", id="reauth-hint")
            yield Static("", id="reauth-status")
            with Horizontal(classes="dialog-buttons"):
                yield Button("Stop migration", id="reauth-stop")
                yield Button(RETRY_LABELS.get(state.method, "Try again"), id="reauth-retry",
                             variant="primary")

    def on_mount(self) -> None:
        self._ready = True
        if self.state.method == "device-code":
            self.query_one(DeviceCodePanel).display = False
            self._set_status("Requesting a device code…")
            self.query_one("#reauth-retry", Button).disabled = True
        elif self.state.method == "password":
            self.query_one("#reauth-password", Input).focus()
        else:
            self.query_one("#reauth-retry", Button).focus()
        pending, self._pending = self._pending, []
        for event in pending:
            self.apply(event)

    def on_screen_resume(self) -> None:
        if self._closed:
            self.dismiss()

    # -- updates from the engine ----------------------------------------------------------------

    def on_reauth_event(self, event: ReauthEvent) -> None:
        event.stop()
        self.apply(event)

    def apply(self, event: ReauthEvent) -> None:
        """Show an update from the engine; events that arrive before mounting wait for it."""
        if event.kind == "close":
            self._closed = True
            # dismiss() pops the top screen, so wait while a confirmation is above this one.
            if self.app.screen is self:
                self.dismiss()
            return
        if not self._ready:
            self._pending.append(event)
        elif event.kind == "prompt" and event.prompt is not None:
            self.show_prompt(event.prompt)
        elif event.kind == "working":
            self.show_working()
        elif event.kind == "failed":
            self.show_failure(event.text)

    def show_prompt(self, prompt: DeviceCodePrompt) -> None:
        if self.state.method != "device-code":
            return
        panel = self.query_one(DeviceCodePanel)
        panel.show_prompt(prompt.user_code, prompt.verification_uri, prompt.expires_in)
        panel.focus()
        self._set_status("Waiting for the sign-in on the other device…")
        self.query_one("#reauth-retry", Button).disabled = True

    def show_working(self) -> None:
        self._set_status("Signing in…")
        self.query_one("#reauth-retry", Button).disabled = True

    def show_failure(self, text: str) -> None:
        if self.state.method == "device-code":
            self.query_one(DeviceCodePanel).clear_prompt()
        self._set_status(f"[b]Sign-in failed:[/b] {escape(text)}")
        retry = self.query_one("#reauth-retry", Button)
        retry.disabled = False
        if self.state.method == "password":
            self.query_one("#reauth-password", Input).focus()
        else:
            retry.focus()

    def _set_status(self, text: str) -> None:
        self.query_one("#reauth-status", Static).update(text)

    # -- user actions ---------------------------------------------------------------------------

    @on(Input.Submitted, "#reauth-password")
    @on(Button.Pressed, "#reauth-retry")
    def _retry(self) -> None:
        password = ""
        if self.state.method == "password":
            field = self.query_one("#reauth-password", Input)
            password = field.value
            field.value = ""
        self.state.attempt(password)

    @on(Button.Pressed, "#reauth-stop")
    def _stop(self) -> None:
        # The app asks for confirmation; cancelling the migration cancels the engine's wait,
        # which closes this dialog.
        self.app.cancel_run()
