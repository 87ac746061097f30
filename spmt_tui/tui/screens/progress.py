"""Progress screen: live totals, throughput, per-file list, failures, log; pause and cancel.

Everything here is read on timers. Every ``TICK_SECONDS`` the screen drains the event buffer
(log lines, phases, item events) and copies ``stats.snapshot()``; the file lists refetch at
most every ``LIST_REFRESH_SECONDS``. The engine thread is never called except for pause,
resume and cancel.
"""

from __future__ import annotations

import time
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import (
    Checkbox,
    Input,
    Log,
    ProgressBar,
    Sparkline,
    Static,
    TabbedContent,
    TabPane,
)

from spmt_tui.engine.progress import StatsSnapshot
from spmt_tui.tui.bridge import log_line
from spmt_tui.tui.rows import FILTER_STATES
from spmt_tui.tui.screens.modals import FileDetailsModal
from spmt_tui.tui.widgets.file_list import FAILURE_COLUMNS, FileList
from spmt_tui.tui.widgets.footer import SteadyFooter
from spmt_tui.tui.widgets.format import human_duration
from spmt_tui.tui.widgets.header import AppHeader
from spmt_tui.tui.widgets.totals import StageTotals, rate_line

TICK_SECONDS = 0.25
LIST_REFRESH_SECONDS = 1.0
IDLE_LIST_REFRESH_SECONDS = 2.0
GRAPH_REFRESH_SECONDS = 1.0
"""Minimum time between two redraws of the byte bar and the throughput graph.

Each redraw repaints several widgets, and a key press that arrives during one waits for it,
so the parts that change a little every tick are drawn at most once a second.
"""
LOG_MAX_LINES = 5_000

FINAL_PHASES = frozenset({"completed", "completed_with_failures", "failed", "cancelled",
                          "interrupted", "scan_only", "stopped_after_scan"})


def task_summary(tasks: list[str]) -> str:
    if not tasks:
        return "Resuming…"
    if len(tasks) == 1:
        return tasks[0]
    return f"{len(tasks)} tasks · {tasks[0]} …"


