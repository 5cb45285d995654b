"""How a Hugging Face tensor becomes a llama.cpp tensor: its GGUF name, its layout, its type.

Names come from the ``gguf`` package's own maps (``gguf.get_tensor_name_map``), the ones
llama.cpp's converters use. The value layouts are llama.cpp's converter conventions
(``convert_hf_to_gguf.py``), which the ``gguf`` package does not carry: Llama's q/k rows are
permuted for its rotary kernel, Gemma stores its norms as ``1 + w``. An architecture whose
layout is not written here is refused, never guessed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from qlora_studio.config import GGUF_TYPES, GgufType
from qlora_studio.core.errors import ExportError
from qlora_studio.core.events import format_mb

# Hugging Face model_type -> gguf architecture name, where the two differ
_ARCH_ALIASES = {"gemma3_text": "gemma3", "qwen2_moe": "qwen2moe", "cohere": "command-r"}

# Architectures whose llama.cpp layout is known here (the value transforms below).
LAYOUT_ARCHS = ("llama", "qwen2", "gemma3", "gpt2")

# Every weight llama.cpp's CPU kernels read quantized has rows of whole blocks.
_BLOCK = 32


def gguf_arch_name(model_type: str) -> str:
    """The gguf architecture name of a Hugging Face ``model_type``; raises :class:`ExportError`
    when the ``gguf`` package does not know it."""
    import gguf

    name = _ARCH_ALIASES.get(model_type, model_type)
    if name not in gguf.MODEL_ARCH_NAMES.values():
        raise ExportError(
            f"llama.cpp has no architecture for model type {model_type!r}",
            "GGUF export works for architectures llama.cpp runs; export the adapter or the "
            "merged safetensors folder instead",
        )
    return name


def require_layout(arch: str, what: str) -> None:
    """Raise :class:`ExportError` naming ``arch`` unless its llama.cpp layout is known."""
    if arch not in LAYOUT_ARCHS:
        raise ExportError(
            f"{what} is not available for the {arch!r} architecture",
            "supported: " + ", ".join(LAYOUT_ARCHS) + "; export the safetensors folder and "
            "convert it with llama.cpp's convert_hf_to_gguf.py",
        )


class NameMap:
    """Hugging Face parameter names -> GGUF tensor names for one architecture."""

    def __init__(self, arch: str, n_blocks: int):
        import gguf

        by_name = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}
        self.arch = arch
        self._map = gguf.get_tensor_name_map(by_name[arch], n_blocks)

    def gguf_name(self, hf_name: str) -> str | None:
        """``model.layers.0.self_attn.q_proj.weight`` -> ``blk.0.attn_q.weight``; None when
        the architecture has no such tensor."""
        for prefix in ("base_model.model.",):
            hf_name = hf_name.removeprefix(prefix)
        base, dot, suffix = hf_name.rpartition(".")
        if suffix not in ("weight", "bias"):
            base, dot, suffix = hf_name, "", ""
        name = self._map.get_name(base)
        return None if name is None else name + dot + suffix


def read_config(folder: Path) -> dict[str, Any]:
    """The model's config.json as a dict; raises :class:`ExportError` when it is unreadable."""
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read the model config in {folder}: {exc}") from exc


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a config (multimodal configs nest it)."""
    return config.get("text_config") or config


def head_counts(config: dict[str, Any]) -> tuple[int, int]:
    cfg = text_config(config)
    heads = int(cfg.get("num_attention_heads") or cfg.get("n_head") or 1)
    return heads, int(cfg.get("num_key_value_heads") or heads)


def to_llama_cpp(arch: str, gguf_name: str, array, config: dict[str, Any], *, rows_only=False):
    """``array`` (a float32 numpy tensor in Hugging Face layout) in llama.cpp's layout.

    With ``rows_only`` the array is a LoRA B matrix: only transforms of the output rows apply
    (a permutation of W's rows is the same permutation of B's rows).
    """
    heads, kv_heads = head_counts(config)
    if arch == "llama" and gguf_name.endswith((".attn_q.weight", ".attn_k.weight")):
        n = heads if ".attn_q." in gguf_name else kv_heads
        return _permute_rows(array, n)
    if arch == "llama" and gguf_name.endswith((".attn_q.bias", ".attn_k.bias")):
        return _permute_rows(array, heads if ".attn_q." in gguf_name else kv_heads)
    if rows_only:
        return array
    if arch == "gemma3" and gguf_name.endswith("norm.weight"):
        return array + 1.0  # Gemma scales by (1 + w); llama.cpp multiplies by the stored value
    if arch == "gpt2" and array.ndim == 2 and not gguf_name.startswith(("token_", "position_")):
        if not gguf_name.startswith("output."):
            return array.T  # GPT-2's Conv1D stores [in, out]
    return array


def _permute_rows(array, n_head: int):
    """llama.cpp's ``LlamaModel.permute``: interleave the two rotary halves of every head."""
    rest = array.shape[1:]
    return (
        array.reshape(n_head, 2, array.shape[0] // n_head // 2, *rest)
        .swapaxes(1, 2)
        .reshape(array.shape)
    )


def tensor_type(quant: str, gguf_name: str, shape: tuple[int, ...]):
    """The ggml type a tensor is written in: 1-D tensors (norms, biases) stay F32; with Q4_0 the
    embedding and output keep Q8_0 (llama.cpp's quantizer keeps them finer too); a weight whose
    rows are not whole 32-value blocks falls back to F16, as llama.cpp's converter does."""
    from gguf import GGMLQuantizationType as T

    if len(shape) < 2:
        return T.F32
    wanted = {"f16": T.F16, "bf16": T.BF16, "q8_0": T.Q8_0, "q4_0": T.Q4_0}[quant]
    if wanted == T.Q4_0 and gguf_name.startswith(("token_embd.", "output.")):
        wanted = T.Q8_0
    if wanted in (T.Q8_0, T.Q4_0) and shape[-1] % _BLOCK:
        return T.F16
    return wanted


def file_type(quant: str) -> int:
    """``general.file_type`` for the type most tensors are written in."""
    from gguf import LlamaFileType as F

    return {
        "f16": F.MOSTLY_F16,
        "bf16": F.MOSTLY_BF16,
        "q8_0": F.MOSTLY_Q8_0,
        "q4_0": F.MOSTLY_Q4_0,
    }[quant]


def nbytes(shape: tuple[int, ...], ggml_type) -> int:
    """Bytes a tensor of ``shape`` takes in ``ggml_type`` (block types: whole blocks)."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[ggml_type]
    count = 1
    for dim in shape:
        count *= int(dim)
    return count // block * size


def check_quant(quant: str) -> GgufType:
    """``quant`` in lower case when it is one of :data:`GGUF_TYPES`; otherwise an
    :class:`ExportError` naming the types that are available (K-quants need llama.cpp)."""
    name = str(quant).strip().lower()
    if name in GGUF_TYPES:
        return name
    available = ", ".join(GGUF_TYPES)
    if "_k" in name or name.startswith("iq"):
        raise ExportError(
            f"{quant} needs llama.cpp's quantizer (llama-quantize), which is not part of this app",
            f"export with one of {available}, then run llama.cpp's `llama-quantize "
            f"model-f16.gguf model-{name}.gguf {name.upper()}`",
        )
    raise ExportError(f"unknown GGUF type {quant!r}", f"choose one of {available}")


def check_free_space(folder: Path, need: int, what: str) -> None:
    """Raise :class:`ExportError` with the estimate when ``folder``'s disk has less than
    ``need`` bytes (plus 5 %) free."""
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < need * 1.05:
        raise ExportError(
            f"not enough disk space for {what}: about {format_mb(need)} needed, "
            f"{format_mb(free)} free on {probe}",
            "free some space, or export to another disk with --out",
        )
