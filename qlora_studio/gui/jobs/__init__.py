"""Page jobs: long work off the GUI thread, one type for every page, one registry for the window.

- ``ChildJob`` (``child.py``): the CLI as a child process, its JSON events as signals — for
  everything that allocates model weights (train, resume, export, probe, eval).
- ``ThreadJob`` (``thread.py``): a function in a thread (superqt's worker) — for work that only
  reads configs and tokenizers.
- ``JobRegistry`` (here): the jobs each page runs, by slot. Starting a job in a slot drops the
  one running there (it is asked to stop and nothing it still sends reaches the page, Orange3's
  ``ConcurrentMixin``); ``stop_all`` ends every job when the window closes.

Signals (``base.Job``): ``started``, ``status(str)``, ``progress(dict)``, ``event(dict)``,
``log(str)``, then exactly one of ``succeeded(result)`` / ``failed(message, hint)`` /
``cancelled(dict)``, and ``finished()`` last, for teardown only. Only plain data crosses threads.
Event payloads use ``Signal(object)``: PySide6 turns a ``Signal(dict)`` payload into a
QVariantMap, which silently empties dicts with non-string keys and clips big integers. Connect
them to methods of GUI-thread QObjects: in PySide6 a lambda connected to a signal sent from
another thread runs in that thread (the jobs send every public signal from the GUI thread).
"""

from __future__ import annotations

import time
from collections.abc import Hashable

from PySide6.QtCore import QCoreApplication, QObject, Signal, Slot

from qlora_studio.gui.jobs.base import Job
from qlora_studio.gui.jobs.child import ChildJob
from qlora_studio.gui.jobs.thread import ThreadJob

__all__ = ["ChildJob", "Job", "JobRegistry", "ThreadJob"]

KILL_WAIT_S = 10.0  # after a kill, how long the reading threads get to report the end


class JobRegistry(QObject):
    """Every running job, and the one current job of each slot (a slot is any hashable key,
    e.g. ``(page, "inspect")``)."""

    busy_changed = Signal()  # a job started or ended

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._current: dict[Hashable, Job] = {}
        self._running: list[Job] = []

    def start(self, slot: Hashable, job: Job) -> Job:
        """Drop the job running in ``slot`` (if any), then start ``job`` there."""
        old = self._current.get(slot)
        if old is not None and old.running:
            old.drop()
        self._current[slot] = job
        self._running.append(job)
        job.ended.connect(self._on_ended)
        job.start()
        self.busy_changed.emit()
        return job

    def current(self, slot: Hashable) -> Job | None:
        """The job running in ``slot``, or None."""
        job = self._current.get(slot)
        return job if job is not None and job.running else None

    def busy_slots(self) -> list[Hashable]:
        """The slots whose current job is running."""
        return [slot for slot, job in self._current.items() if job.running]

    def running(self) -> list[Job]:
        """Every job whose work has not ended yet, dropped ones included."""
        return [job for job in self._running if job.running]

    def stop(self, slot: Hashable) -> None:
        """Ask the job in ``slot`` to stop (its outcome will be ``cancelled``)."""
        job = self.current(slot)
        if job is not None:
            job.request_stop()

    @Slot(object)
    def _on_ended(self, job: Job) -> None:
        if job in self._running:
            self._running.remove(job)
        for slot, current in list(self._current.items()):
            if current is job:
                del self._current[slot]
        self.busy_changed.emit()

    def stop_all(self, timeout_s: float = 120.0) -> None:
        """The window is closing: ask every job to stop (a training run saves a checkpoint;
        each child is killed after its own grace), wait up to ``timeout_s``, then kill the
        children still running. Returns when every job has ended, or gives up on threads that
        never check their cancel event."""
        jobs = self.running()
        for job in jobs:
            job.request_stop()
        if not self._wait(timeout_s):
            for job in self.running():
                job.kill()
            self._wait(KILL_WAIT_S)

    def _wait(self, timeout_s: float) -> bool:
        app = QCoreApplication.instance()
        deadline = time.monotonic() + timeout_s
        while self.running() and time.monotonic() < deadline:
            if app is not None:
                app.processEvents()
            time.sleep(0.02)
        return not self.running()
