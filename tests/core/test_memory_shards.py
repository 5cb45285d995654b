"""Each GPU's share when several train together: ddp replicates everything and adds its
gradient buckets; fsdp splits the weights, gradients and optimizer states and holds the root
unit and two decoder layers whole. Checked by hand on the Llama 3.1 8B config."""

from __future__ import annotations

import json

import pytest
from tiny_models import LLAMA3_8B_CONFIG

from qlora_studio.core.memory import estimate_memory
from qlora_studio.core.memory_settings import Settings
from qlora_studio.core.memory_shards import gpus_needed, per_gpu_estimate
from qlora_studio.core.models.inspect import inspect_model

GB = 1024**3
L, H, FF, V = 32, 4096, 14336, 128256


@pytest.fixture(scope="module")
def llama8b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama31-8b")
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_CONFIG))
    return inspect_model(folder)


def _bytes(estimate, name):
    term = estimate.term(name)
    assert term is not None, f"no {name!r} term"
    return term.bytes


def test_one_gpu_or_no_strategy_is_the_single_gpu_estimate(llama8b):
    s = Settings(batch_size=2, seq_len=2048)
    single = estimate_memory(llama8b, s, "qlora")
    assert per_gpu_estimate(llama8b, s, "qlora", "none", 4).total_bytes == single.total_bytes
    assert per_gpu_estimate(llama8b, s, "qlora", "fsdp", 1).total_bytes == single.total_bytes
    with pytest.raises(ValueError, match="strategy"):
        per_gpu_estimate(llama8b, s, "qlora", "zero9", 2)


def test_ddp_keeps_everything_and_adds_its_gradient_buckets(llama8b):
    s = Settings(batch_size=2, seq_len=2048)
    single = estimate_memory(llama8b, s, "lora")
    each = per_gpu_estimate(llama8b, s, "lora", "ddp", 2)
    assert _bytes(each, "gradient buckets (DDP)") == _bytes(single, "gradients")
    for name in ("weights", "activations", "logits and loss", "optimizer states"):
        assert _bytes(each, name) == _bytes(single, name)
    allocated = sum(
        t.bytes for t in each.terms if t.name not in ("CUDA context", "allocator slack")
    )
    assert _bytes(each, "allocator slack") == int(0.10 * allocated)
    assert each.total_bytes == sum(t.bytes for t in each.terms) > single.total_bytes


def test_fsdp_splits_weights_gradients_and_states_and_gathers_two_layers(llama8b):
    s = Settings(batch_size=2, seq_len=2048)
    single = estimate_memory(llama8b, s, "qlora")
    each = per_gpu_estimate(llama8b, s, "qlora", "fsdp", 4)
    for name in ("weights", "16-bit layers", "gradients", "trainable parameters (LoRA)"):
        assert _bytes(each, name) == _bytes(single, name) // 4
    for name in ("quantization constants", "activations", "logits and loss", "CUDA context"):
        assert _bytes(each, name) == _bytes(single, name)  # whole on every GPU
    # the root unit (embeddings + lm_head in bf16), two layers' packed 4-bit linears, one
    # layer's fp32 LoRA gradients
    layer_linear = 2 * H * H + 2 * 1024 * H + 3 * H * FF  # q, o; k, v (8 KV heads); MLP
    gathered = 2 * (2 * V * H) + 2 * (layer_linear / 2) + single.trainable_params / L * 4
    assert _bytes(each, "gathered for compute (FSDP)") == int(gathered)
    assert each.total_bytes < single.total_bytes
    assert [t.bytes for t in each.cpu_terms] == [t.bytes // 4 for t in single.cpu_terms]


def test_the_fewest_gpus_that_fit(llama8b):
    s = Settings(batch_size=2, seq_len=2048, full_recipe="mixed")
    single = estimate_memory(llama8b, s, "lora").total_bytes
    two = per_gpu_estimate(llama8b, s, "lora", "fsdp", 2).total_bytes
    assert gpus_needed(llama8b, s, "lora", single) == 1
    assert gpus_needed(llama8b, s, "lora", two) == 2
    assert gpus_needed(llama8b, s, "lora", two, strategy="ddp") is None  # ddp splits nothing
    assert gpus_needed(llama8b, s, "lora", 1 * GB) is None  # not even 8
    # mixed full fine-tuning of an 8B: 80 GiB cards, several of them
    assert gpus_needed(llama8b, s, "full", 80 * GB) in range(2, 9)
