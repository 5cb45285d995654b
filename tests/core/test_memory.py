"""The memory estimate against hand arithmetic, on real configs inspected on the meta device."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import LLAMA3_8B_CONFIG

from qlora_studio.config import RunConfig
from qlora_studio.core import fit, memory
from qlora_studio.core.events import GB
from qlora_studio.core.memory import MB, Settings
from qlora_studio.core.models.inspect import inspect_model
from qlora_studio.core.models.sources import is_demo_available

H, FF, L, V, KV = 4096, 14336, 32, 128256, 1024  # KV: 8 kv heads x head_dim 128
# Per layer: q, o are 4096x4096; k, v 4096x1024; gate, up, down 4096x14336.
LINEAR_8B = L * (2 * H * H + 2 * H * KV + 3 * H * FF)  # 6,979,321,856 quantizable weights
PARAMS_8B = LINEAR_8B + 2 * V * H + (2 * L + 1) * H  # + embeddings, lm_head, norms
LORA_8B_R16 = L * 16 * (2 * (H + H) + 2 * (H + KV) + 3 * (H + FF))


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama3-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    return inspect_model(folder)


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    return inspect_model(tiny_llama)


def test_bits_per_quantized_param():
    assert memory.bits_per_quantized_param(True) == pytest.approx(4.127, abs=1e-3)
    assert memory.bits_per_quantized_param(True) == 4 + 8 / 64 + 32 / (64 * 256)
    assert memory.bits_per_quantized_param(False) == 4.5


def test_lora_params_on_the_tiny_llama(tiny):
    # hidden 64, 4 heads x 16, 2 kv heads (k/v out 32), intermediate 128, 2 layers
    per_layer = (64 + 64) + 2 * (64 + 32) + (64 + 64) + 2 * (64 + 128) + (128 + 64)
    assert memory.lora_trainable_params(tiny, 8, "all-linear") == 2 * 8 * per_layer == 16384
    assert memory.lora_trainable_params(tiny, 8, ["q_proj", "v_proj"]) == 2 * 8 * (128 + 96)
    by_groups = sum(8 * (g.in_features + g.out_features) * g.count for g in tiny.linear_layers)
    assert memory.lora_trainable_params(tiny, 8, "all-linear") == by_groups


def test_lora_params_on_llama3_8b(llama8b):
    assert llama8b.params_total == PARAMS_8B
    assert sum(g.params for g in llama8b.linear_layers) == LINEAR_8B
    # per layer: q, o 16*(4096+4096); k, v 16*(4096+1024); gate, up, down 16*(4096+14336)
    per_layer = 2 * 131072 + 2 * 81920 + 3 * 294912
    assert LORA_8B_R16 == 32 * per_layer == 41_943_040
    assert memory.lora_trainable_params(llama8b, 16, "all-linear") == 41_943_040


def _bytes(estimate, name):
    term = estimate.term(name)
    assert term is not None, f"{estimate.method} has no {name!r} term"
    return term.bytes


# LoRA tensors of 100,000+ values, which a paged optimizer pages: per layer the B of gate and
# up (14336 x 16) and the A of down (16 x 14336)
PAGED_LORA_8B = L * 3 * 16 * FF


def test_qlora_terms_match_hand_arithmetic(llama8b):
    s = Settings(batch_size=4, seq_len=512, lora_r=16)
    e = memory.estimate_memory(llama8b, s, "qlora")
    quantized_bytes = _bytes(e, "weights") + _bytes(e, "quantization constants")
    assert _bytes(e, "weights") == LINEAR_8B // 2
    assert quantized_bytes == pytest.approx(LINEAR_8B * 4.127 / 8, rel=1e-4)
    assert _bytes(e, "16-bit layers") == 2 * (PARAMS_8B - LINEAR_8B)  # bf16 on the GPU
    assert _bytes(e, "trainable parameters (LoRA)") == 4 * LORA_8B_R16
    assert _bytes(e, "gradients") == 4 * LORA_8B_R16
    # 8-bit Adam: 2 uint8 states + 2 fp32 absmax per 256 values (all LoRA tensors >= 4096);
    # paged: the big tensors' states live in CPU RAM, one (16 x 14336) is paged in for its step
    absmax = 8 * LORA_8B_R16 // 256
    on_gpu = absmax + 2 * (LORA_8B_R16 - PAGED_LORA_8B) + 2 * 16 * FF
    assert _bytes(e, "optimizer states") == on_gpu
    assert [(t.name, t.bytes) for t in e.cpu_terms] == [
        ("optimizer states (paged)", 2 * PAGED_LORA_8B)
    ]
    # chunked loss: 256 of the 2,048 tokens at a time, fp32 logits + logsumexp's temporary;
    # + the trained hidden states and their gradient in bf16
    assert _bytes(e, "logits and loss") == 256 * V * 8 + 2 * 2048 * H * 2
    # largest linear (gate/up 14336x4096) in bf16 + a 2048-token grad-input of 14336
    assert _bytes(e, "dequantization transient") == 14336 * 4096 * 2 + 2048 * 14336 * 2
    assert _bytes(e, "CUDA context") == 400 * MB
    allocated = sum(t.bytes for t in e.terms if t.name not in ("CUDA context", "allocator slack"))
    assert _bytes(e, "allocator slack") == int(0.10 * allocated)
    assert e.total_bytes == sum(t.bytes for t in e.terms)
    assert e.trainable_params == LORA_8B_R16


def test_lora_and_full_terms_match_hand_arithmetic(llama8b):
    s = Settings(
        batch_size=4,
        seq_len=512,
        lora_r=16,
        optimizer="adamw_torch",
        loss_impl="full_logits",
        full_recipe="mixed",
    )
    lora = memory.estimate_memory(llama8b, s, "lora")
    assert _bytes(lora, "weights") == 2 * PARAMS_8B  # bf16 base
    assert _bytes(lora, "optimizer states") == 8 * LORA_8B_R16  # 32-bit Adam
    assert _bytes(lora, "logits and loss") == 4 * 512 * V * 10  # bf16 logits under autocast
    assert lora.cpu_terms == []  # not a paged optimizer
    full = memory.estimate_memory(llama8b, s, "full")
    assert _bytes(full, "weights") == 4 * PARAMS_8B
    assert _bytes(full, "gradients") == 4 * PARAMS_8B
    assert _bytes(full, "optimizer states") == 8 * PARAMS_8B
    assert _bytes(full, "autocast weight copies") == 2 * (LINEAR_8B + V * H)
    assert full.trainable_params == PARAMS_8B


def test_lean_full_fine_tuning_matches_hand_arithmetic(llama8b):
    s = Settings(batch_size=2, seq_len=2048)  # lean recipe, bf16, paged 8-bit AdamW
    e = memory.estimate_memory(llama8b, s, "full")
    assert _bytes(e, "weights") == 2 * PARAMS_8B  # bf16, no fp32 master copy
    assert e.term("autocast weight copies") is None
    # the optimizer steps in backward: one gradient at a time, the largest the lm_head's
    assert _bytes(e, "gradients") == 2 * V * H
    norms = (2 * L + 1) * H  # under 100,000 values each: 32-bit states stay on the GPU
    big = PARAMS_8B - norms
    absmax = 8 * (L * (2 * H * H + 2 * H * KV + 3 * H * FF) + 2 * V * H) // 256
    assert _bytes(e, "optimizer states") == absmax + 8 * norms + 2 * V * H
    assert [(t.name, t.bytes) for t in e.cpu_terms] == [("optimizer states (paged)", 2 * big)]
    assert "CPU RAM" in e.cpu_terms[0].detail
    # activations in bf16, no autocast: q/k/v and gate/up save their shared input once
    norms_saved = 2 * (4 + 2) * H  # fp32 input + the bf16 output that meets the norm weight
    linear_inputs = 2 * (H + H + H + FF)  # q/k/v, o, gate/up, down
    layer = norms_saved + 4 * H * 2 + 4 * 32 + 3 * FF * 2 + linear_inputs
    tokens = 2 * 2048
    masks = 2 * 2048 * 2048 * (1 + 2)
    assert _bytes(e, "activations") == tokens * (L * 2 * H + layer + 4 * H) + masks
    mixed = memory.estimate_memory(llama8b, dataclasses.replace(s, full_recipe="mixed"), "full")
    assert _bytes(mixed, "weights") == 4 * PARAMS_8B
    assert _bytes(mixed, "gradients") == 4 * PARAMS_8B
    assert mixed.term("autocast weight copies") is not None
    # the CPU trains fp32 weights, and bitsandbytes pages nothing there
    cpu = memory.estimate_memory(llama8b, dataclasses.replace(s, device="cpu"), "full")
    assert _bytes(cpu, "weights") == 4 * PARAMS_8B and cpu.cpu_terms == []
    assert _bytes(cpu, "gradients") == 4 * V * H  # still stepped in backward, one at a time


def test_loss_term_follows_train_loss_impl(llama8b):
    s = Settings(batch_size=2, seq_len=2048)
    tokens = 2 * 2048

    def loss(**changes):
        trial = dataclasses.replace(s, **changes)
        return _bytes(memory.estimate_memory(llama8b, trial, "qlora"), "logits and loss")

    hidden = 2 * tokens * H * 2
    # auto: the chunked figure, fp32 logits (turned into their gradient in place) + logsumexp's
    # temporary
    assert loss() == 256 * V * 8 + hidden
    assert loss(loss_impl="chunked", loss_chunk_tokens=1024) == 1024 * V * 8 + hidden
    assert loss(loss_impl="full_logits") == tokens * V * 10
    # liger: chunks of next_pow2(ceil(b*s / ceil(V / h))) = 128 tokens, bf16 logits
    assert loss(loss_impl="liger") == 128 * V * 2 + hidden
    cpu = dataclasses.replace(s, device="cpu", compute_dtype="auto", loss_impl="liger")
    e = memory.estimate_memory(llama8b, cpu, "qlora")  # no liger on the CPU: chunked, fp32
    assert _bytes(e, "logits and loss") == 256 * V * 8 + 2 * tokens * H * 4
    assert _bytes(e, "16-bit layers") == 4 * (PARAMS_8B - LINEAR_8B)  # the CPU computes fp32


def test_llama31_8b_at_torchtunes_settings(llama8b):
    """Batch 2 x 2048, r=16, checkpointing, paged 8-bit AdamW, bf16 on a GPU: the figures the
    README sets next to torchtune's measured 7.4 / 16.2 / 18.9 GiB on an RTX 4090."""
    s = Settings(batch_size=2, seq_len=2048, lora_r=16)
    totals = {m: round(e.total_bytes / GB, 2) for m, e in memory.estimate_all(llama8b, s).items()}
    assert totals == {"qlora": 9.25, "lora": 19.62, "full": 21.72}
    assert totals["full"] <= 24  # the paged optimizer states are in CPU RAM
    full = memory.estimate_memory(llama8b, s, "full")
    assert round(full.cpu_terms[0].bytes / GB, 2) == 14.96
    before = Settings(
        batch_size=2, seq_len=2048, lora_r=16, loss_impl="full_logits", full_recipe="mixed"
    )
    full_logits = memory.estimate_memory(llama8b, before, "qlora")
    assert full_logits.total_bytes > memory.estimate_memory(llama8b, s, "qlora").total_bytes


