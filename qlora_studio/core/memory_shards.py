"""One GPU's share of a run that several GPUs train together (``distributed.strategy``).

Pure arithmetic over a single-GPU :class:`~qlora_studio.core.memory.MethodEstimate`, like
``core/memory.py``; no torch.

- **ddp**: every GPU holds the whole model, its gradients and its optimizer states, and trains
  its own ``train.batch_size`` rows, so the single-GPU estimate stands; DDP adds its gradient
  buckets, a flat copy of the trainable gradients that the all-reduce runs on (the Trainer
  leaves ``gradient_as_bucket_view`` off).
- **fsdp** (full shard, one unit per decoder layer): the weights, gradients and optimizer
  states are split across the N GPUs. While a layer runs its weights are gathered whole, and
  the next layer's are fetched ahead (two layers at once); its gradients are whole until they
  are reduce-scattered. The root unit (embeddings, final norm, lm_head) stays gathered for the
  whole step. QLoRA's quantization constants stay whole on every GPU: bitsandbytes keeps them
  beside the weights, not in the parameters FSDP shards. Activations, the loss, the
  dequantization transient and the CUDA context are per GPU, as with one GPU.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from qlora_studio.config import DistributedConfig, Method
from qlora_studio.core.events import format_gb
from qlora_studio.core.memory import MemoryTerm, MethodEstimate, estimate_memory, slack_term
from qlora_studio.core.memory_settings import Settings, precision

if TYPE_CHECKING:
    from qlora_studio.core.models.inspect import ModelInfo

STRATEGIES_THAT_SHARD = ("fsdp",)
# the terms FSDP splits across the GPUs; the rest are per GPU as they are
_SHARDED = (
    "weights",
    "16-bit layers",
    "trainable parameters (LoRA)",
    "gradients",
    "optimizer states",
)


def sharded_as(distributed: DistributedConfig) -> str:
    """How :func:`per_gpu_estimate` prices ``distributed.strategy``: none, ddp, or fsdp for
    every strategy that splits the weights (fsdp, deepspeed ZeRO-3). ZeRO-2 keeps the whole
    model on every GPU and is priced as ddp (it does split the optimizer states, so that is the
    safe side)."""
    if distributed.strategy == "none":
        return "none"
    return "fsdp" if distributed.shards_weights else "ddp"


def per_gpu_estimate(
    info: ModelInfo, settings: Settings, method: Method, strategy: str, gpus: int
) -> MethodEstimate:
    """What each of ``gpus`` GPUs needs to train ``method`` with ``strategy`` (none, ddp or
    fsdp), term by term; the single-GPU estimate when ``strategy`` is none or ``gpus`` is 1."""
    single = estimate_memory(info, settings, method)
    if strategy == "none" or gpus <= 1:
        return single
    terms = [dataclasses.replace(t) for t in single.terms if t.name != "allocator slack"]
    cpu_terms = [dataclasses.replace(t) for t in single.cpu_terms]
    if strategy == "ddp":
        grads = single.term("gradients")
        buckets = grads.bytes if grads else 0
        detail = "DDP's flat copy of the trainable gradients that the all-reduce runs on"
        terms.append(MemoryTerm("gradient buckets (DDP)", buckets, detail))
    elif strategy in STRATEGIES_THAT_SHARD:
        for term in terms + cpu_terms:
            if term.name in _SHARDED or term.name == "optimizer states (paged)":
                whole = format_gb(term.bytes)
                term.detail = f"{term.detail}; split across {gpus} GPUs: {whole} / {gpus}"
                term.bytes //= gpus
        terms.append(_gathered(info, settings, method, single, gpus))
    else:
        raise ValueError(f"strategy {strategy!r} is not one of none, ddp, fsdp")
    allocated = sum(t.bytes for t in terms if t.name != "CUDA context")
    terms.append(slack_term(settings.device, allocated))
    dominant = max(terms, key=lambda t: t.bytes).name
    return MethodEstimate(
        single.method,
        terms,
        sum(t.bytes for t in terms),
        single.trainable_params,
        dominant,
        cpu_terms,
    )


def _gathered(
    info: ModelInfo, settings: Settings, method: Method, single: MethodEstimate, gpus: int
) -> MemoryTerm:
    """What FSDP holds whole on each GPU for compute: the root unit's weights, and two decoder
    layers' weights (the running one and the one fetched ahead) with one layer's gradients."""
    p = precision(settings, method)
    layers = max(info.num_layers, 1)
    linear = sum(g.params for g in info.linear_layers)
    root = info.params_total - linear - info.params_by_kind.get("norms", 0)
    if method == "qlora":
        layer_weights = linear / layers / 2  # packed 4-bit, two per byte
        root_bytes: float = p.frozen * root
    else:
        layer_weights = linear / layers * p.base
        root_bytes = p.base * root
    # fp32 gradients of one layer, whole until they are reduce-scattered
    per_layer_grads = (linear if method == "full" else single.trainable_params) / layers * 4
    total = root_bytes + 2 * layer_weights + per_layer_grads
    detail = (
        f"FSDP over {gpus} GPUs gathers whole: embeddings and lm_head (the root unit, "
        f"{format_gb(root_bytes)}), two decoder layers' weights ({format_gb(2 * layer_weights)}) "
        f"and one layer's gradients ({format_gb(per_layer_grads)})"
    )
    return MemoryTerm("gathered for compute (FSDP)", int(total), detail)


def gpus_needed(
    info: ModelInfo,
    settings: Settings,
    method: Method,
    usable_bytes: int,
    strategy: str = "fsdp",
    most: int = 8,
) -> int | None:
    """The fewest GPUs of ``usable_bytes`` each that train ``method`` with ``strategy``: 1 when
    one is enough, None when even ``most`` are not (and for ddp, which shards nothing, when one
    is not)."""
    if estimate_memory(info, settings, method).total_bytes <= usable_bytes:
        return 1
    if strategy not in STRATEGIES_THAT_SHARD:
        return None
    for gpus in range(2, most + 1):
        if per_gpu_estimate(info, settings, method, strategy, gpus).total_bytes <= usable_bytes:
            return gpus
    return None
