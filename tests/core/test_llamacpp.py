"""Opt-in: the exported GGUF files run in llama.cpp (through llama-cpp-python).

Run with ``pytest -m llamacpp``; skipped when ``llama_cpp`` is not installed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from qlora_studio.core.gguf.export import ADAPTER_FILE, export_gguf_adapter, export_gguf_merged

llama_cpp = pytest.importorskip("llama_cpp")

pytestmark = pytest.mark.llamacpp


@pytest.fixture(scope="module")
def llama_run(tiny_models, tmp_path_factory) -> Path:
    from test_training import make_config

    from qlora_studio.core.training.run import run_training

    return run_training(
        make_config(tiny_models["llama"], tmp_path_factory.mktemp("run"), "lora")
    ).run_dir


def _greedy(model_path: Path, lora_path: Path | None = None) -> list[int]:
    llm = llama_cpp.Llama(
        model_path=str(model_path),
        lora_path=str(lora_path) if lora_path else None,
        n_ctx=128,
        n_threads=2,
        verbose=False,
    )
    prompt = llm.tokenize(b"User: hello there\nAssistant: ")
    out = []
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        out.append(token)
        if len(out) == 8 or token == llm.token_eos():
            break
    return out


@pytest.mark.parametrize("quant", ["f16", "q8_0"])
def test_merged_gguf_generates_greedily_in_llama_cpp(llama_run, tmp_path, quant):
    folder = export_gguf_merged(llama_run, quant=quant, out=tmp_path / quant)
    tokens = _greedy(folder / f"model-{quant}.gguf")
    assert tokens and all(0 <= t < 384 for t in tokens)


def test_lora_adapter_applies_in_llama_cpp(llama_run, tmp_path):
    base = export_gguf_merged(llama_run, quant="f16", out=tmp_path / "merged")
    adapter = export_gguf_adapter(llama_run, out=tmp_path / "lora")
    # applied to the merged model, which has the base's names and shapes: this proves llama.cpp
    # accepts the adapter file (metadata, names, shapes), not that it reproduces the tuned model
    tokens = _greedy(base / "model-f16.gguf", adapter / ADAPTER_FILE)
    assert tokens


def test_merged_f16_logits_match_transformers_in_llama_cpp(llama_run, tmp_path):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from qlora_studio.core.export import export_run

    folder = export_gguf_merged(llama_run, quant="f16", out=tmp_path / "f16")
    merged = export_run(llama_run, out=tmp_path / "merged", merge=True)
    ids = [1, 17, 42, 99, 120, 7, 250, 3]
    reference = AutoModelForCausalLM.from_pretrained(str(merged), dtype=torch.float32)
    with torch.no_grad():
        expected = reference(torch.tensor([ids])).logits[0].numpy()
    llm = llama_cpp.Llama(
        model_path=str(folder / "model-f16.gguf"),
        n_ctx=64,
        n_threads=2,
        logits_all=True,  # every position's logits, not only the last
        seed=0,
        verbose=False,
    )
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)], dtype=np.float32)
    llm.close()

    assert got.shape == expected.shape
    # F16 holds the merged bf16 weights exactly; llama.cpp's CPU matmuls round the activations
    # to F16 too, which moves these logits (about 0.6) by up to 2.5e-4 (measured); a wrong layout,
    # norm offset or merge moves them by tenths
    diff = float(np.abs(got - expected).max())
    assert diff < 2e-3, diff