def test_activations_match_hand_arithmetic(llama8b):
    s = Settings(batch_size=4, seq_len=512, lora_r=16, lora_dropout=0.05)  # bf16, checkpointing
    e = memory.estimate_memory(llama8b, s, "lora")
    norms = 2 * 4 * H  # two RMSNorms keep their fp32 input
    attention = 4 * H * 2 + 4 * 32  # q, k, v (repeated to 32 heads), output in bf16; lse fp32
    mlp = 3 * FF * 2  # gate output, its SiLU, up output
    # per targeted module: its own dropped-out bf16 input + 1 B mask, and the r-dim output
    lora = sum(2 * (n + 16) + n for n in (H, H, H, H, H, H, FF))
    layer = norms + attention + mlp + lora
    assert layer == 268_640
    # dropout 0 (the default): A saves the input itself, so q/k/v share the norm's output and
    # gate/up theirs; o_proj's and down_proj's inputs are their own
    no_dropout = memory.estimate_memory(llama8b, dataclasses.replace(s, lora_dropout=0.0), "lora")
    shared = 2 * (H + H + H + FF) + 7 * 2 * 16
    assert _bytes(e, "activations") - _bytes(no_dropout, "activations") == 4 * 512 * (lora - shared)
    tokens = 4 * 512
    checkpointed = tokens * (L * 2 * H + layer + 4 * H) + 4 * 512 * 512 * (1 + 2)
    assert _bytes(e, "activations") == checkpointed
    e = memory.estimate_memory(
        llama8b, dataclasses.replace(s, gradient_checkpointing=False), "lora"
    )
    assert _bytes(e, "activations") == tokens * (L * layer + 4 * H) + 4 * 512 * 512 * (1 + L * 2)


