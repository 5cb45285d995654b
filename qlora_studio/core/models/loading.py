"""The one model loader: the device, the dtypes and the 4-bit config a run asks for, for
training, for inference (compare, eval, chat) and for a 16-bit merge."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from qlora_studio.config import Dtype, resolve_compute_dtype
from qlora_studio.core.errors import StudioError, TrainingError

if TYPE_CHECKING:
    from qlora_studio.config import RunConfig

Purpose = Literal["train", "infer", "merge"]


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


def quantization_config(quant, compute_dtype):
    """transformers' BitsAndBytesConfig for a QLoRA base: 4-bit NF4/FP4, double quant, compute
    dtype, from the config's ``quant`` section."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
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
        kwargs["quantization_config"] = quantization_config(cfg.quant, compute)
        kwargs["device_map"] = {"": device}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise explain_load_error(exc, Path(folder), error) from exc
    if not four_bit and purpose != "merge":
        model.to(device)
    model.config.use_cache = purpose == "infer"
    return model.eval() if purpose == "infer" else model


def model_type(model_dir: Path) -> str:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return ""
