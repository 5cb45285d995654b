"""Run folders that can never lose a user's files (issue 11): where a run folder may be made,
what delete removes, one trainer per folder, resume of a finished run, temporary folders,
permissions, and the messages of the inputs that used to mislead."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli import CLI, events_of, run_cli
from test_models import _copy_without_weights
from test_training import StopAtStep, make_config, write_chat_data

from qlora_studio.config import ConfigError, RunConfig
from qlora_studio.core.errors import DatasetError, ModelSourceError, TrainingError
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.export import export_run
from qlora_studio.core.history.store import RunHistory, RunHistoryError
from qlora_studio.core.run_folder import (
    MARKER,
    PID_FILE,
    RunFolderError,
    RunFolderLock,
    create_run_folder,
    delete_run_folder,
    last_checkpoint,
    make_run_dir,
    sweep_stale_temp_folders,
    trainer_pid,
)
from qlora_studio.core.training.run import resume_training, run_training

HOSTILE_NAMES = [
    "..",
    ".",
    "../x",
    "../../etc",
    "/tmp/abs",
    "a/b",
    "a\\b",
    "C:evil",
    ".hidden",
    "..\\..\\x",
    "x\x00y",
    "tab\there",
    " lead",
    "trail ",
    "dot.",
    "CON",
    "nul.txt",
    "x" * 101,
]


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "user-data"
    monkeypatch.setenv("QLORA_STUDIO_DATA", str(folder))
    return folder


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind and, for files, its content hash."""
    seen = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                seen[rel] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[rel] = ("dir",)
            else:
                seen[rel] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return seen


