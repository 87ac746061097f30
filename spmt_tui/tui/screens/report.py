"""Report screen: how the migration ended and where its report files are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import OptionList, Static
from textual.widgets.option_list import Option

from spmt_tui.tui.screens.modals import MessageModal
from spmt_tui.tui.widgets.footer import SteadyFooter
from spmt_tui.tui.widgets.format import human_bytes
from spmt_tui.tui.widgets.header import AppHeader

PREVIEW_LINES = 40

STATUS_TEXT = {
    "completed": "Migration completed",
    "completed_with_failures": "Migration completed with failures",
    "failed": "Migration failed",
    "cancelled": "Migration cancelled",
    "interrupted": "Migration interrupted",
    "scan_only": "Scan finished (nothing uploaded)",
    "stopped_after_scan": "Stopped after the scan: review the scan reports, then resume",
}


def report_files(folder: Path) -> list[Path]:
    """Return the CSV files in the report folder (and its sub-folders), sorted by path."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.rglob("*.csv") if path.is_file())


REPORT_STAGES = ("scanned", "migrated", "skipped", "failed")
"""Counts a finished run reports; the stages in between are empty once every item is done."""


def counts_line(counts: dict[str, int]) -> str:
    """Return the final counts, then files, folders and bytes when the engine reports them."""
    # A no-break space keeps each label on the same line as its number when the line wraps.
    shown = [f"{stage}\u00a0[b]{counts[stage]:,}[/b]" for stage in REPORT_STAGES if stage in counts]
    for key in ("files", "folders"):
        if key in counts:
            shown.append(f"{key}\u00a0[b]{counts[key]:,}[/b]")
    if "bytes" in counts:
        shown.append(f"size\u00a0[b]{human_bytes(counts['bytes'])}[/b]")
    return " · ".join(shown) or "no items"


def preview(path: Path, lines: int = PREVIEW_LINES) -> str:
    """Return the first ``lines`` lines of a text file (for a quick look at a CSV report)."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace") as handle:
            head = [next(handle, "") for _ in range(lines)]
    except OSError as error:
        return f"cannot read {path}: {error.strerror}"
    text = "".join(head).rstrip("\n")
    return text or "(empty file)"


class ReportScreen(Screen[None]):
    """Summary of a finished run: status, counts, message, report folder and its CSV files."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("c", "copy_path", "Copy folder path"),
        Binding("n", "new", "New migration"),
        Binding("s", "app.sessions", "Sessions"),
    ]

    def __init__(self, result: Any, tasks: list[str]) -> None:
        super().__init__()
        self.status = str(result.status)
        self.counts = dict(result.counts or {})
        self.message = str(result.message or "")
        self.report_dir = Path(result.report_dir)
        self.tasks = tasks

    def compose(self) -> ComposeResult:
        yield AppHeader()
        with Vertical(id="report"):
            yield Static(STATUS_TEXT.get(self.status, self.status), id="report-status",
                         classes=f"screen-title -{self.status}")
            for number, task in enumerate(self.tasks, start=1):
                yield Static(f"{number}. {escape(task)}", classes="report-task")
            yield Static(counts_line(self.counts), id="report-counts")
            if self.message:
                yield Static(escape(self.message), id="report-message")
            yield Static(f"Report folder: [b]{escape(str(self.report_dir))}[/b]", id="report-folder")
            yield Static("Report files (Enter shows the first lines):", classes="section-title")
            yield OptionList(id="report-files")
        yield SteadyFooter()

    def on_mount(self) -> None:
        files = self.query_one("#report-files", OptionList)
        found = report_files(self.report_dir)
        if not found:
            files.add_option(Option(f"no CSV files in {self.report_dir}", disabled=True))
        for path in found:
            size = human_bytes(path.stat().st_size)
            files.add_option(Option(f"{path.relative_to(self.report_dir)}  [dim]{size}[/dim]", id=str(path)))
        files.focus()

    @on(OptionList.OptionSelected, "#report-files")
    def _file_chosen(self, event: OptionList.OptionSelected) -> None:
        if event.option.id:
            path = Path(event.option.id)
            self.app.push_screen(MessageModal(path.name, preview(path)))

    def action_copy_path(self) -> None:
        self.app.copy_to_clipboard(str(self.report_dir))
        self.app.notify(str(self.report_dir), title="Report folder (copied)", timeout=6)

    def action_new(self) -> None:
        from spmt_tui.tui.screens.signin import SignInScreen

        while len(self.app.screen_stack) > 1:
            self.app.pop_screen()
        plan = self.app.new_plan()
        self.app.push_screen(SignInScreen(profile_path=plan.profile_path))


class SessionReportScreen(ReportScreen):
    """The report of a finished session read from the session list."""

    def __init__(self, info: Any) -> None:
        class _Result:
            status = getattr(info, "status", "")
            counts = getattr(info, "counts", {}) or {}
            message = getattr(info, "message", "") or ""
            report_dir = getattr(info, "report_dir", "")

        super().__init__(_Result, [str(task) for task in getattr(info, "tasks", [])])
