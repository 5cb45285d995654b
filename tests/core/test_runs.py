"""Run history: the SQLite database (WAL, crash detection, delete), the `runs` commands, and real
training runs recorded by the CLI, killed with SIGKILL, marked crashed and resumed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cli import CLI, events_of, run_cli
from test_training import make_config

from qlora_studio.cli import main
from qlora_studio.config import RunConfig
from qlora_studio.core.events import CollectingReporter, make_event
from qlora_studio.core.history.recorder import RunRecorder
from qlora_studio.core.history.store import (
    RunHistory,
    RunHistoryError,
    config_changes,
    default_db_path,
    process_start_time,
    read_loss_curve,
)
from qlora_studio.core.run_folder import CONFIG_FILE, EVENTS_FILE, last_checkpoint
from qlora_studio.core.training.run import run_training


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A fresh user data folder (and so a fresh history) for this test and its subprocesses."""
    folder = tmp_path / "user_data"
    monkeypatch.setenv("QLORA_STUDIO_DATA", str(folder))
    return folder


def make_run_folder(root: Path, name: str, losses=()) -> Path:
    """A run folder as training leaves it: config.yaml and events.jsonl with loss metrics."""
    folder = root / name
    folder.mkdir(parents=True)
    cfg = RunConfig()
    cfg.output.name = name
    cfg.save(folder / CONFIG_FILE)
    with (folder / EVENTS_FILE).open("w") as f:
        for step, loss in losses:
            f.write(json.dumps(make_event("metrics", step=step, loss=loss)) + "\n")
    return folder


