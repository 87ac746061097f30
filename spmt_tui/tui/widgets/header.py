"""Header whose title watchers tolerate a header that is already being torn down."""

from __future__ import annotations

from textual.css.query import NoMatches
from textual.dom import NoScreen
from textual.events import Mount
from textual.widget import Widget
from textual.widgets import Header
from textual.widgets._header import HeaderTitle  # not exported by textual.widgets in 8.2


class AppHeader(Header):
    """``Header`` that skips a title update when its title widget is gone.

    Textual 8.2's ``Header`` updates its title from async watchers that run as tasks. When the
    app exits while a screen with a header is still mounting, such a task runs after the
    header's children were removed, and its ``query_one(HeaderTitle)`` raises ``NoMatches``,
    which ends the app with an error. This class registers the same watchers with a callback
    that also catches ``NoMatches``.
    """

    def _on_mount(self, event: Mount) -> None:
        # prevent_default() skips the base classes' handlers: Header's (the watchers replaced
        # here) and Widget's, which is called directly instead.
        event.prevent_default()
        Widget._on_mount(self, event)

        async def set_title() -> None:
            try:
                self.query_one(HeaderTitle).update(self.format_title())
            except (NoMatches, NoScreen):
                pass

        self.watch(self.app, "title", set_title)
        self.watch(self.app, "sub_title", set_title)
        self.watch(self.screen, "title", set_title)
        self.watch(self.screen, "sub_title", set_title)
