"""Sign-in step: tenant profile or site URL, the method, and the device code prompt."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Button, Collapsible, Input, Label, RadioButton, RadioSet, Select, Static

from spmt_tui.auth.tokens import DeviceCodePrompt
from spmt_tui.tui.plan import SIGN_IN_METHODS, SignedIn
from spmt_tui.tui.screens.wizard import WizardStep, field_row
from spmt_tui.tui.services import TOKEN_CACHE_CHOICES, ServiceError, SignInRequest
from spmt_tui.tui.widgets.device_code import DeviceCodePanel

METHOD_ORDER = tuple(SIGN_IN_METHODS)


class SignInScreen(WizardStep):
    """Collects where and how to sign in, then signs in.

    With ``resume_session`` set the screen dismisses itself with the ``SignedIn`` result
    instead of continuing to the Source step.
    """

    STEP = "Sign in"

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Sign in / Next", priority=True),
    ]

    def __init__(self, *, profile_path: Path | None = None, resume_session: str | None = None) -> None:
        super().__init__()
        self.profile_path = profile_path
        self.resume_session = resume_session

    def compose(self) -> ComposeResult:
        yield from self.compose_header()
        with VerticalScroll(classes="form"):
            with Vertical(id="sign-in-form"):
                if self.resume_session:
                    yield Static(f"Sign in to resume session {self.resume_session}.", classes="hint")
                yield field_row("Tenant profile", Input(
                    str(self.profile_path or ""), placeholder="tenant.json (optional)", id="profile",
                    compact=True))
                yield field_row("Site or tenant URL", Input(
                    placeholder="https://contoso.sharepoint.com/sites/finance", id="site-url",
                    compact=True))
                with Horizontal(classes="field-row -tall"):
                    yield Label("Sign-in method", classes="field-label")
                    with RadioSet(id="method", compact=True):
                        for index, method in enumerate(METHOD_ORDER):
                            yield RadioButton(SIGN_IN_METHODS[method], value=index == 0,
                                              id=f"method-{method}", compact=True)
                yield field_row("Certificate", Input(
                    placeholder="PEM with key, or PFX", id="certificate", compact=True),
                    row_id="certificate-fields")
                with Vertical(id="password-fields", classes="method-fields"):
                    yield field_row("Username", Input(
                        placeholder="admin@contoso.onmicrosoft.com", id="username", compact=True))
                    yield field_row("Password", Input(
                        password=True, placeholder="(from the tenant profile when it has one)",
                        id="password", compact=True))
                with Collapsible(title="Identity provider and token cache", collapsed=True, id="advanced"):
                    yield field_row("Authority", Input(
                        placeholder="https://login.microsoftonline.com/TENANT_ID", id="authority",
                        compact=True))
                    yield field_row("Client ID", Input(
                        placeholder="app registration (client) id", id="client-id", compact=True))
                    yield field_row("CA bundle", Input(
                        placeholder="system trust store", id="ca-bundle", compact=True))
                    yield field_row("Keep tokens in", Select(
                        [(text, key) for key, text in TOKEN_CACHE_CHOICES.items()], value="auto",
                        allow_blank=False, id="token-cache", compact=True))
                with Horizontal(classes="buttons"):
                    yield Button("Sign in", id="sign-in", variant="primary")
            yield DeviceCodePanel(id="device-code")
            yield Static("", id="sign-in-status", classes="status")
        yield from self.compose_footer()

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one(DeviceCodePanel).display = False
        self._show_method_fields()
        signed_in = self.app.plan.signed_in
        if signed_in is not None and not self.resume_session:
            self._prefill_from_profile_data(signed_in.profile.source_path, signed_in.profile)
            self._set_status(f"Signed in as {signed_in.principal}. Press Ctrl+N to continue, or "
                             "sign in again.")
        elif self.profile_path:
            self._load_profile(self.profile_path)
        self.query_one("#site-url" if self.profile_path else "#profile", Input).focus()

    # -- form -----------------------------------------------------------------------------------

    @property
    def method(self) -> str:
        index = self.query_one("#method", RadioSet).pressed_index
        return METHOD_ORDER[index] if 0 <= index < len(METHOD_ORDER) else "device-code"

    @on(RadioSet.Changed, "#method")
    def _show_method_fields(self) -> None:
        method = self.method
        self.query_one("#certificate-fields").display = method == "certificate"
        self.query_one("#password-fields").display = method == "password"

    @on(Input.Submitted, "#profile")
    def _profile_submitted(self, event: Input.Submitted) -> None:
        if event.value.strip():
            self._load_profile(Path(event.value.strip()))
        self.query_one("#site-url", Input).focus()

    def _load_profile(self, path: Path) -> None:
        try:
            profile = self.app.services.read_profile(path)
        except ServiceError as error:
            self.show_error(str(error))
            return
        self.show_error("")
        self._prefill_from_profile_data(path, profile)

    def _prefill_from_profile_data(self, path: Path | None, profile: Any) -> None:
        values = {
            "#profile": str(path or ""),
            "#site-url": profile.site_url,
            "#authority": profile.authority,
            "#client-id": profile.public_client_id,
            "#ca-bundle": profile.ca_bundle or "",
            "#certificate": str(profile.app.get("certificate") or ""),
            "#username": str(profile.user.get("username") or ""),
        }
        for selector, value in values.items():
            field = self.query_one(selector, Input)
            if value and not (field.value and selector != "#profile"):
                field.value = value

    def _request(self) -> SignInRequest:
        def text(selector: str) -> str:
            return self.query_one(selector, Input).value.strip()

        profile = text("#profile")
        client_id = text("#client-id")
        return SignInRequest(
            method=self.method,
            profile_path=Path(profile).expanduser() if profile else None,
            site_url=text("#site-url"),
            authority=text("#authority"),
            # The client id field shows the public client; an app-only sign-in uses the profile's
            # app registration unless no profile is given.
            client_id="" if (self.method == "certificate" and profile) else client_id,
            ca_bundle=text("#ca-bundle"),
            certificate=text("#certificate"),
            username=text("#username"),
            password=self.query_one("#password", Input).value,
            token_cache=str(self.query_one("#token-cache", Select).value),
        )

    # -- sign-in --------------------------------------------------------------------------------

    @on(Button.Pressed, "#sign-in")
    def _sign_in_pressed(self) -> None:
        self.start_sign_in()

    @on(Input.Submitted, "#site-url, #username, #password, #certificate, #authority, #client-id, #ca-bundle")
    def _field_submitted(self) -> None:
        self.action_next()

    def action_next(self) -> None:
        if self.app.plan.signed_in is not None and not self.resume_session and not self._form_changed():
            self.go_next()
        else:
            self.start_sign_in()

    def _form_changed(self) -> bool:
        signed_in = self.app.plan.signed_in
        if signed_in is None:
            return True
        site = self.query_one("#site-url", Input).value.strip().rstrip("/")
        return bool(site) and site != signed_in.profile.site_url.rstrip("/")

    def start_sign_in(self) -> None:
        request = self._request()
        self.show_error("")
        self._hide_device_code()
        self._set_status("Signing in…")
        self.query_one("#sign-in", Button).disabled = True
        self._sign_in(request)

    @work(exclusive=True, group="sign-in", exit_on_error=False)
    async def _sign_in(self, request: SignInRequest) -> None:
        try:
            signed_in = await self.app.services.sign_in(request, self._show_device_code)
        except ServiceError as error:
            self._sign_in_failed(str(error))
            return
        except Exception as error:  # noqa: BLE001 - show any failure instead of ending the app
            self._sign_in_failed(f"{type(error).__name__}: {error}")
            return
        finally:
            if self.is_mounted:
                self.query_one("#sign-in", Button).disabled = False
        self._hide_device_code()
        self._set_status(f"Signed in as {signed_in.principal}.")
        self._signed_in(signed_in)

    def _signed_in(self, signed_in: SignedIn) -> None:
        if self.resume_session:
            self.dismiss(signed_in)
            return
        plan = self.app.plan
        plan.signed_in = signed_in
        plan.profile_path = signed_in.profile.source_path
        plan.site_url = signed_in.profile.site_url
        self.app.notify(f"Signed in as {signed_in.principal}", timeout=3)
        self.go_next()

    def _hide_device_code(self) -> None:
        self.query_one(DeviceCodePanel).clear_prompt()
        self.query_one("#sign-in-form").display = True

    def _sign_in_failed(self, text: str) -> None:
        self._hide_device_code()
        self._set_status("")
        self.show_error(f"Sign-in failed: {text}")

    def _show_device_code(self, prompt: DeviceCodePrompt) -> None:
        self.query_one("#sign-in-form").display = False
        panel = self.query_one(DeviceCodePanel)
        panel.show_prompt(prompt.user_code, prompt.verification_uri, prompt.expires_in)
        panel.focus()
        panel.scroll_visible()
        self._set_status("Waiting for the sign-in to finish on the other device… (Escape cancels)")

    def _set_status(self, text: str) -> None:
        self.query_one("#sign-in-status", Static).update(text)

    def action_back(self) -> None:
        workers = [worker for worker in self.workers if worker.group == "sign-in" and worker.is_running]
        if workers:
            for worker in workers:
                worker.cancel()
            self._hide_device_code()
            self.query_one("#sign-in", Button).disabled = False
            self._set_status("Sign-in cancelled.")
            return
        if self.resume_session:
            self.dismiss(None)
        else:
            self.app.pop_screen()

    def go_next(self) -> None:
        if self.app.plan.bulk_tasks is not None:
            from spmt_tui.tui.screens.settings_form import SettingsScreen

            self.app.push_screen(SettingsScreen())
        else:
            from spmt_tui.tui.screens.source import SourceScreen

            self.app.push_screen(SourceScreen())