def wait_for(predicate, what: str, timeout_s: float = 180.0):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def runs_json(capsys, *args) -> object:
    capsys.readouterr()
    assert main(["runs", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


# ---- the database -------------------------------------------------------------------------
def test_start_update_finish_list_and_filter(data_dir, tmp_path):
    history = RunHistory.open()
    assert history.path == default_db_path() == data_dir / "runs.sqlite3"
    assert history.journal_mode() == "wal"
    a_dir = make_run_folder(tmp_path, "a")
    b_dir = make_run_folder(tmp_path, "b")
    a = history.start_run(a_dir, "method: lora\n", method="lora", model_source="tiny")
    b = history.start_run(b_dir, "method: full\n", method="full", model_source="tiny")
    assert history.get(a).status == "running" and history.get(a).pid == os.getpid()

    history.update_progress(
        a,
        step=2,
        total_steps=4,
        final_loss=1.5,
        best_loss=1.5,
        peak_memory_bytes=100,
        peak_memory_kind="RAM",
    )
    history.update_progress(a, step=3, final_loss=1.7, best_loss=1.7, peak_memory_bytes=50)
    record = history.get(a)
    assert (record.step, record.total_steps, record.final_loss) == (3, 4, 1.7)
    assert record.best_loss == 1.5 and record.peak_memory_bytes == 100  # only ever improve
    history.finish_run(a, "done", step=4, final_loss=1.2, adapter_dir=a_dir / "adapter")
    history.finish_run(b, "failed", error="Out of memory at step 1")

    assert [r.id for r in history.list_runs()] == [b, a]  # newest first
    assert [r.id for r in history.list_runs("done")] == [a]
    assert [r.id for r in history.list_runs("failed")] == [b]
    assert history.list_runs("crashed") == []
    done = history.get(a)
    assert done.status == "done" and done.ended and done.step == 4 and done.final_loss == 1.2
    assert done.adapter_dir == str(a_dir / "adapter") and history.get(b).error.startswith("Out")
    assert done.to_dict()["config"] == "method: lora\n"
    assert "config" not in done.to_dict(with_config=False)
    with pytest.raises(RunHistoryError, match="Unknown run status"):
        history.list_runs("finished")

    # resuming keeps the row (and its best loss); a fresh start in the same folder resets it
    assert history.start_run(a_dir, "changed", resume=True) == a
    resumed = history.get(a)
    assert resumed.status == "running" and resumed.ended is None and resumed.resumes == 1
    assert resumed.best_loss == 1.5 and resumed.config == "method: lora\n"
    fresh = history.start_run(a_dir, "method: qlora\n")
    assert fresh != a and history.get(a) is None and history.get(fresh).best_loss is None
    history.close()


def test_delete_removes_the_folder_and_the_row_and_nothing_else(data_dir, tmp_path):
    history = RunHistory.open()
    root = tmp_path / "runs"
    keep_dir, gone_dir = make_run_folder(root, "keep"), make_run_folder(root, "gone")
    (root / "notes.txt").write_text("mine")
    keep = history.start_run(keep_dir, "a")
    gone = history.start_run(gone_dir, "b")
    history.finish_run(keep, "done")
    with pytest.raises(RunHistoryError, match="still running"):
        history.delete(gone)  # this very process is running it
    history.finish_run(gone, "cancelled")

    assert history.delete(gone) == gone_dir.resolve()
    assert not gone_dir.exists() and history.get(gone) is None
    assert keep_dir.is_dir() and (root / "notes.txt").read_text() == "mine"
    assert [r.id for r in history.list_runs()] == [keep]

    (keep_dir / CONFIG_FILE).unlink()  # no longer looks like a run folder: refuse
    with pytest.raises(RunHistoryError, match="not a QLoRA Studio run folder"):
        history.delete(keep)
    assert keep_dir.is_dir() and history.get(keep) is not None

    lost_dir = make_run_folder(root, "lost")
    lost = history.start_run(lost_dir, "c")
    history.finish_run(lost, "failed")
    shutil.rmtree(lost_dir)  # the user removed the folder by hand: the row still goes
    history.delete(lost)
    assert history.get(lost) is None
    with pytest.raises(RunHistoryError, match="no run"):
        history.delete(12345)


def test_dead_and_reused_pids_are_marked_crashed(data_dir, tmp_path):
    history = RunHistory.open()
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    dead = history.start_run(make_run_folder(tmp_path, "dead"), "x", pid=ended.pid)
    alive = history.start_run(make_run_folder(tmp_path, "alive"), "x")
    reused = history.start_run(make_run_folder(tmp_path, "reused"), "x")
    elsewhere = history.start_run(make_run_folder(tmp_path, "elsewhere"), "x", pid=ended.pid)
    assert process_start_time(os.getpid()) == history.get(alive).process_started
    with sqlite3.connect(history.path) as db:  # what an older process with our PID would leave
        db.execute("UPDATE runs SET process_started = 1000.0 WHERE id = ?", (reused,))
        db.execute("UPDATE runs SET host = 'another-machine' WHERE id = ?", (elsewhere,))

    again = RunHistory.open()  # opening the history finds them
    statuses = {r.id: r.status for r in again.list_runs()}
    assert statuses == {dead: "crashed", alive: "running", reused: "crashed", elsewhere: "running"}
    crashed = again.get(dead)
    assert f"pid {ended.pid}" in crashed.error and crashed.ended is not None
    assert again.mark_crashed_runs() == []


def test_a_second_process_reads_while_a_run_writes(data_dir, tmp_path):
    """WAL: a reader is not blocked by a writer's open transaction, nor a writer by a reader."""
    history = RunHistory.open()
    run_id = history.start_run(make_run_folder(tmp_path, "busy"), "x")
    writer_code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "db.execute('UPDATE runs SET step = 99 WHERE id = ?', (int(sys.argv[2]),))\n"
        "print('writing', flush=True)\n"
        "sys.stdin.readline()\n"
        "db.execute('COMMIT')\n"
    )
    writer = subprocess.Popen(
        [sys.executable, "-c", writer_code, str(history.path), str(run_id)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout.readline().strip() == "writing"
        reader = RunHistory.open(timeout_s=0.5)  # a second app instance opening the history
        assert reader.get(run_id).step == 0  # the last committed state, at once
        assert [r.id for r in reader.list_runs("running")] == [run_id]
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(timeout=30) == 0
        assert reader.get(run_id).step == 99
    finally:
        writer.kill()

    # a reader holding a read transaction open does not stop the run's writes either
    held = sqlite3.connect(history.path, isolation_level=None)
    held.execute("BEGIN")
    assert held.execute("SELECT step FROM runs").fetchone() == (99,)
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from qlora_studio.core.history.store import RunHistory\n"
            "h = RunHistory.open(sys.argv[1], timeout_s=0.5)\n"
            "h.update_progress(int(sys.argv[2]), step=100)\n",
            str(history.path),
            str(run_id),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert writer.returncode == 0, writer.stderr
    held.execute("COMMIT")
    assert history.get(run_id).step == 100


def test_recorder_warns_once_and_carries_on_while_the_database_is_locked(data_dir, tmp_path):
    folder = make_run_folder(tmp_path, "locked")
    screen = CollectingReporter()
    recorder = RunRecorder(folder, "x", method="lora", warn=screen, interval_s=0.5)
    run_id = recorder.start()
    assert run_id is not None
    lock = sqlite3.connect(default_db_path(), isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    lock.execute("UPDATE runs SET name = name")  # a write lock, as another writer would hold
    for step in (1, 2, 3):
        recorder.emit(
            make_event("progress", step=step, total=4, epoch=0.1, eta_s=1, tokens_per_s=1)
        )
        recorder.emit(make_event("metrics", step=step, loss=3.0 - step))
        if step >= 2:  # a checkpoint is written at once: here it waits 1 s, then gives up
            path = str(folder / f"checkpoints/checkpoint-{step}")
            recorder.emit(make_event("checkpoint", step=step, path=path))
    warnings = [e["message"] for e in screen.of_type("status")]
    assert len(warnings) == 1 and "training continues" in warnings[0]
    lock.execute("COMMIT")
    lock.close()
    recorder.emit(make_event("done", step=4, run_dir=str(folder), adapter_dir=str(folder / "a")))
    recorder.close()
    record = RunHistory.open().get(run_id)
    assert record.status == "done" and record.step == 4 and record.best_loss == 0.0
    assert record.checkpoint_dir.endswith("checkpoint-3")


def test_training_goes_on_when_the_history_cannot_be_written(tiny_models, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the data folder should be")
    monkeypatch.setenv("QLORA_STUDIO_DATA", str(blocker / "data"))
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=2, save_steps=2)
    reporter = CollectingReporter()
    result = run_training(cfg, reporter=reporter)
    assert result.status == "done" and result.step == 2
    warnings = [e for e in reporter.of_type("status") if "run history" in e["message"]]
    assert len(warnings) == 1 and "training continues" in warnings[0]["message"]


def test_loss_curve_takes_the_replayed_steps_of_a_resumed_run(tmp_path):
    folder = make_run_folder(tmp_path, "r", [(1, 3.0), (2, 2.5), (3, 2.4), (2, 2.6), (3, 2.2)])
    with (folder / EVENTS_FILE).open("a") as f:
        f.write("not an event\n")
        f.write(json.dumps(make_event("metrics", step=3, eval_loss=2.0)) + "\n")
    assert read_loss_curve(folder) == [(1, 3.0), (2, 2.6), (3, 2.2)]
    assert read_loss_curve(tmp_path / "missing") == []


def test_config_changes_name_the_fields():
    cfg = RunConfig()
    cfg.data.path = "data.jsonl"
    old = cfg.to_yaml()
    new = cfg.with_overrides(["train.max_steps=8", "lora.r=4"]).to_yaml()
    assert config_changes(old, old) == []
    assert config_changes(old, new) == ["lora.r: 16 -> 4", "train.max_steps: 0 -> 8"]


# ---- the CLI and real runs ----------------------------------------------------------------
def test_cli_training_is_recorded_and_the_runs_commands(tiny_models, data_dir, tmp_path, capsys):
    cfg = make_config(tiny_models["qwen2"], tmp_path, "qlora", max_steps=4, save_steps=2)
    trained = run_cli("train", cfg.save(tmp_path / "run.yaml"), "--events", "jsonl")
    assert trained.returncode == 0, trained.stderr[-2000:]
    run_dir = Path(events_of(trained.stdout)[-1]["run_dir"])

    (listed,) = runs_json(capsys)
    assert listed["run_dir"] == str(run_dir.resolve()) and listed["status"] == "done"
    assert listed["method"] == "qlora" and listed["model_source"] == cfg.model.source
    assert (listed["step"], listed["total_steps"]) == (4, 4) and listed["error"] is None
    assert listed["peak_memory_bytes"] > 0 and listed["peak_memory_kind"] == "RAM"  # a CPU run
    assert Path(listed["checkpoint_dir"]).name == "checkpoint-4"
    assert (Path(listed["adapter_dir"]) / "adapter_model.safetensors").exists()
    run_id = listed["id"]

    shown = runs_json(capsys, "show", str(run_id))
    losses = [loss for _, loss in shown["loss_curve"]]
    assert [step for step, _ in shown["loss_curve"]] == [1, 2, 3, 4]
    assert shown["best_loss"] == pytest.approx(min(losses))
    assert shown["final_loss"] == pytest.approx(losses[-1])
    assert RunConfig.from_yaml(shown["config"]).to_dict() == cfg.to_dict()
    assert runs_json(capsys, "--status", "failed") == []

    assert main(["runs"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "id",
        "name",
        "status",
        "method",
        "steps",
        "best",
        "loss",
        "peak",
        "memory",
        "started",
        "folder",
    ]
    assert table[1].split()[:5] == [str(run_id), "qlora-run", "done", "qlora", "4/4"]
    assert main(["runs", "show", str(run_id)]) == 0
    text = capsys.readouterr().out
    assert "status       done" in text and "config at start:" in text

    assert main(["runs", "delete", str(run_id)]) == 1  # no TTY, no --yes: refuse with a hint
    assert "--yes" in capsys.readouterr().err and run_dir.is_dir()
    assert main(["runs", "delete", str(run_id), "--yes"]) == 0
    assert not run_dir.exists() and runs_json(capsys) == []
    assert main(["runs", "show", str(run_id)]) == 1


def test_killed_training_is_marked_crashed_then_resumes_in_the_same_row(
    tiny_models, data_dir, tmp_path, capsys
):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=24, save_steps=2)
    cfg.data.validation_split = 0.0
    config = cfg.save(tmp_path / "run.yaml")
    run_dir = (tmp_path / "runs" / "lora-run").resolve()
    proc = subprocess.Popen(
        [*CLI, "train", str(config), "--events", "jsonl"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with RunHistory.open() as history:  # the GUI polling the history while the run writes

            def checkpointed():
                record = history.find(run_dir)
                return record if record is not None and record.checkpoint_dir else None

            record = wait_for(checkpointed, "the first checkpoint in the history")
        assert record.status == "running" and record.pid == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        proc.kill()

    (crashed,) = runs_json(capsys)  # the next start finds the dead process
    assert crashed["id"] == record.id and crashed["status"] == "crashed"
    assert f"pid {proc.pid}" in crashed["error"]
    checkpoint = last_checkpoint(run_dir)
    checkpoint_step = int(checkpoint.name.removeprefix("checkpoint-"))
    assert 2 <= checkpoint_step < 24
    # what the folder shows, even past the row's last throttled write
    assert crashed["checkpoint_dir"] == str(checkpoint)
    assert crashed["step"] >= checkpoint_step and crashed["step"] >= record.step
    assert crashed["step"] == read_loss_curve(run_dir)[-1][0]

    resumed = run_cli("resume", run_dir, "--events", "jsonl")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    events = events_of(resumed.stdout)
    steps = [e["step"] for e in events if e["type"] == "progress"]
    assert steps[0] == checkpoint_step + 1 and steps[-1] == 24
    assert events[-1]["type"] == "done" and events[-1]["step"] == 24

    (done,) = runs_json(capsys)  # the same row, not a second one
    assert done["id"] == record.id and done["status"] == "done" and done["error"] is None
    assert (done["step"], done["total_steps"], done["resumes"]) == (24, 24, 1)
    curve = RunHistory.open().loss_curve(record.id)
    assert [step for step, _ in curve] == list(range(1, 25))
