"""`qlora-studio chat --serve` on a tiny trained run: the request protocol in process, then the
real child process (ready, streamed answers, a stop mid-answer, end of input) and `eval`
stopped from its stdin."""

from __future__ import annotations

import io
import json
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_training import make_config

from qlora_studio.cli import main
from qlora_studio.core.evaluation.chat import serve
from qlora_studio.core.evaluation.comparison import ComparisonModel, GenerationSettings
from qlora_studio.core.events import CollectingReporter, parse_event_line
from qlora_studio.core.training.run import run_training

PROMPT = "Convert to ISO date: 3 March 2021"
USER = [{"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def lora_run(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chat_serve")
    cfg = make_config(tiny_models["llama"], root, "lora", max_steps=6, lr=2e-2)
    cfg.data.eval_path = cfg.data.path
    return run_training(cfg).run_dir


@pytest.fixture(scope="module")
def comparison(lora_run):
    model = ComparisonModel.load(lora_run, device="cpu")
    yield model
    model.close()


def _serve(model, requests: list) -> CollectingReporter:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in requests)
    reporter = CollectingReporter()
    assert serve(model, io.StringIO(lines), reporter) == 0
    return reporter


def test_serve_answers_both_sides_as_the_engine_does_and_keeps_each_history(comparison):
    settings = {"max_new_tokens": 8}
    reporter = _serve(
        comparison,
        [
            {"op": "generate", "id": 7, "messages": USER, "settings": settings},
            {"op": "generate", "id": 8, "messages": USER, "sides": ["tuned"], "settings": settings},
            {"op": "reset"},
            {"op": "generate", "id": 9, "messages": USER, "sides": ["tuned"], "settings": settings},
        ],
    )  # the end of input: what was asked is answered, then serve returns 0
    (ready,) = reporter.of_type("ready")
    assert ready["method"] == "lora" and ready["stop_tokens"] == ["</s>"]
    answers = {(e["id"], e["side"]): e for e in reporter.of_type("answer")}
    assert set(answers) == {(7, "base"), (7, "tuned"), (8, "tuned"), (9, "tuned")}
    engine = GenerationSettings(max_new_tokens=8)
    for side in ("base", "tuned"):
        ((expected, _),) = comparison.generate([USER], side, engine)
        assert answers[7, side]["text"] == expected and not answers[7, side]["stopped"]
        streamed = "".join(
            e["text"] for e in reporter.of_type("token") if e["id"] == 7 and e["side"] == side
        )
        assert streamed.strip() == expected
    # request 8 answered the same prompt again after the first answer; 9 after a reset, afresh
    first_tuned = answers[7, "tuned"]["text"]
    history = [*USER, {"role": "assistant", "content": first_tuned}, *USER]
    ((second, _),) = comparison.generate([history], "tuned", engine)
    assert answers[8, "tuned"]["text"] == second
    assert answers[9, "tuned"]["text"] == first_tuned
    assert [e["id"] for e in reporter.of_type("status")] == [3]  # the reset, third request
    assert reporter.of_type("error") == []


def test_bad_requests_get_an_error_and_the_server_carries_on(comparison):
    reporter = _serve(
        comparison,
        [
            "this is not json",
            "[1, 2]",
            {"op": "dance", "id": 1},
            {"op": "generate", "id": 2, "messages": "hello"},
            {"op": "generate", "id": 3, "messages": USER, "sides": ["left"]},
            {"op": "generate", "id": 4, "messages": USER, "settings": {"top_p": 0}},
            {"op": "generate", "id": 5, "messages": USER, "settings": {"beams": 2}},
            {"op": "generate", "id": True, "messages": USER},
            {"op": "generate", "id": 6, "messages": USER, "settings": {"max_new_tokens": 3}},
        ],
    )  # and then the end of input ends it (serve returned 0)
    errors = reporter.of_type("error")
    assert [e.get("id") for e in errors] == [None, None, 1, 2, 3, 4, 5, None]
    assert all(e["message"] and e["hint"] for e in errors)
    assert "not a JSON request" in errors[0]["message"] and "top_p" in errors[5]["message"]
    assert {e["id"] for e in reporter.of_type("answer")} == {6}


