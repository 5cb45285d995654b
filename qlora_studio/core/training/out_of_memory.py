"""Out of memory during a run: recognise it, and say which term of the estimate grew and what to
change, instead of a traceback.

A run that fails this way keeps a checkpoint of its last completed step (``core/training.py``
saves it before this message is built), so the user resumes with a smaller batch instead of
starting over.
"""

from __future__ import annotations

from pathlib import Path

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import TrainingError

# the estimate's terms that grow with the batch's tokens (core/memory.py); the rest are fixed
_GROWING_TERMS = ("activations", "logits and loss")


def is_out_of_memory(exc: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or an allocator that could not get the memory (the CPU's
    'can't allocate memory', MPS's 'out of memory')."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def explain_out_of_memory(
    cfg: RunConfig,
    model_dir: Path,
    device: str,
    *,
    step: int,
    batch_shape: tuple[int, int] | None,
    widest_before: int,
    checkpoint: Path | None,
    run_dir: Path | None,
    packed: bool = False,
) -> TrainingError:
    """The message for an out-of-memory error at optimizer step ``step + 1`` whose batch was
    ``batch_shape`` (rows x tokens per row, or rows x all their tokens when ``packed``): the
    term that grew with it, its estimated size, and the change that keeps the effective
    batch."""
    shape = ""
    if batch_shape and packed:  # padding-free: the rows are one sequence of their tokens
        shape = f" on a packed batch of {batch_shape[0]} rows, {batch_shape[1]} tokens"
    elif batch_shape:
        shape = f" on a batch of {batch_shape[0]} x {batch_shape[1]} tokens"
    message = f"Out of memory at step {step + 1}{shape}"
    as_estimated = (1, batch_shape[1]) if batch_shape and packed else batch_shape
    grown = _grown_term(cfg, model_dir, device, as_estimated)
    if grown:
        name, size = grown
        longer = (
            f", longer than any batch before it ({widest_before} tokens)"
            if batch_shape and widest_before and batch_shape[1] > widest_before
            else ""
        )
        message += (
            f"{longer}. The memory that grows with the batch is '{name}', about {size} at this "
            "size (`qlora-studio estimate` shows every term)"
        )
    if checkpoint is not None:
        message += f". The checkpoint of step {checkpoint.name.removeprefix('checkpoint-')} is kept"
    else:
        message += ". No step completed, so there is no checkpoint"
    return TrainingError(message, _hint(cfg, batch_shape, checkpoint, run_dir))


def _grown_term(
    cfg: RunConfig, model_dir: Path, device: str, batch_shape: tuple[int, int] | None
) -> tuple[str, str] | None:
    """(name, size) of the largest estimate term that grows with the batch, at ``batch_shape``;
    None when the estimate cannot be made (the message then goes without it)."""
    from qlora_studio.core.events import format_gb
    from qlora_studio.core.gpu import gpu_bf16_supported
    from qlora_studio.core.memory import estimate_memory
    from qlora_studio.core.memory_settings import Settings
    from qlora_studio.core.models.inspect import inspect_model

    try:
        info = inspect_model(
            str(model_dir),
            allow_pickle=cfg.model.allow_pickle,
            trust_remote_code=cfg.model.trust_remote_code,
        )
        bf16 = gpu_bf16_supported(0) if device == "cuda" else True
        settings = Settings.from_config(cfg, device=device, bf16_supported=bf16)
        if batch_shape:
            settings.batch_size, settings.seq_len = batch_shape
        estimate = estimate_memory(info, settings, cfg.method)
    except Exception:  # the explanation must never hide the out-of-memory error itself
        return None
    growing = [t for t in estimate.terms if t.name in _GROWING_TERMS]
    if not growing:
        return None
    largest = max(growing, key=lambda t: t.bytes)
    return largest.name, format_gb(largest.bytes, 1)


def _hint(
    cfg: RunConfig,
    batch_shape: tuple[int, int] | None,
    checkpoint: Path | None,
    run_dir: Path | None,
) -> str:
    t = cfg.train
    batch = batch_shape[0] if batch_shape else t.batch_size
    lean_full = cfg.method == "full" and t.full_recipe == "lean"
    changes = []
    if batch > 1 and not lean_full:
        half = max(1, batch // 2)
        accum = t.grad_accum * batch // half
        changes.append(
            f"--set train.batch_size={half} --set train.grad_accum={accum} (the same "
            "effective batch)"
        )
    elif batch > 1:
        changes.append(f"--set train.batch_size={max(1, batch // 2)}")
    changes.append(f"--set data.max_length={max(8, cfg.data.max_length // 2)}")
    if not t.gradient_checkpointing:
        changes.append("--set train.gradient_checkpointing=true")
    if t.fit != "auto":
        changes.append("--set train.fit=auto (picks a batch that fits)")
    how = " or ".join(changes)
    if checkpoint is not None and run_dir is not None:
        return f"resume from the checkpoint with less per step: qlora-studio resume {run_dir} {how}"
    return f"train again with less per step: {how}"