def folder_hash(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


# ---- 1. a run folder is always a new folder strictly inside output.dir ----------------------
@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_run_names_are_refused_naming_the_field(tmp_path, name):
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_dict({"data": {"path": "d.jsonl"}, "output": {"name": name}})
    assert refused.value.field == "output.name" and "plain folder name" in refused.value.hint
    with pytest.raises(ConfigError):  # the engine holds the rule too, whoever calls it
        create_run_folder(tmp_path / "runs", name, "lora")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_the_reported_escape_writes_nothing_outside(tmp_path):
    somewhere = tmp_path / "SOMEWHERE"
    somewhere.mkdir()
    (somewhere / "config.yaml").write_text("mine: true\n")
    (somewhere / "notes.txt").write_text("my notes")
    before = snapshot(tmp_path)
    cfg = RunConfig()
    cfg.data.path = "d.jsonl"
    with pytest.raises(ConfigError, match="output.name"):
        cfg.with_overrides([f"output.dir={somewhere / 'newruns'}", "output.name=.."])
    assert snapshot(tmp_path) == before


def test_an_existing_folder_or_symlink_is_never_reused(tmp_path):
    root = tmp_path / "runs"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.yaml").write_text("mine: true\n")
    root.mkdir()
    (root / "run").symlink_to(victim, target_is_directory=True)
    (root / "run-2").mkdir()  # empty, but not ours: still skipped
    before = snapshot(victim)

    made = create_run_folder(root, "run", "lora")
    assert made == root / "run-3" and (made / MARKER).is_file()
    assert snapshot(victim) == before and not any((root / "run-2").iterdir())


def _create_in_child(root: str, barrier, results) -> None:
    barrier.wait()
    results.put(str(create_run_folder(root, "same", "lora")))


def test_two_processes_asking_for_one_name_at_once_get_two_folders(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(8):
        root = tmp_path / f"trial{trial}"
        barrier, results = context.Barrier(2), context.Queue()
        workers = [
            context.Process(target=_create_in_child, args=(str(root), barrier, results))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        made = {results.get(timeout=30) for _ in workers}
        for worker in workers:
            worker.join(timeout=30)
            assert worker.exitcode == 0
        assert made == {str(root / "same"), str(root / "same-2")}


NAME_PIECES = st.sampled_from(
    ["..", ".", "/", "\\", "run", "é", " ", ":", "\x00", "\n", "~", "CON", "-", "*", "a.b", "x"]
)
DIR_PIECES = st.sampled_from(["..", ".", "runs", "sub", "x y", "é", "runs/../runs"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    name=st.one_of(st.text(max_size=12), st.lists(NAME_PIECES, max_size=5).map("".join)),
    dirs=st.lists(DIR_PIECES, min_size=1, max_size=3),
)
def test_no_output_name_or_dir_writes_outside_a_fresh_run_folder(tmp_path, name, dirs):
    sandbox = Path(os.path.realpath(tempfile.mkdtemp(dir=tmp_path)))
    project = sandbox / "a" / "b" / "c" / "project"  # deep enough for three '..'
    project.mkdir(parents=True)
    (project / "config.yaml").write_text("mine: true\n")
    (sandbox / "a" / "keep.txt").write_text("keep")
    output_dir = str(project.joinpath(*dirs))
    before = snapshot(sandbox)
    try:
        cfg = RunConfig.from_dict(
            {"data": {"path": "d.jsonl"}, "output": {"dir": output_dir, "name": name}}
        )
        run_dir = make_run_dir(cfg)
    except ConfigError as exc:
        assert exc.field == "output.name"
        assert snapshot(sandbox) == before
        return
    root = Path(os.path.realpath(output_dir))
    assert run_dir.resolve().parent == root
    assert run_dir.resolve() != project and (run_dir / MARKER).is_file()
    after = snapshot(sandbox)
    for rel, entry in before.items():  # nothing changed or removed
        assert after.get(rel) == entry, rel
    run_rel = run_dir.resolve().relative_to(sandbox)
    for rel in set(after) - set(before):  # new: the run folder, its marker, the runs root
        path = Path(rel)
        assert (
            path == run_rel
            or path == run_rel / MARKER
            or (after[rel] == ("dir",) and path in run_rel.parents)
        ), rel


def test_delete_removes_only_a_run_folder_holding_only_our_files(data_dir, tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (project / "config.yaml").write_text("mine: true\n")
    (project / "events.jsonl").write_text("")
    (project / "thesis.tex").write_text("years of work")
    history = RunHistory.open()
    row = history.start_run(project, "a")  # a row that points at the project (older versions)
    history.finish_run(row, "done")
    with pytest.raises(RunHistoryError, match="did not write.*thesis.tex"):
        history.delete(row)
    assert (project / "thesis.tex").read_text() == "years of work"
    assert history.get(row) is not None

    linked = tmp_path / "linked-run"
    real = create_run_folder(tmp_path / "runs", "real", "lora")
    linked.symlink_to(real, target_is_directory=True)
    with pytest.raises(RunFolderError, match="not a QLoRA Studio run folder"):
        delete_run_folder(linked)
    assert real.is_dir()

    (real / "exports").mkdir()
    (real / ".adapter.abc.pid1.tmp").mkdir()  # our own leftovers do not hold a delete back
    delete_run_folder(real)
    assert not real.exists() and (tmp_path / "runs").is_dir()


# ---- 2. one trainer per run folder ---------------------------------------------------------
def test_a_second_trainer_on_a_running_folder_is_refused(tiny_models, data_dir, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=400, save_steps=2)
    cfg.data.validation_split = 0.0
    config = cfg.save(tmp_path / "run.yaml")
    run_dir = tmp_path / "runs" / "lora-run"
    first = subprocess.Popen(
        [*CLI, "train", str(config), "--events", "jsonl"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while last_checkpoint(run_dir) is None:
            assert first.poll() is None, "the first trainer ended early"
            assert time.monotonic() < deadline, "no checkpoint after 180 s"
            time.sleep(0.1)
        assert trainer_pid(run_dir) == first.pid
        events_before = (run_dir / "events.jsonl").read_text().count('"status"')

        second = run_cli("resume", run_dir, "--events", "jsonl", timeout=120)
        assert second.returncode == 1
        (error,) = [e for e in events_of(second.stdout) if e["type"] == "error"]
        assert f"already running (pid {first.pid})" in error["message"]
        assert "one trainer per run folder" in error["hint"]
        with RunHistory.open() as history:
            assert history.find(run_dir).pid == first.pid
        with pytest.raises(RunHistoryError, match="running"):
            with RunHistory.open() as history:
                history.delete(history.find(run_dir).id)
        # the refused process wrote nothing into the folder's event log
        assert (run_dir / "events.jsonl").read_text().count('"status"') == events_before
    finally:
        first.stdin.write("stop\n")
        first.stdin.flush()
        first.wait(timeout=120)
    assert trainer_pid(run_dir) is None and not (run_dir / PID_FILE).exists()


def test_the_lock_is_released_when_a_run_fails_and_taken_again_on_resume(tmp_path):
    folder = create_run_folder(tmp_path, "r", "lora")
    with RunFolderLock(folder):
        assert trainer_pid(folder) == os.getpid()
        with pytest.raises(TrainingError, match=f"already running \\(pid {os.getpid()}\\)"):
            RunFolderLock(folder).acquire()
    assert trainer_pid(folder) is None
    with RunFolderLock(folder):
        pass


# ---- 3. resuming a finished run ------------------------------------------------------------
def test_resume_of_a_finished_run_does_nothing_unless_max_steps_grows(tiny_models, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=3, save_steps=100)
    done = run_training(cfg)
    assert done.status == "done" and done.step == 3
    adapter = folder_hash(done.output_dir)

    with pytest.raises(TrainingError, match="already finished at step 3") as refused:
        resume_training(done.run_dir)
    assert "--set train.max_steps=N where N > 3" in refused.value.hint
    assert folder_hash(done.output_dir) == adapter
    assert trainer_pid(done.run_dir) is None

    reporter = CollectingReporter()
    longer = resume_training(done.run_dir, reporter=reporter, overrides=["train.max_steps=5"])
    assert longer.status == "done" and longer.step == 5
    assert [e["step"] for e in reporter.of_type("progress")] == [4, 5]
    assert all(e["eta_s"] >= 0 for e in reporter.of_type("progress"))


# ---- 4. temporary folders of killed exports ------------------------------------------------
def test_a_later_export_sweeps_what_killed_exports_left(tiny_models, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=2, save_steps=100)
    result = run_training(cfg)
    exports = result.run_dir / "exports"
    exports.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], text=True, capture_output=True
    ).stdout.strip()
    killed = exports / f".merged.x1y2.pid{dead}.tmp"  # a merge killed midway
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"\0" * 1024)
    old = exports / ".merged.abcd.tmp"  # named by an older version, long ago
    old.mkdir()
    os.utime(old, (time.time() - 7 * 3600,) * 2)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        running = exports / f".merged.zz.pid{alive.pid}.tmp"  # an export still being written
        running.mkdir()
        export_run(result.run_dir)
        assert not killed.exists() and not old.exists() and running.is_dir()
    finally:
        alive.kill()
        alive.wait()
    assert sweep_stale_temp_folders(exports) == [running]
    assert sorted(p.name for p in exports.iterdir()) == ["adapter"]


# ---- 5. folders follow the umask -----------------------------------------------------------
def test_output_folders_follow_the_umask(tiny_models, tmp_path):
    previous = os.umask(0o022)
    try:
        cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=1, save_steps=100)
        result = run_training(cfg)
        out = export_run(result.run_dir, out=tmp_path / "shared" / "my-adapter")
        default = export_run(result.run_dir)
    finally:
        os.umask(previous)
    for folder in (result.run_dir, result.output_dir, out, default, default.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755, folder


# ---- 6, 8, 9: messages that used to mislead ------------------------------------------------
def test_a_mapping_to_a_missing_column_names_it_and_the_real_ones(tmp_path):
    from qlora_studio.core.data.rows import load_examples

    qa = tmp_path / "qa.csv"
    qa.write_text("question,answer\nWhat is 2+2?,4\n")
    with pytest.raises(DatasetError) as wrong:
        load_examples(str(qa), columns={"prompt": "question_text"})
    assert "'question_text'" in wrong.value.message
    assert "columns found: question, answer" in wrong.value.message
    assert "prompt=question" in wrong.value.hint

    shown = run_cli("inspect-data", qa, "--column", "prompt=question_text")
    assert shown.returncode == 1 and "question_text" in shown.stderr


def test_inspect_data_takes_the_same_safety_flags(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = _copy_without_weights(tiny_models["llama"], tmp_path / "pickled")
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    data = write_chat_data(tmp_path / "chat.jsonl")

    refused = run_cli("inspect-data", data, "--model", folder)
    assert refused.returncode == 1 and "--allow-pickle" in refused.stderr
    allowed = run_cli("inspect-data", data, "--model", folder, "--allow-pickle", "--json")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert json.loads(allowed.stdout)["stats"]["trained_tokens"] > 0
    for command in ("inspect-model", "estimate"):
        assert run_cli(command, folder, "--allow-pickle", "--json").returncode == 0


def test_a_folder_without_weights_fails_before_the_data_or_a_run_folder(tiny_models, tmp_path):
    folder = _copy_without_weights(tiny_models["llama"], tmp_path / "config-only")
    cfg = make_config(folder, tmp_path, "lora")
    reporter = CollectingReporter()
    with pytest.raises(ModelSourceError) as missing:
        run_training(cfg, reporter=reporter)
    assert "no weights" in missing.value.message and "safetensors" in missing.value.message
    assert "pytorch_model.bin" not in missing.value.message + missing.value.hint
    assert not any("Tokenizing" in e["message"] for e in reporter.of_type("status"))
    assert not (tmp_path / "runs").exists()


def test_inspect_data_warns_when_nothing_would_be_trained(tiny_models, tmp_path):
    data = write_chat_data(tmp_path / "chat.jsonl")
    shown = run_cli("inspect-data", data, "--model", tiny_models["llama"], "--max-length", "8")
    assert shown.returncode == 0
    assert "warning: no row has a token to learn within max_length 8" in shown.stdout
    report = run_cli(
        "inspect-data", data, "--model", tiny_models["llama"], "--max-length", "8", "--json"
    )
    assert json.loads(report.stdout)["warnings"]


class InterruptWhileSaving(StopAtStep):
    """A second Ctrl-C that lands while step ``step``'s checkpoint is being written."""

    def emit(self, event):
        super().emit(event)
        if event["type"] == "checkpoint" and event["step"] == self.stop_step:
            run_dir = Path(event["path"]).parent.parent
            torn = run_dir / "checkpoints" / f"checkpoint-{self.stop_step + 1}"
            torn.mkdir()
            (torn / "adapter_model.safetensors").write_bytes(b"\0" * 64)
            raise KeyboardInterrupt


def test_a_double_ctrl_c_leaves_no_torn_or_extra_checkpoint(tiny_models, tmp_path):
    import threading

    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=8, save_steps=1)
    cfg.train.save_total_limit = 2
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, reporter=InterruptWhileSaving(threading.Event(), 3))
    checkpoints = tmp_path / "runs" / "lora-run" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-2", "checkpoint-3"]
    resumed = resume_training(tmp_path / "runs" / "lora-run")
    assert resumed.status == "done" and resumed.step == 8


def test_an_override_error_names_the_override(tiny_models, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=1)
    config = cfg.save(tmp_path / "run.yaml")
    bad = run_cli("train", config, "--set", "train.lr=-1")
    assert bad.returncode == 1
    assert "Config error in --set train.lr=-1: train.lr" in bad.stderr
    assert "Config error in " + str(config) not in bad.stderr

    result = run_training(cfg)
    resumed = run_cli("resume", result.run_dir, "--set", "train.batch_size=0")
    assert resumed.returncode == 1 and "Traceback" not in resumed.stderr
    assert "Config error in --set train.batch_size=0: train.batch_size" in resumed.stderr


def test_a_probe_leaves_no_row_in_the_run_history(tiny_models, data_dir, tmp_path):
    from qlora_studio.core.training.probe import run_probe

    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=2)
    result = run_probe(cfg)
    assert result.steps == 2 and result.peak_bytes > 0
    with RunHistory.open() as history:
        assert history.list_runs() == []  # it used to stay 'running', then show as crashed
