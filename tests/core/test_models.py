"""Model sources and inspection, on tiny real models (no mocks)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from tiny_models import LLAMA3_8B_CONFIG

from qlora_studio.core.errors import ModelSourceError
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.models import files, inspect, sources

EXPECTED_LINEARS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gemma3": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
EXPECTED_CLASS = {
    "llama": ("LlamaForCausalLM", "llama", False),
    "qwen2": ("Qwen2ForCausalLM", "qwen2", True),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text", True),
    "gpt2": ("GPT2LMHeadModel", "gpt2", True),
}

# with its tokenizer's special ids, as the hub's config.json has them
LLAMA3_8B_WITH_IDS = {**LLAMA3_8B_CONFIG, "bos_token_id": 128000, "eos_token_id": 128001}


def _copy_without_weights(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for file in src.iterdir():
        if not file.name.endswith(".safetensors"):
            shutil.copy(file, dst / file.name)
    return dst


@pytest.fixture
def private_cache(tmp_path, monkeypatch) -> Path:
    """A model cache of this test's own (conversions of throw-away files stay out of ~/.cache)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(cache))
    return cache


# --------------------------------------------------------------------------- inspection


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3"])
def test_inspect_matches_the_loaded_model(tiny_models, arch):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_models[arch]
    info = inspect.inspect_model(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)

    architecture, model_type, tied = EXPECTED_CLASS[arch]
    assert (info.architecture, info.model_type, info.tied_embeddings) == (
        architecture,
        model_type,
        tied,
    )
    assert info.path == str(folder)
    assert info.params_total == sum(p.numel() for p in model.parameters())
    assert set(info.params_by_kind) == set(inspect.KINDS)
    assert sum(info.params_by_kind.values()) == info.params_total
    embeddings = model.get_input_embeddings().weight.numel()
    if arch == "gpt2":
        embeddings += model.transformer.wpe.weight.numel()  # position embeddings count too
    assert info.params_by_kind["embeddings"] == embeddings
    assert info.params_by_kind["lm_head"] == (0 if tied else embeddings)
    assert info.params_by_kind["other"] == 0
    norms = sum(
        p.numel()
        for name, module in model.named_modules()
        if "norm" in type(module).__name__.lower()
        for p in module.parameters(recurse=False)
    )
    assert info.params_by_kind["norms"] == norms

    assert info.lora_targets == EXPECTED_LINEARS[arch]
    assert {layer.count for layer in info.linear_layers} == {2}
    linear_weights = sum(
        m.weight.numel()
        for name, m in model.named_modules()
        if type(m).__name__ in ("Linear", "Conv1D") and not name.endswith("lm_head")
    )
    assert sum(layer.params for layer in info.linear_layers) == linear_weights
    assert (info.num_layers, info.hidden_size, info.num_heads, info.vocab_size) == (2, 64, 4, 384)
    assert info.context_length == 512
    assert info.torch_dtype == "float32"
    assert info.weights_format == "safetensors"
    assert info.has_chat_template is False
    json.dumps(info.to_dict())  # JSON-serialisable, nested layers included


