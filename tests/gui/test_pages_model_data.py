"""The Model and Dataset pages against real tiny models: inspection and analysis run in page-job
threads; every wait is a signal or a condition with a timeout."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QMimeData, QPointF, QSettings, Qt, QUrl  # noqa: E402
from PySide6.QtGui import QDropEvent  # noqa: E402

from qlora_studio.config import RunConfig  # noqa: E402
from qlora_studio.gui.pages.dataset_page import (  # noqa: E402
    TRAINED_COLOUR,
    DatasetPage,
    sample_html,
)
from qlora_studio.gui.pages.model_page import ModelPage, source_kind  # noqa: E402
from qlora_studio.gui.state import StudioState  # noqa: E402

TIMEOUT_MS = 120_000  # first use of transformers in the session imports it (seconds on 2 cores)
LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture
def state(tmp_path) -> StudioState:
    settings = QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat)
    return StudioState(RunConfig(), settings=settings)


def write_alpaca(path: Path, rows: int = 12) -> Path:
    """Alpaca rows whose answers grow, so their token lengths spread over several bins."""
    lines = [
        json.dumps(
            {
                "instruction": f"Summarise the text {i}.",
                "input": "",
                "output": " ".join(["a short summary"] * (1 + 2 * i)),
            }
        )
        for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def wait_idle(qtbot, page) -> None:
    qtbot.waitUntil(lambda: not page.is_running(), timeout=TIMEOUT_MS)


def table_column(table, column: int) -> list[str]:
    return [table.item(row, column).text() for row in range(table.rowCount())]


# ---- Model page ---------------------------------------------------------------------------
def test_model_page_inspects_a_local_folder(qtbot, state, tiny_llama, tmp_path):
    page = ModelPage(state)
    qtbot.addWidget(page)
    page.radios["folder"].setChecked(True)
    page.source_edit.setText(str(tiny_llama))
    assert not page.is_complete()

    with qtbot.waitSignal(state.model_info_changed, timeout=TIMEOUT_MS) as info_signal:
        qtbot.mouseClick(page.inspect_button, Qt.MouseButton.LeftButton)
    wait_idle(qtbot, page)

    assert info_signal.args[0].architecture == "LlamaForCausalLM"
    assert state.model_info.architecture == "LlamaForCausalLM"
    assert page.summary_values["Architecture"].text() == "LlamaForCausalLM"
    assert page.summary_values["Layers"].text() == "2"
    assert table_column(page.targets_table, 0) == LLAMA_TARGETS
    kinds = table_column(page.kinds_table, 0)
    assert {"embeddings", "attention", "mlp", "lm_head"} <= set(kinds)
    assert page.error_label.isHidden() and not page.results.isHidden()
    assert page.is_complete()
    assert state.recent("models") == [str(tiny_llama)]

    cfg = RunConfig()
    page.pickle_box.setChecked(False)
    page.apply_config(cfg)
    assert (cfg.model.source, cfg.model.allow_pickle) == (str(tiny_llama), False)

    # another source: the inspection no longer applies and the shared info is dropped
    with qtbot.waitSignal(page.changed, timeout=1000):
        page.source_edit.setText(str(tmp_path / "another"))
    assert state.model_info is None
    assert not page.is_complete() and page.results.isHidden()


def test_model_page_shows_a_bad_folder_error_with_its_hint(qtbot, state, tmp_path):
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    page = ModelPage(state)
    qtbot.addWidget(page)
    page.radios["folder"].setChecked(True)
    page.source_edit.setText(str(empty))
    page.remote_code_box.setChecked(True)

    page.inspect()
    wait_idle(qtbot, page)

    assert not page.error_label.isHidden()
    text = page.error_label.text()
    assert "not-a-model" in text and "<br>" in text  # the message, then the hint
    assert "b00020" in text  # shown in red
    assert not page.is_complete() and state.model_info is None
    # nothing the user chose is lost
    assert page.source_edit.text() == str(empty) and page.remote_code_box.isChecked()


def test_model_page_inspects_the_configured_source_when_first_shown(qtbot, state, tiny_llama):
    state.cfg.model.source = str(tiny_llama)
    page = ModelPage(state)
    qtbot.addWidget(page)
    page.load_config(state.cfg)
    assert page.radios["folder"].isChecked() and page.source_edit.text() == str(tiny_llama)

    page.on_shown()
    assert page.is_running()
    wait_idle(qtbot, page)
    assert page.is_complete()

    page.on_shown()  # only the first showing inspects
    assert not page.is_running()


def test_model_page_demo_source_round_trips(qtbot, state):
    page = ModelPage(state)
    qtbot.addWidget(page)
    state.cfg.model.source = "Qwen/Qwen2.5-0.5B"
    page.load_config(state.cfg)
    assert page.radios["hub"].isChecked()
    page.radios["demo"].setChecked(True)
    assert not page.source_edit.isEnabled() and not page.browse_button.isEnabled()
    cfg = RunConfig()
    page.apply_config(cfg)
    assert cfg.model.source == "demo"
    page.radios["hub"].setChecked(True)  # each kind keeps what it held
    assert page.current_source() == "Qwen/Qwen2.5-0.5B"
    assert [source_kind(s) for s in ("demo", "m.gguf", "org/name")] == ["demo", "gguf", "hub"]


# ---- Dataset page -------------------------------------------------------------------------
@pytest.fixture
def data_page(qtbot, state, tiny_llama) -> DatasetPage:
    state.cfg.model.source = str(tiny_llama)
    page = DatasetPage(state)
    qtbot.addWidget(page)
    page.load_config(state.cfg)
    yield page
    wait_idle(qtbot, page)  # never leave a job thread behind


def analyse(qtbot, page: DatasetPage) -> dict:
    with qtbot.waitSignal(page.state.data_report_changed, timeout=TIMEOUT_MS) as report:
        page.analyse()
    wait_idle(qtbot, page)
    return report.args[0]


def test_dataset_page_analyses_an_alpaca_file(qtbot, data_page, state, tmp_path):
    page = data_page
    data = write_alpaca(tmp_path / "train.jsonl", rows=12)
    page.path_edit.setText(str(data))
    page.max_length_spin.setValue(512)
    assert not page.is_complete()

    report = analyse(qtbot, page)

    assert report["format"] == "alpaca" and report["rows"] == 12
    summary = page.summary_label.text()
    assert "alpaca" in summary and "<b>12</b> rows" in summary
    # the padding each packing mode leaves, at the configured batch (4)
    assert report["batching"]["batch_size"] == state.cfg.train.batch_size
    assert "Padding in the computed tokens at batch" in summary and "packed <b>0%</b>" in summary
    assert page.is_complete() and state.data_report is report
    heights = list(page._bars.opts["height"])
    assert len(heights) > 1 and sum(heights) == 12
    assert "background-color:#c6efce" in page.sample  # the trained answer is highlighted
    assert "#c6efce" in page.sample_view.toHtml()
    assert page.truncated_label.text().startswith("<b>0</b> rows truncated")
    assert page.rows_table.rowCount() == 5 and page.rows_table.columnCount() == 3
    assert state.recent("datasets") == [str(data)]

    # a shorter max length re-runs the analysis by itself (debounced) and truncates rows
    lengths = report["stats"]["lengths"]
    shorter = sorted(lengths)[len(lengths) // 2]
    expected = sum(1 for n in lengths if n > shorter)
    assert expected > 0
    with qtbot.waitSignal(state.data_report_changed, timeout=TIMEOUT_MS) as rerun:
        page.max_length_spin.setValue(shorter)
    wait_idle(qtbot, page)
    assert rerun.args[0]["stats"]["truncated_rows"] == expected
    assert page.truncated_label.text().startswith(f"<b>{expected}</b> rows truncated")
    assert f"<b>{expected}</b> truncated at {shorter}" in page.summary_label.text()
    assert page.is_complete()

    cfg = RunConfig()
    page.apply_config(cfg)
    assert (cfg.data.path, cfg.data.max_length, cfg.data.format) == (str(data), shorter, "auto")


def test_dataset_page_reports_a_broken_line_and_clears_results(qtbot, data_page, state, tmp_path):
    page = data_page
    good = write_alpaca(tmp_path / "good.jsonl", rows=4)
    page.path_edit.setText(str(good))
    analyse(qtbot, page)
    assert not page.results.isHidden()

    lines = good.read_text().splitlines()
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join(lines[:2] + ['{"instruction": "oops",'] + lines[2:]) + "\n")
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(broken))])
    drop = QDropEvent(
        QPointF(20, 20),
        Qt.DropAction.CopyAction,
        mime,
        Qt.MouseButton.LeftButton,
        Qt.KeyboardModifier.NoModifier,
    )
    page.dropEvent(drop)  # a dropped file is taken and analysed at once
    assert page.path_edit.text() == str(broken)
    wait_idle(qtbot, page)

    text = page.error_label.text()
    assert not page.error_label.isHidden()
    assert "broken.jsonl" in text and "line 3" in text
    assert page.results.isHidden() and page.report is None and state.data_report is None
    assert not page.is_complete()

    # after a failure, max length changes do not start analyses on their own
    page.max_length_spin.setValue(100)
    assert not page._debounce.isActive()


def test_dataset_page_maps_columns(qtbot, data_page, state, tmp_path):
    page = data_page
    data = tmp_path / "qa.jsonl"
    rows = [{"q": f"what is {i} plus {i}?", "a": f"{2 * i}"} for i in range(6)]
    data.write_text("\n".join(json.dumps(r) for r in rows), encoding="utf-8")
    page.path_edit.setText(str(data))
    page.format_combo.setCurrentIndex(page.format_combo.findData("prompt_completion"))
    page.add_column_mapping("prompt", "q")
    page.add_column_mapping("completion", "a")

    report = analyse(qtbot, page)

    assert report["format"] == "prompt_completion" and report["rows"] == 6
    cfg = RunConfig()
    page.apply_config(cfg)
    assert cfg.data.columns == {"prompt": "q", "completion": "a"}
    assert cfg.data.format == "prompt_completion"
    page.system_edit.setText("Be brief.")  # a changed setting: the analysis is out of date
    assert not page.is_complete()


def test_sample_html_highlights_trained_text_and_greys_the_cut():
    preview = {
        "text": "User: <hi>\nAssistant: an answer that is cut",
        "spans": [[0, 22, False], [22, 43, True]],
        "truncated_at": 31,
    }
    page_html = sample_html(preview)
    assert "&lt;hi&gt;" in page_html  # the text is escaped, never interpreted
    # dark text on the light highlight, whichever palette the window uses
    assert f"background-color:{TRAINED_COLOUR}; color:#000'>an answer</span>" in page_html
    assert "✂ max length" in page_html
    assert page_html.index("✂") < page_html.index("that is cut")
    assert "that is cut" not in page_html.split("✂")[0]
