"""The one model loader: the device, the dtypes and the 4-bit config a run asks for, for
training, for inference (compare, eval, chat) and for a 16-bit merge."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qlora_studio.config import Dtype, resolve_compute_dtype
from qlora_studio.core.errors import StudioError, TrainingError
from qlora_studio.core.events import Reporter, report_progress

if TYPE_CHECKING:
    from qlora_studio.config import RunConfig

Purpose = Literal["train", "infer", "merge"]
# transformers' progress bars over a model's tensors: its loader, and its older GGUF converter
TENSOR_BARS = ("Loading weights", "Converting and de-quantizing GGUF tensors...")
PROGRESS_EVERY_S = 0.5  # progress events while loading: at most this often, plus the last


def pick_device(requested: str = "auto") -> str:
    """'cuda' when asked for (or auto and available), else 'cpu'."""
    import torch

    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        raise TrainingError(
            "train.device is 'cuda' but PyTorch sees no CUDA GPU",
            "install a CUDA build of torch, or set train.device: auto to train on the CPU",
        )
    return "cpu"


def compute_dtype_name(requested: str, device: str) -> Dtype:
    """The compute dtype a run on ``device`` uses: :func:`~qlora_studio.config.
    resolve_compute_dtype` with bf16 support asked of torch (on a GPU, when "auto")."""
    bf16 = True
    if requested == "auto" and device == "cuda":
        import torch

        bf16 = bool(torch.cuda.is_bf16_supported())
    return resolve_compute_dtype(requested, device, bf16)


def full_weights_dtype(recipe: str, compute: str, device: str) -> str:
    """The dtype full fine-tuning keeps its weights in: bf16 for the lean recipe on a GPU with
    bf16 (no fp32 master copy), else fp32 (mixed: fp32 master weights under autocast)."""
    # fp16 weights would need a loss scaler, which cannot unscale a gradient that is stepped
    # and freed in backward; bf16 has fp32's exponent range and needs none. The CPU keeps fp32
    # (bf16 compute there made the loss climb).
    if recipe == "lean" and device == "cuda" and compute == "bf16":
        return "bf16"
    return "fp32"


def torch_dtype(name: str):
    import torch

    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def quantization_config(quant, compute_dtype, storage=None):
    """transformers' BitsAndBytesConfig for a QLoRA base: 4-bit NF4/FP4, double quant, compute
    dtype, from the config's ``quant`` section. ``storage`` (a float dtype) packs the 4-bit
    values into that dtype's tensors instead of uint8, so FSDP or ZeRO-3 can shard them."""
    from transformers import BitsAndBytesConfig

    extra = {} if storage is None else {"bnb_4bit_quant_storage": storage}
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
        **extra,
    )


def explain_load_error(
    exc: Exception, model_dir: Path, error: type[StudioError] = TrainingError
) -> StudioError:
    """A loading failure as ``error``, with the hint for the usual causes."""
    message = str(exc)
    if "bitsandbytes" in message.lower():
        return error(
            f"4-bit loading failed: {message}",
            "QLoRA needs bitsandbytes >= 0.46 (pip install -U bitsandbytes), or choose method lora",
        )
    if "out of memory" in message.lower():
        return error(
            f"Out of memory while loading {model_dir.name}",
            "choose QLoRA (4-bit base) or a smaller model; `qlora-studio estimate` shows what fits",
        )
    return error(
        f"Could not load the model from {model_dir}: {message}",
        "check that the folder holds a complete model (config.json and its weights)",
    )


def load_causal_lm(
    folder: Path,
    cfg: RunConfig,
    device: str,
    *,
    purpose: Purpose,
    quantize: bool | None = None,
    error: type[StudioError] = TrainingError,
) -> Any:
    """Load ``folder`` as a causal LM the way ``cfg`` asks, for one ``purpose``:

    - ``train``: QLoRA's base in 4-bit with the compute dtype, LoRA's base in the compute
      dtype, a full fine-tune in :func:`full_weights_dtype`; no KV cache;
    - ``infer`` (compare, eval, chat): on a GPU as trained (4-bit when ``quantize``, which
      defaults to the run being QLoRA), on the CPU in fp32; KV cache on, eval mode;
    - ``merge``: bf16 on the CPU, never 4-bit (an adapter merges into 16-bit weights).

    Any failure is raised as ``error`` with a hint.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if quantize is None:
        quantize = cfg.method == "qlora" and purpose != "merge"
    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    compute = torch_dtype(compute_dtype_name(cfg.quant.compute_dtype, device))
    four_bit = quantize and (purpose == "train" or device == "cuda")
    if purpose == "merge":
        kwargs["dtype"] = torch.bfloat16
    elif purpose == "infer" and device != "cuda":
        kwargs["dtype"] = torch.float32
    elif purpose == "train" and cfg.method == "full":
        weights = full_weights_dtype(
            cfg.train.full_recipe, compute_dtype_name(cfg.quant.compute_dtype, device), device
        )
        kwargs["dtype"] = torch.bfloat16 if weights == "bf16" else torch.float32
    else:
        kwargs["dtype"] = compute
    if four_bit:
        storage = compute if purpose == "train" and cfg.distributed.shards_weights else None
        kwargs["quantization_config"] = quantization_config(cfg.quant, compute, storage)
        kwargs["device_map"] = {"": device}
    if purpose == "train" and device == "cuda" and kwargs["dtype"] != torch.float32:
        # flash-attention reads packed rows' restarting position ids as varlen boundaries: no
        # T x T mask. It takes 16-bit inputs only; without it transformers picks SDPA
        if importlib.util.find_spec("flash_attn") is not None:
            kwargs["attn_implementation"] = "flash_attention_2"
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise explain_load_error(exc, Path(folder), error) from exc
    if not four_bit and purpose != "merge":
        model.to(device)
    model.config.use_cache = purpose == "infer"
    return model.eval() if purpose == "infer" else model


@contextmanager
def tensor_progress(reporter: Reporter | None, every_s: float = PROGRESS_EVERY_S) -> Iterator[None]:
    """While inside, transformers' loops over a model's tensors (:data:`TENSOR_BARS`) on this
    thread send ``progress`` events (tensors done of all, with an ETA) to ``reporter``: a
    percentage instead of a silent wait when a GGUF is dequantized. Its own bar still draws."""
    from transformers.utils import logging as hf_logging

    thread = threading.get_ident()

    def hook(factory, args, kwargs):
        bar = factory(*args, **kwargs)
        iterable = args[0] if args else kwargs.get("iterable")
        if (
            reporter is None
            or threading.get_ident() != thread
            or kwargs.get("desc") not in TENSOR_BARS
            or not hasattr(iterable, "__len__")
        ):
            return bar
        return _ReportingBar(bar, len(iterable), reporter, every_s)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


class _ReportingBar:
    """A tqdm bar whose iteration also reports progress events (throttled; the last always)."""

    def __init__(self, bar: Any, total: int, reporter: Reporter, every_s: float):
        self.bar, self.total, self.reporter, self.every_s = bar, total, reporter, every_s

    def __iter__(self) -> Iterator[Any]:
        started = last = time.monotonic()
        report_progress(self.reporter, 0, self.total, started)
        done = 0
        for item in self.bar:
            yield item
            done += 1
            now = time.monotonic()
            if done == self.total or now - last >= self.every_s:
                report_progress(self.reporter, done, self.total, started)
                last = now

    def __enter__(self) -> _ReportingBar:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:  # update, close, set_postfix...: the bar's own
        return getattr(self.bar, name)


def model_type(model_dir: Path) -> str:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return ""
