"""Will it fit: the verdict of an estimate against the memory available, the largest batch and
sequence that fit, what to change when it does not, and the system RAM a run needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qlora_studio.core.memory import (
    _STORED_BYTES,
    DEFAULT_SHARD_BYTES,
    FIT_SHARE,
    MERGE_MARGIN,
    METHODS,
    MethodEstimate,
    Settings,
    _count,
    _gb,
    _precision,
    estimate_memory,
    lora_trainable_params,
)
from qlora_studio.core.models import ModelInfo


@dataclass
class Verdict:
    """Whether an estimate fits the memory available, and what to change when it does not."""

    method: str
    status: str  # "fits" | "tight" | "does not fit"
    available_bytes: int
    needed_bytes: int
    headroom_bytes: int  # available - needed (negative when it does not fit)
    dominant: str
    advice: list[str] = field(default_factory=list)
    max_batch_size: int = 0  # largest batch that fits at the other current settings (0: none)
    max_seq_len: int = 0  # longest sequence that fits at the current batch size (0: none)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _largest_fitting(
    info: ModelInfo, settings: Settings, method: str, budget: float, setting: str, cap: int
) -> int:
    """The largest value in [1, cap] of ``setting`` (batch_size or seq_len) whose estimate stays
    within ``budget``, the other settings unchanged; 0 when even 1 does not. The estimate grows
    with both, so doubling then bisecting finds it."""

    def fits(n: int) -> bool:
        trial = dataclasses.replace(settings, **{setting: n})
        return estimate_memory(info, trial, method).total_bytes <= budget

    if cap < 1 or not fits(1):
        return 0
    low, high = 1, 2
    while high <= cap and fits(high):
        low, high = high, high * 2
    high = min(high, cap + 1)  # fits(low) holds; fits(high) fails or high is past the cap
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def judge(
    estimate: MethodEstimate, info: ModelInfo, settings: Settings, available_bytes: int
) -> Verdict:
    """Compare ``estimate`` with ``available_bytes``: "fits" when it needs at most 90% of it,
    "tight" up to 100%, else "does not fit". ``max_batch_size`` and ``max_seq_len`` are the
    largest values (at the other current settings) that still fit within 90%, found by
    searching the estimator; the sequence is capped at the model's context length. ``advice``
    (when it does not fit comfortably) names what to change and what each change saves."""
    method, needed = estimate.method, estimate.total_bytes
    budget = FIT_SHARE * available_bytes
    status = (
        "fits" if needed <= budget else "tight" if needed <= available_bytes else "does not fit"
    )
    max_batch = _largest_fitting(info, settings, method, budget, "batch_size", 1 << 16)
    context = info.context_length or 1 << 20
    max_seq = _largest_fitting(info, settings, method, budget, "seq_len", context)
    verdict = Verdict(
        method=method,
        status=status,
        available_bytes=int(available_bytes),
        needed_bytes=needed,
        headroom_bytes=int(available_bytes - needed),
        dominant=estimate.dominant,
        max_batch_size=max_batch,
        max_seq_len=max_seq,
    )
    if status != "fits":
        verdict.advice = _advice(estimate, info, settings, budget, max_batch, max_seq)
    return verdict


_METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA"}
_CHEAPER = {"full": ("lora", "qlora"), "lora": ("qlora",), "qlora": ()}
_WEIGHT_TERMS = ("weights", "quantization constants", "16-bit layers")


def _advice(
    estimate: MethodEstimate,
    info: ModelInfo,
    settings: Settings,
    budget: float,
    max_batch: int,
    max_seq: int,
) -> list[str]:
    """Concrete changes: the batch and sequence that fit, then each switch by what it saves."""
    method, needed = estimate.method, estimate.total_bytes
    advice: list[str] = []
    if 0 < max_batch < settings.batch_size:
        advice.append(
            f"largest batch size that fits: {max_batch} (raise train.grad_accum to keep the "
            "effective batch)"
        )
    if 0 < max_seq < settings.seq_len:
        advice.append(
            f"longest sequence that fits at batch {settings.batch_size}: {max_seq} "
            "(lower data.max_length)"
        )

    def needs(other: str = method, **changes: Any) -> int:
        trial = dataclasses.replace(settings, **changes)
        return estimate_memory(info, trial, other).total_bytes

    options: list[tuple[int, str]] = []
    if not settings.gradient_checkpointing:
        saved = needed - needs(gradient_checkpointing=True)
        options.append((saved, f"turn on gradient checkpointing (saves ~{_gb(saved)})"))
    if settings.optimizer not in ("paged_adamw_8bit", "sgd"):
        saved = needed - needs(optimizer="paged_adamw_8bit")
        options.append((saved, f"switch optimizer to paged_adamw_8bit (saves ~{_gb(saved)})"))
    if method != "full" and settings.lora_r > 8:
        saved = needed - needs(lora_r=8)
        options.append((saved, f"lower lora.r to 8 (saves ~{_gb(saved)})"))
    if method == "qlora" and not settings.double_quant:
        saved = needed - needs(double_quant=True)
        options.append((saved, f"turn on quant.double_quant (saves ~{_gb(saved)})"))
    for other in _CHEAPER[method]:
        other_needed = needs(other)
        if other_needed < needed:
            text = f"use {_METHOD_NAMES[other]} (needs ~{_gb(other_needed)})"
            options.append((needed - other_needed, text))
        elif max_batch == 0:  # heavier at this batch, yet it may fit where this method cannot
            batch = _largest_fitting(info, settings, other, budget, "batch_size", 1 << 16)
            if batch:
                at_batch = needs(other, batch_size=batch)
                text = f"use {_METHOD_NAMES[other]} at batch {batch} (needs ~{_gb(at_batch)})"
                options.append((needed - at_batch, text))
    options.sort(key=lambda option: -option[0])
    advice += [text for saved, text in options if saved > 0]
    logits = estimate.term("logits and loss")
    if estimate.dominant == "logits and loss" and logits is not None:
        advice.append(
            f"the logits dominate: the {info.vocab_size:,}-token vocabulary costs "
            f"{_gb(logits.bytes)} at batch {settings.batch_size} x {settings.seq_len} tokens; "
            "shorter sequences or a smaller batch shrink it"
        )
    if max_batch == 0 and max_seq < 64:
        floor = needs(batch_size=1, seq_len=64)
        weights = sum(t.bytes for t in estimate.terms if t.name in _WEIGHT_TERMS)
        advice.append(
            f"even at batch 1 and 64 tokens {_METHOD_NAMES[method]} needs ~{_gb(floor)} "
            f"(the weights alone {_gb(weights)}): no batch or sequence length fits this GPU"
        )
    return advice


# ---- system RAM --------------------------------------------------------------------------
def _largest_shard(info: ModelInfo) -> tuple[int, str]:
    """The largest safetensors file in the model folder, or the Hub's usual 5 GB shard (or the
    whole model when smaller) when the folder holds no weights."""
    try:
        sizes = [f.stat().st_size for f in Path(info.path).glob("*.safetensors")]
    except OSError:
        sizes = []
    if sizes:
        return max(sizes), f"largest shard on disk {_gb(max(sizes))}"
    stored = _STORED_BYTES.get(info.torch_dtype, 2) * info.params_total
    shard = min(stored, DEFAULT_SHARD_BYTES)
    return shard, f"no weights here: assumed shard {_gb(shard)}"


def system_ram_needed(
    info: ModelInfo, method: str, settings: Settings | None = None
) -> dict[str, Any]:
    """CPU RAM a GPU run needs outside the training loop, in bytes, with how each was computed:

    - ``load``: peak while loading. safetensors are memory-mapped, so the stored weights pass
      through RAM about one shard at a time. QLoRA loads with a device map and quantizes on the
      GPU: about one shard. Full and LoRA build the model on the CPU in the training dtype
      (full fp32; LoRA the compute dtype) before moving it: the whole model plus one shard.
    - ``merge``: exporting a merged model loads the base in bf16 on the CPU (2 B/param), adds
      the fp32 adapter, and writes one shard at a time; 10% margin. 0 for full fine-tuning.
    """
    settings = settings or Settings()
    if method not in METHODS:
        raise ValueError(f"method {method!r} is not one of {', '.join(METHODS)}")
    params = info.params_total
    shard, shard_how = _largest_shard(info)
    if method == "qlora":
        load = shard
        load_detail = f"weights stream to the GPU and are quantized there: {shard_how}"
    else:
        per_param = 4 if method == "full" else _precision(settings, "lora").base
        load = int(per_param * params) + shard
        load_detail = (
            f"model built on the CPU at {per_param:g} B x {_count(params)} before moving to "
            f"the GPU, + {shard_how}"
        )
    if method == "full":
        merge, merge_detail = 0, "a full fine-tune is saved whole: nothing to merge"
    else:
        adapter = lora_trainable_params(info, settings.lora_r, settings.lora_targets)
        merge = int(MERGE_MARGIN * (2 * params + 4 * adapter)) + shard
        merge_detail = (
            f"bf16 base 2 B x {_count(params)} + fp32 adapter 4 B x {_count(adapter)}, "
            f"+10%, + one shard being written ({_gb(shard)})"
        )
    return {"load": load, "merge": merge, "load_detail": load_detail, "merge_detail": merge_detail}
