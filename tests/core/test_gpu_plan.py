"""The GPU plan (one line per NVML GPU and how many GPUs a run needs) against the arithmetic of
core/memory_shards.py, on Llama 3.1 8B's published config and hand-made NVML readings."""

from __future__ import annotations

import json

import pytest
from tiny_models import LLAMA3_8B_CONFIG

from qlora_studio.config import DistributedConfig
from qlora_studio.core.events import format_gb
from qlora_studio.core.fit import FIT_SHARE, fit_status
from qlora_studio.core.gpu import GIB, GpuInfo
from qlora_studio.core.gpu_plan import plan_gpus
from qlora_studio.core.memory import estimate_memory
from qlora_studio.core.memory_settings import Settings
from qlora_studio.core.memory_shards import gpus_needed, per_gpu_estimate, sharded_as
from qlora_studio.core.models.inspect import inspect_model

RTX_4090 = "NVIDIA GeForce RTX 4090"
LONG = Settings(seq_len=2048)  # LoRA on 8B at 2,048 tokens: 21.75 GB, over 90% of 23.5 GB


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama3-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    return inspect_model(folder)


def two_4090s() -> list[GpuInfo]:
    """Two 24 GB cards, half a GB taken by the desktop on each."""
    free = int(23.5 * GIB)
    return [GpuInfo(i, RTX_4090, 24 * GIB, free, 24 * GIB - free) for i in (0, 1)]


def one_3060() -> list[GpuInfo]:
    free = int(11.5 * GIB)
    return [GpuInfo(0, "NVIDIA GeForce RTX 3060", 12 * GIB, free, 12 * GIB - free)]


def budget(gpu: GpuInfo) -> int:
    return int(FIT_SHARE * gpu.free_bytes)


def test_qlora_fits_one_12gb_card(llama8b):
    s = Settings()
    plan = plan_gpus(llama8b, s, "qlora", DistributedConfig(), one_3060())
    need = estimate_memory(llama8b, s, "qlora").total_bytes  # strategy none: one GPU's estimate
    assert gpus_needed(llama8b, s, "qlora", budget(one_3060()[0])) == 1 == plan.needed
    assert plan.verdict == "Fits one NVIDIA GeForce RTX 3060"
    [line] = plan.lines
    assert (line.index, line.chosen, line.used) == (0, True, True)
    assert (line.free_bytes, line.total_bytes) == (int(11.5 * GIB), 12 * GIB)
    assert line.need_bytes == plan.need_bytes == need
    assert line.status == "fits" and plan.warnings == []


def test_lora_at_2048_tokens_needs_two_24gb_cards_with_fsdp(llama8b):
    gpus = two_4090s()
    d = DistributedConfig(strategy="fsdp", processes=2)
    plan = plan_gpus(llama8b, LONG, "lora", d, gpus)
    single = estimate_memory(llama8b, LONG, "lora").total_bytes
    each = per_gpu_estimate(llama8b, LONG, "lora", "fsdp", 2).total_bytes
    assert single > budget(gpus[0]) >= each  # one card is not enough, two are
    assert gpus_needed(llama8b, LONG, "lora", budget(gpus[0])) == 2 == plan.needed
    assert plan.needed_each_bytes == each == plan.need_bytes
    assert plan.verdict == f"Needs 2 GPUs of this kind with fsdp ({format_gb(each)} each)"
    assert plan.status == "fits"  # as configured: fsdp over the two
    assert [(line.index, line.used, line.need_bytes) for line in plan.lines] == [
        (0, True, each),
        (1, True, each),
    ]
    assert {line.status for line in plan.lines} == {fit_status(each, gpus[0].free_bytes)}


def test_one_gpu_runs_say_which_strategy_would_split_the_model(llama8b):
    plan = plan_gpus(llama8b, LONG, "lora", DistributedConfig(), two_4090s())
    each = format_gb(per_gpu_estimate(llama8b, LONG, "lora", "fsdp", 2).total_bytes)
    assert plan.verdict == (
        f"Needs 2 GPUs of this kind with fsdp ({each} each): choose fsdp under Settings, "
        "Several GPUs"
    )
    # strategy none trains on the first chosen GPU only, with the single-GPU estimate
    assert [line.used for line in plan.lines] == [True, False]
    assert plan.lines[0].need_bytes == estimate_memory(llama8b, LONG, "lora").total_bytes
    assert plan.lines[0].status == plan.status == "tight"


