"""The event schema: what the engine emits and what readers accept."""

import io
import json

import pytest

from qlora_studio.core.events import (
    EventSchemaError,
    JsonLinesReporter,
    TextReporter,
    make_event,
    parse_event_line,
    validate_event,
)


def test_make_event_stamps_type_and_time():
    event = make_event("status", message="hello")
    assert event["type"] == "status" and isinstance(event["time"], float)


@pytest.mark.parametrize(
    "event, problem",
    [
        ({"type": "nope", "time": 1.0}, "unknown event type"),
        ({"type": "status", "message": "x"}, "time"),
        (
            {"type": "progress", "time": 1.0, "step": 1, "total": 2, "epoch": 0.1, "eta_s": 1},
            "tokens_per_s",
        ),
        (
            {
                "type": "progress",
                "time": 1.0,
                "step": "1",
                "total": 2,
                "epoch": 0.1,
                "eta_s": 1,
                "tokens_per_s": 3.0,
            },
            "step",
        ),
        ({"type": "metrics", "time": 1.0, "step": 1, "loss": "low"}, "loss"),
        ({"type": "error", "time": 1.0, "message": "boom"}, "hint"),
        ([1, 2], "object"),
    ],
)
def test_bad_events_are_rejected(event, problem):
    with pytest.raises(EventSchemaError, match=problem):
        validate_event(event)


def test_unknown_fields_are_allowed():
    event = make_event("metrics", step=3, loss=1.5, something_new=[1, 2])
    assert validate_event(event)["something_new"] == [1, 2]


def test_jsonl_round_trip_and_noise_lines_are_skipped():
    stream = io.StringIO()
    reporter = JsonLinesReporter(stream)
    reporter.emit(make_event("status", message="a"))
    reporter.emit(make_event("metrics", step=1, loss=2.0))
    lines = stream.getvalue().splitlines() + ["Some library warning", "{not json"]
    parsed = [parse_event_line(line) for line in lines]
    assert [p["type"] for p in parsed if p] == ["status", "metrics"]
    assert parsed[2] is None and parsed[3] is None
    assert json.loads(lines[1])["loss"] == 2.0


def test_text_reporter_shows_step_loss_speed_eta():
    stream = io.StringIO()
    reporter = TextReporter(stream)
    reporter.emit(
        make_event("progress", step=5, total=30, epoch=0.5, eta_s=75.0, tokens_per_s=123.4)
    )
    reporter.emit(make_event("metrics", step=5, loss=1.2345, lr=1e-4))
    reporter.emit(make_event("error", message="Out of memory", hint="lower the batch size"))
    text = stream.getvalue()
    assert "step 5/30" in text and "loss 1.2345" in text and "123 tok/s" in text
    assert "ETA 1:15" in text and "hint: lower the batch size" in text
