"""The one model loader: the device, the dtypes and the 4-bit config a run asks for, for
training, for inference (compare, eval, chat) and for a 16-bit merge."""

from __future__ import annotations

import json
from pathlib import Path

from qlora_studio.core.errors import StudioError, TrainingError
from qlora_studio.core.run_folder import (  # noqa: F401  (the run folder's layout, re-exported)
    ADAPTER,
    CHECKPOINTS,
    CONFIG_FILE,
    EVENTS_FILE,
    FULL_MODEL,
    SUMMARY_FILE,
    RunFolderLock,
    create_run_folder,
    last_checkpoint,
    tidy_checkpoints,
)


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


def compute_dtype_name(requested: str, device: str) -> str:
    """Resolve 'auto': bf16 on GPUs that support it, fp16 on older GPUs, fp32 on the CPU
    (bf16 compute on the CPU made the loss climb where fp32 learned)."""
    if requested != "auto":
        return requested
    if device == "cpu":
        return "fp32"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


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


def explain_load_error(exc: Exception, model_dir: Path) -> StudioError:
    message = str(exc)
    if "bitsandbytes" in message.lower():
        return TrainingError(
            f"4-bit loading failed: {message}",
            "QLoRA needs bitsandbytes >= 0.46 (pip install -U bitsandbytes), or choose method lora",
        )
    if "out of memory" in message.lower():
        return TrainingError(
            f"Out of memory while loading {model_dir.name}",
            "choose QLoRA (4-bit base) or a smaller model; `qlora-studio estimate` shows what fits",
        )
    return TrainingError(f"Could not load the model from {model_dir}: {message}", "")


def model_type(model_dir: Path) -> str:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return ""
