"""Long work off the GUI thread: a training run in a child process, or a function in a thread.

Wired like superqt's ``new_worker_qthread``: a QObject moved to a QThread whose ``work`` slot
runs there, reports through signals and catches every exception. Only plain data (dicts,
strings, numbers) crosses threads. ``finished`` is always the last signal and is meant for
teardown only; exactly one of ``succeeded`` / ``failed`` / ``cancelled`` comes before it.

Event payloads use ``Signal(object)``: PySide6 turns a ``Signal(dict)`` payload into a
QVariantMap, which silently empties dicts with non-string keys and clips integers past 64 bits.
A lambda or ``functools.partial`` connected to a worker signal runs in the *worker's* thread
in PySide6; only methods defined in a QObject's class run in that object's (the GUI) thread.
"""

from __future__ import annotations

import logging
import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal, Slot

from qlora_studio.core.errors import Cancelled, StudioError
from qlora_studio.core.events import parse_event_line
from qlora_studio.core.lazy_imports import import_ml_stack

_logger = logging.getLogger(__name__)

_SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding qlora_studio/
_STDERR_TAIL = 20  # stderr lines kept to explain a crash
_DRAIN_AFTER_EXIT_S = 5.0  # a grandchild may hold the pipes open after the child exits
_ORPHANS: set[QThread] = set()  # threads started with no parent and no application


def start_in_thread(worker: QObject, parent: QObject | None = None) -> QThread:
    """Move ``worker`` to a new QThread, run its ``work`` slot there and tear both down after
    ``worker.finished``. Call from the GUI thread. The thread is owned by ``parent`` (or by the
    application), so dropping the returned reference never destroys a running thread."""
    owner = parent if parent is not None else QCoreApplication.instance()
    thread = QThread(owner)
    thread._worker = worker  # type: ignore[attr-defined]  # alive until the thread goes
    worker.moveToThread(thread)
    thread.started.connect(worker.work)
    worker.finished.connect(thread.quit)
    worker.finished.connect(worker.deleteLater)
    thread.finished.connect(thread.deleteLater)
    if owner is None:
        _ORPHANS.add(thread)
        thread.finished.connect(lambda: _ORPHANS.discard(thread))
    thread.start()
    return thread


