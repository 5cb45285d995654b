"""The pages' jobs in the real window: a merged export and the Verify-fit probe run in child
processes (the window process never builds a model), Start keeps one config file, and closing
the window ends a running child."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from test_main_window import make_window
from test_training import make_config

from qlora_studio.resources import user_data_dir

TIMEOUT_MS = 180_000


def live_modules() -> int:
    import torch

    gc.collect()
    with warnings.catch_warnings():  # isinstance wakes deprecated torch module proxies
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.nn.Module) for o in gc.get_objects())


@pytest.fixture
def trained_run(tiny_models, tmp_path) -> Path:
    """A finished LoRA run, trained by the CLI in its own process."""
    cfg = make_config(tiny_models["qwen2"], tmp_path, "lora", max_steps=2, save_steps=100)
    path = cfg.save(tmp_path / "run.yaml")
    result = subprocess.run(
        [sys.executable, "-m", "qlora_studio", "train", str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_MS / 1000,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    return run_dir


def test_merge_export_runs_in_a_child_and_builds_no_model_here(qtbot, tmp_path, trained_run):
    window = make_window(qtbot, tmp_path, make_config(Path(trained_run), tmp_path, "lora"))
    before = live_modules()
    window.state.choose_run(trained_run, "Export")  # as the Runs page does
    export = window.page("Export")
    assert window.stack.currentIndex() == window.pages.index(export)
    assert export.run_edit.text() == str(trained_run)
    export.choose_format("merged")
    export.export_button.click()
    assert "--format merged" in export.command.text() and export.is_running()
    qtbot.waitUntil(lambda: not export.is_running(), timeout=TIMEOUT_MS)

    assert export.exported == trained_run / "exports" / "merged", export.message.text()
    assert (export.exported / "model.safetensors").is_file()
    assert "Exported to" in export.message.text() and export.open_button.isEnabled()
    assert live_modules() == before  # the 16-bit model lived in the child only

    export.export_button.click()  # the folder exists now: the child's error and hint show
    qtbot.waitUntil(lambda: not export.is_running(), timeout=TIMEOUT_MS)
    assert "already exists" in export.message.text() and "--out" in export.message.text()


def test_verify_fit_probes_in_a_child_and_can_be_cancelled(qtbot, tmp_path, tiny_models):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=2)
    window = make_window(qtbot, tmp_path, cfg)
    memory = window.page("Memory")
    window.go_to("Memory")

    memory.verify_button.click()
    assert memory.is_running() and memory.verify_button.text() == "Cancel verify"
    memory.verify_button.click()  # cancel at once: the child ends, nothing is measured
    qtbot.waitUntil(lambda: not memory.is_running(), timeout=60_000)
    assert "Verify fit cancelled" in memory.details.toPlainText()

    memory.verify_button.click()
    qtbot.waitUntil(lambda: not memory.is_running(), timeout=TIMEOUT_MS)
    text = memory.details.toPlainText()
    assert "Verify fit (LoRA, 2 steps on cpu" in text and "measured" in text, text
    assert memory.verify_button.text().startswith("Verify fit")


def test_two_starts_leave_one_config_file(qtbot, tmp_path, tiny_models):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=1, save_steps=100)
    window = make_window(qtbot, tmp_path, cfg)
    train = window.page("Train")
    window.go_to("Train")
    configs = user_data_dir() / "configs"
    before = {p.name for p in configs.glob("*.yaml")} if configs.is_dir() else set()
    run_dirs = []
    started = []
    window.state.run_started.connect(started.append)
    for _ in range(2):
        train.start_button.click()
        qtbot.waitUntil(lambda: not train.is_running(), timeout=TIMEOUT_MS)
        assert train.finished_ok, train.numbers.text()
        run_dirs.append(train.run_dir)

    after = {p.name for p in configs.glob("*.yaml")}
    assert after - before <= {"gui-run.yaml"} and "gui-run.yaml" in after
    assert not [name for name in after if name.startswith("run-")]
    assert run_dirs[0] != run_dirs[1] and started == run_dirs  # the folder came as an event field
    assert window.state.last_run_dir == run_dirs[1]


def test_closing_the_window_stops_a_running_child(qtbot, tmp_path, tiny_models):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=400, save_steps=1000)
    window = make_window(qtbot, tmp_path, cfg)
    train = window.page("Train")
    window.go_to("Train")
    train.start_button.click()
    job = train.training
    qtbot.waitUntil(lambda: train.progress.value() >= 1, timeout=TIMEOUT_MS)

    window.close()  # the registry asks the child to stop, waits, kills past the grace

    assert not job.running and job.process._proc.poll() is not None
    assert not window.state.jobs.running() and not window.state.running
    assert list(Path(train.run_dir, "checkpoints").iterdir())  # it stopped cleanly
