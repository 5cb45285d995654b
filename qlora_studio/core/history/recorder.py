"""The Reporter that records a training run in the run history as its events go by."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import StudioError
from qlora_studio.core.events import Reporter, make_event
from qlora_studio.core.history.store import RunHistory, RunHistoryError

WRITE_INTERVAL_S = 2.0  # progress is written at most this often (checkpoints and the end at once)


class RunRecorder:
    """A Reporter that keeps a run's history row up to date from its own event stream.

    Progress, losses and memory are written at most every ``interval_s``; checkpoints and the
    outcome at once. A database that cannot be opened or written costs one status warning
    (sent to ``warn``) and the training goes on.
    """

    def __init__(
        self,
        run_dir: Path,
        config_text: str,
        *,
        method: str = "",
        model_source: str = "",
        resume: bool = False,
        warn: Reporter | None = None,
        db_path: str | os.PathLike[str] | None = None,
        interval_s: float = WRITE_INTERVAL_S,
    ):
        self.run_dir = Path(run_dir)
        self.config_text = config_text
        self.method = method
        self.model_source = model_source
        self.resume = resume
        self.warn = warn
        self.db_path = db_path
        self.interval_s = interval_s
        self.history: RunHistory | None = None
        self.run_id: int | None = None
        self.finished = False
        self._lock = threading.Lock()
        self._failing = False  # a warning was sent and no write has succeeded since
        self._dirty = False
        self._last_write = 0.0
        self._step: int | None = None
        self._total: int | None = None
        self._loss: float | None = None
        self._best: float | None = None
        self._peak: int | None = None
        self._peak_kind: str | None = None
        self._checkpoint: str | None = None

    def start(self) -> int | None:
        """Open the history and record the run as running; return its id (None on failure)."""
        with self._lock:
            try:
                # a short busy timeout: a locked database must not stall training steps
                self.history = RunHistory.open(self.db_path, timeout_s=1.0)
                self.run_id = self.history.start_run(
                    self.run_dir,
                    self.config_text,
                    method=self.method,
                    model_source=self.model_source,
                    resume=self.resume,
                )
                self._last_write = time.monotonic()
            except (RunHistoryError, sqlite3.Error, OSError) as exc:
                self._warn(exc)
            return self.run_id

    def emit(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if self.run_id is None or self.finished or kind == "status":
            return
        outcome = kind in ("done", "cancelled", "error")
        with self._lock:
            if kind == "progress":
                self._step, self._total = event["step"], event["total"]
            elif kind == "metrics" and event.get("loss") is not None:
                self._loss = float(event["loss"])
                self._best = self._loss if self._best is None else min(self._best, self._loss)
            elif kind == "memory":
                self._add_memory(event)
            elif kind == "checkpoint":
                self._checkpoint = event["path"]
            self._dirty = True
            due = time.monotonic() - self._last_write >= self.interval_s
            if not outcome and (kind == "checkpoint" or due):
                self._flush()
        if kind == "done":
            self.finish("done", step=event["step"], adapter_dir=event.get("adapter_dir"))
        elif kind == "cancelled":
            self.finish("cancelled", step=event["step"])
        elif kind == "error":
            self.finish("failed", error=event["message"])

    def finish(
        self,
        status: str,
        *,
        step: int | None = None,
        adapter_dir: str | None = None,
        error: str | None = None,
    ) -> None:
        """Write what is pending and the outcome (once; later calls are ignored)."""
        with self._lock:
            if self.run_id is None or self.finished or self.history is None:
                return
            self.finished = True
            self._flush()
            try:
                self.history.finish_run(
                    self.run_id,
                    status,
                    step=step,
                    final_loss=self._loss,
                    adapter_dir=adapter_dir,
                    error=error,
                )
            except (sqlite3.Error, OSError) as exc:
                self._warn(exc)

    def close(self) -> None:
        with self._lock:
            if self.history is not None:
                self.history.close()
                self.history = None

    def _add_memory(self, event: dict[str, Any]) -> None:
        gpu = [
            event[key]
            for key in ("torch_peak_bytes", "torch_reserved_bytes", "nvml_used_bytes")
            if isinstance(event.get(key), int)
        ]
        value, kind = (max(gpu), "GPU") if gpu else (event.get("rss_bytes"), "RAM")
        if not isinstance(value, int) or (kind == "RAM" and self._peak_kind == "GPU"):
            return  # on a GPU run the GPU figures are the peak that matters
        if self._peak is None or kind != self._peak_kind:
            self._peak, self._peak_kind = value, kind
        else:
            self._peak = max(self._peak, value)

    def _flush(self) -> None:
        if not self._dirty or self.history is None or self.run_id is None:
            return
        try:
            self.history.update_progress(
                self.run_id,
                step=self._step,
                total_steps=self._total,
                final_loss=self._loss,
                best_loss=self._best,
                peak_memory_bytes=self._peak,
                peak_memory_kind=self._peak_kind,
                checkpoint_dir=self._checkpoint,
            )
        except (sqlite3.Error, OSError) as exc:
            self._warn(exc)
            return
        self._dirty = False
        self._failing = False
        self._last_write = time.monotonic()

    def _warn(self, exc: Exception) -> None:
        self._last_write = time.monotonic()  # retry after an interval, not on every event
        if self._failing or self.warn is None:
            return
        self._failing = True
        message = exc.message if isinstance(exc, StudioError) else str(exc)
        text = f"Warning: the run history was not updated ({message}); training continues"
        self.warn.emit(make_event("status", message=text))