class TrainWorker(QObject):
    """Runs ``python -m qlora_studio train|resume ... --events jsonl`` as a child process and
    turns each JSON event it prints into a signal. The GUI process never loads torch."""

    started = Signal()
    status = Signal(str)
    progress = Signal(object)  # dict: the progress event (step, total, epoch, eta_s, ...)
    metrics = Signal(object)  # dict: loss / eval_loss / lr / grad_norm at a step
    memory = Signal(object)  # dict: torch / NVML / RSS bytes at a step
    checkpoint = Signal(object)  # dict: step, path
    log = Signal(str)  # the child's stderr lines and any stdout line that is not an event
    succeeded = Signal(object)  # dict: the done event (step, run_dir, adapter_dir, ...)
    failed = Signal(str, str)  # message, hint
    cancelled = Signal(object)  # dict: the cancelled event (step, checkpoint)
    finished = Signal()  # always last; teardown only

    def __init__(
        self, args: Iterable[str], *, grace_s: float = 60.0, env: dict[str, str] | None = None
    ):
        """``args`` are the CLI arguments after ``qlora-studio`` (``["train", path]``); ``env``
        adds variables to the child's environment; ``grace_s`` is how long a stop request may
        take before the child is killed."""
        super().__init__()
        self.args = [str(a) for a in args]
        self.grace_s = grace_s
        self.extra_env = dict(env or {})
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._active = False
        self._stop_requested = False
        self._killed = False  # by kill(): the user closed the window
        self._killed_after_grace = False
        self._timer: threading.Timer | None = None

    @staticmethod
    def train(config_path: str | os.PathLike[str], overrides: Iterable[str] = ()) -> TrainWorker:
        """A worker for ``qlora-studio train CONFIG [--set K=V ...]``."""
        return TrainWorker(["train", str(config_path), *_set_args(overrides)])

    @staticmethod
    def resume(run_dir: str | os.PathLike[str], overrides: Iterable[str] = ()) -> TrainWorker:
        """A worker for ``qlora-studio resume RUN_DIR [--set K=V ...]``."""
        return TrainWorker(["resume", str(run_dir), *_set_args(overrides)])

    def command(self) -> list[str]:
        """The exact command line the child runs."""
        # a frozen (PyInstaller) app is its own CLI: its entry point is cli.main()
        frozen = getattr(sys, "frozen", False)
        launcher = [sys.executable] if frozen else [sys.executable, "-m", "qlora_studio"]
        return [*launcher, *self.args, "--events", "jsonl"]

    def display_command(self) -> str:
        """The same run as a user would type it in a terminal."""
        return shlex.join(["qlora-studio", *self.args])

    @property
    def running(self) -> bool:
        """True from the start of ``work`` until the child has exited and been reaped."""
        return self._active

    # ---- the worker thread ----------------------------------------------------------------
    @Slot()
    def work(self) -> None:
        self._active = True
        try:
            self.started.emit()
            self._run()
        except Exception as exc:  # never let an exception escape into Qt
            _logger.exception("training worker failed")
            self.failed.emit(f"{type(exc).__name__}: {exc}", "See the log for details.")
        finally:
            try:
                self._cleanup()
            except Exception:
                _logger.exception("could not clean up the training process")
            self._active = False
            self.finished.emit()

    def _run(self) -> None:
        with self._lock:  # a stop or kill from the GUI either prevents the start or sees it
            stopped = self._stop_requested or self._killed
            proc = self._proc = None if stopped else self._start_child()
        if proc is None:
            self.cancelled.emit({"type": "cancelled", "step": 0, "checkpoint": ""})
            return
        lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
        for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            threading.Thread(
                target=_pump, args=(stream, name, lines), name=f"child-{name}", daemon=True
            ).start()

        outcome = ""  # the terminal event seen: done / error / cancelled
        last_step, last_checkpoint = 0, ""
        stderr_tail: deque[str] = deque(maxlen=_STDERR_TAIL)
        open_streams, exited_at = 2, None
        while open_streams:
            try:
                name, line = lines.get(timeout=0.5)
            except queue.Empty:
                if exited_at is None and proc.poll() is not None:
                    exited_at = time.monotonic()
                if exited_at is not None and time.monotonic() - exited_at > _DRAIN_AFTER_EXIT_S:
                    break
                continue
            if line is None:
                open_streams -= 1
                continue
            line = line.rstrip("\r\n")
            event = parse_event_line(line) if name == "stdout" else None
            if event is None:
                if line.strip():
                    if name == "stderr":
                        stderr_tail.append(line)
                    self.log.emit(line)
                continue
            kind = event["type"]
            if kind == "progress":
                last_step = event["step"]
            elif kind == "checkpoint":
                last_checkpoint = event["path"]
            if kind in ("done", "error", "cancelled") and outcome:
                continue  # one outcome per run
            self._emit_event(event)
            if kind in ("done", "error", "cancelled"):
                outcome = kind

        code = proc.wait()
        if outcome:
            return
        if code == 130 or self._killed_after_grace:
            if self._killed_after_grace:
                self.status.emit(
                    f"The training process did not stop within {self.grace_s:g} s and was killed."
                )
            event = {"type": "cancelled", "step": last_step, "checkpoint": last_checkpoint}
            self.cancelled.emit(event)
        elif code == 0:
            self.failed.emit(
                "The training process ended without reporting a result (exit code 0)",
                _crash_hint(0, list(stderr_tail), killed=False),
            )
        else:
            self.failed.emit(
                f"The training process ended unexpectedly (exit code {code})",
                _crash_hint(code, list(stderr_tail), killed=self._killed),
            )

    def _emit_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "status":
            self.status.emit(event["message"])
        elif kind == "error":
            self.failed.emit(event["message"], event["hint"])
        else:
            signal_ = {
                "progress": self.progress,
                "metrics": self.metrics,
                "memory": self.memory,
                "checkpoint": self.checkpoint,
                "done": self.succeeded,
                "cancelled": self.cancelled,
            }[kind]
            signal_.emit(event)

    def _start_child(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=self._child_env(),
            # its own process group, so a kill also reaches dataloader workers
            start_new_session=os.name == "posix",
        )

    def _child_env(self) -> dict[str, str]:
        env = {**os.environ, **self.extra_env}
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONIOENCODING"] = "utf-8"
        if (_SOURCE_ROOT / "pyproject.toml").is_file():  # a source checkout: run this code
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(_SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
            )
        return env

    def _cleanup(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:  # only reached when work() itself failed
            self._signal_child(proc)
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    # ---- any thread -----------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the child to stop after the current step and save a checkpoint; kill it if it
        has not exited ``grace_s`` seconds later. Thread-safe, idempotent, safe at any time."""
        with self._lock:
            if self._stop_requested:
                return
            self._stop_requested = True
            proc = self._proc
            if proc is None or proc.poll() is not None:
                return
            self._timer = threading.Timer(self.grace_s, self._kill_after_grace)
            self._timer.daemon = True
            self._timer.start()
        try:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        except (OSError, ValueError):  # the child has just exited, or its stdin is closed
            pass

    def kill(self) -> None:
        """Kill the child at once (SIGKILL). Thread-safe; before the start it prevents it."""
        with self._lock:
            self._killed = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._signal_child(proc)

    def _kill_after_grace(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._killed_after_grace = True
            self._signal_child(proc)

    @staticmethod
    def _signal_child(proc: subprocess.Popen[str]) -> None:
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError, OSError):
            pass  # already gone


def _set_args(overrides: Iterable[str]) -> list[str]:
    return [arg for override in overrides for arg in ("--set", str(override))]


def _pump(stream: IO[str] | None, name: str, lines: queue.Queue) -> None:
    """Forward each line of a child's stream to the worker thread; None marks the end."""
    try:
        if stream is not None:
            for line in stream:
                lines.put((name, line))
    except (OSError, ValueError):
        pass
    finally:
        lines.put((name, None))


def _crash_hint(code: int, stderr_tail: list[str], *, killed: bool) -> str:
    """What we can say about a child that exited without an error event."""
    if killed:
        reason = "It was stopped from the app; any checkpoint already saved is kept."
    elif code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        reason = f"It was terminated by {name}."
        if name == "SIGKILL":
            reason += (
                " This usually means the computer ran out of memory (RAM): try a smaller "
                "batch size or sequence length."
            )
    else:
        reason = ""
    last = " | ".join(line.strip() for line in stderr_tail[-3:])
    if len(last) > 500:
        last = "…" + last[-500:]
    parts = [reason, f"Last lines of its log: {last}" if last else "See the log for details."]
    return " ".join(p for p in parts if p)


class _SignalReporter:
    """The Reporter a FunctionWorker hands to its function: events become signals."""

    def __init__(self, worker: FunctionWorker):
        self._worker = worker

    def emit(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "status":
            self._worker.status.emit(str(event.get("message", "")))
        elif kind == "progress":
            self._worker.progress.emit(dict(event))
        else:
            self._worker.event.emit(dict(event))


class FunctionWorker(QObject):
    """Runs ``fn(reporter, cancel_event, *args, **kwargs) -> result`` in a thread, for long
    in-process work (inspect a model, convert the demo GGUF, inspect a dataset, estimate
    memory). ``fn`` should check ``cancel_event.is_set()`` and may raise ``Cancelled``."""

    started = Signal()
    status = Signal(str)
    progress = Signal(object)  # dict: progress events the function reports
    event = Signal(object)  # dict: any other event (e.g. streamed answer tokens)
    succeeded = Signal(object)  # fn's return value
    failed = Signal(str, str)  # message, hint
    cancelled = Signal()
    finished = Signal()  # always last; teardown only

    def __init__(self, fn: Callable[..., Any], *args: Any, needs_ml: bool = True, **kwargs: Any):
        super().__init__()
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.needs_ml = needs_ml  # import torch/transformers/peft first, under a lock
        self.cancel_event = threading.Event()

    @Slot()
    def work(self) -> None:
        try:
            self.started.emit()
            if self.cancel_event.is_set():
                raise Cancelled("Cancelled before it started")
            if self.needs_ml:
                import_ml_stack()  # one thread at a time through transformers' first import
            result = self.fn(_SignalReporter(self), self.cancel_event, *self.args, **self.kwargs)
        except Exception as exc:
            # a function interrupted half-way may fail in its own way: the stop still wins
            if isinstance(exc, Cancelled) or self.cancel_event.is_set():
                self.cancelled.emit()
            elif isinstance(exc, StudioError):
                self.failed.emit(exc.message, exc.hint)
            else:
                _logger.exception("%s failed", getattr(self.fn, "__name__", "task"))
                self.failed.emit(f"{type(exc).__name__}: {exc}", "See the log for details.")
        else:
            if self.cancel_event.is_set():
                self.cancelled.emit()
            else:
                self.succeeded.emit(result)
        finally:
            self.finished.emit()

    def request_stop(self) -> None:
        """Ask the function to stop (it sees the cancel event set). Thread-safe."""
        self.cancel_event.set()


def end_thread(thread: QThread | None, timeout_ms: int = 30_000) -> None:
    """Let a job's thread end before the GUI shows its outcome. Call it first in the slots that
    receive a worker's outcome: wait() releases the GIL, so the worker's teardown in its own
    thread cannot deadlock against the GUI thread, and the thread's parent (a page) is never
    destroyed with the thread still running."""
    import shiboken6

    if thread is not None and shiboken6.isValid(thread) and thread is not QThread.currentThread():
        thread.quit()
        thread.wait(timeout_ms)
