"""The chat server behind ``qlora-studio chat --serve``: one loaded model pair answers requests
read as JSON lines, and streams its answers back as events.

Requests, one JSON object a line:

- ``{"op": "generate", "id": 3, "messages": [...], "sides": ["base", "tuned"],
  "settings": {"max_new_tokens": 64, "temperature": 0.0, "top_p": 1.0, "seed": 0}}``:
  append ``messages`` (usually one user turn) to each side's conversation and answer it.
  ``sides`` defaults to both, ``settings`` to the server's defaults, ``id`` to a counter.
- ``{"op": "stop"}``: stop every generation received so far (the partial answers are kept).
- ``{"op": "reset"}`` (optional ``"system"``): both conversations start over.
- ``{"op": "quit"}``: stop every generation and leave at once. At the end of input the server
  answers what it has been sent, then leaves.

Events: ``ready`` once; then per request ``token`` (id, side, text) pieces as they come and one
``answer`` (id, side, text, stopped) per side; ``status`` (id) after a reset; ``error`` (message,
hint, id when known) for a request that cannot be served, after which the server carries on.
"""

from __future__ import annotations

import json
import math
import queue
import threading
from typing import IO, Any

from qlora_studio.core.errors import StudioError
from qlora_studio.core.evaluation.settings import SIDES, GenerationSettings
from qlora_studio.core.events import Reporter, make_event

OPS = ("generate", "stop", "reset", "quit")
ROLES = ("system", "user", "assistant")


class RequestError(StudioError):
    """A request line the server cannot act on."""


class _StopMarks:
    """Which generate requests a stop reached: every one received before the stop."""

    def __init__(self) -> None:
        self.received = 0  # generate requests read so far
        self.stopped_through: float = 0  # requests numbered up to this one are stopped
        self.lock = threading.Lock()


class _StopFlag:
    """The cancel event of one generation (``ComparisonModel.stream`` calls ``is_set``)."""

    def __init__(self, marks: _StopMarks, number: int):
        self.marks, self.number = marks, number

    def is_set(self) -> bool:
        return self.marks.stopped_through >= self.number


def serve(
    model,
    stdin: IO[str],
    reporter: Reporter,
    *,
    defaults: GenerationSettings | None = None,
    system: str = "",
) -> int:
    """Announce ``model`` (a loaded ComparisonModel) with a ``ready`` event, then answer the
    requests on ``stdin`` until ``quit`` or the end of input; returns the exit code, 0.

    A reader thread takes the lines off ``stdin`` so that a ``stop`` reaches a generation in
    progress; the generations themselves run in the calling thread, one at a time."""
    defaults = (defaults or GenerationSettings()).validate()
    marks = _StopMarks()
    requests: queue.Queue[tuple[int, dict | None, RequestError | None] | None] = queue.Queue()
    reader = threading.Thread(
        target=_read_requests, args=(stdin, requests, marks), name="chat-requests", daemon=True
    )
    reader.start()
    reporter.emit(make_event("ready", **_describe(model)))

    histories = _fresh(system)
    served = 0
    while True:
        item = requests.get()
        if item is None:
            return 0
        number, request, problem = item
        served += 1
        if problem is not None or request is None:
            _fail(reporter, problem or RequestError("an empty request"), request)
            continue
        op = request["op"]
        if op == "quit":
            return 0
        if op == "stop":
            continue  # the reader already marked the generations it reaches
        if op == "reset":
            system_text = request.get("system", system)
            if not isinstance(system_text, str):
                _fail(reporter, RequestError("reset: system must be a string"), request)
                continue
            histories = _fresh(system_text)
            reporter.emit(
                make_event("status", message="A new conversation", id=_id(request, served))
            )
            continue
        try:
            histories = _generate(
                model, request, histories, defaults, reporter, _StopFlag(marks, number), served
            )
        except StudioError as exc:
            _fail(reporter, exc, request)
        except Exception as exc:  # a failed generation must not end the session
            _fail(
                reporter,
                RequestError(
                    f"generation failed: {type(exc).__name__}: {exc}",
                    "try a shorter conversation or fewer new tokens; 'reset' starts over",
                ),
                request,
            )


