"""What a model is made of: :func:`inspect_model` instantiates it on the meta device, so exact
parameter counts need no weights, and a folder holding only ``config.json`` is enough."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import ModelSourceError
from qlora_studio.core.events import Reporter
from qlora_studio.core.models.sources import resolve_model, weights_format

KINDS = ("embeddings", "attention", "mlp", "norms", "lm_head", "other")


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}


# ModelInfo size field -> the config attributes that may hold it; the first one set wins.
_SIZE_ATTRIBUTES = {
    "num_layers": ("num_hidden_layers", "n_layer"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "intermediate_size": ("intermediate_size", "n_inner", "ffn_dim"),
    "num_heads": ("num_attention_heads", "n_head"),
    "num_kv_heads": ("num_key_value_heads",),
    "head_dim": ("head_dim",),
    "vocab_size": ("vocab_size",),
    "context_length": ("max_position_embeddings", "n_positions", "max_sequence_length"),
}


_ATTENTION_LEAVES = {"q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "query", "key", "value"}


_MLP_LEAVES = {"gate_proj", "up_proj", "down_proj", "gate_up_proj", "c_fc", "fc1", "fc2"}


@dataclass
class LinearLayer:
    """Linear (or GPT-2 Conv1D) modules sharing a leaf name, kind and shape."""

    name: str  # the leaf name peft targets, e.g. "q_proj", "c_attn"
    kind: str  # "attention" | "mlp" | "other"
    count: int  # how many modules with this leaf name and shape (usually num_layers)
    in_features: int
    out_features: int
    params: int  # weight parameters over all `count` modules (bias excluded)
    conv1d: bool  # transformers Conv1D: weight stored [in, out]


@dataclass
class ModelInfo:
    """What a model is made of, from its config alone (exact counts, no weights loaded)."""

    source: str  # as given
    path: str  # the local folder holding config.json
    architecture: str  # the class AutoModelForCausalLM builds, e.g. "LlamaForCausalLM"
    model_type: str  # e.g. "llama"
    params_total: int
    params_by_kind: dict[str, int]  # keys: KINDS; lm_head is 0 when tied; sums to params_total
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool
    context_length: int
    torch_dtype: str  # dtype the weights are stored in, e.g. "bfloat16"
    linear_layers: list[LinearLayer] = field(default_factory=list)
    lora_targets: list[str] = field(default_factory=list)  # leaf names "all-linear" targets
    has_chat_template: bool = False
    weights_format: str = "none"  # "safetensors" | "pickle" | "none" (config only)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy (linear layers become dicts)."""
        return dataclasses.asdict(self)


def inspect_model(
    source: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    reporter: Reporter | None = None,
) -> ModelInfo:
    """Resolve ``source`` and describe the model: architecture, sizes, exact parameter counts by
    kind and the linear layers LoRA can target. Weights are never loaded (meta device)."""
    folder = resolve_model(
        source, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, reporter=reporter
    )
    stored_format = weights_format(folder)
    raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (ValueError, KeyError, OSError, ImportError, TypeError) as exc:
        raise ModelSourceError(
            f"cannot build a causal language model from {folder / 'config.json'}: {exc}",
            hint="QLoRA Studio fine-tunes text-generation models (LlamaForCausalLM and the like); "
            "check that this is one and that transformers supports it",
        ) from exc
    total, by_kind, layers, tied = _count_parameters(model)
    return ModelInfo(
        source=str(source),
        path=str(folder),
        architecture=type(model).__name__,
        model_type=str(config.model_type),
        params_total=total,
        params_by_kind=by_kind,
        tied_embeddings=tied,
        torch_dtype=_stored_dtype(folder, raw),
        linear_layers=layers,
        lora_targets=list(dict.fromkeys(layer.name for layer in layers)),
        has_chat_template=_has_chat_template(folder),
        weights_format=stored_format,
        **_sizes(config.get_text_config(decoder=True)),
    )


