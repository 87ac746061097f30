"""Hand-over between the engine thread and the UI thread.

The engine calls ``EventBuffer`` (its ``EventSink``) from its own thread and event loop. The
call only appends to a bounded ``collections.deque``, whose appends and pops are thread-safe
(Python documentation of ``collections.deque``), so the engine takes no lock the UI holds.
The UI drains the buffer from a timer.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field
from typing import Any

from spmt_tui.engine.progress import EngineEvent, ItemEvent, LogEvent, PhaseEvent
from spmt_tui.logs import redact

MAX_BUFFERED_ITEMS = 50_000
"""Item events kept between two drains; older ones are dropped (the counts come from Stats)."""

MAX_BUFFERED_LOGS = 5_000


@dataclass
class Drained:
    """Events taken from the buffer by one drain, oldest first."""

    items: list[ItemEvent] = field(default_factory=list)
    logs: list[LogEvent] = field(default_factory=list)
    phases: list[PhaseEvent] = field(default_factory=list)


class EventBuffer:
    """``EventSink`` that buffers engine events for the UI timer."""

    def __init__(self, max_items: int = MAX_BUFFERED_ITEMS, max_logs: int = MAX_BUFFERED_LOGS) -> None:
        self._items: collections.deque[ItemEvent] = collections.deque(maxlen=max_items)
        self._logs: collections.deque[LogEvent] = collections.deque(maxlen=max_logs)
        self._phases: collections.deque[PhaseEvent] = collections.deque(maxlen=256)

    def __call__(self, event: EngineEvent) -> None:
        if isinstance(event, ItemEvent):
            self._items.append(event)
        elif isinstance(event, LogEvent):
            self._logs.append(event)
        elif isinstance(event, PhaseEvent):
            self._phases.append(event)

    def drain(self) -> Drained:
        """Take every buffered event (called from the UI thread)."""
        return Drained(items=_take_all(self._items), logs=_take_all(self._logs),
                       phases=_take_all(self._phases))


class BufferLogHandler(logging.Handler):
    """Logging handler that turns ``spmt.*`` records of a run into ``LogEvent`` objects.

    The engine sends few ``LogEvent`` objects (errors, mostly), while its logger records
    describe each step, so the log tab shows both. Records are formatted in the thread that
    logs them, which costs that thread one string format and one deque append.
    """

    def __init__(self, buffer: EventBuffer, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break the engine
            message = str(record.msg)
        self.buffer(LogEvent(record.levelname.lower(), f"{record.name}: {message}"))


def _take_all(queue: collections.deque[Any]) -> list[Any]:
    taken = []
    while True:
        try:
            taken.append(queue.popleft())
        except IndexError:
            return taken


def log_line(event: LogEvent) -> str:
    """Return a log event as one line for the Log widget, with secrets redacted."""
    text = redact(event.message.replace("\n", " "))
    return f"{event.level.upper():<7} {text}"
