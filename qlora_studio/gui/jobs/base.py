"""What every page job shares: its signals, their order, and dropping a replaced job.

The background side (a thread, or the thread reading a child process) never emits a public
signal itself: it posts ``(kind, payload)`` through one queued signal to ``_deliver`` in the
GUI thread, so everything arrives there in the order it was sent. ``drop()`` detaches the job:
whatever is still queued, and whatever comes later, never reaches the page (a stale result).
"""

from __future__ import annotations

import logging
from typing import Any

from PySide6.QtCore import QObject, Qt, Signal, Slot

_logger = logging.getLogger(__name__)


class Job(QObject):
    """One piece of long work a page started. Exactly one of ``succeeded`` / ``failed`` /
    ``cancelled`` comes, then ``finished`` (teardown only) — unless the job was dropped, after
    which nothing comes. ``ended`` fires when the background work is really over, dropped or
    not (the registry listens to it)."""

    started = Signal()
    status = Signal(str)
    progress = Signal(object)  # dict: a progress event
    event = Signal(object)  # dict: every event, before the signal made from it
    log = Signal(str)  # lines that are not events (a child's stderr, library warnings)
    succeeded = Signal(object)  # the result: a child's done event, a function's return value
    failed = Signal(str, str)  # message, hint
    cancelled = Signal(object)  # dict: the cancelled event ({} for a function)
    finished = Signal()  # always last; teardown only
    ended = Signal(object)  # this job, when its background work is over (also when dropped)

    _post = Signal(str, object)  # background -> GUI thread, queued

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._dropped = False
        self._started = False
        self._running = False
        self._post.connect(self._deliver, Qt.ConnectionType.QueuedConnection)

    # ---- the page's side --------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """True from ``start()`` until the background work has ended."""
        return self._running

    @property
    def dropped(self) -> bool:
        return self._dropped

    def start(self) -> None:
        """Begin the work in the background (call once, from the GUI thread)."""
        if self._started:
            raise RuntimeError("a job starts once")
        self._started = self._running = True
        self.started.emit()
        self._begin()

    def request_stop(self) -> None:
        """Ask the work to stop; its outcome is then ``cancelled``. Safe at any time."""

    def kill(self) -> None:
        """End the work at once where that is possible (a child process); else as
        ``request_stop``."""
        self.request_stop()

    def drop(self) -> None:
        """Stop the work and detach it: nothing more reaches the page."""
        self._dropped = True
        self.request_stop()

    # ---- the background's side --------------------------------------------------------------
    def _begin(self) -> None:
        raise NotImplementedError

    def _send(self, kind: str, payload: Any = None) -> None:
        """Queue ``kind`` for the GUI thread (any thread)."""
        try:
            self._post.emit(kind, payload)
        except RuntimeError:  # the job's Qt object is gone: nobody is listening
            pass

    def _send_event(self, event: dict[str, Any]) -> None:
        self._send("event", event)

    @Slot(str, object)
    def _deliver(self, kind: str, payload: Any) -> None:
        if kind == "ended":
            self._running = False
            if not self._dropped:
                self.finished.emit()
            self.ended.emit(self)
            return
        if self._dropped:
            return
        if kind == "event":
            self._on_event(payload)
        elif kind == "log":
            self.log.emit(payload)
        elif kind == "succeeded":
            self.succeeded.emit(payload)
        elif kind == "failed":
            self.failed.emit(*payload)
        elif kind == "cancelled":
            self.cancelled.emit(payload)
        else:
            _logger.warning("unknown job message %r", kind)

    def _on_event(self, event: dict[str, Any]) -> None:
        """An event from the work: ``event``, then the signal made from its type."""
        self.event.emit(event)
        kind = event.get("type")
        if kind == "status":
            self.status.emit(str(event.get("message", "")))
        elif kind == "progress":
            self.progress.emit(event)
