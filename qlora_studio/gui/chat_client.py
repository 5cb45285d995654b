"""The GUI's side of ``qlora-studio chat RUN --serve``: one child process holds the run's models
and answers requests; this QObject writes the requests and turns its events into signals.

A QProcess in the GUI thread, so no thread is needed: the window process never holds a model,
and a crash of the child (out of memory, a bug) shows as ``failed`` then ``closed``.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QObject, QProcess, QProcessEnvironment, QTimer, Signal

from qlora_studio.core.events import parse_event_line

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding qlora_studio/
_STDERR_TAIL = 20
_QUIT_GRACE_MS = 5_000  # a quit stops the generation at the next token; then it is killed


class ChatClient(QObject):
    """Drives one ``chat --serve`` child. Signals arrive in the GUI thread."""

    status = Signal(str)  # loading steps
    ready = Signal(object)  # dict: the ready event (run_dir, method, device, stop_tokens, ...)
    token = Signal(str, str)  # side, a piece of its answer
    answer = Signal(object)  # dict: one side's whole answer (id, side, text, stopped)
    failed = Signal(str, str)  # message, hint: a refused request, a failed load or a crash
    closed = Signal(int)  # exit code; the last signal of a session

    def __init__(self, parent: QObject | None = None, *, device: str = "auto"):
        super().__init__(parent)
        self.device = device
        self.run_dir: Path | None = None
        self.is_ready = False
        self._proc: QProcess | None = None
        self._buffer = b""
        self._stderr: deque[str] = deque(maxlen=_STDERR_TAIL)
        self._waiting: dict[int, set[str]] = {}  # request id -> sides still to answer
        self._next_id = 0
        self._closing = False
        self._reported = False  # a failure already told (an error event before the exit)
        app = QCoreApplication.instance()
        if app is not None:  # the window is gone: the child goes too
            app.aboutToQuit.connect(self._on_app_quit)

    # ---- the session --------------------------------------------------------------------
    def command(self, run_dir: Path) -> list[str]:
        """The child's command line (a frozen app is its own CLI)."""
        launcher = [] if getattr(sys, "frozen", False) else ["-m", "qlora_studio"]
        return [*launcher, "chat", str(run_dir), "--serve", "--device", self.device]

    def start(self, run_dir: Path) -> None:
        """Start the child for ``run_dir``; ``ready`` (or ``failed`` and ``closed``) follows."""
        if self._proc is not None:
            raise RuntimeError("this chat session has already been started")
        self.run_dir = Path(run_dir)
        proc = self._proc = QProcess(self)
        proc.setProcessEnvironment(_child_env())
        proc.readyReadStandardOutput.connect(self._read_stdout)
        proc.readyReadStandardError.connect(self._read_stderr)
        proc.finished.connect(self._on_finished)
        proc.errorOccurred.connect(self._on_error)
        proc.start(sys.executable, self.command(self.run_dir))

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.state() != QProcess.ProcessState.NotRunning

    @property
    def generating(self) -> bool:
        return bool(self._waiting)

    def generate(
        self, messages: list[dict], sides: list[str], settings: dict[str, Any]
    ) -> int | None:
        """Ask for an answer from each of ``sides`` to the conversation extended by
        ``messages``; returns the request id (None when the child is not ready)."""
        if not self.is_ready:
            return None
        self._next_id += 1
        self._waiting[self._next_id] = set(sides)
        request = {"op": "generate", "id": self._next_id, "messages": messages}
        self._send({**request, "sides": list(sides), "settings": dict(settings)})
        return self._next_id

    def stop(self) -> None:
        """Stop the answers in progress (the partial answers still arrive)."""
        self._send({"op": "stop"})

    def request_stop(self) -> None:
        """What the window calls on its jobs at exit: stop an answer, or end a load."""
        if self.is_ready:
            self.stop()
        else:
            self.close()

    def reset(self) -> None:
        """Both conversations start over."""
        self._send({"op": "reset"})

    def close(self, wait_ms: int = 0) -> None:
        """End the child: a quit request, then a kill if it is still there after a grace period
        (``wait_ms`` > 0 waits for it here, for a window that is closing)."""
        proc = self._proc
        if proc is None or self._closing:
            return
        self._closing = True
        if proc.state() == QProcess.ProcessState.NotRunning:
            return
        self._send({"op": "quit"}, force=True)
        proc.closeWriteChannel()
        if wait_ms > 0:
            if not proc.waitForFinished(wait_ms):
                proc.kill()
                proc.waitForFinished(2_000)
        else:  # a timer of this object: it goes with it
            timer = QTimer(self)
            timer.setSingleShot(True)
            timer.timeout.connect(self._kill)
            timer.start(_QUIT_GRACE_MS)

    def _on_app_quit(self) -> None:
        self.close(wait_ms=3_000)

    # ---- the child's output ------------------------------------------------------------
    def _send(self, request: dict, force: bool = False) -> None:
        proc = self._proc
        if proc is None or (self._closing and not force):
            return
        if proc.state() == QProcess.ProcessState.Running:
            proc.write((json.dumps(request) + "\n").encode("utf-8"))

    def _read_stdout(self) -> None:
        self._buffer += bytes(self._proc.readAllStandardOutput())
        *lines, self._buffer = self._buffer.split(b"\n")
        for raw in lines:
            event = parse_event_line(raw.decode("utf-8", errors="replace"))
            if event is not None:
                self._on_event(event)

    def _read_stderr(self) -> None:
        text = bytes(self._proc.readAllStandardError()).decode("utf-8", errors="replace")
        self._stderr.extend(line for line in text.splitlines() if line.strip())

    def _on_event(self, event: dict) -> None:
        kind = event["type"]
        if kind == "status":
            self.status.emit(event["message"])
        elif kind == "ready":
            self.is_ready = True
            self.ready.emit(event)
        elif kind == "token":
            self.token.emit(event["side"], event["text"])
        elif kind == "answer":
            sides = self._waiting.get(event["id"])
            if sides is not None:
                sides.discard(event["side"])
                if not sides:
                    del self._waiting[event["id"]]
            self.answer.emit(event)
        elif kind == "error":
            self._waiting.pop(event.get("id"), None)
            self._reported = not self.is_ready  # a failed load: the exit adds nothing
            self.failed.emit(event["message"], event["hint"])

    def _on_error(self, error: QProcess.ProcessError) -> None:
        if error == QProcess.ProcessError.FailedToStart:
            self._reported = True
            self.failed.emit(
                f"Could not start the chat process: {self._proc.errorString()}",
                f"check that {sys.executable} can run `python -m qlora_studio`",
            )
            self._waiting.clear()
            self.closed.emit(-1)

    def _on_finished(self, code: int, status: QProcess.ExitStatus) -> None:
        self._read_stdout()
        self._read_stderr()
        self._waiting.clear()
        self.is_ready = False
        if not self._closing and not self._reported:
            crashed = status == QProcess.ExitStatus.CrashExit
            self.failed.emit(
                "The chat process ended unexpectedly"
                + (" (it crashed)" if crashed else f" (exit code {code})"),
                _crash_hint(crashed, list(self._stderr)),
            )
        self.closed.emit(code)

    def _kill(self) -> None:
        if self.running:
            self._proc.kill()


def _child_env() -> QProcessEnvironment:
    env = QProcessEnvironment.systemEnvironment()
    env.insert("PYTHONUNBUFFERED", "1")
    env.insert("PYTHONIOENCODING", "utf-8")
    if (_SOURCE_ROOT / "pyproject.toml").is_file():  # a source checkout: run this code
        paths = [str(_SOURCE_ROOT), env.value("PYTHONPATH", "")]
        env.insert("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return env


def _crash_hint(crashed: bool, stderr_tail: list[str]) -> str:
    reason = (
        "If the computer ran out of memory, try a smaller model or close other programs; "
        if crashed
        else ""
    )
    last = " | ".join(line.strip() for line in stderr_tail[-3:])
    if len(last) > 500:
        last = "…" + last[-500:]
    tail = f"Last lines of its log: {last}" if last else "Its log was empty."
    return f"{reason}Load the models again to carry on. {tail}"
