"""The Settings page: what each method enables, choices and labels read from config.py, the few
settings that matter in plain words with the rest under Advanced, and where runs are saved."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402
from PySide6.QtWidgets import QFormLayout, QGroupBox, QLineEdit  # noqa: E402

from qlora_studio import config as C  # noqa: E402
from qlora_studio.gui.pages.settings_page import ESSENTIALS, SettingsPage  # noqa: E402
from qlora_studio.gui.state import StudioState, default_runs_dir, demo_config  # noqa: E402


@pytest.fixture
def page(qtbot, tmp_path):
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    state = StudioState(demo_config(), settings=settings)
    page = SettingsPage(state)
    qtbot.addWidget(page)
    page.load_config(state.cfg)
    return page


def test_lora_keeps_compute_dtype_and_disables_only_the_4bit_knobs(page):
    page.method_buttons["lora"].setChecked(True)  # an edit: the page re-enables its editors
    compute = page.editors[("quant", "compute_dtype")]
    assert compute.isEnabled(), "compute_dtype sets LoRA's base dtype: it must stay editable"
    assert "16-bit base dtype" in compute.toolTip()
    assert not page.editors[("quant", "quant_type")].isEnabled()
    assert not page.editors[("quant", "double_quant")].isEnabled()
    assert page.editors[("lora", "r")].isEnabled()

    compute.setCurrentText("fp32")
    cfg = C.RunConfig.from_dict(page.state.cfg.to_dict())
    page.apply_config(cfg)
    assert cfg.method == "lora" and cfg.quant.compute_dtype == "fp32"


def test_a_lora_config_loads_with_compute_dtype_enabled(page):
    cfg = demo_config()
    cfg.method = "lora"
    page.load_config(cfg)
    assert page.editors[("quant", "compute_dtype")].isEnabled()
    assert not page.editors[("quant", "quant_type")].isEnabled()


def test_each_method_enables_what_it_uses(page):
    page.method_buttons["qlora"].setChecked(True)
    assert all(page.editors[("quant", name)].isEnabled() for name in C.SECTIONS["quant"]().__dict__)
    page.method_buttons["full"].setChecked(True)
    assert not page.editors[("lora", "r")].isEnabled()
    assert not page.editors[("quant", "double_quant")].isEnabled()
    assert page.editors[("quant", "compute_dtype")].isEnabled()


def test_choices_and_labels_come_from_config(page):
    for method, button in page.method_buttons.items():
        assert button.text() == C.METHOD_LABELS[method]
    assert list(page.method_buttons) == list(C.METHODS)
    expected = {
        ("quant", "compute_dtype"): C.COMPUTE_DTYPES,
        ("quant", "quant_type"): C.QUANT_TYPES,
        ("train", "optimizer"): C.OPTIMIZERS,
        ("train", "device"): C.DEVICES,
        ("train", "fit"): C.FIT_MODES,
    }
    for key, choices in expected.items():
        combo = page.editors[key]
        assert tuple(combo.itemText(i) for i in range(combo.count())) == choices


def test_the_few_that_matter_in_plain_words_and_the_rest_under_advanced(page, tmp_path):
    essentials = page.findChild(QGroupBox, "essentials")
    form = essentials.layout()
    labels = [
        form.itemAt(row, QFormLayout.ItemRole.LabelRole).widget().text()
        for row in range(form.rowCount())
    ]
    assert labels == ["Method", *(label for _, _, label in ESSENTIALS)]
    for section, name, _ in ESSENTIALS:
        editor = page.editors[(section, name)]
        assert editor.toolTip().startswith(f"{section}.{name}: ")  # the field's name for the CLI
        assert essentials.isAncestorOf(editor) and not page.advanced.isAncestorOf(editor)
    # every other field is under Advanced, once; Batching is one of its groups
    others = set(page.editors) - {(s, n) for s, n, _ in ESSENTIALS}
    assert others and all(page.advanced.isAncestorOf(page.editors[key]) for key in others)
    titles = [box.title() for box in page.advanced.findChildren(QGroupBox)]
    assert "Batching" in titles
    for name in ("packing", "max_tokens_per_batch"):
        assert page.advanced.isAncestorOf(page.editors[("data", name)])
    # closed at first; opened, it stays open in the next window
    assert page.advanced.isHidden()
    page.advanced_button.click()
    assert not page.advanced.isHidden()
    again = SettingsPage(page.state)
    assert again.advanced_button.isChecked() and not again.advanced.isHidden()
    again.deleteLater()


def test_runs_go_to_the_users_runs_folder_shown_and_changeable_here(page, tmp_path):
    shown = page.editors[("output", "dir")]
    assert isinstance(shown, QLineEdit) and shown.text() == str(default_runs_dir())
    assert page.state.cfg.output.dir == str(default_runs_dir())
    chosen = tmp_path / "my runs"
    page.set_runs_dir(chosen)  # what "Choose…" does with the folder picked
    page.apply_config(page.state.cfg)
    assert page.state.cfg.output.dir == str(chosen)
    # the next window's config that leaves output.dir at its default saves there too
    state = StudioState(demo_config(), settings=page.state.settings)
    assert state.runs_dir() == chosen and state.cfg.output.dir == str(chosen)


def test_the_default_runs_folder_is_visible_and_the_cli_keeps_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("QLORA_STUDIO_DATA")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_runs_dir() == tmp_path / "QLoRA Studio" / "runs"  # not a hidden folder
    monkeypatch.setenv("QLORA_STUDIO_DATA", str(tmp_path / "portable"))
    assert default_runs_dir() == tmp_path / "portable" / "runs"

    # the CLI's configs are unchanged: runs/ in the working folder
    assert C.RunConfig().output.dir == "runs" and demo_config().output.dir == "runs"
    saved = tmp_path / "run.yaml"
    saved.write_text("method: lora\ndata:\n  path: rows.jsonl\n", encoding="utf-8")
    assert C.RunConfig.load(saved).output.dir == "runs"
    # the GUI points only the default at its folder; a folder the user wrote stays
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    assert StudioState(C.RunConfig.load(saved), settings=settings).cfg.output.dir == str(
        tmp_path / "portable" / "runs"
    )
    mine = C.RunConfig.load(saved)
    mine.output.dir = str(tmp_path / "elsewhere")
    assert StudioState(mine, settings=settings).cfg.output.dir == str(tmp_path / "elsewhere")
