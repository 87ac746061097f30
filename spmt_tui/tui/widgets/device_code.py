"""Device code prompt: the code in large letters, the URL, and keys to copy both."""

from __future__ import annotations

from textual.binding import Binding
from textual.markup import escape
from textual.widgets import Static

from spmt_tui.tui.widgets.big_text import big_text


class DeviceCodePanel(Static, can_focus=True):
    """Shows a device code sign-in prompt; ``c`` and ``u`` copy the code and the URL (OSC 52)."""

    BINDINGS = [
        Binding("c", "copy_code", "Copy code"),
        Binding("u", "copy_url", "Copy URL"),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=True)
        self.user_code = ""
        self.verification_uri = ""

    def show_prompt(self, user_code: str, verification_uri: str, expires_in: int) -> None:
        self.user_code = user_code
        self.verification_uri = verification_uri
        minutes = max(1, expires_in // 60) if expires_in else None
        expiry = f" · expires in {minutes} min" if minutes else ""
        letters = big_text(user_code)
        self.update(
            f"Open [b]{escape(verification_uri)}[/b] on any device and enter this code:\n\n"
            f"[b]{escape(letters)}[/b]\n\n"
            f"[reverse b] {escape(user_code)} [/]   [dim]c copy code · u copy URL{expiry}[/dim]"
        )
        self.display = True

    def clear_prompt(self) -> None:
        self.user_code = ""
        self.verification_uri = ""
        self.update("")
        self.display = False

    def action_copy_code(self) -> None:
        if self.user_code:
            self.app.copy_to_clipboard(self.user_code)
            self.app.notify(f"Copied {self.user_code}", timeout=2)

    def action_copy_url(self) -> None:
        if self.verification_uri:
            self.app.copy_to_clipboard(self.verification_uri)
            self.app.notify("Copied the sign-in URL", timeout=2)
