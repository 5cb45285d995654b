"""A page job that runs the CLI as a child process (``qlora-studio ARGS...``) and turns each
JSON event it prints into a signal. Training, resuming, exports, the probe and evaluations run
this way: the window process never holds a model, and a crash cannot take it down. A training
run starts in the background (lower priority, one core left to the window).

Launching, reading the lines and the stop ladder (a ``stop`` line on stdin, then SIGKILL to
the process group after ``grace_s``) live in ``qlora_studio.core.child``; this class only moves
them off the GUI thread (one Python thread reads the child) and into signals.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from typing import Any

from PySide6.QtCore import QObject, Signal

from qlora_studio.core.child import ChildProcess, set_args
from qlora_studio.core.events import make_event
from qlora_studio.gui.jobs.base import Job

_logger = logging.getLogger(__name__)


class ChildJob(Job):
    """``qlora-studio ARGS...`` in a child process. ``args`` are given as a user would type
    them after ``qlora-studio``, ``--events jsonl`` included (``ChildJob.train`` and
    ``ChildJob.resume`` add it). ``succeeded`` carries the done event, ``cancelled`` the
    cancelled event; ``failed`` the error event's message and hint, or what the exit code says.
    """

    metrics = Signal(object)  # dict: loss / eval_loss / lr / grad_norm at a step
    memory = Signal(object)  # dict: torch / NVML / RSS bytes at a step
    checkpoint = Signal(object)  # dict: step, path

    def __init__(
        self,
        args: Iterable[str],
        parent: QObject | None = None,
        *,
        grace_s: float = 60.0,
        env: dict[str, str] | None = None,
        background: bool = False,
    ):
        """``grace_s`` is how long a stop request may take before the child is killed; ``env``
        adds variables to the child's environment; ``background`` runs it at a lower priority
        with torch on one core fewer, so the window stays responsive."""
        super().__init__(parent)
        self.process = ChildProcess(args, grace_s=grace_s, env=env, background=background)

    @staticmethod
    def train(config_path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> ChildJob:
        """``qlora-studio train CONFIG [--set K=V ...] --events jsonl``."""
        args = ["train", str(config_path), *set_args(overrides), "--events", "jsonl"]
        return ChildJob(args, background=True)

    @staticmethod
    def resume(run_dir: str | os.PathLike[str], overrides: Iterable[str] = ()) -> ChildJob:
        """``qlora-studio resume RUN_DIR [--set K=V ...] --events jsonl``."""
        args = ["resume", str(run_dir), *set_args(overrides), "--events", "jsonl"]
        return ChildJob(args, background=True)

    @property
    def args(self) -> list[str]:
        return self.process.args

    @property
    def grace_s(self) -> float:
        return self.process.grace_s

    def command(self) -> list[str]:
        """The exact command line the child runs."""
        return self.process.command()

    def display_command(self) -> str:
        """The same job as a user would type it in a terminal."""
        return self.process.display_command()

    # ---- any thread -----------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the child to stop (it saves a checkpoint when it trains); kill it if it has not
        exited ``grace_s`` seconds later. Thread-safe, idempotent, safe at any time."""
        self.process.request_stop()

    def kill(self) -> None:
        """Kill the child at once (SIGKILL). Thread-safe; before the start it prevents it."""
        self.process.kill()

    # ---- the reading thread ---------------------------------------------------------------
    def _begin(self) -> None:
        threading.Thread(
            target=self._work, name=f"job-{self.args[0] if self.args else 'child'}", daemon=True
        ).start()

    def _work(self) -> None:
        try:
            outcome = self.process.run(on_event=self._send_event, on_log=self._send_log)
        except Exception as exc:  # never let an exception end the thread silently
            _logger.exception("the %s job failed", self.process.what)
            outcome = make_event(
                "error", message=f"{type(exc).__name__}: {exc}", hint="See the log for details."
            )
        self._send_event(outcome)
        if outcome["type"] == "done":
            self._send("succeeded", outcome)
        elif outcome["type"] == "cancelled":
            self._send("cancelled", outcome)
        else:
            self._send("failed", (outcome["message"], outcome["hint"]))
        self._send("ended")

    def _send_log(self, line: str) -> None:
        self._send("log", line)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind in ("done", "error", "cancelled"):
            self.event.emit(event)  # the outcome signal follows from the thread
            return
        super()._on_event(event)
        signal_ = {"metrics": self.metrics, "memory": self.memory, "checkpoint": self.checkpoint}
        if kind in signal_:
            signal_[kind].emit(event)
