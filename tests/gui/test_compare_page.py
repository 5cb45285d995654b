"""The Compare page on a tiny trained run: load, side-by-side streamed answers that match the
engine's greedy answers, the held-out evaluation table, unload."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from test_training import make_config  # noqa: E402

from qlora_studio.core.evaluation.comparison import ComparisonModel, GenerationSettings
from qlora_studio.core.training.run import run_training
from qlora_studio.gui.pages.compare_page import ComparePage  # noqa: E402
from qlora_studio.gui.state import StudioState  # noqa: E402

PROMPT = "Convert to ISO date: 3 March 2021"


@pytest.fixture(scope="module")
def tuned_run(tiny_models, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare_gui")
    cfg = make_config(tiny_models["llama"], root, "lora", max_steps=6, lr=2e-2)
    cfg.data.eval_path = cfg.data.path  # the held-out file the page offers by default
    return run_training(cfg).run_dir


def make_page(qtbot, tmp_path, run_dir: Path | None) -> ComparePage:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    state = StudioState(settings=settings)
    state.cfg.output.dir = str(tmp_path / "no-runs")
    state.run_dir = run_dir
    page = ComparePage(state)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    page.on_shown()
    return page


def wait_idle(qtbot, page: ComparePage, timeout: int = 120_000) -> None:
    qtbot.waitUntil(lambda: page.worker is None, timeout=timeout)


def test_side_by_side_answers_stream_and_match_the_engine(qtbot, tmp_path, tuned_run):
    page = make_page(qtbot, tmp_path, tuned_run)
    assert page.run_edit.text() == str(tuned_run)
    assert not page.is_complete()

    page.max_tokens.setValue(8)
    page.prompt.setPlainText(PROMPT)
    page.send()  # loads the models first, then answers the waiting prompt
    assert page.worker is not None and page.stop_button.isEnabled()
    qtbot.waitUntil(lambda: page.session is not None, timeout=120_000)
    wait_idle(qtbot, page)
    assert page.is_complete()
    assert "stop tokens: </s>" in page.template_label.text()

    expected = ComparisonModel.load(tuned_run, device="cpu")
    try:
        settings = GenerationSettings(max_new_tokens=8)
        for side in ("base", "tuned"):
            ((answer, _),) = expected.generate(
                [[{"role": "user", "content": PROMPT}]], side, settings
            )
            assert page.histories[side][-1] == {"role": "assistant", "content": answer}
            text = page.panes[side].toPlainText()
            assert text.startswith(f"You: {PROMPT}") and text.endswith(answer)
    finally:
        expected.close()
    assert page.histories["base"][-1] != page.histories["tuned"][-1]

    # a second turn keeps each side's own history; a new conversation clears both
    page.prompt.setPlainText("And 4 March 2021?")
    page.send()
    wait_idle(qtbot, page)
    assert len(page.histories["tuned"]) == 4
    page.new_conversation()
    assert page.histories == {"base": [], "tuned": []}
    assert page.panes["base"].toPlainText() == ""

    page.unload()
    assert page.session is None and not page.unload_button.isEnabled()


def test_held_out_evaluation_fills_the_table_and_is_saved(qtbot, tmp_path, tuned_run):
    page = make_page(qtbot, tmp_path, tuned_run)
    assert page.data_edit.text().endswith("data.jsonl")  # from the run's data.eval_path
    page.limit.setValue(4)
    page.evaluate()
    wait_idle(qtbot, page)
    view = page.evaluation
    assert view.report is not None and view.rows.rowCount() == 4
    assert view.scores.item(0, 0) is not None  # exact match, base
    assert "Exact match" in view.headline.text()
    assert page.is_complete()
    assert (tuned_run / "evaluation" / "data.first4.json").exists()

    # a fresh page shows the saved evaluation without running anything
    again = make_page(qtbot, tmp_path, tuned_run)
    assert again.evaluation.report is not None and again.evaluation.rows.rowCount() == 4


def test_a_folder_that_is_not_a_run_gives_a_message_with_a_hint(qtbot, tmp_path):
    page = make_page(qtbot, tmp_path, None)
    page.run_edit.setText(str(tmp_path))
    page.load()
    wait_idle(qtbot, page)
    assert "not a run folder" in page.status.text()
    assert "qlora-studio train" in page.status.text()
    assert page.session is None
