"""Settings step: every field of ``Settings``, grouped by its metadata group.

The form is built from the dataclass fields and their metadata (help text, group, flag), the
same description the command line's ``add_arguments`` uses, and the values go back through
``Settings.from_json`` and ``Settings.validate``, so both front ends accept the same input.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Checkbox, Input, Static

from spmt_tui.engine.settings import Settings, SettingsError
from spmt_tui.tui.plan import format_setting
from spmt_tui.tui.screens.wizard import WizardStep, field_row


def field_kind(item: dataclasses.Field[Any]) -> str:
    """Return ``bool``, ``int``, ``float`` or ``text`` for a Settings field."""
    kind = str(item.type)
    if kind == "bool":
        return "bool"
    if kind in ("int", "float"):
        return kind
    return "text"


def is_optional(item: dataclasses.Field[Any]) -> bool:
    return "None" in str(item.type)


def setting_groups() -> dict[str, list[dataclasses.Field[Any]]]:
    """Return the Settings fields by metadata group, groups in order of first appearance."""
    groups: dict[str, list[dataclasses.Field[Any]]] = {}
    for item in dataclasses.fields(Settings):
        groups.setdefault(item.metadata.get("group", "General"), []).append(item)
    return groups


def flag_of(item: dataclasses.Field[Any]) -> str:
    return item.metadata.get("flag") or "--" + item.name.replace("_", "-")


def label_of(item: dataclasses.Field[Any]) -> str:
    return item.name.replace("_", " ").capitalize()


class SettingsScreen(WizardStep):
    """Edit the migration settings; Ctrl+D restores SPMT's defaults."""

    STEP = "Settings"

    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("ctrl+n", "next", "Next", priority=True),
        Binding("ctrl+d", "defaults", "SPMT defaults"),
    ]

    def compose(self) -> ComposeResult:
        settings = self.app.plan.settings
        yield from self.compose_header()
        with VerticalScroll(classes="form", id="settings-form"):
            for group, items in setting_groups().items():
                yield Static(group, classes="section-title")
                for item in items:
                    yield from self._compose_field(item, getattr(settings, item.name))
        yield from self.compose_footer()

    def _compose_field(self, item: dataclasses.Field[Any], value: Any) -> ComposeResult:
        help_text = f"{item.metadata.get('help', '')} ({flag_of(item)})"
        yield field_row(label_of(item), self._editor(item, value))
        yield Static(help_text, classes="setting-help", markup=False)

    @staticmethod
    def _editor(item: dataclasses.Field[Any], value: Any) -> Widget:
        widget_id = f"setting-{item.name}"
        kind = field_kind(item)
        if kind == "bool":
            return Checkbox("on" if value else "off", bool(value), id=widget_id, compact=True)
        input_type = {"int": "integer", "float": "number"}.get(kind, "text")
        placeholder = "(not set)" if is_optional(item) else ""
        return Input(format_setting(value), type=input_type, placeholder=placeholder, id=widget_id,
                     compact=True)

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        event.checkbox.label = "on" if event.value else "off"

    def on_mount(self) -> None:
        super().on_mount()
        first = dataclasses.fields(Settings)[0]
        self.query_one(f"#setting-{first.name}").focus()

    def read_form(self) -> Settings:
        """Return the settings typed in the form; raises ``SettingsError`` on invalid input."""
        values: dict[str, Any] = {}
        for item in dataclasses.fields(Settings):
            widget = self.query_one(f"#setting-{item.name}")
            if isinstance(widget, Checkbox):
                values[item.name] = widget.value
                continue
            assert isinstance(widget, Input)
            text = widget.value.strip()
            if not text and is_optional(item):
                values[item.name] = None
            elif not text and item.name == "working_folder":
                values[item.name] = str(Settings().working_folder)
            else:
                values[item.name] = text
        settings = Settings.from_json(values)
        settings.validate()
        return settings

    def action_defaults(self) -> None:
        defaults = Settings()
        for item in dataclasses.fields(Settings):
            widget = self.query_one(f"#setting-{item.name}")
            value = getattr(defaults, item.name)
            if isinstance(widget, Checkbox):
                widget.value = bool(value)
            elif isinstance(widget, Input):
                widget.value = format_setting(value)
        self.app.notify("SPMT's default settings restored.", timeout=3)

    def save(self) -> bool:
        try:
            settings = self.read_form()
        except SettingsError as error:
            self.show_error(f"Settings: {error}")
            return False
        self.app.plan.settings = settings
        return True

    def go_next(self) -> None:
        from spmt_tui.tui.screens.review import ReviewScreen

        self.app.push_screen(ReviewScreen())
