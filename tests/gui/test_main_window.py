"""The real window, driven as a user would: pages, estimates, a real training run through the
ChildJob and the CLI child process, stop, resume, export."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QRectF, QSettings, Qt  # noqa: E402

from qlora_studio.config import METHODS, RunConfig  # noqa: E402
from qlora_studio.gui.main_window import MainWindow  # noqa: E402
from qlora_studio.gui.state import StudioState, demo_config  # noqa: E402

STEPS = ["Model", "Dataset", "Settings", "Memory", "Train", "Compare", "Export", "Runs"]


def make_window(qtbot, tmp_path, cfg) -> MainWindow:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(StudioState(cfg, settings=settings))
    # a teardown that closes the window mid-run stops the run instead of asking (and hanging)
    window.confirm_quit_while_training = lambda: True
    qtbot.addWidget(window)
    window.show()
    return window


def tiny_config(tiny_models, tmp_path):
    cfg = demo_config()
    cfg.model.source = str(tiny_models["llama"])
    cfg.data.max_length = 160
    cfg.train.max_steps = 4
    cfg.output.dir = str(tmp_path / "runs")
    return cfg


def test_window_has_every_step_and_three_estimates(qtbot, tmp_path, tiny_models):
    window = make_window(qtbot, tmp_path, tiny_config(tiny_models, tmp_path))
    sidebar = window.sidebar
    titles = [sidebar.item(i).text() for i in range(sidebar.count())]
    assert titles == STEPS
    assert all(not sidebar.item(i).icon().isNull() for i in range(sidebar.count()))
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    window.go_to("Memory")
    memory = window.page("Memory")
    qtbot.waitUntil(lambda: len(memory.estimates) == 3, timeout=30_000)
    totals = {m: e.total_bytes for m, e in memory.estimates.items()}
    assert set(totals) == {"full", "lora", "qlora"} and all(v > 0 for v in totals.values())
    html = memory.details.toHtml()
    assert "QLoRA" in html and "Largest term" in html
    assert window.is_step_done("Model")  # the model step is complete
    assert window.sidebar.item(0).data(Qt.ItemDataRole.UserRole) is True
    assert memory.fit_line.isHidden()  # train.fit is off

    # the legend has its own column: even in the smallest window it never covers the QLoRA bar
    window.resize(window.minimumSize())
    qtbot.waitUntil(lambda: memory.plot.width() < 700, timeout=5_000)
    qtbot.wait(50)  # a relayout
    view = memory.plot.getPlotItem().getViewBox()
    column = METHODS.index("qlora")
    bar = view.mapViewToScene(QRectF(column - 0.3, 0.0, 0.6, 1.0)).boundingRect()
    legend = memory.legend.sceneBoundingRect()
    assert len(memory.legend.items) >= 5
    assert legend.left() >= bar.right(), (legend, bar)


def test_a_step_is_done_once_seen_and_the_first_run_is_model_dataset_start(
    qtbot, tmp_path, tiny_models
):
    window = make_window(qtbot, tmp_path, tiny_config(tiny_models, tmp_path))
    settings = window.page("Settings")
    assert settings.is_complete()  # the defaults are valid...
    assert not window.is_step_done("Settings")  # ...but the user has not seen them yet
    assert window.start_button.isVisible() and not window.start_button.isEnabled()
    assert "First run: <b>Model</b>" in window.path_hint.text()

    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    window.next_button.click()
    assert window.stack.currentIndex() == 1 and window.next_button.text() == "Next: Settings"
    qtbot.waitUntil(window.start_button.isEnabled, timeout=60_000)  # the data is analysed
    assert "<b>Dataset</b> ✓" in window.path_hint.text()
    window.go_to("Settings")
    assert window.is_step_done("Settings")
    window.go_to("Train")
    assert window.start_button.isHidden()  # the Train page has its own Start


def test_the_sidebar_shows_the_running_run(qtbot, tmp_path, tiny_models):
    window = make_window(qtbot, tmp_path, tiny_config(tiny_models, tmp_path))
    indicator = window.run_indicator
    assert indicator.isHidden()
    window.go_to("Runs")
    run_dir = tmp_path / "runs" / "qlora-1"
    window.state.set_run_started(run_dir)
    assert indicator.isVisible() and indicator.bar.maximum() == 0  # busy until a step is in
    window.state.set_run_progress(3, 12)
    assert (indicator.bar.value(), indicator.bar.maximum()) == (3, 12)
    assert indicator.step_label.text() == "step 3 of 12" and str(run_dir) in indicator.toolTip()
    qtbot.mouseClick(indicator, Qt.MouseButton.LeftButton)
    assert window.stack.currentIndex() == STEPS.index("Train")
    window.state.set_run_finished(run_dir)
    assert indicator.isHidden()


def test_memory_page_shows_what_auto_fit_would_choose(qtbot, tmp_path, tiny_models):
    cfg = tiny_config(tiny_models, tmp_path)
    cfg.train.fit = "auto"
    window = make_window(qtbot, tmp_path, cfg)
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=60_000)
    window.go_to("Memory")
    memory = window.page("Memory")
    qtbot.waitUntil(lambda: "Auto-fit" in memory.fit_line.text(), timeout=30_000)
    assert not memory.fit_line.isHidden()
    batch = cfg.train.batch_size * cfg.train.grad_accum
    assert f"keeps the effective batch of {batch}" in memory.fit_line.text()


def test_settings_page_round_trips_and_shows_the_cli(qtbot, tmp_path, tiny_models):
    window = make_window(qtbot, tmp_path, tiny_config(tiny_models, tmp_path))
    window.go_to("Settings")
    page = window.page("Settings")
    page.method_buttons["lora"].setChecked(True)
    page.apply_preset("Best quality")
    page.apply_config(window.state.cfg)
    assert window.state.cfg.method == "lora" and window.state.cfg.lora.r == 64
    assert "method: lora" in page.yaml_text()
    command = page.cli_command()
    assert command.startswith("qlora-studio train ") and Path(command.split()[-1]).exists()
    page.editors[("lora", "r")].setValue(0)  # invalid: names the field, the step is not done
    assert "lora.r" in page.validation_error() and not page.is_complete()


@pytest.mark.slow
def test_demo_qlora_train_stop_resume_export(qtbot, tmp_path):
    cfg = demo_config()
    # far more steps than the stop lets it take: the stop lands whatever the machine's speed
    cfg.train.max_steps = 500
    cfg.train.save_steps = 1000
    cfg.train.batch_size = 4
    cfg.output.dir = str(tmp_path / "runs")
    window = make_window(qtbot, tmp_path, cfg)
    qtbot.waitUntil(lambda: window.state.model_info is not None, timeout=300_000)

    window.go_to("Train")
    train = window.page("Train")
    train.start_button.click()
    qtbot.waitUntil(lambda: train.progress.value() >= 2, timeout=300_000)
    with qtbot.waitSignal(train.training.cancelled, timeout=120_000) as stopped:
        train.stop_button.click()
    step = stopped.args[0]["step"]
    assert 2 <= step < 500  # after the step it was asked at, long before the end
    qtbot.waitUntil(lambda: not train.is_running(), timeout=60_000)
    qtbot.waitUntil(lambda: train.loss_chart.point_count()["loss"] >= 2, timeout=10_000)
    qtbot.waitUntil(lambda: sum(train.memory_chart.point_count().values()) >= 2, timeout=10_000)
    assert train.resume_button.isEnabled()

    # finish two steps after the stop: a user may edit the run's saved config before resuming
    saved = RunConfig.load(train.run_dir / "config.yaml")
    saved.train.max_steps = step + 2
    saved.save(train.run_dir / "config.yaml")
    train.resume_button.click()
    qtbot.waitUntil(lambda: train.finished_ok, timeout=300_000)
    qtbot.waitUntil(lambda: not train.is_running(), timeout=60_000)
    assert train.progress.value() == step + 2
    run_dir = train.run_dir
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()

    window.go_to("Export")
    export = window.page("Export")
    assert export.run_edit.text() == str(run_dir)
    export.out_edit.setText(str(tmp_path / "my-adapter"))
    export.export_button.click()
    qtbot.waitUntil(lambda: export.exported is not None, timeout=60_000)
    assert (tmp_path / "my-adapter" / "adapter_config.json").exists()