def test_llama_linear_shapes_and_kinds(tiny_models):
    info = inspect.inspect_model(str(tiny_models["llama"]))
    layers = {layer.name: layer for layer in info.linear_layers}
    assert (info.num_kv_heads, info.head_dim, info.intermediate_size) == (2, 16, 128)
    assert (layers["q_proj"].in_features, layers["q_proj"].out_features) == (64, 64)
    assert (layers["k_proj"].in_features, layers["k_proj"].out_features) == (64, 32)
    assert (layers["down_proj"].in_features, layers["down_proj"].out_features) == (128, 64)
    assert {n for n, layer in layers.items() if layer.kind == "attention"} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    assert {n for n, layer in layers.items() if layer.kind == "mlp"} == {
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert not any(layer.conv1d for layer in info.linear_layers)
    assert layers["q_proj"].params == 2 * 64 * 64


def test_gpt2_conv1d_layers(tiny_models):
    info = inspect.inspect_model(str(tiny_models["gpt2"]))
    by_key = {(layer.name, layer.kind): layer for layer in info.linear_layers}
    assert all(layer.conv1d for layer in info.linear_layers)
    c_attn = by_key["c_attn", "attention"]
    assert (c_attn.in_features, c_attn.out_features, c_attn.count) == (64, 192, 2)
    assert c_attn.params == 2 * 64 * 192
    # c_proj is the attention output in `attn` and the MLP output in `mlp`: two shapes.
    attn_proj, mlp_proj = by_key["c_proj", "attention"], by_key["c_proj", "mlp"]
    assert (attn_proj.in_features, attn_proj.out_features) == (64, 64)
    assert (mlp_proj.in_features, mlp_proj.out_features) == (256, 64)
    c_fc = by_key["c_fc", "mlp"]
    assert (c_fc.in_features, c_fc.out_features) == (64, 256)
    # Attention includes the Conv1D biases: c_attn 64*192+192, c_proj 64*64+64, per layer.
    assert info.params_by_kind["attention"] == 2 * (64 * 192 + 192 + 64 * 64 + 64)
    assert info.intermediate_size == 256 and info.num_kv_heads == 4


def test_gemma3_qk_norms_count_as_norms(tiny_models):
    info = inspect.inspect_model(str(tiny_models["gemma3"]))
    # per layer: 4 layer norms of 64 + q_norm and k_norm of head_dim 16; plus the final norm
    assert info.params_by_kind["norms"] == 2 * (4 * 64 + 2 * 16) + 64
    assert info.head_dim == 16


def test_llama3_8b_from_config_only(tmp_path):
    folder = tmp_path / "llama-3-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B_WITH_IDS))
    started = time.monotonic()
    info = inspect.inspect_model(str(folder))
    elapsed = time.monotonic() - started

    assert info.params_total == 8_030_261_248
    assert info.params_by_kind == {
        "embeddings": 128256 * 4096,
        "attention": 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024),
        "mlp": 32 * 3 * 4096 * 14336,
        "norms": (2 * 32 + 1) * 4096,
        "lm_head": 128256 * 4096,
        "other": 0,
    }
    assert (info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim) == (32, 32, 8, 128)
    assert (info.intermediate_size, info.vocab_size, info.context_length) == (14336, 128256, 8192)
    assert info.weights_format == "none"
    assert info.torch_dtype == "bfloat16"
    assert info.tied_embeddings is False
    assert info.lora_targets == EXPECTED_LINEARS["llama"]
    assert sum(layer.params for layer in info.linear_layers) == 6_979_321_856
    assert elapsed < 30, f"meta-device inspection took {elapsed:.1f} s"


def test_multimodal_config_uses_its_text_config(tmp_path):
    from transformers import Gemma3Config

    config = Gemma3Config()
    config.save_pretrained(tmp_path)
    info = inspect.inspect_model(str(tmp_path))
    text = config.text_config
    assert (info.architecture, info.model_type) == ("Gemma3ForConditionalGeneration", "gemma3")
    assert (info.hidden_size, info.num_layers, info.vocab_size) == (
        text.hidden_size,
        text.num_hidden_layers,
        text.vocab_size,
    )
    assert sum(info.params_by_kind.values()) == info.params_total
    assert info.tied_embeddings and info.params_by_kind["lm_head"] == 0
    # "all-linear" reaches the vision tower too, as peft does.
    assert {"q_proj", "fc1", "down_proj"} <= set(info.lora_targets)


# --------------------------------------------------------------------------- sources and safety


def test_local_folder_and_config_file_resolve(tiny_models):
    folder = tiny_models["llama"]
    assert sources.resolve_model(str(folder)) == folder
    assert sources.resolve_model(folder / "config.json") == folder


def test_pickle_only_weights_are_refused_unless_allowed(tiny_models, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    folder = _copy_without_weights(tiny_models["llama"], tmp_path / "pickled")
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    torch.save(model.state_dict(), folder / "pytorch_model.bin")

    with pytest.raises(ModelSourceError) as refused:
        sources.resolve_model(str(folder))
    assert "pickle" in refused.value.message
    assert "allow_pickle" in refused.value.hint and "safetensors" in refused.value.hint

    assert sources.resolve_model(str(folder), allow_pickle=True) == folder
    info = inspect.inspect_model(str(folder), allow_pickle=True)
    assert info.weights_format == "pickle"
    assert info.params_total == sum(p.numel() for p in model.parameters())


def test_trainer_pickles_beside_safetensors_are_not_pickle_weights(tiny_models, tmp_path):
    folder = tmp_path / "checkpoint"
    shutil.copytree(tiny_models["llama"], folder)
    (folder / "training_args.bin").write_bytes(b"not weights")
    (folder / "optimizer.pt").write_bytes(b"not weights")
    assert sources.resolve_model(str(folder)) == folder
    bare = _copy_without_weights(tiny_models["llama"], tmp_path / "bare")
    (bare / "training_args.bin").write_bytes(b"not weights")
    assert inspect.inspect_model(str(bare)).weights_format == "none"


def test_custom_code_needs_trust_remote_code(tiny_models, tmp_path):
    folder = _copy_without_weights(tiny_models["llama"], tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))

    with pytest.raises(ModelSourceError) as refused:
        sources.resolve_model(str(folder))
    assert "trust_remote_code" in refused.value.hint
    assert sources.resolve_model(str(folder), trust_remote_code=True) == folder