def _sizes(text_config: Any) -> dict[str, int]:
    """The ModelInfo size fields from a (text) config, the usual defaults filled in."""
    sizes = {}
    for name, attributes in _SIZE_ATTRIBUTES.items():
        values = [getattr(text_config, a, None) for a in attributes]
        value = next((v for v in values if v is not None), 0)
        sizes[name] = int(max(value) if isinstance(value, (list, tuple)) else value)
    sizes["intermediate_size"] = sizes["intermediate_size"] or 4 * sizes["hidden_size"]  # GPT-2
    sizes["num_kv_heads"] = sizes["num_kv_heads"] or sizes["num_heads"]
    if not sizes["head_dim"] and sizes["num_heads"]:
        sizes["head_dim"] = sizes["hidden_size"] // sizes["num_heads"]
    return sizes


def _count_parameters(model) -> tuple[int, dict[str, int], list[LinearLayer], bool]:
    """Exact parameter counts by kind (tied parameters once), the linear layers grouped by leaf
    name, kind and shape, and whether the output embedding is tied to the input one."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    modules = dict(model.named_modules())
    output = model.get_output_embeddings()
    inputs = model.get_input_embeddings()
    tied = bool(output is not None and inputs is not None and output.weight is inputs.weight)
    by_kind = dict.fromkeys(KINDS, 0)
    for name, param in model.named_parameters():  # shared parameters are listed once
        module_name = name.rpartition(".")[0]
        kind = _kind_of(module_name, modules[module_name], output)
        by_kind["embeddings" if kind == "lm_head" and tied else kind] += param.numel()

    groups: dict[tuple, LinearLayer] = {}
    for name, module in modules.items():
        if module is output or not isinstance(module, (nn.Linear, Conv1D)):
            continue
        conv1d = isinstance(module, Conv1D)
        rows, cols = module.weight.shape
        in_f, out_f = (rows, cols) if conv1d else (cols, rows)
        leaf = name.rpartition(".")[2]
        key = (leaf, _kind_of(name, module, output), in_f, out_f, conv1d)
        if key in groups:
            groups[key].count += 1
            groups[key].params += module.weight.numel()
        else:
            groups[key] = LinearLayer(leaf, key[1], 1, in_f, out_f, module.weight.numel(), conv1d)
    return sum(by_kind.values()), by_kind, list(groups.values()), tied


def _kind_of(module_name: str, module, output) -> str:
    """Which of :data:`KINDS` a module's parameters count as: by module type first, then by the
    nearest part of its dotted name that says attention or MLP."""
    from torch import nn

    if module is output:
        return "lm_head"
    if isinstance(module, nn.Embedding):
        return "embeddings"
    if "norm" in type(module).__name__.lower():
        return "norms"
    for part in reversed(module_name.lower().split(".")):
        if part in _ATTENTION_LEAVES or "attn" in part or "attention" in part:
            return "attention"
        if part in _MLP_LEAVES or any(k in part for k in ("mlp", "ffn", "feed_forward", "expert")):
            return "mlp"
    return "other"


def _stored_dtype(folder: Path, raw_config: dict[str, Any]) -> str:
    """The dtype most weights are stored in: from the first safetensors header (8-byte length,
    then JSON), else config.json's ``dtype`` / ``torch_dtype``, else "float32"."""
    sizes: dict[str, int] = {}
    for weights in sorted(folder.glob("*.safetensors"))[:1]:
        try:
            with open(weights, "rb") as handle:
                header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            for name, entry in header.items():
                if name != "__metadata__":
                    sizes[entry["dtype"]] = sizes.get(entry["dtype"], 0) + prod(entry["shape"])
        except (OSError, ValueError, KeyError, TypeError):
            sizes = {}
    if sizes:
        stored = max(sizes, key=sizes.__getitem__)
        return _SAFETENSORS_DTYPES.get(stored, stored.lower())
    for config in (raw_config, raw_config.get("text_config") or {}):
        value = config.get("dtype") or config.get("torch_dtype")
        if value:
            return str(value).removeprefix("torch.")
    return "float32"


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    try:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text("utf-8"))
    except (OSError, ValueError):
        return False
    return bool(tokenizer_config.get("chat_template"))
