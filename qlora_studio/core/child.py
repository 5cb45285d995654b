"""The CLI as a child process: how to launch it, and its JSON-line events read back.

The window (through ``gui.jobs.ChildJob``) and the CLI itself (``estimate --probe``) run every
job that allocates model weights this way: CUDA memory is fully returned when the child ends,
and a crash or an out-of-memory kill cannot take the caller down. No Qt here.

The stop ladder: a ``stop`` line on the child's stdin (the CLI then stops after the current step
and saves a checkpoint); if the child has not exited ``grace_s`` seconds later, SIGKILL to its
process group (so dataloader workers go too).

A child in the background (a run the window drives) leaves the window its share of the machine:
it runs at a lower priority and its math libraries use one thread fewer than there are cores.
"""

from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from qlora_studio.core.events import make_event, parse_event_line

SOURCE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding qlora_studio/
STDERR_TAIL = 20  # stderr lines kept to explain a crash
DRAIN_AFTER_EXIT_S = 5.0  # a grandchild may hold the pipes open after the child exits
TERMINAL = ("done", "error", "cancelled")
# how messages name a command's process: "The training process ended unexpectedly"
_WHAT = {"train": "training", "resume": "training", "eval": "evaluation"}
BACKGROUND_NICE = 10  # how much lower than the window a background child runs (Linux, macOS)
# the variables torch (OpenMP) and the BLAS libraries size their thread pools from
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def launcher() -> list[str]:
    """How to run this CLI in a child process; a frozen (PyInstaller) app is its own CLI."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "qlora_studio"]


def display_command(args: Iterable[str]) -> str:
    """The command as a user would type it in a terminal (without ``--events jsonl``, which
    only a program reading the events wants)."""
    shown = [str(a) for a in args]
    for i in range(len(shown) - 1):
        if shown[i : i + 2] == ["--events", "jsonl"]:
            del shown[i : i + 2]
            break
    return shlex.join(["qlora-studio", *shown])


def set_args(overrides: Iterable[str]) -> list[str]:
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]``."""
    return [arg for override in overrides for arg in ("--set", str(override))]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, ``extra``, unbuffered UTF-8 output, and in a source
    checkout this very code on the path."""
    env = {**os.environ, **(extra or {})}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if (SOURCE_ROOT / "pyproject.toml").is_file():
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SOURCE_ROOT), env.get("PYTHONPATH", "")) if p
        )
    return env


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS tells)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return os.cpu_count() or 1


def background_env(env: dict[str, str], cores: int | None = None) -> dict[str, str]:
    """``env`` with torch's and the BLAS libraries' threads at cores − 1 (at least 1), so the
    window keeps a core; unchanged when the user set any of these thread counts."""
    if any(name in env for name in THREAD_VARIABLES):
        return dict(env)
    threads = str(max(1, (cores or usable_cores()) - 1))
    return {**env, **dict.fromkeys(THREAD_VARIABLES, threads)}


def lower_priority(pid: int, nice: int = BACKGROUND_NICE) -> bool:
    """Run process ``pid`` (a child just started, before it made threads) ``nice`` steps
    lower; True when the OS took it. Windows: below normal, when psutil is installed."""
    if os.name == "posix":
        try:
            os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, pid) + nice)
        except OSError:
            return False
        # Linux weighs sessions (autogroups) against each other: a child in a session of its
        # own (Python 3.10) needs its group lowered too, or the nice value would not count
        # against the window. Never ours: that would lower the window with it.
        theirs, mine = Path(f"/proc/{pid}/autogroup"), Path("/proc/self/autogroup")
        try:
            group = _group_name(theirs)
            if group and group != _group_name(mine):
                theirs.write_text(str(nice))
        except OSError:
            pass
        return True
    try:
        import psutil
    except ImportError:
        return False
    try:
        psutil.Process(pid).nice(psutil.BELOW_NORMAL_PRIORITY_CLASS)
    except (psutil.Error, OSError, AttributeError):
        return False
    return True


def _group_name(autogroup: Path) -> str:
    """``/autogroup-210`` from ``/autogroup-210 nice 0``; "" where the file is missing or
    empty (kernels and sandboxes without autogroups, e.g. the CI machine's)."""
    try:
        words = autogroup.read_text().split()
    except OSError:
        return ""
    return words[0] if words else ""


class ChildProcess:
    """One ``qlora-studio ARGS...`` child. ``run`` blocks until it ends and returns its outcome;
    ``request_stop`` and ``kill`` may be called from any thread at any time."""

    def __init__(
        self,
        args: Iterable[str],
        *,
        grace_s: float = 60.0,
        env: dict[str, str] | None = None,
        what: str = "",
        background: bool = False,
    ):
        """``args`` follow ``qlora-studio``; ``grace_s`` is how long a stop request may take
        before the child is killed; ``what`` names the job in messages ("training");
        ``background`` runs it at a lower priority on one core fewer (a run the window
        drives: the window stays responsive)."""
        self.args = [str(a) for a in args]
        self.grace_s = grace_s
        self.background = background
        self.extra_env = dict(env or {})
        command = self.args[0] if self.args else "child"
        self.what = what or _WHAT.get(command, command)
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[str] | None = None
        self._stop_requested = False
        self._killed = False  # by kill(): the user closed the window
        self._killed_after_grace = False
        self._timer: threading.Timer | None = None

    def command(self) -> list[str]:
        """The exact command line the child runs."""
        return [*launcher(), *self.args]

    def display_command(self) -> str:
        return display_command(self.args)

    # ---- the thread that runs it ---------------------------------------------------------
    def run(
        self,
        on_event: Callable[[dict[str, Any]], None] = lambda event: None,
        on_log: Callable[[str], None] = lambda line: None,
    ) -> dict[str, Any]:
        """Start the child, pass each event it prints to ``on_event`` (in order) and every
        other line to ``on_log``; return its one terminal event (done / error / cancelled),
        made up from the exit code when the child printed none."""
        try:
            return self._run(on_event, on_log)
        finally:
            self._cleanup()

    def _run(self, on_event, on_log) -> dict[str, Any]:
        with self._lock:  # a stop or kill from elsewhere either prevents the start or sees it
            stopped = self._stop_requested or self._killed
            proc = self._proc = None if stopped else self._start()
        if proc is None:
            return make_event("cancelled", step=0, checkpoint="")
        outcome: dict[str, Any] | None = None
        last_step, last_checkpoint = 0, ""
        stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL)
        for name, line in _read_lines(proc):
            event = parse_event_line(line) if name == "stdout" else None
            if event is None:
                if line.strip():
                    if name == "stderr":
                        stderr_tail.append(line)
                    on_log(line)
                continue
            kind = event["type"]
            if kind == "progress":
                last_step = event["step"]
            elif kind == "checkpoint":
                last_checkpoint = event["path"]
            if kind in TERMINAL:
                outcome = outcome or event  # one outcome per run: the first
            else:
                on_event(event)
        code = proc.wait()
        if outcome is not None:
            return outcome
        if code == 130 or self._killed_after_grace:
            if self._killed_after_grace:
                message = (
                    f"The {self.what} process did not stop within {self.grace_s:g} s "
                    "and was killed."
                )
                on_event(make_event("status", message=message))
            return make_event("cancelled", step=last_step, checkpoint=last_checkpoint)
        if code == 0:
            message = f"The {self.what} process ended without reporting a result (exit code 0)"
            hint = crash_hint(0, list(stderr_tail), killed=False)
        else:
            message = f"The {self.what} process ended unexpectedly (exit code {code})"
            hint = crash_hint(code, list(stderr_tail), killed=self._killed)
        return make_event("error", message=message, hint=hint)

    def _start(self) -> subprocess.Popen[str]:
        env = child_env(self.extra_env)
        if self.background:
            env = background_env(env)
        # its own process group, so a kill also reaches dataloader workers; a background child
        # stays in our session where it can (Python 3.11+), because Linux weighs sessions
        # (autogroups) against each other: there its lower priority counts against the window
        # alone, not against every other program on the machine
        group: dict[str, Any] = {"start_new_session": os.name == "posix"}
        if self.background and os.name == "posix" and sys.version_info >= (3, 11):
            group = {"process_group": 0}
        proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            env=env,
            **group,
        )
        if self.background:  # at once: threads the child starts later inherit the priority
            lower_priority(proc.pid)
        return proc

    def _cleanup(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:  # only reached when run() itself failed
            _kill_group(proc)
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass

    # ---- any thread ---------------------------------------------------------------------
    def request_stop(self) -> None:
        """Ask the child to stop (a ``stop`` line on its stdin); kill it if it has not exited
        ``grace_s`` seconds later. Idempotent; before the start it prevents the start."""
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
        if proc.stdin is None:  # started without a pipe: the grace timer kills it
            return
        try:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        except (OSError, ValueError):  # the child has just exited, or its stdin is closed
            pass

    def kill(self) -> None:
        """Kill the child at once (SIGKILL to its group); before the start it prevents it."""
        with self._lock:
            self._killed = True
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc)

    def _kill_after_grace(self) -> None:
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self._killed_after_grace = True
            _kill_group(proc)


