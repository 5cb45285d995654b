"""The Compare page on a tiny trained run, every model in a child process: load, side-by-side
streamed answers, a stop mid-answer, a crashed chat child, the held-out evaluation table; and
no model object is ever created in the window's process."""

from __future__ import annotations

import gc
import os
import signal

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from test_training import make_config  # noqa: E402

from qlora_studio.core.training.run import run_training  # noqa: E402
from qlora_studio.gui.pages.compare_page import ComparePage  # noqa: E402
from qlora_studio.gui.state import StudioState  # noqa: E402

PROMPT = "Convert to ISO date: 3 March 2021"
LONG = 120_000  # ms: a child process imports the ML stack before it answers


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
    state.last_run_dir = run_dir  # as if trained in this window
    page = ComparePage(state)
    qtbot.addWidget(page)
    page.resize(1100, 700)
    page.show()
    page.on_shown()
    return page


def wait_idle(qtbot, page: ComparePage, timeout: int = LONG) -> None:
    qtbot.waitUntil(lambda: page.worker is None, timeout=timeout)


def live_modules() -> set[int]:
    import torch

    gc.collect()
    return {id(o) for o in gc.get_objects() if isinstance(o, torch.nn.Module)}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_compare_round_trip_runs_every_model_in_a_child(qtbot, tmp_path, tuned_run):
    before = live_modules()  # what other tests in this process may still hold
    page = make_page(qtbot, tmp_path, tuned_run)
    assert page.run_edit.text() == str(tuned_run) and not page.is_complete()

    page.max_tokens.setValue(8)
    page.prompt.setPlainText(PROMPT)
    page.send()  # starts the chat child first, then answers the waiting prompt
    assert page.worker is page.chat and page.stop_button.isEnabled()
    qtbot.waitUntil(lambda: page.compared and page.worker is None, timeout=LONG)
    assert "stop tokens: </s>" in page.template_label.text()
    answers = {}
    for side in ("base", "tuned"):
        user, answer = page.histories[side]
        assert user == {"role": "user", "content": PROMPT} and answer["role"] == "assistant"
        answers[side] = answer["content"]
        text = page.panes[side].toPlainText()
        assert text.startswith(f"You: {PROMPT}") and text.endswith(answers[side])
    assert answers["base"] != answers["tuned"]

    # a second turn keeps each side's own history
    page.prompt.setPlainText("And 4 March 2021?")
    page.send()
    wait_idle(qtbot, page)
    assert len(page.histories["tuned"]) == 4 and "Answered" in page.status.text()

    # Stop ends a long answer early and keeps what came
    page.max_tokens.setValue(400)
    page.prompt.setPlainText("Tell me a long story")
    page.send()
    qtbot.waitUntil(lambda: page._answers["base"] != "", timeout=LONG)
    page.stop()
    wait_idle(qtbot, page)
    assert "Stopped" in page.status.text()
    assert page.histories["base"][-1]["content"] == page._answers["base"].strip()
    page.new_conversation()
    assert page.histories == {"base": [], "tuned": []} and page.panes["base"].toPlainText() == ""

    # Unload ends the chat child
    pid = page.chat._proc.processId()
    page.unload()
    assert page.chat is None and not page.unload_button.isEnabled()
    qtbot.waitUntil(lambda: gone(pid), timeout=10_000)

    # the held-out evaluation runs `qlora-studio eval` as a child and shows its saved report
    assert page.data_edit.text().endswith("data.jsonl")  # from the run's data.eval_path
    page.limit.setValue(3)
    page.evaluate()
    assert page.worker is not None and page.stop_button.isEnabled()
    wait_idle(qtbot, page)
    view = page.evaluation
    assert view.report is not None and view.rows.rowCount() == 3, page.status.text()
    assert view.scores.item(0, 0) is not None and "Exact match" in view.headline.text()
    assert (tuned_run / "evaluation" / "data.first3.json").exists() and page.is_complete()

    # a fresh page shows the saved evaluation without running anything
    again = make_page(qtbot, tmp_path, tuned_run)
    assert again.evaluation.report is not None and again.evaluation.rows.rowCount() == 3

    assert live_modules() - before == set(), "a model was created in the GUI process"


def test_a_crashed_chat_child_gives_a_message_with_a_hint_and_the_page_carries_on(
    qtbot, tmp_path, tuned_run
):
    page = make_page(qtbot, tmp_path, tuned_run)
    page.load()
    qtbot.waitUntil(lambda: page.chat._proc.processId() > 0, timeout=10_000)
    os.kill(page.chat._proc.processId(), signal.SIGKILL)  # as the out-of-memory killer would
    qtbot.waitUntil(lambda: page.chat is None, timeout=10_000)
    assert "chat process ended unexpectedly (it crashed)" in page.status.text()
    assert "Load the models again" in page.status.text()
    assert page.worker is None and page.load_button.isEnabled() and page.send_button.isEnabled()


def test_a_folder_that_is_not_a_run_gives_a_message_with_a_hint(qtbot, tmp_path):
    page = make_page(qtbot, tmp_path, None)
    page.run_edit.setText(str(tmp_path))
    page.load()
    qtbot.waitUntil(lambda: page.chat is None, timeout=LONG)
    assert page.worker is None
    assert "not a run folder" in page.status.text()
    assert "qlora-studio train" in page.status.text()


def test_the_page_imports_no_model_code():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import qlora_studio.gui.pages.compare_page, qlora_studio.gui.chat_client\n"
        "import qlora_studio.core.evaluation.report\n"
        "heavy = ('torch', 'transformers', 'peft', 'qlora_studio.core.evaluation.comparison')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
