"""Footer that rebuilds its keys only when the shown bindings change."""

from __future__ import annotations

from typing import Any

from textual.screen import Screen
from textual.widgets import Footer


class SteadyFooter(Footer):
    """``Footer`` that skips the rebuild when a focus change leaves the same keys shown.

    Textual 8.2's Footer recomposes (unmounts and mounts every key widget) on each focus or
    binding change, which took about a third of the UI thread's time when switching tabs on
    the progress screen (measured with benchmarks/tui_latency.py under cProfile).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shown_bindings: tuple[Any, ...] | None = None

    def bindings_changed(self, screen: Screen) -> None:
        shown = tuple(
            (binding.key, binding.description, binding.action, enabled, tooltip)
            for _node, binding, enabled, tooltip in screen.active_bindings.values()
            if binding.show or binding.key == self.app.COMMAND_PALETTE_BINDING
        )
        if shown == self._shown_bindings and self._bindings_ready:
            return
        self._shown_bindings = shown
        super().bindings_changed(screen)