class ProgressScreen(Screen[None]):
    """Live view of the app's active run."""

    BINDINGS = [
        Binding("p", "pause", "Pause"),
        Binding("r", "resume", "Resume"),
        Binding("c", "cancel", "Cancel"),
        Binding("slash", "search", "Search"),
        Binding("s", "cycle_state", "State"),
        Binding("f", "toggle_follow", "Follow"),
        Binding("o", "report", "Report"),
        Binding("escape", "leave_search", "List", show=False),
        Binding("1", "tab('files')", "Files", show=False),
        Binding("2", "tab('failures')", "Failures", show=False),
        Binding("3", "tab('log')", "Log", show=False),
        Binding("4", "tab('tasks')", "Tasks", show=False),
        Binding("h", "home", "Start", show=False),
        # The app asks for confirmation while the migration runs.
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._last_list_refresh = 0.0
        self._items_since_refresh = 0
        self._snapshot: StatsSnapshot | None = None
        self._phase = "starting"
        self._phase_detail = ""
        self._shown: dict[str, str] = {}  # last text set on each fixed-size line, by widget id
        self._last_graph_refresh = 0.0

    def compose(self) -> ComposeResult:
        run = self.app.active_run
        yield AppHeader()
        with Vertical(id="run-head"):
            yield Static(escape(task_summary(run.tasks if run else [])), id="run-tasks")
            yield Static("", id="run-phase")
            yield StageTotals(id="totals")
            yield Static("", id="run-rates")
            with Horizontal(id="run-bars"):
                yield ProgressBar(total=None, show_eta=False, id="bytes-bar")
                yield Sparkline([], id="throughput")
        with TabbedContent(id="run-tabs", initial="files"):
            with TabPane("1 Files", id="files"):
                with Horizontal(id="file-filters"):
                    yield Input(placeholder="/ search by name", id="search", compact=True)
                    yield Static("", id="state-filter")
                    yield Checkbox("Follow newest", False, id="follow", compact=True)
                yield FileList(run.rows if run else None, id="file-list")
            with TabPane("2 Failures", id="failures"):
                yield FileList(run.rows if run else None, columns=FAILURE_COLUMNS, state_filter="failed",
                               id="failure-list")
            with TabPane("3 Log", id="log"):
                yield Log(max_lines=LOG_MAX_LINES, id="run-log")
            with TabPane("4 Tasks", id="tasks"):
                yield Static("", id="task-list")
        yield SteadyFooter()

    def on_mount(self) -> None:
        self._show_state_filter()
        self._show_tasks()
        self._show_phase()
        self.set_interval(TICK_SECONDS, self.tick)
        self.watch(self.query_one("#file-list", FileList), "follow", self._follow_changed)
        self.query_one("#file-list", FileList).focus()
        self.tick()

    # -- timer ----------------------------------------------------------------------------------

    def engine_changed(self) -> None:
        """Called by the app when the engine started or finished."""
        run = self.app.active_run
        if run is None:
            return
        for file_list in self.query(FileList):
            if file_list.source is not run.rows:
                file_list.set_source(run.rows)
        self._show_tasks()
        self.tick()
        self.refresh_bindings()

    def tick(self) -> None:
        run = self.app.active_run
        if run is None:
            return
        drained = run.buffer.drain()
        if drained.logs:
            self.query_one("#run-log", Log).write_lines([log_line(event) for event in drained.logs])
        for phase in drained.phases:
            self._phase, self._phase_detail = phase.phase, phase.detail
        if drained.items:
            run.rows.apply(drained.items)
            self._items_since_refresh += len(drained.items)
        if run.migration is not None:
            self._show_snapshot(run.migration.stats.snapshot())
        self._show_phase()
        self._maybe_refresh_lists()

    def _set_line(self, widget_id: str, text: str) -> None:
        """Update a fixed-size line only when its text changed, without a layout pass.

        A layout pass of this screen costs several milliseconds, and a key press that arrives
        during one waits for it, so the timers avoid them.
        """
        if self._shown.get(widget_id) != text:
            self._shown[widget_id] = text
            self.query_one(f"#{widget_id}", Static).update(text, layout=False)

    def _show_snapshot(self, snapshot: StatsSnapshot) -> None:
        self._snapshot = snapshot
        self.query_one(StageTotals).show(snapshot.counts)
        self._set_line("run-rates", rate_line(snapshot))
        now = time.monotonic()
        if now - self._last_graph_refresh >= GRAPH_REFRESH_SECONDS:
            self._last_graph_refresh = now
            self._show_graphs(snapshot)
        if snapshot.phase and snapshot.phase != "starting":
            self._phase = snapshot.phase
            self._phase_detail = snapshot.message or self._phase_detail

    def _show_graphs(self, snapshot: StatsSnapshot) -> None:
        bar = self.query_one("#bytes-bar", ProgressBar)
        if snapshot.bytes_total and (bar.total != snapshot.bytes_total
                                     or bar.progress != snapshot.bytes_uploaded):
            bar.update(total=snapshot.bytes_total, progress=snapshot.bytes_uploaded)
        sparkline = self.query_one("#throughput", Sparkline)
        history = list(snapshot.history[-120:])
        if not any(history):
            history = []  # Sparkline scales to the data, so all zeros would draw full bars.
        if history != sparkline.data:
            sparkline.data = history

    def _show_phase(self) -> None:
        run = self.app.active_run
        phase = self._phase
        detail = self._phase_detail
        if run is not None and run.error:
            phase, detail = "failed", run.error
        elif run is not None and run.result is not None:
            phase, detail = run.result.status, run.result.message
        elif run is not None and run.paused:
            phase = "paused"

        session = run.session_id if run else ""
        text = f"[b]{escape(phase)}[/b]"
        if self._snapshot is not None:
            text += f"  elapsed {human_duration(self._snapshot.elapsed)}"
        if session:
            text += f"  [dim]session {escape(session)}[/dim]"
        if detail and detail not in (run.tasks if run else []):
            text += f"  {escape(detail)}"
        self._set_line("run-phase", text)

        widget = self.query_one("#run-phase", Static)
        if phase == "paused":
            phase_class = "-paused"
        elif phase in ("failed", "cancelled", "completed_with_failures"):
            phase_class = "-failed"
        elif phase in FINAL_PHASES:
            phase_class = "-finished"
        else:
            phase_class = ""
        for state in ("-paused", "-failed", "-finished"):
            # set_class restyles the widget even when nothing changes, so compare first.
            if widget.has_class(state) != (state == phase_class):
                widget.set_class(state == phase_class, state)

    def _maybe_refresh_lists(self) -> None:
        now = time.monotonic()
        elapsed = now - self._last_list_refresh
        interval = LIST_REFRESH_SECONDS if self._items_since_refresh else IDLE_LIST_REFRESH_SECONDS
        if elapsed < interval:
            return
        self._last_list_refresh = now
        self._items_since_refresh = 0
        active = self.query_one("#run-tabs", TabbedContent).active
        if active == "files":
            self.query_one("#file-list", FileList).reload()
        elif active == "failures":
            self.query_one("#failure-list", FileList).reload()

    def _show_tasks(self) -> None:
        run = self.app.active_run
        tasks = run.tasks if run else []
        lines = [f"{number}. {escape(task)}" for number, task in enumerate(tasks, start=1)]
        if run is not None and run.migration is not None:
            lines.append("")
            lines.append(f"Session folder: {escape(str(run.migration.session_dir))}")
            lines.append(f"Log file:       {escape(str(run.migration.log_path))}")
            lines.append(f"Reports:        {escape(str(run.migration.report_dir))}")
        self.query_one("#task-list", Static).update("\n".join(lines) or "No tasks yet.")
        self.query_one("#run-tasks", Static).update(escape(task_summary(tasks)))

    # -- filters --------------------------------------------------------------------------------

    def _show_state_filter(self) -> None:
        state = self.query_one("#file-list", FileList).state_filter
        counts = self._snapshot.counts if self._snapshot else {}
        count = f" ({counts[state]:,})" if state in counts else ""
        self._set_line("state-filter", f"State: [b]{state}[/b]{count}  [dim]s[/dim]")

    def action_cycle_state(self) -> None:
        file_list = self.query_one("#file-list", FileList)
        index = FILTER_STATES.index(file_list.state_filter) if file_list.state_filter in FILTER_STATES else -1
        file_list.state_filter = FILTER_STATES[(index + 1) % len(FILTER_STATES)]
        self._show_state_filter()
        self.action_tab("files")

    def action_search(self) -> None:
        self.action_tab("files")
        self.query_one("#search", Input).focus()

    @on(Input.Changed, "#search")
    def _search_changed(self, event: Input.Changed) -> None:
        self.query_one("#file-list", FileList).search = event.value.strip()

    @on(Input.Submitted, "#search")
    def _search_submitted(self) -> None:
        self.query_one("#file-list", FileList).focus()

    def action_leave_search(self) -> None:
        self.query_one("#file-list", FileList).focus()

    def action_toggle_follow(self) -> None:
        file_list = self.query_one("#file-list", FileList)
        file_list.follow = not file_list.follow
        self.action_tab("files")

    @on(Checkbox.Changed, "#follow")
    def _follow_checked(self, event: Checkbox.Changed) -> None:
        self.query_one("#file-list", FileList).follow = event.value

    def _follow_changed(self, follow: bool) -> None:
        checkbox = self.query_one("#follow", Checkbox)
        if checkbox.value != follow:
            with checkbox.prevent(Checkbox.Changed):
                checkbox.value = follow

    @on(FileList.Selected)
    def _file_selected(self, event: FileList.Selected) -> None:
        self.app.push_screen(FileDetailsModal(event.row))

    @on(TabbedContent.TabActivated, "#run-tabs")
    def _tab_activated(self) -> None:
        # The next tick fetches the list of the new tab, so the frame that shows the tab switch
        # does not also wait for a list query and a full repaint of the list.
        self._last_list_refresh = 0.0

    def action_tab(self, tab: str) -> None:
        tabs = self.query_one("#run-tabs", TabbedContent)
        if tabs.active != tab:
            tabs.active = tab
        focus = {"files": "#file-list", "failures": "#failure-list", "log": "#run-log"}.get(tab)
        if focus and not isinstance(self.focused, Input):
            self.query_one(focus).focus()

    # -- run control ----------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        run = self.app.active_run
        running = run is not None and run.migration is not None and not run.finished
        if action == "pause":
            return running and run is not None and not run.paused
        if action == "resume":
            return running and run is not None and run.paused
        if action == "cancel":
            return running
        if action == "report":
            return run is not None and run.result is not None
        return True

    def action_pause(self) -> None:
        self.app.pause_run()
        self.refresh_bindings()
        self._show_phase()

    def action_resume(self) -> None:
        self.app.resume_run()
        self.refresh_bindings()
        self._show_phase()

    def action_cancel(self) -> None:
        self.app.cancel_run()

    def action_report(self) -> None:
        run: Any = self.app.active_run
        if run is not None and run.result is not None:
            from spmt_tui.tui.screens.report import ReportScreen

            self.app.push_screen(ReportScreen(run.result, run.tasks))

    def action_home(self) -> None:
        self.app.pop_screen()