def test_llama3_8b_orderings(llama8b):
    s = Settings(batch_size=4, seq_len=512, lora_r=16, compute_dtype="bf16", device="cuda")
    estimates = memory.estimate_all(llama8b, s)
    full, lora, qlora = (estimates[m] for m in ("full", "lora", "qlora"))
    assert full.total_bytes > lora.total_bytes > qlora.total_bytes
    for e in estimates.values():
        assert e.terms and all(t.name and t.detail and t.bytes >= 0 for t in e.terms)
        assert e.dominant == max(e.terms, key=lambda t: t.bytes).name
        assert e.to_dict()["total_bytes"] == e.total_bytes
    no_dq = memory.estimate_memory(llama8b, dataclasses.replace(s, double_quant=False), "qlora")
    assert no_dq.total_bytes > qlora.total_bytes
    for method in ("full", "lora", "qlora"):
        without = dataclasses.replace(s, gradient_checkpointing=False)
        base = _bytes(estimates[method], "activations")
        assert _bytes(memory.estimate_memory(llama8b, without, method), "activations") > base
    for method in ("full", "lora", "qlora"):
        adam = memory.estimate_memory(
            llama8b, dataclasses.replace(s, optimizer="adamw_torch"), method
        )
        sgd = memory.estimate_memory(llama8b, dataclasses.replace(s, optimizer="sgd"), method)
        paged = _bytes(estimates[method], "optimizer states")
        assert 0 == _bytes(sgd, "optimizer states") < paged < _bytes(adam, "optimizer states")