def test_missing_path_is_named(tmp_path):
    missing = tmp_path / "no" / "such-model"
    with pytest.raises(ModelSourceError) as error:
        sources.resolve_model(str(missing))
    assert str(missing) in error.value.message


def test_folder_without_config_says_what_to_pick(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelSourceError) as error:
        sources.resolve_model(str(tmp_path))
    assert "config.json" in error.value.message and "model.gguf" in error.value.hint


def test_offline_hub_id_has_a_hint(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelSourceError) as error:
        sources.resolve_model("qlora-studio-tests/no-such-model")
    assert "qlora-studio-tests/no-such-model" in error.value.message
    assert "offline" in error.value.hint and "local folder" in error.value.hint


def test_file_that_is_not_gguf_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 definitely a zip")
    with pytest.raises(ModelSourceError) as error:
        sources.resolve_model(str(fake))
    assert "not a GGUF" in error.value.message
    with pytest.raises(ModelSourceError) as error:
        sources.convert_gguf(tmp_path / "missing.gguf")
    assert "not found" in error.value.message
    with pytest.raises(ModelSourceError):
        sources.resolve_model(str(tmp_path / "missing.gguf"))


def test_load_tokenizer(tiny_models, tmp_path):
    tokenizer = sources.load_tokenizer(tiny_models["qwen2"])
    assert tokenizer.eos_token == "</s>"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelSourceError) as error:
        sources.load_tokenizer(tmp_path)
    assert "tokenizer" in error.value.message and error.value.hint


def test_chat_template_is_detected(tiny_models, tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(tiny_models["qwen2"], folder)
    (folder / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m.content }}{% endfor %}"
    )
    assert inspect.inspect_model(str(folder)).has_chat_template is True


# --------------------------------------------------------------------------- GGUF


