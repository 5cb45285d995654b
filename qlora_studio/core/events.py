"""The event schema of a run and the Reporter protocol that carries events out of the engine.

An event is a plain dict ``{"type": ..., "time": ..., ...}``: it crosses processes as one JSON
line and threads as a Qt signal payload. Readers ignore fields they do not know.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Any, Protocol

# type -> {field: accepted python types}; every field listed is required, others are optional.
_NUM = (int, float)
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "status": {"message": (str,)},
    "progress": {
        "step": (int,),
        "total": (int,),
        "epoch": _NUM,
        "eta_s": _NUM + (type(None),),
        "tokens_per_s": _NUM,
    },
    "metrics": {"step": (int,)},  # loss, eval_loss, lr, grad_norm: numbers when present
    "memory": {
        "step": (int,),
        "device": (str,),
        "rss_bytes": (int,),
    },  # torch_allocated/reserved/peak_bytes, nvml_used/total_bytes: ints when present
    "checkpoint": {"step": (int,), "path": (str,)},
    "done": {"step": (int,), "run_dir": (str,), "adapter_dir": (str,)},
    "error": {"message": (str,), "hint": (str,)},
    "cancelled": {"step": (int,), "checkpoint": (str,)},
    "token": {"side": (str,), "text": (str,)},  # a streamed piece of a generated answer
    # `chat --serve`: the models are loaded (extra: stop_tokens, chat_template, sides) ...
    "ready": {"run_dir": (str,), "method": (str,), "device": (str,)},
    # ... and one side's whole answer to request `id` (extra: stopped, true when cut short)
    "answer": {"id": (int,), "side": (str,), "text": (str,)},
}
_OPTIONAL_NUMBERS = {
    "metrics": ("loss", "eval_loss", "lr", "grad_norm", "epoch"),
    "memory": (
        "torch_allocated_bytes",
        "torch_reserved_bytes",
        "torch_peak_bytes",
        "nvml_used_bytes",
        "nvml_total_bytes",
    ),
    "done": ("final_loss", "best_loss", "runtime_s"),
    "token": ("id",),  # the chat request a piece belongs to
    "status": ("id",),
    "error": ("id",),  # the chat request that failed, when one did
}
EVENT_TYPES = tuple(SCHEMA)


class EventSchemaError(ValueError):
    """An event does not follow :data:`SCHEMA`."""


def make_event(type_: str, **fields: Any) -> dict[str, Any]:
    """Build an event with its type and a wall-clock timestamp, checked against the schema."""
    event = {"type": type_, "time": round(time.time(), 3), **fields}
    validate_event(event)
    return event


def validate_event(event: Any) -> dict[str, Any]:
    """Raise :class:`EventSchemaError` unless ``event`` is a well-formed event; return it."""
    if not isinstance(event, dict):
        raise EventSchemaError(f"an event must be an object, got {type(event).__name__}")
    type_ = event.get("type")
    if type_ not in SCHEMA:
        raise EventSchemaError(f"unknown event type {type_!r}; known: {', '.join(EVENT_TYPES)}")
    if not isinstance(event.get("time"), _NUM):
        raise EventSchemaError(f"{type_} event has no numeric 'time'")
    for name, types in SCHEMA[type_].items():
        if name not in event:
            raise EventSchemaError(f"{type_} event lacks '{name}'")
        value = event[name]
        if isinstance(value, bool) or not isinstance(value, types):
            raise EventSchemaError(f"{type_}.{name} has type {type(value).__name__}")
    for name in _OPTIONAL_NUMBERS.get(type_, ()):
        value = event.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, _NUM)):
            raise EventSchemaError(f"{type_}.{name} must be a number, got {value!r}")
    return event


def parse_event_line(line: str) -> dict[str, Any] | None:
    """One JSON line -> a validated event, or None for lines that are not events (library
    warnings printed by the child process land on the same stream)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
        return validate_event(event)
    except (json.JSONDecodeError, EventSchemaError):
        return None


