"""The per-file list: a line-API view that renders only the visible rows of a ``RowSource``.

Rows are fetched a window at a time in a thread worker, so a query over 100,000 files never
runs on the UI thread, and only about three screens of rows are held in memory. The list
fetches again only when ``reload`` is called and merges calls made while a fetch runs into one
more fetch, so the caller's timer bounds the refresh rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from rich.segment import Segment
from rich.style import Style
from textual import work
from textual.binding import Binding
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

from spmt_tui.tui.rows import FileRow, Page, RowSource
from spmt_tui.tui.widgets.format import human_bytes

log = logging.getLogger("spmt.tui.file_list")


@dataclass(frozen=True)
class Column:
    title: str
    width: int  # cells; 0 shares the remaining width with the other 0-width columns
    weight: int = 1


FILE_COLUMNS = (Column("State", 10), Column("Size", 8), Column("Path", 0, 3),
                Column("Code", 10), Column("Reason", 0, 2))
FAILURE_COLUMNS = (Column("Path", 0, 3), Column("Code", 10), Column("Reason", 0, 4))


def layout_columns(columns: tuple[Column, ...], width: int) -> list[int]:
    """Return the cell width of each column for a list ``width`` cells wide (one-cell gaps)."""
    fixed = sum(column.width for column in columns) + len(columns) - 1
    flexible = [column for column in columns if column.width == 0]
    spare = max(0, width - fixed)
    total_weight = sum(column.weight for column in flexible) or 1
    widths = []
    given = 0
    for column in columns:
        if column.width:
            widths.append(column.width)
        else:
            share = spare * column.weight // total_weight
            widths.append(max(4, share))
            given += share
    if flexible:
        # Rounding leftovers go to the first flexible column so rows fill the width.
        index = columns.index(flexible[0])
        widths[index] += max(0, spare - given)
    return widths


def fit(text: str, width: int, *, right: bool = False, keep_end: bool = False) -> str:
    """Pad or shorten ``text`` to ``width`` cells; paths keep their end (the file name)."""
    if len(text) > width:
        if width <= 1:
            return text[:width]
        text = "…" + text[-(width - 1):] if keep_end else text[:width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


def row_cells(row: FileRow, columns: tuple[Column, ...]) -> list[str]:
    values = {"State": row.state, "Size": human_bytes(row.size) if row.size else "",
              "Path": row.path, "Code": row.code, "Reason": row.message}
    return [values[column.title] for column in columns]


class FileList(ScrollView, can_focus=True):
    """Scrollable list of files with a cursor; Enter posts ``FileList.Selected``."""

    COMPONENT_CLASSES = {
        "file-list--header",
        "file-list--cursor",
        "file-list--pending",
        "file-list--active",
        "file-list--migrated",
        "file-list--skipped",
        "file-list--failed",
    }

    DEFAULT_CSS = """
    FileList {
        height: 1fr;
        background: $surface;
        overflow-x: hidden;
        & > .file-list--header { text-style: bold; background: $panel; color: $foreground; }
        & > .file-list--cursor { background: $primary 40%; }
        &:focus > .file-list--cursor { background: $primary; color: $text; text-style: bold; }
        & > .file-list--pending { color: $state-pending; }
        & > .file-list--active { color: $state-active; }
        & > .file-list--migrated { color: $state-migrated; }
        & > .file-list--skipped { color: $state-skipped; }
        & > .file-list--failed { color: $state-failed; }
    }
    """

    BINDINGS = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("enter", "select", "Details", show=False),
    ]

    state_filter: reactive[str] = reactive("all", init=False)
    search: reactive[str] = reactive("", init=False)
    follow: reactive[bool] = reactive(False, init=False)
    cursor: reactive[int] = reactive(0, init=False)

    class Selected(Message):
        """The user pressed Enter on a row."""

        def __init__(self, row: FileRow) -> None:
            super().__init__()
            self.row = row

    class PageLoaded(Message):
        """A page fetched by the worker thread (or the error that stopped it)."""

        def __init__(self, page: Page | None, generation: int, error: Exception | None = None) -> None:
            super().__init__()
            self.page = page
            self.generation = generation
            self.error = error

    class Totals(Message):
        """A fetch finished; ``total`` rows match the current filter."""

        def __init__(self, total: int) -> None:
            super().__init__()
            self.total = total

    def __init__(self, source: RowSource | None = None, *, columns: tuple[Column, ...] = FILE_COLUMNS,
                 state_filter: str = "all", id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.source = source
        self.columns = columns
        self.set_reactive(FileList.state_filter, state_filter)
        self.total = 0
        self._window: Page = Page(0, 0, ())
        self._fetching = False
        self._fetch_again = False
        self._generation = 0  # bumped when the filter changes, so stale pages are dropped
        self._last_error = ""
        # Row styles and column widths, kept between frames because render_line runs for every
        # visible row of every frame. notify_style_update() and a new width clear them.
        self._row_styles: dict[tuple[str, bool], Style] = {}
        self._widths: tuple[int, list[int]] = (-1, [])

    # -- data -----------------------------------------------------------------------------------

    def set_source(self, source: RowSource | None) -> None:
        self.source = source
        self._generation += 1
        self.reload()

    def reload(self) -> None:
        """Fetch the visible window again (coalesced with a fetch already running)."""
        if self.source is None or not self.is_mounted:
            return
        if self._fetching:
            self._fetch_again = True
            return
        self._fetching = True
        self._fetch_again = False
        height = max(1, self.size.height - 1)
        if self.follow:
            offset, limit = -height, height
        else:
            top = int(self.scroll_y)
            offset = max(0, top - height)
            limit = height * 3
        self._fetch(self.source, self.state_filter, self.search, offset, limit, self._generation)

    @work(thread=True, exclusive=False, group="file-list", exit_on_error=False)
    def _fetch(self, source: RowSource, state: str, search: str, offset: int, limit: int,
               generation: int) -> None:
        try:
            page = source.page(state, search, offset, limit)
        except Exception as error:  # A locked or vanished database must not stop the UI.
            self.post_message(self.PageLoaded(None, generation, error))
            return
        self.post_message(self.PageLoaded(page, generation))

    def on_file_list_page_loaded(self, message: PageLoaded) -> None:
        message.stop()
        self._fetching = False
        page, generation = message.page, message.generation
        if page is None:
            # The timer retries every half second, so log each distinct error once.
            if str(message.error) != self._last_error:
                self._last_error = str(message.error)
                log.warning("file list query on %s failed: %s", self.id, message.error)
        elif generation == self._generation:
            self._window = page
            self.total = page.total
            self.virtual_size = Size(self.size.width, page.total + 1)
            if self.follow:
                self.cursor = max(0, page.total - 1)
                self.scroll_to(y=max(0, page.total + 1 - self.size.height), animate=False)
            elif self.cursor >= page.total:
                self.cursor = max(0, page.total - 1)
            self.refresh()
            self.post_message(self.Totals(page.total))
        if self._fetch_again or generation != self._generation:
            self.reload()

    def row_at(self, index: int) -> FileRow | None:
        position = index - self._window.offset
        if 0 <= position < len(self._window.rows):
            return self._window.rows[position]
        return None

    # -- reactive hooks -------------------------------------------------------------------------

    def _filter_changed(self) -> None:
        self._generation += 1
        self._window = Page(0, 0, ())
        self.cursor = 0
        self.scroll_to(y=0, animate=False)
        self.reload()

    def watch_state_filter(self) -> None:
        self._filter_changed()

    def watch_search(self) -> None:
        self._filter_changed()

    def watch_follow(self, follow: bool) -> None:
        self.reload()

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        top = int(new_value)
        window = self._window
        bottom = top + self.size.height
        if top < window.offset or bottom > window.offset + len(window.rows) + 1:
            if window.offset + len(window.rows) < self.total or top < window.offset:
                self.reload()

    def watch_cursor(self, old: int, new: int) -> None:
        # Repaint only the two rows whose highlight changed; a scroll repaints everything anyway.
        top = int(self.scroll_y)
        for index in (old, new):
            line = index - top + 1
            if 1 <= line < self.size.height:
                self.refresh(Region(0, line, self.size.width, 1))

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, self.total + 1)
        self.reload()

    # -- actions --------------------------------------------------------------------------------

    def _move_cursor(self, index: int) -> None:
        if self.total == 0:
            return
        self.follow = False
        self.cursor = max(0, min(self.total - 1, index))
        body = self.size.height - 1
        top = int(self.scroll_y)
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + body:
            self.scroll_to(y=self.cursor - body + 1, animate=False)

    def action_cursor(self, delta: int) -> None:
        self._move_cursor(self.cursor + delta)

    def action_page(self, direction: int) -> None:
        self._move_cursor(self.cursor + direction * max(1, self.size.height - 2))

    def action_jump(self, where: int) -> None:
        self._move_cursor(0 if where == 0 else self.total - 1)

    def action_select(self) -> None:
        row = self.row_at(self.cursor)
        if row is not None:
            self.post_message(self.Selected(row))

    # -- rendering ------------------------------------------------------------------------------

    def notify_style_update(self) -> None:
        super().notify_style_update()
        self._row_styles.clear()

    def _column_widths(self, width: int) -> list[int]:
        if self._widths[0] != width:
            self._widths = (width, layout_columns(self.columns, width))
        return self._widths[1]

    def _row_style(self, kind: str, cursor: bool) -> Style:
        """Return the style of a row: ``kind`` is a state class name, or "" for a blank row.

        The base style is cached with the rest. It comes from this widget's own background
        ($surface), so an ancestor's restyle does not change it unless it also restyles this
        widget (a theme change does), which clears the cache.
        """
        key = (kind, cursor)
        style = self._row_styles.get(key)
        if style is None:
            style = self.rich_style
            if kind:
                style += self.get_component_rich_style(f"file-list--{kind}")
            if cursor:
                style += self.get_component_rich_style("file-list--cursor")
            self._row_styles[key] = style
        return style

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        widths = self._column_widths(width)
        if y == 0:
            header = " ".join(fit(column.title, size) for column, size in zip(self.columns, widths))
            return Strip([Segment(fit(header, width), self.get_component_rich_style("file-list--header"))])
        index = int(self.scroll_y) + y - 1
        if index >= self.total:
            return Strip.blank(width, self._row_style("", False))
        row = self.row_at(index)
        if row is None:
            return Strip([Segment(fit("  …", width), self._row_style("", False))])
        style = self._row_style(state_class(row.state), index == self.cursor)
        cells = []
        for column, size, value in zip(self.columns, widths, row_cells(row, self.columns)):
            cells.append(fit(value, size, right=column.title == "Size", keep_end=column.title == "Path"))
        return Strip([Segment(fit(" ".join(cells), width), style)])


def state_class(state: str) -> str:
    """Return the component class suffix (``file-list--SUFFIX``) that colours a row's state."""
    if state in ("migrated", "skipped", "failed"):
        return state
    if state in ("scanned", "pending"):
        return "pending"
    return "active"
