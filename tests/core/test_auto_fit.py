"""Auto-fit (train.fit: auto) and the fit check `train` runs before the model loads: pure
arithmetic over real configs inspected on the meta device, with the GPU's memory passed in."""

from __future__ import annotations

import json
import re

import pytest
from tiny_models import LLAMA3_8B_CONFIG

from qlora_studio.config import RunConfig
from qlora_studio.core import memory
from qlora_studio.core.errors import TrainingError
from qlora_studio.core.events import GB, CollectingReporter
from qlora_studio.core.fit import FitChoice, auto_fit, fit_before_loading, fit_config
from qlora_studio.core.memory_settings import Settings
from qlora_studio.core.models.inspect import inspect_model
from qlora_studio.core.training.run import run_training


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama31-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    return inspect_model(folder)


def config(method="qlora", batch=8, accum=1, seq=2048, **train) -> RunConfig:
    train = {"batch_size": batch, "grad_accum": accum, "fit": "auto", **train}
    data = {"path": "rows.jsonl", "max_length": seq}
    return RunConfig.from_dict({"method": method, "data": data, "train": train}).validate()


def needs(info, cfg: RunConfig, batch: int, checkpointing: bool, seq: int | None = None) -> int:
    settings = Settings.from_config(cfg, device="cuda")
    settings.batch_size, settings.gradient_checkpointing = batch, checkpointing
    settings.seq_len = seq or settings.seq_len
    return memory.estimate_memory(info, settings, cfg.method).total_bytes


def test_qlora_8b_on_a_11gb_card_keeps_the_effective_batch(llama8b):
    cfg, budget = config(batch=8), 0.9 * 11 * GB
    choice = auto_fit(llama8b, cfg, 11 * GB)
    assert isinstance(choice, FitChoice) and choice.fits and choice.changed
    assert (choice.batch_size, choice.grad_accum, choice.gradient_checkpointing) == (2, 4, True)
    assert choice.needed_bytes == needs(llama8b, cfg, 2, True) <= budget
    assert needs(llama8b, cfg, 4, True) > budget  # the largest micro-batch that fits
    assert needs(llama8b, cfg, 1, False) > budget  # why checkpointing stays on
    assert choice.reason.startswith("micro-batch 2 x grad_accum 4 keeps the effective batch of 8")
    assert "gradient checkpointing on (without it even micro-batch 1 needs ~" in choice.reason
    assert choice.available_bytes == 11 * GB and choice.hint == ""


def test_a_large_gpu_turns_checkpointing_off_for_speed(llama8b):
    cfg, budget = config(batch=8), 0.9 * 80 * GB
    choice = auto_fit(llama8b, cfg, 80 * GB)
    assert choice.fits and not choice.gradient_checkpointing
    assert choice.batch_size * choice.grad_accum == 8
    assert needs(llama8b, cfg, choice.batch_size, False) <= budget
    assert needs(llama8b, cfg, 2 * choice.batch_size, False) > budget
    assert "gradient checkpointing off, which skips the ~30% recompute" in choice.reason


def test_micro_batches_divide_the_effective_batch(llama8b):
    cfg = config(batch=3, accum=2)  # effective 6: micro-batches 6, 3, 2 or 1
    for gigabytes in (12, 16, 24, 48, 80):
        choice = auto_fit(llama8b, cfg, gigabytes * GB)
        assert choice.fits and choice.batch_size * choice.grad_accum == 6, gigabytes
    already = auto_fit(llama8b, config(batch=1, accum=8, gradient_checkpointing=True), 10 * GB)
    assert not already.changed and "the config had" not in already.reason


def test_the_longest_row_replaces_max_length(llama8b):
    cfg = config(batch=8, seq=8192)
    assert not auto_fit(llama8b, cfg, 12 * GB).fits
    short = auto_fit(llama8b, cfg, 12 * GB, seq_len=256)
    assert short.fits and short.batch_size * short.grad_accum == 8
    batch, checkpointing = short.batch_size, short.gradient_checkpointing
    assert short.needed_bytes == needs(llama8b, cfg, batch, checkpointing, seq=256)


def test_nothing_fits_gives_the_change_that_would(llama8b):
    cfg = config(batch=8)
    choice = auto_fit(llama8b, cfg, 8 * GB)
    assert not choice.fits and not choice.changed
    assert (choice.batch_size, choice.grad_accum) == (8, 1)  # the config's, untouched
    assert choice.reason.startswith("QLoRA does not fit 8.0 GB: even micro-batch 1 x 2048 tokens")
    found = re.search(r"longest sequence that fits at batch 1: (\d+)", choice.hint)
    assert found, choice.hint
    assert needs(llama8b, cfg, 1, True, int(found.group(1))) <= 0.9 * 8 * GB  # and it does fit
    lora = auto_fit(llama8b, config("lora"), 16 * GB)
    assert not lora.fits and "use QLoRA (needs ~" in lora.hint


def test_lean_full_fine_tuning_cannot_accumulate(llama8b):
    cfg = config("full", batch=2)  # config.py refuses grad_accum > 1 with the lean recipe
    choice = auto_fit(llama8b, cfg, 32 * GB)
    assert choice.fits and (choice.batch_size, choice.grad_accum) == (2, 1)
    tight = auto_fit(llama8b, cfg, 24 * GB)  # 2 x 2048 needs ~22.8 GB: over the 90% line
    assert not tight.fits and (tight.batch_size, tight.grad_accum) == (2, 1)
    assert tight.hint.startswith(
        "the lean full recipe steps the optimizer in backward and cannot accumulate gradients"
    )
    mixed = auto_fit(llama8b, config("full", batch=2, full_recipe="mixed"), 141 * GB)
    assert mixed.fits and mixed.batch_size * mixed.grad_accum == 2


