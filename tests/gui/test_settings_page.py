"""The Settings page: what each method enables, and choices and labels read from config.py."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings  # noqa: E402

from qlora_studio import config as C  # noqa: E402
from qlora_studio.gui.pages.settings_page import SettingsPage  # noqa: E402
from qlora_studio.gui.state import StudioState, demo_config  # noqa: E402


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
