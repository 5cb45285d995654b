"""The metadata and vocabulary of a GGUF written from a Hugging Face model folder.

llama.cpp picks its pre-tokenizer by name (``tokenizer.ggml.pre``); its own converter finds the
name by hashing how the tokenizer splits a test text, against a table kept in llama.cpp. Here
the name is read off ``tokenizer.json`` instead: GPT-2's byte-level split, or a split regex that
transformers' GGUF loader maps to a llama.cpp name (Llama 3, Qwen 2). Any other tokenizer,
SentencePiece ones included, is refused with a pointer to llama.cpp's converter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import ExportError
from qlora_studio.core.gguf.layout import head_counts, text_config

# Architectures whose metadata is written here for a Hugging Face base (see check_hf_base).
HF_BASE_ARCHS = ("llama", "qwen2")

_CONVERTER_HINT = (
    "export the merged safetensors folder and convert it with llama.cpp's convert_hf_to_gguf.py"
)


def check_hf_base(folder: Path, config: dict[str, Any], arch: str) -> str:
    """Raise :class:`ExportError` naming what is unsupported unless a merged GGUF of this
    Hugging Face base can be written here; return the tokenizer's llama.cpp pre-tokenizer."""
    if arch not in HF_BASE_ARCHS:
        raise ExportError(
            f"a merged GGUF of a Hugging Face {arch!r} model is not available here "
            f"(supported: {', '.join(HF_BASE_ARCHS)}, and any model that came from a GGUF file)",
            _CONVERTER_HINT,
        )
    rope = _rope(config)
    if rope.get("rope_type", "default") != "default":
        raise ExportError(
            f"{arch} with {rope['rope_type']!r} rope scaling needs tensors llama.cpp's "
            "converter computes",
            _CONVERTER_HINT,
        )
    return tokenizer_pre(folder)


def tokenizer_pre(folder: Path) -> str:
    """The llama.cpp pre-tokenizer name of a byte-level BPE ``tokenizer.json``."""
    try:
        spec = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(
            f"{folder} has no readable tokenizer.json (SentencePiece tokenizers are not "
            "written here)",
            _CONVERTER_HINT,
        ) from exc
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise ExportError(
            f"the tokenizer is a {model.get('type')} model"
            + (" with byte fallback" if model.get("byte_fallback") else "")
            + "; only byte-level BPE vocabularies are written here",
            _CONVERTER_HINT,
        )
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    splits = [p for p in pre.get("pretokenizers") or [] if p.get("type") == "Split"]
    if pre.get("type") == "Sequence" and len(splits) == 1:
        regex = (splits[0].get("pattern") or {}).get("Regex")
        for name, known in _known_splits().items():
            if regex == known:
                return name
    raise ExportError(
        "the tokenizer's pre-tokenizer is not one llama.cpp can be told by name here",
        _CONVERTER_HINT,
    )


def _known_splits() -> dict[str, str]:
    """llama.cpp pre-tokenizer name -> split regex, from transformers' GGUF loader (the
    inverse of the map it reads files with); names llama.cpp knows come first."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_PRE_TOKENIZER_SPLITS,
        )
    except ImportError:
        return {}
    preferred = ("llama-bpe", "qwen2")
    return {name: GGUF_PRE_TOKENIZER_SPLITS[name] for name in preferred} | dict(
        GGUF_PRE_TOKENIZER_SPLITS
    )


def _rope(config: dict[str, Any]) -> dict[str, Any]:
    cfg = text_config(config)
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if "rope_theta" in cfg:
        rope = {"rope_theta": cfg["rope_theta"], **rope}
    return rope


def hf_metadata_writer(folder: Path, config: dict[str, Any], arch: str):
    """A ``GGUFWriter`` holding the model's hyperparameters and vocabulary, the keys llama.cpp's
    converter writes for ``arch`` (names and types from the ``gguf`` package's writer)."""
    import gguf

    pre = check_hf_base(folder, config, arch)
    cfg = text_config(config)
    heads, kv_heads = head_counts(config)
    hidden = int(cfg["hidden_size"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    writer = gguf.GGUFWriter(path=None, arch=arch)  # it writes general.architecture
    writer.add_type("model")
    writer.add_name(str(cfg.get("_name_or_path") or Path(folder).name))
    writer.add_context_length(int(cfg["max_position_embeddings"]))
    writer.add_embedding_length(hidden)
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(float(cfg["rms_norm_eps"]))
    writer.add_rope_freq_base(float(_rope(config).get("rope_theta", 10000.0)))
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types = _vocabulary(folder, int(cfg.get("vocab_size") or 0))
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # merges, special token ids, add_bos/eos; the chat template is set by the caller
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.chat_template = None
    special.add_to_gguf(writer, quiet=True)
    return writer


def _vocabulary(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """Tokens in id order as ``tokenizer.json`` spells them, and their llama.cpp types
    (added special tokens CONTROL, other added tokens USER_DEFINED, ids the tokenizer leaves
    empty up to the embedding size UNUSED), as llama.cpp's converter writes them."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    size = max(vocab_size, len(by_id))
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            special = added[i].special
            types.append(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, [int(t) for t in types]