def run_cli(args: Iterable[str], *, on_log: Callable[[str], None] | None = None) -> dict:
    """Run ``qlora-studio ARGS`` to the end and return its terminal event (blocking)."""
    return ChildProcess(args).run(on_log=on_log or (lambda line: None))


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        if os.name == "posix":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
    except (ProcessLookupError, PermissionError, OSError):
        pass  # already gone


def _read_lines(proc: subprocess.Popen[str]) -> Iterator[tuple[str, str]]:
    """(stream name, line) from the child's stdout and stderr as they come, until both close
    (or a few seconds after the child exits, when a grandchild still holds them open)."""
    lines: queue.Queue[tuple[str, str | None]] = queue.Queue()
    for name, stream in (("stdout", proc.stdout), ("stderr", proc.stderr)):
        threading.Thread(
            target=_pump, args=(stream, name, lines), name=f"child-{name}", daemon=True
        ).start()
    open_streams, exited_at = 2, None
    while open_streams:
        try:
            name, line = lines.get(timeout=0.5)
        except queue.Empty:
            if exited_at is None and proc.poll() is not None:
                exited_at = time.monotonic()
            if exited_at is not None and time.monotonic() - exited_at > DRAIN_AFTER_EXIT_S:
                return
            continue
        if line is None:
            open_streams -= 1
            continue
        yield name, line.rstrip("\r\n")


def _pump(stream: IO[str] | None, name: str, lines: queue.Queue) -> None:
    """Forward each line of a child's stream to the reading thread; None marks the end."""
    try:
        if stream is not None:
            for line in stream:
                lines.put((name, line))
    except (OSError, ValueError):
        pass
    finally:
        lines.put((name, None))


def crash_hint(code: int, stderr_tail: list[str], *, killed: bool) -> str:
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
