"""Totals per stage, and the line with bytes, rates and time left, from a ``StatsSnapshot``."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

from spmt_tui.engine.progress import STAGES, StatsSnapshot
from spmt_tui.tui.widgets.format import human_bytes, human_duration, human_rate

STAGE_LABELS = {stage: stage.capitalize() for stage in STAGES}


class StageCount(Static):
    """One stage: its name over its count."""

    def __init__(self, stage: str) -> None:
        super().__init__("", id=f"stage-{stage}", classes=f"stage-count -{stage}")
        self.stage = stage
        self.count: int | None = None

    def set_count(self, count: int) -> None:
        if count != self.count:
            self.count = count
            # The cell has a fixed size, so a new count needs a repaint but no new layout.
            self.update(f"{STAGE_LABELS[self.stage]}\n[b]{count:,}[/b]", layout=False)


class StageTotals(Horizontal):
    """The seven stage counters in one row."""

    def compose(self) -> ComposeResult:
        for stage in STAGES:
            yield StageCount(stage)

    def on_mount(self) -> None:
        for widget in self.query(StageCount):
            widget.set_count(0)

    def show(self, counts: dict[str, int]) -> None:
        for widget in self.query(StageCount):
            widget.set_count(int(counts.get(widget.stage, 0)))


def rate_line(snapshot: StatsSnapshot) -> str:
    """Return bytes uploaded, rates, time left, jobs and throttling as one line of markup."""
    parts = [
        f"[b]{human_bytes(snapshot.bytes_uploaded)}[/b] of {human_bytes(snapshot.bytes_total)}",
        f"{human_rate(snapshot.rate_bytes)}",
        f"{snapshot.rate_files:.0f} files/s",
        f"left [b]{human_duration(snapshot.eta_seconds)}[/b]",
    ]
    if snapshot.jobs_running:
        parts.append(f"jobs {snapshot.jobs_running}")
    if snapshot.throttled:
        parts.append(f"throttled {snapshot.throttled}× ({human_duration(snapshot.throttled_seconds)})")
    return " · ".join(parts)
