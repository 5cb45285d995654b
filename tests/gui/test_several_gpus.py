"""Several GPUs in the window: the Settings group that writes ``distributed`` (strategy,
processes, the GPUs picked) and hides what does not apply, and the Memory page's lines for this
computer's GPUs with how many the run needs. The GPUs are NVML readings made by hand, passed in
as the pages' ``read_gpus``: this machine has none."""

from __future__ import annotations

import json
import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtCore import QSettings, Qt  # noqa: E402
from PySide6.QtWidgets import QGroupBox  # noqa: E402
from tiny_models import LLAMA3_8B_CONFIG  # noqa: E402

from qlora_studio import config as C  # noqa: E402
from qlora_studio.core.events import format_gb  # noqa: E402
from qlora_studio.core.gpu import GIB, GpuInfo  # noqa: E402
from qlora_studio.core.gpu_plan import plan_gpus  # noqa: E402
from qlora_studio.core.memory_settings import Settings  # noqa: E402
from qlora_studio.core.memory_shards import per_gpu_estimate  # noqa: E402
from qlora_studio.core.models.inspect import inspect_model  # noqa: E402
from qlora_studio.gui.pages.memory_page import MemoryPage  # noqa: E402
from qlora_studio.gui.pages.settings_page import (  # noqa: E402
    NO_DEEPSPEED,
    NO_GPU,
    SettingsPage,
    deepspeed_installed,
)
from qlora_studio.gui.state import StudioState, demo_config  # noqa: E402

RTX_4090 = "NVIDIA GeForce RTX 4090"