def _permute_for_gguf(weights, n_head: int, n_head_kv: int):
    """llama.cpp's convert_hf_to_gguf.py reorders q/k rows for its rotary layout."""
    if n_head != n_head_kv:
        n_head = n_head_kv
    shape = weights.shape
    return (
        weights.reshape(n_head, 2, shape[0] // n_head // 2, *shape[1:])
        .swapaxes(1, 2)
        .reshape(shape)
    )


def write_tiny_llama_gguf(model_folder: Path, path: Path) -> Path:
    """Write the tiny Llama as llama.cpp would: Q8_0 matrices, f32 norms, a byte-level BPE
    vocabulary with its merges."""
    import gguf
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_folder)
    config = model.config
    tokenizer_json = json.loads((model_folder / "tokenizer.json").read_text())
    tokens = [""] * config.vocab_size
    for token, index in tokenizer_json["model"]["vocab"].items():
        tokens[index] = token
    special = set()
    for added in tokenizer_json["added_tokens"]:
        tokens[added["id"]] = added["content"]
        special.add(added["id"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"]["merges"]]

    writer = gguf.GGUFWriter(path, arch="llama")
    writer.add_name("tiny llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_rope_dimension_count(config.head_dim)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(config.bos_token_id)
    writer.add_eos_token_id(config.eos_token_id)
    writer.add_pad_token_id(config.pad_token_id)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    for name, tensor in model.state_dict().items():
        base, suffix = name.rsplit(".", 1)
        gguf_name = f"{names.get_name(base)}.{suffix}"
        data = tensor.float().numpy()
        if gguf_name.endswith("attn_q.weight"):
            data = _permute_for_gguf(data, heads, heads)
        elif gguf_name.endswith("attn_k.weight"):
            data = _permute_for_gguf(data, heads, kv_heads)
        if data.ndim == 2:
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            writer.add_tensor(gguf_name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_gguf_round_trip(tiny_models, tmp_path, private_cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_models["llama"]
    gguf_file = write_tiny_llama_gguf(source, tmp_path / "tiny-llama.Q8_0.gguf")
    reporter = CollectingReporter()

    folder = sources.resolve_model(str(gguf_file), reporter=reporter)

    assert folder.parent == private_cache / "models"
    assert folder.name.startswith("gguf-tiny-llama.Q8_0-")
    assert {"config.json", "model.safetensors", "tokenizer.json", files.MARKER} <= {
        p.name for p in folder.iterdir()
    }
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temporary left
    phases = [e.get("phase") for e in reporter.of_type("status")]
    assert {"dequantizing", "saving", "done"} <= set(phases) and phases[-1] == "done"
    marker = json.loads((folder / files.MARKER).read_text())
    assert marker["source"] == str(gguf_file.resolve()) and marker["params"] == 123200

    info = inspect.inspect_model(str(gguf_file))
    assert (info.architecture, info.params_total, info.tied_embeddings) == (
        "LlamaForCausalLM",
        123200,
        False,
    )
    assert info.torch_dtype == "bfloat16" and info.path == str(folder)

    original = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder)
    assert converted.dtype == torch.bfloat16
    for name, tensor in original.state_dict().items():
        # Q8_0 keeps 8 bits per weight (scale = absmax/127), then bfloat16 rounds once more.
        diff = (converted.state_dict()[name].float() - tensor).abs().max().item()
        assert diff <= 0.01 * max(tensor.abs().max().item(), 1.0), name

    text = "User: hello there! Convert 12 March 2021 -> 2021-03-12"
    original_tokenizer = AutoTokenizer.from_pretrained(source)
    tokenizer = sources.load_tokenizer(folder)
    assert tokenizer(text).input_ids == original_tokenizer(text).input_ids
    assert tokenizer.eos_token == "</s>"

    again = CollectingReporter()
    started = time.monotonic()
    assert sources.convert_gguf(gguf_file, reporter=again) == folder
    assert time.monotonic() - started < 1 and again.events == []


class _StopWhenSaving(CollectingReporter):
    """Stands in for a user who cancels (or a crash) in the middle of a conversion."""

    def emit(self, event):
        super().emit(event)
        if event.get("phase") == "saving":
            raise KeyboardInterrupt


def test_interrupted_conversion_leaves_no_half_folder(tiny_models, tmp_path, private_cache):
    gguf_file = write_tiny_llama_gguf(tiny_models["llama"], tmp_path / "tiny.gguf")
    with pytest.raises(KeyboardInterrupt):
        sources.convert_gguf(gguf_file, reporter=_StopWhenSaving())
    assert list((private_cache / "models").iterdir()) == []
    folder = sources.convert_gguf(gguf_file)  # the next call converts from scratch
    assert (folder / files.MARKER).is_file()


def test_failed_conversion_leaves_nothing_behind(tmp_path, private_cache):
    import gguf

    broken = tmp_path / "unknown-arch.gguf"
    writer = gguf.GGUFWriter(broken, arch="no-such-arch")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    with pytest.raises(ModelSourceError) as error:
        sources.convert_gguf(broken)
    assert "unknown-arch.gguf" in error.value.message and error.value.hint
    assert list((private_cache / "models").iterdir()) == []


# --------------------------------------------------------------------------- the demo model


def test_demo_is_available():
    assert sources.is_demo_available() is True


@pytest.mark.slow
def test_demo_model_converts_once():
    reporter = CollectingReporter()
    folder = sources.demo_model_path(reporter)
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", files.MARKER} <= names
    assert not list(folder.parent.glob(".tmp-*"))
    assert not list(folder.rglob("*.gguf"))

    started = time.monotonic()
    assert sources.demo_model_path() == folder
    assert sources.resolve_model("demo") == folder
    assert time.monotonic() - started < 5

    info = inspect.inspect_model(files.DEMO)
    assert (info.architecture, info.model_type) == ("Gemma3ForCausalLM", "gemma3_text")
    assert info.params_total == 268_098_176
    assert sum(info.params_by_kind.values()) == info.params_total
    assert info.params_by_kind["lm_head"] == 0 and info.tied_embeddings is True
    assert info.vocab_size == 262144
    assert (info.torch_dtype, info.weights_format) == ("bfloat16", "safetensors")
    assert info.lora_targets == EXPECTED_LINEARS["gemma3"]

    # The weights are the real pretrained ones: an easy English sentence has a low loss
    # (a random model scores about ln(262144) = 12.5).
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = sources.load_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tokenizer(
        "The capital of France is Paris. The capital of Germany is Berlin.", return_tensors="pt"
    ).input_ids
    assert ids[0, 0].item() == tokenizer.bos_token_id
    with torch.no_grad():
        assert model(ids, labels=ids).loss.item() < 4.0
