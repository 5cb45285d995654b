"""A page job that runs a function in a thread, for in-process work that holds no model weights
(inspect a model's config, convert the demo GGUF, analyse a dataset with its tokenizer).

The thread is superqt's (``superqt.utils.create_worker``: a ``QRunnable`` in the global
``QThreadPool``, the bookkeeping napari uses). The function is called as
``fn(reporter, cancel_event, *args, **kwargs)``: its events (``status``, ``progress``, any
other) become signals, it should check ``cancel_event.is_set()`` and may raise ``Cancelled``.
superqt's ``returned`` / ``errored`` become ``succeeded`` / ``failed(message, hint)`` /
``cancelled``; warnings the function raises go to the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, Slot

from qlora_studio.core.errors import Cancelled, StudioError
from qlora_studio.core.lazy_imports import import_ml_stack
from qlora_studio.gui.jobs.base import Job

_logger = logging.getLogger(__name__)


class _Reporter:
    """The Reporter handed to the function: its events are queued for the GUI thread."""

    def __init__(self, job: ThreadJob):
        self._job = job

    def emit(self, event: dict[str, Any]) -> None:
        self._job._send_event(dict(event))


class ThreadJob(Job):
    """``fn(reporter, cancel_event, *args, **kwargs) -> result`` in a pool thread.
    ``needs_ml`` imports torch / transformers / peft first, under a lock (one thread at a time
    through transformers' first import)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        needs_ml: bool = True,
        parent: QObject | None = None,
        **kwargs: Any,
    ):
        super().__init__(parent)
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.needs_ml = needs_ml
        self.cancel_event = threading.Event()
        self._worker = None
        self._outcome_sent = False

    def request_stop(self) -> None:
        """Ask the function to stop (it sees the cancel event set). Thread-safe."""
        self.cancel_event.set()

    def _begin(self) -> None:
        from superqt.utils import create_worker

        worker = create_worker(self._call, _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_errored)
        worker.warned.connect(self._on_warned)
        worker.finished.connect(self._on_worker_finished)
        self._worker = worker  # alive until it finishes
        worker.start()

    def _call(self) -> Any:
        """Runs in the pool thread."""
        if self.cancel_event.is_set():
            raise Cancelled("Cancelled before it started")
        if self.needs_ml:
            import_ml_stack()
        return self.fn(_Reporter(self), self.cancel_event, *self.args, **self.kwargs)

    # superqt's signals arrive here, queued in the GUI thread after the function's own events
    @Slot(object)
    def _on_returned(self, result: Any) -> None:
        if self.cancel_event.is_set():
            self._outcome("cancelled", {})
        else:
            self._outcome("succeeded", result)

    @Slot(object)
    def _on_errored(self, exc: Exception) -> None:
        # a function interrupted half-way may fail in its own way: the stop still wins
        if isinstance(exc, Cancelled) or self.cancel_event.is_set():
            self._outcome("cancelled", {})
        elif isinstance(exc, StudioError):
            self._outcome("failed", (exc.message, exc.hint))
        else:
            name = getattr(self.fn, "__name__", "task")
            _logger.error("%s failed", name, exc_info=(type(exc), exc, exc.__traceback__))
            self._outcome("failed", (f"{type(exc).__name__}: {exc}", "See the log for details."))

    @Slot(object)
    def _on_warned(self, warning: tuple) -> None:
        message, category = warning[0], warning[1]
        _logger.warning("%s: %s", getattr(category, "__name__", "Warning"), message)

    @Slot()
    def _on_worker_finished(self) -> None:
        if not self._outcome_sent:  # superqt returned nothing (it never happens, but be sure)
            self._outcome("cancelled", {})
        self._worker = None
        self._deliver("ended", None)

    def _outcome(self, kind: str, payload: Any) -> None:
        if not self._outcome_sent:
            self._outcome_sent = True
            self._deliver(kind, payload)
