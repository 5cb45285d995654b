"""The Runs page over the run history: listing, status filter, overlaid loss curves, open / export
/ compare / delete, and a real run started, stopped and resumed from the GUI being recorded."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import yaml  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtGui import QDesktopServices  # noqa: E402
from PySide6.QtWidgets import QMessageBox  # noqa: E402
from test_main_window import make_window, tiny_config  # noqa: E402
from test_runs import make_run_folder  # noqa: E402

from qlora_studio.config import RunConfig  # noqa: E402
from qlora_studio.core.history.store import RunHistory
from qlora_studio.core.run_folder import CONFIG_FILE
from qlora_studio.gui.pages.runs_page import COLUMNS, RunsPage
from qlora_studio.gui.state import StudioState, demo_config

YES, NO = QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.No


@pytest.fixture
def history(tmp_path, monkeypatch):
    """A fresh run history for this test and the training processes it starts."""
    monkeypatch.setenv("QLORA_STUDIO_DATA", str(tmp_path / "user_data"))
    with RunHistory.open() as opened:
        yield opened


@pytest.fixture
def answers(monkeypatch):
    """QMessageBox.question answers Yes and remembers what it was asked."""
    asked: list[str] = []

    def question(parent, title, text, *args, **kwargs):
        asked.append(f"{title}: {text}")
        return YES

    monkeypatch.setattr(QMessageBox, "question", staticmethod(question))
    return asked


def recorded_run(history, root: Path, name: str, status: str, losses, *, output=False) -> int:
    """A run folder (config.yaml, events.jsonl) and its history row, as a finished run leaves."""
    folder = make_run_folder(root, name, losses)
    cfg = RunConfig()
    cfg.output.name = name  # the config make_run_folder saved
    if output:
        (folder / "adapter").mkdir()
    run_id = history.start_run(folder, cfg.to_yaml(), method="lora", model_source="tiny")
    history.update_progress(
        run_id, step=len(losses), total_steps=10, best_loss=min(v for _, v in losses)
    )
    if status != "running":
        history.finish_run(run_id, status)
    return run_id


def table_column(page, column: str) -> list[str]:
    index = page.table.horizontalHeaderItem
    col = next(c for c in range(page.table.columnCount()) if index(c).text() == column)
    return [page.table.item(row, col).text() for row in range(page.table.rowCount())]


def test_runs_page_lists_filters_overlays_opens_exports_compares_and_deletes(
    qtbot, tmp_path, tiny_models, history, answers, monkeypatch
):
    root = tmp_path / "runs"
    done = recorded_run(history, root, "good", "done", [(1, 3.0), (2, 2.0), (3, 1.5)], output=True)
    failed = recorded_run(history, root, "oom", "failed", [(1, 3.1), (2, 2.9)])
    stopped = recorded_run(history, root, "stopped", "cancelled", [(1, 3.2), (2, 2.5)])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    checkpoint = root / "dead" / "checkpoints" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    (root / "dead" / CONFIG_FILE).write_text("x")
    dead = history.start_run(root / "dead", "x", pid=ended.pid)  # a run whose process died

    window = make_window(qtbot, tmp_path, tiny_config(tiny_models, tmp_path))
    window.go_to("Runs")
    page = window.page("Runs")
    assert table_column(page, "id") == [str(i) for i in (dead, stopped, failed, done)]
    assert table_column(page, "status") == ["crashed", "cancelled", "failed", "done"]
    assert table_column(page, "best loss")[-1] == "1.5000"
    assert window.is_step_done("Runs")

    page.status_filter.setCurrentText("failed")
    assert table_column(page, "name") == ["oom"]
    page.status_filter.setCurrentText("all")
    assert page.table.rowCount() == 4

    page.select_ids([done, failed])
    assert len(page.chart.curves) == 2
    page.select_ids([done, failed, stopped])
    curves = page.chart.curves
    assert sorted(curves) == [f"{done} good", f"{failed} oom", f"{stopped} stopped"]
    assert len(curves[f"{done} good"].getOriginalDataset()[0]) == 3
    assert not page.export_button.isEnabled() and not page.resume_button.isEnabled()

    page.select_ids([dead])  # crashed with a checkpoint: resumable, nothing to export yet
    assert page.resume_button.isEnabled() and not page.export_button.isEnabled()
    page.select_ids([done])
    assert page.export_button.isEnabled() and not page.resume_button.isEnabled()
    opened = []
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(opened.append))
    page.open_button.click()
    assert opened[0].toLocalFile() == str((root / "good").resolve())
    page.export_button.click()
    assert window.stack.currentIndex() == window.pages.index(window.page("Export"))
    assert window.page("Export").run_edit.text() == str((root / "good").resolve())
    window.go_to("Runs")
    page.compare_button.click()
    assert window.stack.currentIndex() == window.pages.index(window.page("Compare"))
    assert window.state.run_dir == (root / "good").resolve()
    assert window.page("Compare").run_edit.text() == str((root / "good").resolve())

    window.go_to("Runs")
    page.select_ids([failed])
    page.delete_button.click()
    assert len(answers) == 1 and "oom" in answers[0]
    assert str(failed) not in table_column(page, "id") and page.table.rowCount() == 3
    assert not (root / "oom").exists() and (root / "good").is_dir() and (root / "stopped").is_dir()
    assert history.get(failed) is None and history.get(done) is not None


def test_gui_run_is_recorded_then_resumed_from_the_runs_page(
    qtbot, tmp_path, tiny_models, history, answers
):
    cfg = tiny_config(tiny_models, tmp_path)
    cfg.method = "lora"
    cfg.train.optimizer = "adamw_torch"
    cfg.train.max_steps = 200
    cfg.train.save_steps = 2
    cfg.train.device = "cpu"
    window = make_window(qtbot, tmp_path, cfg)
    window.go_to("Train")
    train = window.page("Train")
    train.start_button.click()
    qtbot.waitUntil(lambda: train.progress.value() >= 3, timeout=120_000)
    with qtbot.waitSignal(train.training.cancelled, timeout=60_000) as stopped:
        train.stop_button.click()
    stop_step = stopped.args[0]["step"]
    qtbot.waitUntil(lambda: not train.is_running(), timeout=60_000)

    window.go_to("Runs")  # the CLI child the GUI started recorded the run
    page = window.page("Runs")
    (record,) = history.list_runs()
    assert record.status == "cancelled" and record.step == stop_step
    assert table_column(page, "status") == ["cancelled"]
    assert table_column(page, "steps") == [f"{stop_step}/200"]

    config_path = Path(record.run_dir) / CONFIG_FILE
    changed = yaml.safe_load(config_path.read_text())
    changed["train"]["max_steps"] = stop_step + 2
    config_path.write_text(yaml.safe_dump(changed, sort_keys=False))
    page.select_ids([record.id])
    assert page.resume_button.isEnabled()
    page.resume_button.click()
    assert len(answers) == 1 and f"train.max_steps: 200 -> {stop_step + 2}" in answers[0]
    assert window.stack.currentIndex() == window.pages.index(train)
    qtbot.waitUntil(lambda: train.finished_ok, timeout=120_000)
    qtbot.waitUntil(lambda: not train.is_running(), timeout=60_000)

    window.go_to("Runs")
    (resumed,) = history.list_runs()  # the same row, now done
    assert resumed.id == record.id and resumed.status == "done" and resumed.resumes == 1
    assert table_column(page, "steps") == [f"{stop_step + 2}/{stop_step + 2}"]
    page.select_ids([record.id])
    (curve,) = page.chart.curves.values()
    assert list(curve.getOriginalDataset()[0]) == list(range(1, stop_step + 3))


def test_export_from_the_runs_page_goes_through_the_state_signals(
    qtbot, tmp_path, tiny_models, history
):
    root = tmp_path / "runs"
    done = recorded_run(history, root, "good", "done", [(1, 3.0)], output=True)
    window = make_window(qtbot, tmp_path, tiny_config(tiny_models, tmp_path))
    window.go_to("Runs")
    page = window.page("Runs")
    chosen, shown = [], []
    window.state.run_chosen.connect(chosen.append)
    window.state.navigate.connect(shown.append)
    page.select_ids([done])
    page.export_button.click()

    good = (root / "good").resolve()
    assert chosen == [good] and shown == ["Export"]
    assert window.page("Export").run_edit.text() == str(good)
    assert window.stack.currentIndex() == window.pages.index(window.page("Export"))


def _red_share(page, row: int) -> float:
    """The share of clearly red pixels in ``row``'s status cell, as painted."""
    column = COLUMNS.index("status")
    rect = page.table.visualRect(page.table.model().index(row, column))
    image = page.table.viewport().grab(rect).toImage()
    red = sum(
        1
        for x in range(image.width())
        for y in range(image.height())
        if (c := image.pixelColor(x, y)).red() > 150 and c.green() < 110 and c.blue() < 120
    )
    return red / max(image.width() * image.height(), 1)


def test_a_failed_run_stays_red_while_its_row_is_selected(qtbot, tmp_path, history):
    root = tmp_path / "runs"
    done = recorded_run(history, root, "good", "done", [(1, 3.0)], output=True)
    failed = recorded_run(history, root, "oom", "failed", [(1, 3.1)])
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    page = RunsPage(StudioState(demo_config(), settings=settings))
    qtbot.addWidget(page)
    page.resize(1000, 600)
    page.show()
    qtbot.waitExposed(page)
    rows = {record.id: row for row, record in enumerate(page.records)}
    assert 0 < _red_share(page, rows[failed])  # red text and icon, unselected
    page.select_ids([failed, done])
    assert _red_share(page, rows[failed]) > 0.5  # selected: the cell is red, not the highlight
    assert _red_share(page, rows[done]) == 0  # a selected run that did not fail is not red