def _read_requests(stdin: IO[str], requests: queue.Queue, marks: _StopMarks) -> None:
    """Parse each line; a stop or quit marks the generations it reaches at once, before the
    main loop gets to it."""
    try:
        for line in stdin:
            if not line.strip():
                continue
            try:
                request = parse_request(line)
            except RequestError as exc:
                requests.put((0, _loose_id(line), exc))
                continue
            number = 0
            with marks.lock:
                if request["op"] == "generate":
                    marks.received += 1
                    number = marks.received
                elif request["op"] in ("stop", "quit"):
                    marks.stopped_through = math.inf if request["op"] == "quit" else marks.received
            requests.put((number, request, None))
            if request["op"] == "quit":
                return
    except (OSError, ValueError):
        pass
    finally:
        requests.put(None)


def parse_request(line: str) -> dict[str, Any]:
    """One request line -> a dict with a known ``op``; raises RequestError saying what is wrong."""
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        raise RequestError(
            f"not a JSON request: {exc}", 'send one JSON object a line, e.g. {"op": "quit"}'
        ) from exc
    if not isinstance(request, dict):
        raise RequestError("a request must be a JSON object", f"give it an op: {', '.join(OPS)}")
    if request.get("op") not in OPS:
        raise RequestError(f"unknown op {request.get('op')!r}", f"use one of {', '.join(OPS)}")
    if "id" in request and (isinstance(request["id"], bool) or not isinstance(request["id"], int)):
        raise RequestError(f"id must be an integer, got {request['id']!r}")
    return request


def _generate(model, request, histories, defaults, reporter, cancel, served) -> dict:
    """Answer one generate request; returns the conversations extended by it."""
    rid = _id(request, served)
    messages = _messages(request.get("messages"))
    sides = _sides(request.get("sides", list(SIDES)))
    settings = request.get("settings", {})
    if not isinstance(settings, dict):
        raise RequestError("settings must be an object", 'e.g. {"max_new_tokens": 64}')
    settings = GenerationSettings.from_dict(settings, defaults)
    conversations = {side: histories[side] + messages for side in sides}
    texts = dict.fromkeys(sides, "")
    for side, piece in model.stream(conversations, settings, cancel=cancel):
        texts[side] += piece
        reporter.emit(make_event("token", id=rid, side=side, text=piece))
    stopped = cancel.is_set()
    extended = dict(histories)
    for side in sides:
        answer = texts[side].strip()
        extended[side] = [*conversations[side], {"role": "assistant", "content": answer}]
        reporter.emit(make_event("answer", id=rid, side=side, text=answer, stopped=stopped))
    return extended


def _messages(value) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RequestError(
            "generate: messages must be a non-empty list",
            'e.g. [{"role": "user", "content": "Hello"}]',
        )
    for i, m in enumerate(value):
        if not (
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
        ):
            raise RequestError(
                f"generate: messages[{i}] is not a message",
                f"each message is {{'role': {' | '.join(ROLES)}, 'content': text}}",
            )
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _sides(value) -> list[str]:
    if (
        not isinstance(value, list)
        or not value
        or any(s not in SIDES for s in value)
        or len(set(value)) != len(value)
    ):
        raise RequestError(f"generate: sides {value!r} is not a list of {' / '.join(SIDES)}")
    return [s for s in SIDES if s in value]  # base first, as the pages show them


def _fresh(system: str) -> dict[str, list[dict]]:
    start = [{"role": "system", "content": system}] if system else []
    return {side: list(start) for side in SIDES}


def _id(request: dict, served: int) -> int:
    return request["id"] if "id" in request else served


def _loose_id(line: str) -> dict | None:
    """The id of a request that failed to parse, when one can still be read from it."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(data, dict) and isinstance(data.get("id"), int)
    return {"id": data["id"]} if ok and not isinstance(data["id"], bool) else None


def _fail(reporter: Reporter, exc: StudioError, request: dict | None) -> None:
    extra = {"id": request["id"]} if request and isinstance(request.get("id"), int) else {}
    hint = exc.hint or "see the request format in `qlora-studio chat --help`"
    reporter.emit(make_event("error", message=exc.message, hint=hint, **extra))


def _describe(model) -> dict[str, Any]:
    tokenizer = model.tokenizer
    return {
        "run_dir": str(model.run_dir),
        "method": model.cfg.method,
        "device": str(model.device),
        "sides": list(SIDES),
        "stop_tokens": list(tokenizer.convert_ids_to_tokens(list(model.stop_ids))),
        "chat_template": str(getattr(tokenizer, "chat_template", "") or ""),
    }