def test_tiny_models_fit_as_configured(tiny_models):
    for arch in ("llama", "gpt2", "gemma3"):
        info = inspect_model(tiny_models[arch])
        for method in ("full", "lora", "qlora"):
            cfg = config(method, batch=4, seq=128, gradient_checkpointing=False)
            choice = auto_fit(info, cfg, 8 * GB)
            assert choice.fits and not choice.changed, (arch, method, choice.reason)
            assert (choice.batch_size, choice.grad_accum) == (4, 1)


def test_fit_off_refuses_what_cannot_fit_with_the_fix(llama8b):
    cfg = config("lora", batch=2, fit="off")
    with pytest.raises(TrainingError) as refused:
        fit_config(llama8b, cfg, 16 * GB)
    assert refused.value.message.startswith("LoRA needs ~")
    assert "16.0 GB free" in refused.value.message
    assert "use QLoRA (needs ~" in refused.value.hint
    assert refused.value.hint.endswith("or set train.fit to auto")
    fine = config("qlora", batch=2, fit="off")
    assert fit_config(llama8b, fine, 24 * GB) == (fine, "")


def test_fit_auto_returns_a_fitted_copy(llama8b):
    cfg = config(batch=8)
    fitted, message = fit_config(llama8b, cfg, 11 * GB)
    assert fitted is not cfg and cfg.train.batch_size == 8  # the caller's config is untouched
    train = fitted.train
    assert (train.batch_size, train.grad_accum, train.gradient_checkpointing) == (2, 4, True)
    assert train.fit == "auto" and fitted.method == "qlora"
    assert message.startswith("Auto-fit: micro-batch 2 x grad_accum 4")
    with pytest.raises(TrainingError, match="Auto-fit: QLoRA does not fit") as refused:
        fit_config(llama8b, cfg, 6 * GB)
    assert refused.value.hint


def test_on_the_cpu_there_is_nothing_to_fit(tiny_llama):
    said: list[str] = []
    cfg = config(batch=8)
    assert fit_before_loading(cfg, tiny_llama, "cpu", 0, said.append) is cfg
    assert said == ["Auto-fit: training on the CPU, no GPU memory to fit: the settings are kept"]
    said.clear()
    off = config(fit="off")
    assert fit_before_loading(off, tiny_llama, "cpu", 0, said.append) is off and said == []


def test_train_reports_auto_fit_before_the_model_loads(tiny_llama, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"row {i} of some text"}) + "\n" for i in range(8)))
    cfg = RunConfig.from_dict(
        {
            "method": "lora",
            "model": {"source": str(tiny_llama)},
            "data": {"path": str(rows), "format": "text", "max_length": 32},
            "lora": {"r": 4, "alpha": 8},
            "train": {"max_steps": 1, "batch_size": 2, "device": "cpu", "fit": "auto"},
            "output": {"dir": str(tmp_path / "runs"), "name": "fit"},
        }
    ).validate()
    reporter = CollectingReporter()
    result = run_training(cfg, reporter=reporter)
    messages = [e["message"] for e in reporter.of_type("status")]
    said = messages.index(
        "Auto-fit: training on the CPU, no GPU memory to fit: the settings are kept"
    )
    loading = next(i for i, m in enumerate(messages) if m.startswith("Loading the model"))
    assert said < loading and result.step == 1


def test_auto_fit_plans_with_the_gpus_bf16_support(llama8b):
    """On a GPU without bf16 the lean full recipe keeps fp32 weights: auto-fit needs more."""
    cfg = config("full", batch=1, seq=512)
    with_bf16 = auto_fit(llama8b, cfg, 141 * GB, bf16_supported=True)
    without = auto_fit(llama8b, cfg, 141 * GB, bf16_supported=False)
    assert with_bf16.fits and without.fits
    assert without.needed_bytes > with_bf16.needed_bytes + 15 * GB  # 4 B vs 2 B x 8 B params
    off = config("full", batch=1, seq=512, fit="off")
    assert fit_config(llama8b, off, 32 * GB, 0, True) == (off, "")  # ~20 GB in bf16
    with pytest.raises(TrainingError, match="Full fine-tuning needs"):
        fit_config(llama8b, off, 32 * GB, 0, False)  # ~38 GB with fp32 weights


def test_several_gpus_are_checked_by_each_gpus_share(llama8b):
    # LoRA on the 8B at 2 x 2048 needs ~19.7 GB on one GPU: refused on a 16 GB card alone
    cfg = config("lora", batch=2, fit="off")
    with pytest.raises(TrainingError, match="LoRA needs ~"):
        fit_config(llama8b, cfg, 16 * GB)
    # fsdp over two 16 GB cards splits the weights: each needs ~14.3 GB, and the run goes on
    cfg.distributed.strategy, cfg.distributed.processes = "fsdp", 2
    cfg.validate()
    kept, message = fit_config(llama8b, cfg, 16 * GB)
    assert kept is cfg
    assert message.startswith("Memory check: LoRA with fsdp over 2 processes needs ~14.")
    # ddp copies the model to each GPU: still too big, and the hint says what would split it
    cfg.distributed.strategy = "ddp"
    with pytest.raises(TrainingError, match="on each GPU") as refused:
        fit_config(llama8b, cfg, 16 * GB)
    assert refused.value.hint.startswith("use distributed.strategy: fsdp")
