"""The Export page on a tiny trained run, the export in a child process: the format choice, a
GGUF LoRA export with its progress and run commands, and a stopped merged GGUF."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtGui import QGuiApplication  # noqa: E402
from test_training import make_config  # noqa: E402

from qlora_studio.config import EXPORT_FORMATS  # noqa: E402
from qlora_studio.gui.pages.export_page import ExportPage  # noqa: E402
from qlora_studio.gui.state import StudioState  # noqa: E402

LONG = 120_000  # ms: the child imports the ML stack before it writes anything


@pytest.fixture(scope="module")
def llama_run(tiny_models, tmp_path_factory) -> Path:
    from qlora_studio.core.training.run import run_training

    cfg = make_config(tiny_models["llama"], tmp_path_factory.mktemp("export_gui"), "lora")
    return run_training(cfg).run_dir


def make_page(qtbot, tmp_path, run_dir: Path) -> ExportPage:
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    state = StudioState(settings=settings)
    state.last_run_dir = run_dir  # as if trained in this window
    page = ExportPage(state)
    qtbot.addWidget(page)
    page.show()
    page.on_shown()
    return page


def test_the_gguf_type_is_offered_for_the_merged_gguf_only(qtbot, tmp_path, llama_run):
    page = make_page(qtbot, tmp_path, llama_run)
    assert page.export_format == "adapter" and page.run_edit.text() == str(llama_run)
    for export_format in EXPORT_FORMATS:
        page.choose_format(export_format)
        merged_gguf = export_format == "gguf"
        assert page.gguf_type.isEnabled() == merged_gguf, export_format
        assert ("--quant" in page.export_args()) == merged_gguf
    page.gguf_type.setCurrentIndex(page.gguf_type.findData("q8_0"))
    assert page.export_args()[2:6] == ["--format", "gguf", "--quant", "q8_0"]
    assert "exports/gguf-q8_0" in page.out_edit.placeholderText()
    assert "llama-quantize" in page.k_quant_note.text()


def test_gguf_lora_export_shows_progress_then_the_commands_to_copy(qtbot, tmp_path, llama_run):
    page = make_page(qtbot, tmp_path, llama_run)
    out = tmp_path / "lora-gguf"
    page.choose_format("gguf-lora")
    page.out_edit.setText(str(out))
    values: list[int] = []
    page.bar.valueChanged.connect(values.append)
    page.export_button.click()
    assert "--format gguf-lora" in page.command.text() and page.is_running()
    assert page.stop_button.isEnabled() and not page.export_button.isEnabled()
    qtbot.waitUntil(lambda: not page.is_running(), timeout=LONG)

    assert page.exported == out, page.message.text()
    assert "Exported to" in page.message.text() and page.open_button.isEnabled()
    assert max(values) == page.bar.maximum() == 28  # one step per tensor: a/b of 14 layers
    commands = page.run_commands.toPlainText()
    assert not page.run_commands.isHidden() and "--lora" in commands
    assert f"-f {out.resolve() / 'Modelfile'}" in commands and "ollama run" in commands
    page.copy_run_commands()
    assert QGuiApplication.clipboard().text() == commands
    assert not page.stop_button.isEnabled() and page.export_button.isEnabled()


def test_stop_ends_a_merged_gguf_export_and_keeps_nothing(qtbot, tmp_path, llama_run):
    page = make_page(qtbot, tmp_path, llama_run)
    out = tmp_path / "stopped"
    page.choose_format("gguf")
    page.out_edit.setText(str(out))
    page.export_button.click()
    page.stop_button.click()  # before the merge is done: the export stops at its next check
    qtbot.waitUntil(lambda: not page.is_running(), timeout=LONG)
    assert "Export stopped" in page.message.text(), page.message.text()
    assert page.exported is None and page.run_commands.isHidden()
    assert not out.exists() and [p for p in tmp_path.iterdir() if p.name.startswith(".")] == []
