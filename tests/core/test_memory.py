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
from qlora_studio.core.memory import GB, MB, Settings
from qlora_studio.core.models import inspect_model, is_demo_available

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


def test_qlora_terms_match_hand_arithmetic(llama8b):
    s = Settings(batch_size=4, seq_len=512, lora_r=16)
    e = memory.estimate_memory(llama8b, s, "qlora")
    quantized_bytes = _bytes(e, "weights") + _bytes(e, "quantization constants")
    assert _bytes(e, "weights") == LINEAR_8B // 2
    assert quantized_bytes == pytest.approx(LINEAR_8B * 4.127 / 8, rel=1e-4)
    assert _bytes(e, "16-bit layers") == 4 * (PARAMS_8B - LINEAR_8B)  # upcast to fp32
    assert _bytes(e, "trainable parameters (LoRA)") == 4 * LORA_8B_R16
    assert _bytes(e, "gradients") == 4 * LORA_8B_R16
    # 8-bit Adam: 2 uint8 states + 2 fp32 absmax per 256 values (all LoRA tensors >= 4096)
    assert _bytes(e, "optimizer states") == LORA_8B_R16 * 2 + 8 * LORA_8B_R16 // 256
    # the lm_head is upcast to fp32: fp32 logits + fp32 log-softmax + its gradient
    assert _bytes(e, "logits and loss") == 4 * 512 * V * 12
    # largest linear (gate/up 14336x4096) in bf16 + a 2048-token grad-input of 14336
    assert _bytes(e, "dequantization transient") == 14336 * 4096 * 2 + 2048 * 14336 * 2
    assert _bytes(e, "CUDA context") == 400 * MB
    allocated = sum(t.bytes for t in e.terms if t.name not in ("CUDA context", "allocator slack"))
    assert _bytes(e, "allocator slack") == int(0.10 * allocated)
    assert e.total_bytes == sum(t.bytes for t in e.terms)
    assert e.trainable_params == LORA_8B_R16


def test_lora_and_full_terms_match_hand_arithmetic(llama8b):
    s = Settings(batch_size=4, seq_len=512, lora_r=16, optimizer="adamw_torch")
    lora = memory.estimate_memory(llama8b, s, "lora")
    assert _bytes(lora, "weights") == 2 * PARAMS_8B  # bf16 base
    assert _bytes(lora, "optimizer states") == 8 * LORA_8B_R16  # 32-bit Adam
    assert _bytes(lora, "logits and loss") == 4 * 512 * V * 10  # bf16 logits under autocast
    full = memory.estimate_memory(llama8b, s, "full")
    assert _bytes(full, "weights") == 4 * PARAMS_8B
    assert _bytes(full, "gradients") == 4 * PARAMS_8B
    assert _bytes(full, "optimizer states") == 8 * PARAMS_8B
    assert _bytes(full, "autocast weight copies") == 2 * (LINEAR_8B + V * H)
    assert full.trainable_params == PARAMS_8B


def test_activations_match_hand_arithmetic(llama8b):
    s = Settings(batch_size=4, seq_len=512, lora_r=16)  # bf16, checkpointing, dropout 0.05
    e = memory.estimate_memory(llama8b, s, "lora")
    norms = 2 * 4 * H  # two RMSNorms keep their fp32 input
    attention = 4 * H * 2 + 4 * 32  # q, k, v (repeated to 32 heads), output in bf16; lse fp32
    mlp = 3 * FF * 2  # gate output, its SiLU, up output
    # per targeted module: bf16 adapter input (autocast) + r-dim output, 1 B dropout mask
    lora = sum(2 * (n + 16) + n for n in (H, H, H, H, H, H, FF))
    layer = norms + attention + mlp + lora
    assert layer == 268_640
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

    s = Settings(batch_size=16, seq_len=1024)
    qlora = fit.judge(memory.estimate_memory(llama8b, s, "qlora"), llama8b, s, 24 * GB)
    assert 0 < qlora.max_batch_size < 16 and 0 < qlora.max_seq_len < 1024
    assert qlora.advice[:2] == [
        f"largest batch size that fits: {qlora.max_batch_size} (raise train.grad_accum to keep "
        "the effective batch)",
        f"longest sequence that fits at batch 16: {qlora.max_seq_len} (lower data.max_length)",
    ]


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
    estimates = memory.estimate_all(inspect_model("demo"), s)
    assert estimates["full"].total_bytes > estimates["lora"].total_bytes
    assert estimates["lora"].total_bytes > estimates["qlora"].total_bytes
    # Gemma 3's 262,144-token vocabulary: 8 x 96 tokens x V x 12 B of fp32 logits dominate
    for e in estimates.values():
        assert e.dominant == "logits and loss"
        assert _bytes(e, "logits and loss") == 8 * 96 * 262144 * 12


def test_memory_module_does_not_import_torch():
    code = (
        "import sys, qlora_studio.core.memory\n"
        "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
