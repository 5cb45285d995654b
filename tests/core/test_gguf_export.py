"""GGUF export: real tiny runs written to GGUF and read back with gguf's reader and with
transformers' GGUF loader (no mocks)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlora_studio.core.errors import ExportError
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.gguf.export import ADAPTER_FILE, export_gguf_adapter, export_gguf_merged
from qlora_studio.core.gguf.ollama import modelfile_text

gguf = pytest.importorskip("gguf")


def _train(model_dir: Path, tmp_path: Path, **lora) -> Path:
    from test_training import make_config

    from qlora_studio.core.training.run import run_training

    cfg = make_config(model_dir, tmp_path, "lora")
    for key, value in lora.items():
        setattr(cfg.lora, key, value)
    return run_training(cfg).run_dir


@pytest.fixture(scope="module")
def llama_run(tiny_models, tmp_path_factory) -> Path:
    return _train(tiny_models["llama"], tmp_path_factory.mktemp("llama_run"))


def _fields(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_lora_adapter_reads_back_with_llama_cpp_names_shapes_and_metadata(llama_run):
    reporter = CollectingReporter()
    folder = export_gguf_adapter(llama_run, reporter=reporter)

    path = folder / ADAPTER_FILE
    fields = _fields(path)
    assert fields["general.architecture"] == "llama"
    assert fields["general.type"] == "adapter"
    assert fields["adapter.type"] == "lora"
    assert fields["adapter.lora.alpha"] == pytest.approx(8.0)  # alpha as trained (r=4)
    tensors = {
        t.name: tuple(int(d) for d in reversed(t.shape)) for t in gguf.GGUFReader(path).tensors
    }
    assert len(tensors) == 2 * 7 * 2  # a/b for 7 linear layers in 2 blocks
    # numpy order, as llama.cpp's convert_lora_to_gguf.py writes them: a [r, in], b [out, r]
    assert tensors["blk.0.attn_q.weight.lora_a"] == (4, 64)
    assert tensors["blk.0.attn_q.weight.lora_b"] == (64, 4)
    assert tensors["blk.1.ffn_down.weight.lora_a"] == (4, 128)
    assert tensors["blk.1.attn_k.weight.lora_b"] == (32, 4)
    assert len(reporter.of_type("progress")) == len(tensors)
    modelfile = (folder / "Modelfile").read_text()
    assert f"ADAPTER ./{ADAPTER_FILE}" in modelfile and 'PARAMETER stop "</s>"' in modelfile


def test_rslora_scaling_is_folded_into_the_stored_alpha(tiny_models, tmp_path):
    run = _train(tiny_models["qwen2"], tmp_path, use_rslora=True)
    folder = export_gguf_adapter(run)
    fields = _fields(folder / ADAPTER_FILE)
    # llama.cpp scales by alpha/r; rsLoRA by alpha/sqrt(r): alpha * sqrt(r) = 8 * 2
    assert fields["adapter.lora.alpha"] == pytest.approx(16.0)
    assert fields["general.architecture"] == "qwen2"


def test_merged_f16_loads_in_transformers_with_the_merged_models_logits(llama_run):
    import torch
    from transformers import AutoModelForCausalLM

    folder = export_gguf_merged(llama_run, quant="f16")
    assert _leftovers(folder.parent) == []
    path = folder / "model-f16.gguf"
    fields = _fields(path)
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    assert "Assistant: " in fields["tokenizer.chat_template"]  # the template the run trained

    merged_dir = llama_run / "exports" / "merged-reference"
    from qlora_studio.core.export import export_run

    export_run(llama_run, out=merged_dir, merge=True)
    ids = torch.tensor([[1, 17, 42, 99, 120, 7, 250, 3]])
    reference = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(folder), gguf_file=path.name, dtype=torch.float32
    )
    with torch.no_grad():
        diff = (reference(ids).logits - loaded(ids).logits).abs().max().item()
    # the merged folder holds bf16 weights, which F16 stores exactly but for tiny values
    # (below F16's normal range): the logits agree to float32 rounding
    assert diff < 1e-5, diff  # measured 2e-7 on logits of about 0.6


def test_merged_q8_0_and_q4_0_read_back(llama_run, tmp_path):
    for quant, kind in (("q8_0", "Q8_0"), ("q4_0", "Q4_0")):
        folder = export_gguf_merged(llama_run, quant=quant, out=tmp_path / quant)
        reader = gguf.GGUFReader(folder / f"model-{quant}.gguf")
        types = {t.name: t.tensor_type.name for t in reader.tensors}
        assert types["blk.0.attn_q.weight"] == kind
        assert types["blk.0.attn_norm.weight"] == "F32"
        if quant == "q4_0":
            assert types["token_embd.weight"] == "Q8_0"


def test_k_quants_are_refused_naming_what_is_available(llama_run, tmp_path):
    with pytest.raises(ExportError, match="llama-quantize") as caught:
        export_gguf_merged(llama_run, quant="q4_k_m", out=tmp_path / "k")
    assert "f16, bf16, q8_0, q4_0" in caught.value.hint
    assert not (tmp_path / "k").exists()


def test_unsupported_architecture_is_refused_before_anything_is_written(tiny_models, tmp_path):
    run = _train(tiny_models["gpt2"], tmp_path)
    exports = run / "exports"
    with pytest.raises(ExportError, match="'gpt2'"):
        export_gguf_merged(run, quant="f16")
    assert not exports.exists() or list(exports.iterdir()) == []


def test_a_failed_export_leaves_no_temporary_files(llama_run, tmp_path):
    import threading

    from qlora_studio.core.errors import Cancelled

    cancel = threading.Event()
    cancel.set()
    with pytest.raises(Cancelled):
        export_gguf_merged(llama_run, quant="f16", out=tmp_path / "stopped", cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_too_little_disk_space_is_refused_with_the_estimate(llama_run, tmp_path):
    from qlora_studio.core.gguf.layout import check_free_space

    with pytest.raises(ExportError, match="MB needed"):
        check_free_space(tmp_path, 10**18, "the F16 GGUF")


def test_modelfile_renders_each_template_and_stop_tokens():
    summary = {"template": "gemma", "eos_token": "<eos>", "stop_tokens": ["<eos>", "<end_of_turn>"]}
    text = modelfile_text("./model.gguf", summary=summary)
    assert text.startswith("FROM ./model.gguf\n")
    assert "<start_of_turn>model\n" in text
    assert text.count("PARAMETER stop") == 2 and 'PARAMETER stop "<end_of_turn>"' in text
    custom = modelfile_text("base", adapter="./a.gguf", summary={"template": "custom"})
    assert "TEMPLATE" not in custom and "ADAPTER ./a.gguf" in custom


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    from qlora_studio.core.models.sources import is_demo_available

    if not is_demo_available():
        pytest.skip("the demo model is not installed")
    from test_training import make_config

    from qlora_studio.core.training.run import run_training

    tmp = tmp_path_factory.mktemp("demo_run")
    cfg = make_config("demo", tmp, "lora", max_steps=1)
    cfg.lora.target_modules = ["q_proj", "v_proj"]
    return run_training(cfg).run_dir


def test_demo_merged_q8_0_keeps_the_source_files_metadata_and_names(demo_run, tmp_path):
    from qlora_studio.core.gguf.export import _source_gguf_file

    folder = export_gguf_merged(demo_run, quant="q8_0")
    out = gguf.GGUFReader(folder / "model-q8_0.gguf")
    source = gguf.GGUFReader(_source_gguf_file("demo", tmp_path, None))
    if True:
        assert [t.name for t in out.tensors] == [t.name for t in source.tensors]
        assert [list(t.shape) for t in out.tensors] == [list(t.shape) for t in source.tensors]
        for key in ("tokenizer.ggml.model", "tokenizer.ggml.eos_token_id", "gemma3.block_count"):
            assert out.fields[key].contents() == source.fields[key].contents()
        assert len(out.fields["tokenizer.ggml.tokens"].data) == 262144
        assert out.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q8_0)
        norm = next(t for t in out.tensors if t.name == "blk.0.attn_norm.weight")
        src_norm = next(t for t in source.tensors if t.name == "blk.0.attn_norm.weight")
        # Gemma's norms go back to llama.cpp's 1 + w (bf16 round trip of the cached base)
        assert abs(norm.data - src_norm.data).max() < 0.05
    summary = json.loads((demo_run / "adapter" / "training_summary.json").read_text())
    assert 'PARAMETER stop "<end_of_turn>"' in (folder / "Modelfile").read_text() or (
        "<end_of_turn>" not in summary.get("stop_tokens", [])
    )
