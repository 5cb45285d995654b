"""Page jobs with real child processes and real tiny models: ChildJob (the CLI in a child) and
ThreadJob (a function in superqt's thread). The signals arrive in the GUI thread, in order, with
exactly one outcome and `finished` last; a replaced job delivers nothing; the registry ends
every job."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PySide6.QtCore import QCoreApplication, QObject, QThread, Signal
from test_training import make_config

from qlora_studio.core.errors import DatasetError
from qlora_studio.core.events import make_event
from qlora_studio.gui.jobs import ChildJob, JobRegistry, ThreadJob

TRAIN_SIGNALS = (
    "started",
    "event",
    "status",
    "progress",
    "metrics",
    "memory",
    "checkpoint",
    "log",
    "succeeded",
    "failed",
    "cancelled",
    "finished",
)
FUNCTION_SIGNALS = ("started", "status", "succeeded", "failed", "cancelled", "finished")
PLAIN = {"needs_ml": False}  # the test functions need no torch
OUTCOMES = {"succeeded", "failed", "cancelled"}
RUN_TIMEOUT_MS = 120_000


class SignalLog(QObject):
    """Records a worker's signals in a GUI-thread object, as the window's slots receive them.

    The slots are methods defined in the class body of a QObject living in the GUI thread, so
    Qt queues them there (methods added later with setattr are not slots in PySide6: they would
    run in the worker's thread). `finished_seen` fires once every earlier signal is recorded."""

    finished_seen = Signal()

    def __init__(self, worker: QObject, names=TRAIN_SIGNALS, hooks=None):
        super().__init__()
        self.calls: list[tuple[str, object]] = []
        self.threads: set[QThread] = set()
        self.hooks: dict[str, list] = hooks or {}
        for name in names:
            getattr(worker, name).connect(getattr(self, f"on_{name}"))

    def _record(self, name: str, *args) -> None:
        self.calls.append((name, args[0] if len(args) == 1 else args))
        self.threads.add(QThread.currentThread())
        for hook in self.hooks.get(name, []):
            hook(*args)

    def on_started(self):
        self._record("started")

    def on_event(self, event):
        self._record("event", event)

    def on_status(self, message):
        self._record("status", message)

    def on_progress(self, event):
        self._record("progress", event)

    def on_metrics(self, event):
        self._record("metrics", event)

    def on_memory(self, event):
        self._record("memory", event)

    def on_checkpoint(self, event):
        self._record("checkpoint", event)

    def on_log(self, line):
        self._record("log", line)

    def on_succeeded(self, result):
        self._record("succeeded", result)

    def on_failed(self, message, hint):
        self._record("failed", message, hint)

    def on_cancelled(self, *event):
        self._record("cancelled", *event)

    def on_finished(self):
        self._record("finished")
        self.finished_seen.emit()

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def of(self, name: str) -> list:
        return [args for n, args in self.calls if n == name]

    def outcomes(self) -> list[str]:
        return [n for n in self.names() if n in OUTCOMES]

    def assert_well_formed(self) -> None:
        names = self.names()
        assert names[0] == "started" and names[-1] == "finished"
        assert names.count("finished") == 1 and len(self.outcomes()) == 1, names
        assert self.threads == {QCoreApplication.instance().thread()}, "slots run in the GUI"


def run_worker(qtbot, worker, *, timeout=RUN_TIMEOUT_MS, names=TRAIN_SIGNALS, hooks=None):
    signals = SignalLog(worker, names, hooks)
    with qtbot.waitSignal(signals.finished_seen, timeout=timeout):
        worker.start()
    signals.assert_well_formed()
    return signals


@pytest.fixture
def config_path(tiny_models, tmp_path) -> Path:
    cfg = make_config(tiny_models["qwen2"], tmp_path, "qlora", max_steps=4, save_steps=2)
    return cfg.save(tmp_path / "run.yaml")


# ---- ChildJob --------------------------------------------------------------------------------
def test_training_run_reports_every_event_then_succeeds(qtbot, config_path):
    worker = ChildJob.train(config_path)
    signals = run_worker(qtbot, worker)

    assert signals.outcomes() == ["succeeded"], signals.of("failed")
    assert [e["step"] for e in signals.of("progress")] == [1, 2, 3, 4]
    assert any(isinstance(e.get("loss"), float) for e in signals.of("metrics"))
    assert signals.of("memory") and all(e["rss_bytes"] > 0 for e in signals.of("memory"))
    checkpoints = [Path(e["path"]) for e in signals.of("checkpoint")]
    assert checkpoints and all(p.is_dir() for p in checkpoints)
    done = signals.of("succeeded")[0]
    assert done["step"] == 4 and Path(done["run_dir"]).is_dir()
    assert Path(done["adapter_dir"], "adapter_model.safetensors").exists()
    assert any(m.startswith("Run folder: ") for m in signals.of("status"))
    assert not worker.running


def test_stop_saves_a_checkpoint_and_ends_the_child(qtbot, config_path):
    worker = ChildJob.train(config_path, ["train.max_steps=400", "train.save_steps=1000"])

    def stop_at_step_two(event):
        if event["step"] >= 2:
            worker.request_stop()
            worker.request_stop()  # a second click changes nothing

    signals = run_worker(qtbot, worker, hooks={"progress": [stop_at_step_two]})

    assert signals.outcomes() == ["cancelled"], signals.of("failed")
    cancelled = signals.of("cancelled")[0]
    assert 2 <= cancelled["step"] < 400
    assert Path(cancelled["checkpoint"]).name == f"checkpoint-{cancelled['step']}"
    assert Path(cancelled["checkpoint"]).is_dir()
    assert not worker.running
    worker.request_stop()  # after the end: harmless


def test_a_child_that_outlives_its_grace_is_killed_and_reported_stopped(qtbot, config_path):
    worker = ChildJob(["train", str(config_path), "--events", "jsonl"], grace_s=0)
    # asked while it still loads: no time to stop cleanly within a zero grace
    signals = run_worker(qtbot, worker, hooks={"status": [lambda _message: worker.request_stop()]})

    assert signals.outcomes() == ["cancelled"]
    cancelled = signals.of("cancelled")[0]
    assert (cancelled["type"], cancelled["step"], cancelled["checkpoint"]) == ("cancelled", 0, "")
    assert "did not stop within 0 s and was killed" in signals.of("status")[-1]


def test_bad_data_fails_with_the_file_and_row(qtbot, config_path, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion\nhello,world\nsecond,\n")
    signals = run_worker(qtbot, ChildJob.train(config_path, [f"data.path={bad}"]))

    assert signals.outcomes() == ["failed"]
    message, hint = signals.of("failed")[0]
    assert "bad.csv, row 2" in message and "completion" in message and hint
    assert not (tmp_path / "runs").exists()


def test_a_killed_child_is_reported_as_ended_unexpectedly(qtbot, config_path):
    worker = ChildJob.train(config_path, ["train.max_steps=400"])
    # kill as soon as the child speaks: it exists, and is still loading
    signals = run_worker(qtbot, worker, hooks={"status": [lambda _message: worker.kill()]})

    assert signals.outcomes() == ["failed"]
    message, hint = signals.of("failed")[0]
    assert "ended unexpectedly" in message and "-9" in message
    assert "stopped from the app" in hint
    assert not worker.running


def test_a_crash_without_an_error_event_shows_the_last_log_lines(qtbot, config_path):
    worker = ChildJob(["train", str(config_path), "--no-such-option"])
    signals = run_worker(qtbot, worker, timeout=60_000)

    message, hint = signals.of("failed")[0]
    assert message == "The training process ended unexpectedly (exit code 2)"
    assert "unrecognized arguments: --no-such-option" in hint
    assert any("usage: qlora-studio" in line for line in signals.of("log"))


def test_stop_before_the_start_runs_nothing(qtbot, config_path):
    worker = ChildJob.train(config_path)
    worker.request_stop()
    signals = run_worker(qtbot, worker, timeout=10_000)
    assert signals.names() == ["started", "event", "cancelled", "finished"]
    assert signals.of("cancelled")[0]["step"] == 0


def test_commands_show_what_a_user_would_type(tmp_path):
    config = tmp_path / "my runs" / "config.yaml"
    worker = ChildJob.train(config, ["train.lr=1e-4"])
    assert worker.display_command() == (f"qlora-studio train '{config}' --set train.lr=1e-4")
    assert worker.command()[1:] == [
        "-m",
        "qlora_studio",
        "train",
        str(config),
        "--set",
        "train.lr=1e-4",
        "--events",
        "jsonl",
    ]
    assert ChildJob.resume("/runs/r1").display_command() == "qlora-studio resume /runs/r1"


def test_the_window_process_never_loads_the_training_libraries():
    code = (
        "import sys, qlora_studio.gui.jobs, qlora_studio.gui.main_window; "
        "print([m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets') "
        "if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


# ---- ThreadJob -----------------------------------------------------------------------------
def run_function(qtbot, worker, hooks=None):
    return run_worker(qtbot, worker, timeout=10_000, names=FUNCTION_SIGNALS, hooks=hooks)


def test_function_result_and_status_arrive(qtbot):
    def add(reporter, cancel, a, b=0):
        reporter.emit(make_event("status", message="adding"))
        return {"sum": a + b, "thread": threading.current_thread().name}

    signals = run_function(qtbot, ThreadJob(add, 2, b=3, **PLAIN))
    assert signals.names() == ["started", "status", "succeeded", "finished"]
    assert signals.of("status") == ["adding"]
    result = signals.of("succeeded")[0]
    assert result["sum"] == 5 and result["thread"] != threading.main_thread().name


def test_function_errors_become_message_and_hint(qtbot):
    def bad_data(reporter, cancel):
        raise DatasetError("data.csv, row 3: empty completion", "fill in the completion")

    def bug(reporter, cancel):
        raise KeyError("oops")

    signals = run_function(qtbot, ThreadJob(bad_data, **PLAIN))
    assert signals.of("failed") == [("data.csv, row 3: empty completion", "fill in the completion")]
    signals = run_function(qtbot, ThreadJob(bug, **PLAIN))
    assert signals.of("failed") == [("KeyError: 'oops'", "See the log for details.")]


def test_function_stops_when_asked(qtbot):
    def wait_for_stop(reporter, cancel):
        reporter.emit(make_event("status", message="waiting"))
        if not cancel.wait(timeout=30):
            return "never stopped"

    worker = ThreadJob(wait_for_stop, **PLAIN)
    signals = run_function(qtbot, worker, hooks={"status": [lambda _m: worker.request_stop()]})
    assert signals.names() == ["started", "status", "cancelled", "finished"]


# ---- JobRegistry ----------------------------------------------------------------------------
def test_a_job_replaced_mid_flight_delivers_nothing_stale(qtbot):
    release = threading.Event()

    def slow(reporter, cancel, answer):
        reporter.emit(make_event("status", message=f"working on {answer}"))
        release.wait(timeout=30)  # ignores its cancel event: its result comes anyway
        reporter.emit(make_event("status", message=f"{answer} is ready"))
        return answer

    registry = JobRegistry()
    old = ThreadJob(slow, "stale", **PLAIN)
    old_signals = SignalLog(old, FUNCTION_SIGNALS)
    with qtbot.waitSignal(old.status, timeout=10_000):
        registry.start("page", old)
    new = ThreadJob(slow, "fresh", **PLAIN)
    new_signals = SignalLog(new, FUNCTION_SIGNALS)
    registry.start("page", new)  # drops the old job while it runs
    assert old.dropped and old.cancel_event.is_set() and registry.current("page") is new
    with qtbot.waitSignal(new_signals.finished_seen, timeout=10_000):
        release.set()
    qtbot.waitUntil(lambda: not registry.running(), timeout=10_000)

    new_signals.assert_well_formed()
    assert new_signals.of("succeeded") == ["fresh"]
    assert old_signals.names() == ["started", "status"]  # nothing after the drop
    assert registry.current("page") is None


def test_a_replaced_child_is_stopped_and_its_outcome_never_arrives(qtbot, config_path):
    registry = JobRegistry()
    old = ChildJob.train(config_path, ["train.max_steps=400", "train.save_steps=1000"])
    old_signals = SignalLog(old)
    with qtbot.waitSignal(old.progress, timeout=RUN_TIMEOUT_MS):
        registry.start("train", old)
    new = ThreadJob(lambda reporter, cancel: "fresh", **PLAIN)
    with qtbot.waitSignal(new.finished, timeout=10_000):
        registry.start("train", new)
    qtbot.waitUntil(lambda: not old.running, timeout=RUN_TIMEOUT_MS)  # it saw the stop line

    assert old.process._proc.poll() is not None
    assert not OUTCOMES & set(old_signals.names()) and "finished" not in old_signals.names()
    assert not registry.running()