def rtx_4090s(count: int) -> list[GpuInfo]:
    """``count`` 24 GB cards as NVML reads them, 0.5 GB more taken on each next one."""
    return [
        GpuInfo(i, RTX_4090, 24 * GIB, int((23.5 - i / 2) * GIB), int((0.5 + i / 2) * GIB))
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama3-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    return inspect_model(folder)


@pytest.fixture
def state(tmp_path):
    """LoRA on 2,048-token rows, batch 4 with checkpointing: 21.75 GB for Llama 3.1 8B, more
    than 90% of a 4090's free memory."""
    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    cfg = demo_config()
    cfg.method = "lora"
    cfg.data.max_length = 2048
    cfg.data.packing = "off"
    cfg.lora.dropout = 0.0
    cfg.train.batch_size = 4
    cfg.train.gradient_checkpointing = True
    return StudioState(cfg, settings=settings)


def settings_page(qtbot, state, gpus: list[GpuInfo]) -> SettingsPage:
    page = SettingsPage(state, read_gpus=lambda: gpus)
    qtbot.addWidget(page)
    page.load_config(state.cfg)
    return page


def applied(page: SettingsPage) -> C.RunConfig:
    cfg = C.RunConfig.from_dict(page.state.cfg.to_dict())
    page.apply_config(cfg)
    return cfg


def test_several_gpus_group_writes_the_config_and_hides_what_does_not_apply(qtbot, state):
    page = settings_page(qtbot, state, rtx_4090s(3))
    group = next(b for b in page.advanced.findChildren(QGroupBox) if b.title() == "Several GPUs")
    strategy = page.editors[("distributed", "strategy")]
    processes = page.editors[("distributed", "processes")]
    zero_stage = page.editors[("distributed", "zero_stage")]
    picker = page.gpu_picker
    assert group.isAncestorOf(strategy) and group.isAncestorOf(picker)
    assert [strategy.itemText(i) for i in range(strategy.count())] == list(C.STRATEGIES)
    # one process: nothing else applies
    assert strategy.currentText() == "none"
    assert processes.isHidden() and picker.isHidden() and zero_stage.isHidden()

    strategy.setCurrentText("fsdp")
    assert not processes.isHidden() and not picker.isHidden() and zero_stage.isHidden()
    assert processes.value() == 3, "one process per checked GPU"
    assert [box.text() for box in picker.boxes.values()] == [
        f"cuda:{i}  {RTX_4090}: {23.5 - i / 2:.1f} GB free of 24.0 GB" for i in range(3)
    ]
    cfg = applied(page)
    assert (cfg.distributed.strategy, cfg.distributed.processes, cfg.distributed.gpus) == (
        "fsdp",
        3,
        "all",
    )
    with qtbot.waitSignal(page.changed, timeout=2000):
        picker.boxes[1].setChecked(False)
    cfg = applied(page)
    assert (cfg.distributed.processes, cfg.distributed.gpus) == (2, "0,2")
    assert cfg.distributed.gpu_indices == [0, 2] and page.message.text() == ""

    # deepspeed: its ZeRO stage shows; a stage picked is written
    strategy.setCurrentText("deepspeed")
    assert not zero_stage.isHidden() and not page.editors[("distributed", "config_file")].isHidden()
    zero_stage.setValue(3)
    assert applied(page).distributed.zero_stage == 3

    strategy.setCurrentText("none")
    assert processes.value() == 1 and processes.isHidden() and picker.isHidden()
    cfg = applied(page)
    cfg.validate()
    assert (cfg.distributed.strategy, cfg.distributed.processes) == ("none", 1)


def test_strategy_tooltips_and_deepspeed_only_when_installed(qtbot, state):
    page = settings_page(qtbot, state, rtx_4090s(2))
    strategy = page.editors[("distributed", "strategy")]
    tips = [strategy.itemData(i, Qt.ItemDataRole.ToolTipRole) for i in range(strategy.count())]
    assert all(tip.startswith(f"{name}: ") for tip, name in zip(tips, C.STRATEGIES, strict=True))
    assert "split across the GPUs" in tips[C.STRATEGIES.index("fsdp")]
    assert "whole run" in tips[C.STRATEGIES.index("ddp")]
    assert strategy.toolTip().startswith("distributed.strategy: ")
    deepspeed = strategy.model().item(C.STRATEGIES.index("deepspeed"))
    assert deepspeed.isEnabled() == deepspeed_installed()
    assert (NO_DEEPSPEED in tips[C.STRATEGIES.index("deepspeed")]) != deepspeed_installed()


def test_a_picked_gpu_too_few_for_the_processes_is_refused_by_name(qtbot, state):
    page = settings_page(qtbot, state, rtx_4090s(2))
    page.editors[("distributed", "strategy")].setCurrentText("ddp")
    assert page.editors[("distributed", "processes")].value() == 2
    page.gpu_picker.boxes[1].setChecked(False)  # one GPU for two processes
    assert "distributed.gpus" in page.message.text() and not page.is_complete()
    page.gpu_picker.boxes[1].setChecked(True)
    assert page.message.text() == "" and applied(page).distributed.gpus == "all"


def test_without_an_nvidia_gpu_the_picker_says_so_and_keeps_the_config(qtbot, state):
    state.cfg.distributed.gpus = "0,1"  # a config written on another computer
    page = settings_page(qtbot, state, [])
    page.editors[("distributed", "strategy")].setCurrentText("ddp")  # CPU processes
    assert not page.gpu_picker.isHidden() and not page.gpu_picker.empty.isHidden()
    assert page.gpu_picker.empty.text() == NO_GPU
    assert page.gpu_picker.boxes == {}
    cfg = applied(page)
    assert (cfg.distributed.strategy, cfg.distributed.processes, cfg.distributed.gpus) == (
        "ddp",
        2,
        "0,1",
    )


def memory_page(qtbot, state, gpus: list[GpuInfo], info) -> MemoryPage:
    page = MemoryPage(state, read_gpus=lambda: gpus)
    qtbot.addWidget(page)
    with qtbot.waitSignal(page.changed, timeout=30_000):
        state.set_model_info(info)  # the page refreshes on it
    return page


def test_memory_page_shows_one_line_per_gpu_and_how_many_the_run_needs(qtbot, state, llama8b):
    state.cfg.distributed.strategy = "fsdp"
    state.cfg.distributed.processes = 2
    gpus = rtx_4090s(2)
    page = memory_page(qtbot, state, gpus, llama8b)
    assert page._gpu_spec() == "cuda:0"  # judged against the first NVML GPU
    settings = Settings.from_config(state.cfg, device="cuda")
    expected = plan_gpus(llama8b, settings, "lora", state.cfg.distributed, gpus, kind=gpus[0])
    each = per_gpu_estimate(llama8b, settings, "lora", "fsdp", 2).total_bytes
    assert page.plan == expected and page.plan.needed == 2
    assert expected.verdict == f"Needs 2 GPUs of this kind with fsdp ({format_gb(each)} each)"

    text = page.gpus_view.text()
    assert not page.gpus_view.isHidden()
    assert text.count("<tr") == 2 and "cuda:0" in text and "cuda:1" in text
    assert "23.5 GB free of 24.0 GB" in text and "23.0 GB free of 24.0 GB" in text
    assert f"LoRA with fsdp over 2 GPUs needs {format_gb(each)} on each" in text
    assert expected.verdict in text

    # one GPU configured: the first is used, the second idle, and the verdict says what to pick
    state.cfg.distributed.strategy, state.cfg.distributed.processes = "none", 1
    page.refresh()
    assert page.plan.verdict.endswith("choose fsdp under Settings, Several GPUs")
    assert [line.used for line in page.plan.lines] == [True, False]
    assert "chosen, left idle" in page.gpus_view.text()


def test_the_verdict_judges_the_gpu_the_combo_names(qtbot, state, llama8b):
    page = memory_page(qtbot, state, rtx_4090s(2), llama8b)
    page.gpu_combo.setCurrentIndex(page.gpu_combo.findData("RTX 6000 Ada"))  # 48 GB
    assert page.plan.verdict == "Fits one RTX 6000 Ada"
    assert len(page.plan.lines) == 2  # still this computer's GPUs


def test_memory_page_without_an_nvidia_gpu_shows_nothing_new(qtbot, state, llama8b):
    page = memory_page(qtbot, state, [], llama8b)
    assert page.gpus_view.isHidden() and page.plan is None
    assert "no NVIDIA GPU found" in page.gpu_line.text()
    assert set(page.verdicts) == set(C.METHODS)