def test_ddp_copies_the_model_to_every_gpu(llama8b):
    d = DistributedConfig(strategy="ddp", processes=2)
    plan = plan_gpus(llama8b, LONG, "lora", d, two_4090s())
    need = per_gpu_estimate(llama8b, LONG, "lora", "ddp", 2).total_bytes
    each = per_gpu_estimate(llama8b, LONG, "lora", "fsdp", 2).total_bytes
    assert need > estimate_memory(llama8b, LONG, "lora").total_bytes  # + gradient buckets
    assert plan.need_bytes == need and plan.lines[0].need_bytes == need
    assert plan.verdict == (
        "ddp copies the whole model to every GPU: choose fsdp to split it "
        f"(it needs 2 GPUs of this kind, {format_gb(each)} each)"
    )


def test_a_run_no_number_of_gpus_holds(llama8b):
    mixed = Settings(full_recipe="mixed")  # fp32 weights, gradients and Adam states of 8B
    gpus = two_4090s()
    assert gpus_needed(llama8b, mixed, "full", budget(gpus[0])) is None
    d = DistributedConfig(strategy="fsdp", processes=2)
    plan = plan_gpus(llama8b, mixed, "full", d, gpus)
    assert plan.needed is None and plan.needed_each_bytes == 0
    assert plan.verdict == "Does not fit even 8 GPUs of this kind"
    assert plan.status == "does not fit"
    assert {line.status for line in plan.lines} == {"does not fit"}
    ddp = plan_gpus(llama8b, mixed, "full", DistributedConfig(strategy="ddp", processes=2), gpus)
    assert ddp.verdict == (
        "ddp copies the whole model to every GPU: choose fsdp to split it; even 8 GPUs of this "
        "kind are not enough with fsdp"
    )


def test_deepspeed_is_priced_by_its_zero_stage(llama8b):
    three = DistributedConfig(strategy="deepspeed", processes=2, zero_stage=3)
    two = DistributedConfig(strategy="deepspeed", processes=2, zero_stage=2)
    assert (sharded_as(three), sharded_as(two)) == ("fsdp", "ddp")
    plan = plan_gpus(llama8b, LONG, "lora", three, two_4090s())
    each = per_gpu_estimate(llama8b, LONG, "lora", "fsdp", 2).total_bytes
    assert plan.need_bytes == each
    assert plan.verdict == (
        f"Needs 2 GPUs of this kind with deepspeed ZeRO-3 ({format_gb(each)} each)"
    )
    plan = plan_gpus(llama8b, LONG, "lora", two, two_4090s())
    assert plan.need_bytes == per_gpu_estimate(llama8b, LONG, "lora", "ddp", 2).total_bytes
    assert plan.verdict.startswith("deepspeed ZeRO-2 copies the whole model to every GPU")


def test_chosen_gpus_and_the_kind_judged(llama8b):
    """The verdict judges the chosen GPU with the least free memory unless told a kind; the
    config's mistakes against these GPUs come back as warnings."""
    gpus = [*two_4090s(), one_3060()[0]]
    gpus[2].index = 2
    s = Settings()
    plan = plan_gpus(llama8b, s, "lora", DistributedConfig(gpus="2"), gpus)
    assert [(line.chosen, line.used) for line in plan.lines] == [
        (False, False),
        (False, False),
        (True, True),
    ]
    lora_fsdp = gpus_needed(llama8b, s, "lora", budget(gpus[2]))
    assert plan.needed == lora_fsdp == 4
    assert plan.verdict.startswith("Needs 4 GPUs of this kind with fsdp")
    on_4090 = plan_gpus(llama8b, s, "lora", DistributedConfig(gpus="2"), gpus, kind=gpus[0])
    assert on_4090.verdict == f"Fits one {RTX_4090}"

    d = DistributedConfig(strategy="ddp", processes=2, gpus="1,5")
    plan = plan_gpus(llama8b, s, "qlora", d, gpus)
    assert plan.warnings == [
        "distributed.gpus lists GPU 5, which this computer does not have",
        "distributed.processes is 2, but 1 GPU(s) are chosen: one process per GPU",
    ]
    assert [line.used for line in plan.lines] == [False, True, False]


def test_no_gpu_no_lines_and_no_verdict(llama8b):
    plan = plan_gpus(llama8b, Settings(), "qlora", DistributedConfig(), [])
    assert plan.lines == [] and plan.verdict == plan.status == "" and plan.needed is None
    assert plan.warnings == []
    custom = GpuInfo(-1, "custom 16 GB", 16 * GIB, 16 * GIB, 0, source="custom")
    judged = plan_gpus(llama8b, Settings(), "qlora", DistributedConfig(), [], kind=custom)
    assert judged.verdict == "Fits one custom 16 GB" and judged.lines == []