def test_cpu_has_a_framework_baseline_and_no_cuda_context(tiny):
    s = Settings(device="cpu", compute_dtype="auto", gradient_checkpointing=False)
    e = memory.estimate_memory(tiny, s, "lora")
    assert e.term("CUDA context") is None
    assert _bytes(e, "framework baseline") == 440 * MB
    assert _bytes(e, "tokenizer") == 1200 * tiny.vocab_size
    assert _bytes(e, "weights") == 4 * tiny.params_total  # fp32 base on the CPU
    allocated = sum(t.bytes for t in e.terms[:-3])
    assert _bytes(e, "allocator slack") == int(0.05 * allocated)


def test_dora_adds_magnitude_vectors(tiny):
    s = Settings(lora_r=8)
    plain = memory.estimate_memory(tiny, s, "lora")
    dora = memory.estimate_memory(tiny, dataclasses.replace(s, use_dora=True), "lora")
    magnitudes = sum(g.out_features * g.count for g in tiny.linear_layers)
    assert dora.trainable_params == plain.trainable_params + magnitudes
    # tiny tensors (< 4096 values) keep 32-bit optimizer states even with an 8-bit optimizer
    assert _bytes(plain, "optimizer states") == 8 * plain.trainable_params


def test_settings_from_config():
    cfg = RunConfig.from_dict({"data": {"path": "x.jsonl", "max_length": 96}})
    cpu = Settings.from_config(cfg, device="cpu")
    assert (cpu.seq_len, cpu.compute_dtype, cpu.device, cpu.batch_size) == (96, "fp32", "cpu", 4)
    assert Settings.from_config(cfg, device="cuda").compute_dtype == "bf16"
    with pytest.raises(ValueError, match="method"):
        memory.estimate_memory(None, cpu, "prefix")  # type: ignore[arg-type]


def _total(info, settings, method, **changes):
    trial = dataclasses.replace(settings, **changes)
    return memory.estimate_memory(info, trial, method).total_bytes


def test_judge_statuses_and_search(llama8b):
    s = Settings(batch_size=4, seq_len=512)
    e = memory.estimate_memory(llama8b, s, "qlora")
    assert fit.judge(e, llama8b, s, math.ceil(e.total_bytes / 0.9) + 1).status == "fits"
    assert fit.judge(e, llama8b, s, e.total_bytes).status == "tight"
    verdict = fit.judge(e, llama8b, s, e.total_bytes - 1)
    assert verdict.status == "does not fit" and verdict.advice
    assert verdict.headroom_bytes == -1 and verdict.dominant == e.dominant

    available = 24 * GB
    verdict = fit.judge(e, llama8b, s, available)
    budget = 0.9 * available
    b = verdict.max_batch_size
    assert b > 4
    assert _total(llama8b, s, "qlora", batch_size=b) <= budget
    assert _total(llama8b, s, "qlora", batch_size=b + 1) > budget
    n = verdict.max_seq_len
    assert 512 < n < llama8b.context_length
    assert _total(llama8b, s, "qlora", seq_len=n) <= budget
    assert _total(llama8b, s, "qlora", seq_len=n + 1) > budget
    assert verdict.to_dict()["max_seq_len"] == n