def test_a_stop_reaches_the_generations_received_before_it(comparison):
    long = {"max_new_tokens": 200}
    reporter = _serve(
        comparison,
        [
            {"op": "generate", "id": 1, "messages": USER, "settings": long},
            {"op": "stop"},  # read while request 1 waits: it stops at once
            {"op": "generate", "id": 2, "messages": USER, "settings": {"max_new_tokens": 4}},
        ],
    )
    answers = {(e["id"], e["side"]): e for e in reporter.of_type("answer")}
    assert answers[1, "base"]["stopped"] and answers[1, "tuned"]["stopped"]
    assert not answers[2, "tuned"]["stopped"] and answers[2, "tuned"]["text"]

    reporter = _serve(
        comparison,
        [
            {"op": "generate", "id": 3, "messages": USER, "settings": long},
            {"op": "quit"},  # stops request 3 too, and leaves
            {"op": "generate", "id": 4, "messages": USER},  # never answered
        ],
    )
    answers = {(e["id"], e["side"]): e for e in reporter.of_type("answer")}
    assert set(answers) == {(3, "base"), (3, "tuned")} and answers[3, "tuned"]["stopped"]


class Child:
    """A CLI child process whose stdout events arrive on a queue."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qlora_studio", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self.events: queue.Queue = queue.Queue()
        self.seen: list[dict] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            event = parse_event_line(line)
            if event is not None:
                self.events.put(event)
        self.events.put(None)

    def send(self, text: str) -> None:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def wait_for(self, kind: str, timeout: float = 120) -> dict:
        while True:
            event = self.events.get(timeout=timeout)
            assert event is not None, f"no {kind} event; stderr: {self.proc.stderr.read()[-2000:]}"
            self.seen.append(event)
            if event["type"] == kind:
                return event

    def finish(self, timeout: float = 60) -> int:
        self.proc.stdin.close()
        code = self.proc.wait(timeout=timeout)
        while (event := self.events.get(timeout=timeout)) is not None:
            self.seen.append(event)
        return code


def test_the_serve_child_streams_stops_mid_answer_and_exits_at_end_of_input(lora_run):
    child = Child("chat", str(lora_run), "--serve", "--device", "cpu")
    try:
        ready = child.wait_for("ready")
        assert ready["run_dir"] == str(lora_run) and ready["device"] == "cpu"
        request = {"op": "generate", "id": 1, "messages": USER, "sides": ["base"]}
        child.send(json.dumps({**request, "settings": {"max_new_tokens": 400}}))
        assert child.wait_for("token")["id"] == 1
        child.send('{"op": "stop"}')
        answer = child.wait_for("answer")
        assert answer["stopped"] and answer["side"] == "base"
        tokens = [e for e in child.seen if e["type"] == "token"]
        assert len(tokens) < 400

        child.send("nonsense")
        assert "not a JSON request" in child.wait_for("error")["message"]
        child.send(json.dumps({**request, "id": 2, "settings": {"max_new_tokens": 3}}))
        answer = child.wait_for("answer")
        assert answer["id"] == 2 and not answer["stopped"]
        assert child.finish() == 0
    finally:
        if child.proc.poll() is None:
            child.proc.kill()


def test_serve_on_a_folder_that_is_not_a_run_says_why_and_exits_1(tmp_path):
    child = Child("chat", str(tmp_path), "--serve")
    error = child.wait_for("error")
    assert "not a run folder" in error["message"] and error["hint"]
    assert child.finish() == 1


def test_eval_stops_on_a_stop_line_and_says_where_a_finished_report_is(lora_run, capsys):
    args = ("eval", str(lora_run), "--device", "cpu", "--batch-size", "1", "--events", "jsonl")
    child = Child(*args, "--limit", "40", "--max-new-tokens", "64")
    try:
        child.wait_for("progress")
        child.send("stop")
        cancelled = child.wait_for("cancelled")
        assert cancelled["step"] >= 1
        assert child.finish() == 130
        assert child.proc.stderr.read().count("Traceback") == 0
        assert not (lora_run / "evaluation" / "data.first40.json").exists()
    finally:
        if child.proc.poll() is None:
            child.proc.kill()

    assert main([*args, "--limit", "2", "--max-new-tokens", "4"]) == 0
    events = [parse_event_line(line) for line in capsys.readouterr().out.splitlines()]
    done = events[-1]
    assert done["type"] == "done" and events[-2]["report_path"] == done["report_path"]
    report = json.loads(Path(done["report_path"]).read_text())
    assert done["report_path"] == str(lora_run / "evaluation" / "data.first2.json")
    assert len(report["rows"]) == 2 and done["run_dir"] == str(lora_run)