class Reporter(Protocol):
    """Where the engine sends events. Implementations must be cheap and thread-safe."""

    def emit(self, event: dict[str, Any]) -> None: ...


def say(reporter: Reporter | None, message: str, **fields: Any) -> None:
    """Send a status line (with optional extra fields) to ``reporter``, if there is one."""
    if reporter is not None:
        reporter.emit(make_event("status", message=message, **fields))


def report_progress(reporter: Reporter | None, done: int, total: int, started: float) -> None:
    """A ``progress`` event for work counted in items (rows scored, tensors written), with an
    ETA from the pace so far; ``started`` is a ``time.monotonic()`` reading."""
    if reporter is None:
        return
    elapsed = time.monotonic() - started
    eta = elapsed / done * (total - done) if done else None
    reporter.emit(
        make_event(
            "progress",
            step=done,
            total=total,
            epoch=0.0,
            eta_s=round(eta, 1) if eta is not None else None,
            tokens_per_s=0.0,
        )
    )


GB = 1024**3  # GPU memory is sold in binary gigabytes: a "24 GB" card holds 24 GiB


def format_gb(n_bytes: float, digits: int = 2) -> str:
    """Bytes as binary gigabytes, the unit GPU memory is sold in (2**31 -> "2.00 GB")."""
    return f"{n_bytes / GB:.{digits}f} GB"


def format_mb(n_bytes: float) -> str:
    """Bytes as decimal megabytes, as download sizes are shown."""
    return f"{n_bytes / 1e6:,.0f} MB"


def format_duration(seconds: float | None) -> str:
    """``75 -> "1:15"``, ``3725 -> "1:02:05"``; ``None -> "?"``."""
    if seconds is None:
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class NullReporter:
    def emit(self, event: dict[str, Any]) -> None:
        pass


class CollectingReporter:
    """Keeps events in a list (for library use and tests)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def of_type(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


class JsonLinesReporter:
    """One JSON object a line, flushed at once (the GUI reads the child's stdout)."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stdout
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":"))
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()


class TeeReporter:
    """Sends each event to several reporters (e.g. the screen and the run's events.jsonl)."""

    def __init__(self, *reporters: Reporter):
        self.reporters = [r for r in reporters if r is not None]

    def emit(self, event: dict[str, Any]) -> None:
        for reporter in self.reporters:
            reporter.emit(event)


class TextReporter:
    """Human-readable lines for a terminal: step, loss, tokens/s, ETA."""

    def __init__(self, stream: IO[str] | None = None):
        self.stream = stream or sys.stderr
        self._last_progress: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        with self._lock:
            self.stream.write(text + "\n")
            self.stream.flush()

    def emit(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "status":
            self._write(f"• {event['message']}")
        elif kind == "progress":
            self._last_progress = event
        elif kind == "metrics":
            p = self._last_progress
            parts = [f"step {event['step']}/{p.get('total', '?')}"]
            if event.get("loss") is not None:
                parts.append(f"loss {event['loss']:.4f}")
            if event.get("eval_loss") is not None:
                parts.append(f"eval_loss {event['eval_loss']:.4f}")
            if event.get("lr") is not None:
                parts.append(f"lr {event['lr']:.2e}")
            if p:
                parts.append(f"{p.get('tokens_per_s', 0):.0f} tok/s")
                parts.append(f"ETA {format_duration(p.get('eta_s'))}")
            self._write("  ".join(parts))
        elif kind == "checkpoint":
            self._write(f"• checkpoint at step {event['step']}: {event['path']}")
        elif kind == "done":
            loss = event.get("final_loss")
            tail = f", final loss {loss:.4f}" if isinstance(loss, _NUM) else ""
            self._write(f"✓ done at step {event['step']}{tail}. Adapter: {event['adapter_dir']}")
        elif kind == "cancelled":
            self._write(f"■ stopped at step {event['step']}; checkpoint: {event['checkpoint']}")
        elif kind == "error":
            self._write(f"✗ {event['message']}")
            if event.get("hint"):
                self._write(f"  hint: {event['hint']}")