def test_judge_advises_what_to_change(llama8b):
    s = Settings(batch_size=2, seq_len=512, optimizer="adamw_torch", gradient_checkpointing=False)
    full = fit.judge(memory.estimate_memory(llama8b, s, "full"), llama8b, s, 24 * GB)
    assert full.status == "does not fit"
    assert full.max_batch_size == 0 and full.max_seq_len == 0
    text = "\n".join(full.advice)
    for expected in (
        "turn on gradient checkpointing (saves ~",
        "switch optimizer to paged_adamw_8bit (saves ~",
        "use LoRA (needs ~",
        "use QLoRA (needs ~",
        "no batch or sequence length fits this GPU",
    ):
        assert expected in text

    s = Settings(batch_size=4, seq_len=512)
    lora = fit.judge(memory.estimate_memory(llama8b, s, "lora"), llama8b, s, 16 * GB)
    assert lora.status == "does not fit"
    assert any(line.startswith("use QLoRA (needs ~") for line in lora.advice)

    s = Settings(batch_size=16, seq_len=2048)
    qlora = fit.judge(memory.estimate_memory(llama8b, s, "qlora"), llama8b, s, 24 * GB)
    assert 0 < qlora.max_batch_size < 16 and 0 < qlora.max_seq_len < 2048
    assert qlora.advice[:2] == [
        f"largest batch size that fits: {qlora.max_batch_size} (raise train.grad_accum to keep "
        "the effective batch)",
        f"longest sequence that fits at batch 16: {qlora.max_seq_len} (lower data.max_length)",
    ]
    s = Settings(batch_size=2, seq_len=2048, loss_impl="full_logits", full_recipe="mixed")
    full = fit.judge(memory.estimate_memory(llama8b, s, "full"), llama8b, s, 80 * GB)
    text = "\n".join(full.advice)
    assert "set train.full_recipe to lean (saves ~" in text
    assert "set train.loss_impl to chunked (saves ~" in text


def test_system_ram_needed(tiny, llama8b):
    shard = max(f.stat().st_size for f in Path(tiny.path).glob("*.safetensors"))
    qlora = fit.system_ram_needed(tiny, "qlora")
    assert qlora["load"] == shard and "shard" in qlora["load_detail"]
    lora = fit.system_ram_needed(tiny, "lora")
    assert lora["load"] == 2 * tiny.params_total + shard
    adapter = memory.lora_trainable_params(tiny, 16, "all-linear")
    assert lora["merge"] == int(1.1 * (2 * tiny.params_total + 4 * adapter)) + shard
    assert fit.system_ram_needed(tiny, "full")["merge"] == 0
    assert fit.system_ram_needed(llama8b, "qlora")["load"] == 5 * GB  # config only


@pytest.mark.skipif(not is_demo_available(), reason="demo model not installed")
def test_demo_config_on_the_cpu(repo_root):
    cfg = RunConfig.load(repo_root / "resources" / "configs" / "demo-qlora.yaml")
    s = Settings.from_config(cfg, device="cpu")
    demo = inspect_model("demo")
    estimates = memory.estimate_all(demo, s)
    assert estimates["full"].total_bytes > estimates["lora"].total_bytes
    assert estimates["lora"].total_bytes > estimates["qlora"].total_bytes
    # Gemma 3's 262,144-token vocabulary: the 768 tokens run in 256-token loss chunks, each
    # 256 x V x 8 B (fp32 logits, turned into their gradient in place, and logsumexp's
    # temporary) + the hidden states and their gradient
    hidden = 2 * 8 * 96 * demo.hidden_size * 4
    for e in estimates.values():
        assert _bytes(e, "logits and loss") == 256 * 262144 * 8 + hidden


@pytest.mark.parametrize("module", ["memory", "memory_shards", "gpu_plan"])
def test_the_planning_modules_do_not_import_torch(module):
    code = (
        f"import sys, qlora_studio.core.{module}\n"
        "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_compute_dtype_auto_follows_the_gpus_bf16_support(llama8b):
    """A GPU without bf16 (compute capability < 8.0) runs "auto" in fp16, as training does: the
    lean full recipe then keeps fp32 weights (fp16 weights would need a loss scaler)."""
    cfg = RunConfig.from_dict({"method": "full", "data": {"path": "x.jsonl", "max_length": 512}})
    ampere = Settings.from_config(cfg, device="cuda", bf16_supported=True)
    turing = Settings.from_config(cfg, device="cuda", bf16_supported=False)
    assert (ampere.compute_dtype, turing.compute_dtype) == ("bf16", "fp16")
    weights = {
        s.compute_dtype: memory.estimate_memory(llama8b, s, "full").term("weights").bytes
        for s in (ampere, turing)
    }
    assert weights == {"bf16": 2 * llama8b.params_total, "fp16": 4 * llama8b.params_total}
    # LoRA's 16-bit base is the same size in fp16 and bf16
    lora = [memory.estimate_memory(llama8b, s, "lora").total_bytes for s in (ampere, turing)]
    assert lora[0] == lora[1]
    # the CPU computes in fp32 whatever the GPU would do
    assert Settings.from_config(cfg, device="cpu", bf16_supported=True).compute_dtype == "fp32"
