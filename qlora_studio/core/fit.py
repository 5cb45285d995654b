"""Will it fit: the verdict of an estimate against the memory available, the largest batch and
sequence that fit, what to change when it does not, auto-fit (``train.fit: auto``: checkpointing
and a micro-batch that keep the effective batch and fit the GPU), the check ``train`` runs before
the model loads, and the system RAM a run needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlora_studio.config import METHOD_LABELS, METHODS, Method
from qlora_studio.core.events import GB, format_gb
from qlora_studio.core.memory import (
    MethodEstimate,
    estimate_memory,
    format_count,
    lora_trainable_params,
)
from qlora_studio.core.memory_settings import Settings, precision, step_in_backward
from qlora_studio.core.models.inspect import ModelInfo

if TYPE_CHECKING:
    from collections.abc import Callable

    from qlora_studio.config import RunConfig

FIT_SHARE = 0.9  # "fits" leaves 10% of the memory free; up to 100% is "tight"
DEFAULT_SHARD_BYTES = 5 * GB  # the usual safetensors shard size on the Hub
MERGE_MARGIN = 1.1
STORED_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}


@dataclass
class Verdict:
    """Whether an estimate fits the memory available, and what to change when it does not."""

    method: Method
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
    info: ModelInfo, settings: Settings, method: Method, budget: float, setting: str, cap: int
) -> int:
    """The largest value in [1, cap] of ``setting`` (batch_size or seq_len) whose estimate stays
    within ``budget``, the other settings unchanged; 0 when even 1 does not. The estimate grows
    with both, so doubling then bisecting finds it."""

    def fits(n: int) -> bool:
        if setting == "batch_size":
            trial = dataclasses.replace(settings, batch_size=n)
        else:
            trial = dataclasses.replace(settings, seq_len=n)
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


def fit_status(need_bytes: float, free_bytes: float) -> str:
    """ "fits" within 90% of ``free_bytes``, "tight" up to all of it, else "does not fit"."""
    if need_bytes <= FIT_SHARE * free_bytes:
        return "fits"
    return "tight" if need_bytes <= free_bytes else "does not fit"


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
    status = fit_status(needed, available_bytes)
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


_CHEAPER: dict[Method, tuple[Method, ...]] = {
    "full": ("lora", "qlora"),
    "lora": ("qlora",),
    "qlora": (),
}
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
        keep = (
            "the lean full recipe cannot accumulate gradients"
            if step_in_backward(settings, method)
            else "raise train.grad_accum to keep the effective batch"
        )
        advice.append(f"largest batch size that fits: {max_batch} ({keep})")
    if 0 < max_seq < settings.seq_len:
        advice.append(
            f"longest sequence that fits at batch {settings.batch_size}: {max_seq} "
            "(lower data.max_length)"
        )

    def needs(other: Method = method, **changes: Any) -> int:
        trial = dataclasses.replace(settings, **changes)
        return estimate_memory(info, trial, other).total_bytes

    options: list[tuple[int, str]] = []
    if not settings.gradient_checkpointing:
        saved = needed - needs(gradient_checkpointing=True)
        options.append((saved, f"turn on gradient checkpointing (saves ~{format_gb(saved, 1)})"))
    if settings.loss_impl == "full_logits":
        saved = needed - needs(loss_impl="chunked")
        options.append((saved, f"set train.loss_impl to chunked (saves ~{format_gb(saved, 1)})"))
    if method == "full" and settings.full_recipe != "lean":
        saved = needed - needs(full_recipe="lean")
        options.append((saved, f"set train.full_recipe to lean (saves ~{format_gb(saved, 1)})"))
    if settings.optimizer not in ("paged_adamw_8bit", "sgd"):
        saved = needed - needs(optimizer="paged_adamw_8bit")
        options.append(
            (saved, f"switch optimizer to paged_adamw_8bit (saves ~{format_gb(saved, 1)})")
        )
    if method != "full" and settings.lora_r > 8:
        saved = needed - needs(lora_r=8)
        options.append((saved, f"lower lora.r to 8 (saves ~{format_gb(saved, 1)})"))
    if method == "qlora" and not settings.double_quant:
        saved = needed - needs(double_quant=True)
        options.append((saved, f"turn on quant.double_quant (saves ~{format_gb(saved, 1)})"))
    for other in _CHEAPER[method]:
        other_needed = needs(other)
        if other_needed < needed:
            text = f"use {METHOD_LABELS[other]} (needs ~{format_gb(other_needed, 1)})"
            options.append((needed - other_needed, text))
        elif max_batch == 0:  # heavier at this batch, yet it may fit where this method cannot
            batch = _largest_fitting(info, settings, other, budget, "batch_size", 1 << 16)
            if batch:
                at_batch = needs(other, batch_size=batch)
                text = (
                    f"use {METHOD_LABELS[other]} at batch {batch} (needs ~{format_gb(at_batch, 1)})"
                )
                options.append((needed - at_batch, text))
    options.sort(key=lambda option: -option[0])
    advice += [text for saved, text in options if saved > 0]
    logits = estimate.term("logits and loss")
    if estimate.dominant == "logits and loss" and logits is not None:
        fix = (
            "shorter sequences or a smaller batch shrink it"
            if settings.loss_impl == "full_logits"
            else "a smaller train.loss_chunk_tokens shrinks it"
        )
        advice.append(
            f"the logits dominate: the {info.vocab_size:,}-token vocabulary costs "
            f"{format_gb(logits.bytes, 1)} at batch "
            f"{settings.batch_size} x {settings.seq_len} tokens; " + fix
        )
    if max_batch == 0 and max_seq < 64:
        floor = needs(batch_size=1, seq_len=64)
        weights = sum(t.bytes for t in estimate.terms if t.name in _WEIGHT_TERMS)
        advice.append(
            f"even at batch 1 and 64 tokens {METHOD_LABELS[method]} needs ~{format_gb(floor, 1)} "
            f"(the weights alone {format_gb(weights, 1)}): "
            f"no batch or sequence length fits this GPU"
        )
    return advice


# ---- auto-fit ----------------------------------------------------------------------------
@dataclass
class FitChoice:
    """What auto-fit chose for one GPU, or why nothing fits (then ``hint`` says what would)."""

    fits: bool
    batch_size: int  # the micro-batch: examples per device step
    grad_accum: int  # batch_size x grad_accum is the user's effective batch
    gradient_checkpointing: bool
    needed_bytes: int  # the estimate at the chosen settings
    available_bytes: int
    reason: str  # one line: what was chosen and why
    hint: str = ""  # when nothing fits: the changes that would make it fit
    changed: bool = False  # whether any of the three settings differs from the config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _divisors(n: int) -> list[int]:
    """The divisors of ``n``, largest first."""
    return sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True)


def auto_fit(
    info: ModelInfo,
    cfg: RunConfig,
    available_bytes: int,
    *,
    seq_len: int | None = None,
    bf16_supported: bool = True,
) -> FitChoice:
    """Pick gradient checkpointing and a micro-batch (with gradient accumulation) that keep the
    effective batch ``train.batch_size x train.grad_accum`` and fit ``available_bytes`` of GPU
    memory by the estimate (within 90%, as :func:`judge` says "fits"). Checkpointing off is
    tried first (it skips the ~30% recompute), each time with the largest micro-batch that
    divides the effective batch. The lean full recipe steps the optimizer in backward and
    cannot accumulate, so its micro-batch stays the batch size. ``seq_len`` (the longest
    row) replaces ``data.max_length`` when given; ``bf16_supported`` (the GPU's, from
    ``GpuInfo.bf16_supported``) resolves ``quant.compute_dtype: auto``. Pure: no GPU needed."""
    settings = Settings.from_config(cfg, device="cuda", bf16_supported=bf16_supported)
    if seq_len:
        settings.seq_len = min(settings.seq_len, seq_len)
    method, t = cfg.method, cfg.train
    effective = t.batch_size * t.grad_accum
    budget = FIT_SHARE * available_bytes
    no_accum = method == "full" and t.full_recipe == "lean"  # config.py refuses accumulation
    micro_batches = [effective] if no_accum else _divisors(effective)

    def needs(batch: int, checkpointing: bool) -> int:
        trial = dataclasses.replace(
            settings, batch_size=batch, gradient_checkpointing=checkpointing
        )
        return estimate_memory(info, trial, method).total_bytes

    smallest = micro_batches[-1]
    without = 0  # what the smallest micro-batch needs without checkpointing
    for checkpointing in (False, True):
        for batch in micro_batches:
            needed = needs(batch, checkpointing)
            if needed <= budget:
                choice = FitChoice(True, batch, effective // batch, checkpointing, needed, 0, "")
                return _explain(cfg, choice, int(available_bytes), smallest, without)
        without = needed
    trial = dataclasses.replace(settings, batch_size=smallest, gradient_checkpointing=True)
    estimate = estimate_memory(info, trial, method)
    verdict = judge(estimate, info, trial, available_bytes)
    hints = list(verdict.advice)
    if no_accum and effective > 1:
        hints.insert(
            0,
            "the lean full recipe steps the optimizer in backward and cannot accumulate "
            f"gradients: lower train.batch_size (now {effective})",
        )
    reason = (
        f"{METHOD_LABELS[method]} does not fit {format_gb(available_bytes, 1)}: even micro-batch "
        f"{smallest} x {settings.seq_len} tokens with gradient checkpointing needs "
        f"~{format_gb(estimate.total_bytes, 1)} (largest term: {estimate.dominant})"
    )
    return FitChoice(
        fits=False,
        batch_size=t.batch_size,
        grad_accum=t.grad_accum,
        gradient_checkpointing=t.gradient_checkpointing,
        needed_bytes=estimate.total_bytes,
        available_bytes=int(available_bytes),
        reason=reason,
        hint="; ".join(hints),
    )


def _explain(
    cfg: RunConfig, choice: FitChoice, available: int, smallest: int, without: int
) -> FitChoice:
    """``choice`` with its reason, its available memory and whether it changed the config."""
    t = cfg.train
    effective = t.batch_size * t.grad_accum
    why = (
        "off, which skips the ~30% recompute"
        if not choice.gradient_checkpointing
        else f"on (without it even micro-batch {smallest} needs ~{format_gb(without, 1)})"
    )
    before = (t.batch_size, t.grad_accum, t.gradient_checkpointing)
    after = (choice.batch_size, choice.grad_accum, choice.gradient_checkpointing)
    was = ""
    if after != before:
        was = (
            f" (the config had batch {t.batch_size} x grad_accum {t.grad_accum}, checkpointing "
            f"{'on' if t.gradient_checkpointing else 'off'})"
        )
    choice.reason = (
        f"micro-batch {choice.batch_size} x grad_accum {choice.grad_accum} keeps the effective "
        f"batch of {effective}{was}; gradient checkpointing {why}; needs "
        f"~{format_gb(choice.needed_bytes, 1)} of {format_gb(available, 1)}"
    )
    choice.available_bytes, choice.changed = available, after != before
    return choice


def fit_config(
    info: ModelInfo,
    cfg: RunConfig,
    available_bytes: int,
    longest: int = 0,
    bf16_supported: bool = True,
) -> tuple[RunConfig, str]:
    """``cfg`` checked against ``available_bytes`` of GPU memory: with ``train.fit: auto`` a copy
    with the micro-batch, accumulation and checkpointing :func:`auto_fit` chose, and the line
    saying what and why; with ``off`` ``cfg`` itself and "". Raises :class:`TrainingError`,
    whose hint names the change that would make it fit, when the run cannot fit. ``longest``
    is the longest row in tokens (0: data.max_length); ``bf16_supported`` is the GPU's."""
    from qlora_studio.config import RunConfig
    from qlora_studio.core.errors import TrainingError

    d = cfg.distributed
    if d.strategy != "none" and d.world_size > 1:
        return _check_each_gpu(info, cfg, available_bytes, longest, bf16_supported)
    if cfg.train.fit == "auto":
        choice = auto_fit(
            info, cfg, available_bytes, seq_len=longest or None, bf16_supported=bf16_supported
        )
        if not choice.fits:
            raise TrainingError(f"Auto-fit: {choice.reason}", choice.hint)
        fitted = RunConfig.from_dict(cfg.to_dict())
        fitted.train.batch_size = choice.batch_size
        fitted.train.grad_accum = choice.grad_accum
        fitted.train.gradient_checkpointing = choice.gradient_checkpointing
        return fitted.validate(), f"Auto-fit: {choice.reason}"
    settings = Settings.from_config(cfg, device="cuda", bf16_supported=bf16_supported)
    if longest:
        settings.seq_len = min(settings.seq_len, longest)
    estimate = estimate_memory(info, settings, cfg.method)
    verdict = judge(estimate, info, settings, available_bytes)
    if verdict.status == "does not fit":
        raise TrainingError(
            f"{METHOD_LABELS[cfg.method]} needs ~{format_gb(estimate.total_bytes, 1)} "
            f"of GPU memory at "
            f"batch {settings.batch_size} x {settings.seq_len} tokens and the GPU has "
            f"{format_gb(available_bytes, 1)} free (largest term: {estimate.dominant})",
            "; ".join([*verdict.advice, "or set train.fit to auto"]),
        )
    return cfg, ""


def _check_each_gpu(
    info: ModelInfo, cfg: RunConfig, available_bytes: int, longest: int, bf16_supported: bool
) -> tuple[RunConfig, str]:
    """Several processes: each GPU's share (``core/memory_shards.py``: ddp replicates, fsdp
    and ZeRO-3 split) against ``available_bytes``, the least free of the GPUs used. Auto-fit
    keeps the settings here: it searches one GPU's batch, not a shared one."""
    from qlora_studio.core.errors import TrainingError
    from qlora_studio.core.memory_shards import per_gpu_estimate, sharded_as

    d = cfg.distributed
    strategy = sharded_as(d)
    settings = Settings.from_config(cfg, device="cuda", bf16_supported=bf16_supported)
    if longest:
        settings.seq_len = min(settings.seq_len, longest)
    share = per_gpu_estimate(info, settings, cfg.method, strategy, d.world_size)
    each = (
        f"{METHOD_LABELS[cfg.method]} with {d.strategy} over {d.world_size} processes needs "
        f"~{format_gb(share.total_bytes, 1)} on each GPU"
    )
    if share.total_bytes > available_bytes:
        hint = "lower train.batch_size or data.max_length"
        if strategy == "ddp":
            hint = (
                "use distributed.strategy: fsdp, which splits the model across the GPUs, or " + hint
            )
        raise TrainingError(
            f"{each}, and the GPU with the least free memory has {format_gb(available_bytes, 1)}",
            f"{hint}; `qlora-studio estimate` with --strategy shows each GPU's terms",
        )
    kept = "; auto-fit keeps the settings with several processes" if cfg.train.fit == "auto" else ""
    return cfg, f"Memory check: {each}{kept}"


def fit_before_loading(
    cfg: RunConfig,
    model_dir: Path,
    device: str,
    longest: int = 0,
    report: Callable[[str], None] = lambda message: None,
) -> RunConfig:
    """What ``train`` does before the model loads: on a GPU, :func:`fit_config` against the free
    memory NVML reports, saying through ``report`` what auto-fit chose; raises
    :class:`TrainingError` when the run cannot fit. On the CPU there is nothing to fit against
    and ``cfg`` is returned as it is (auto-fit says so)."""
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.gpu import gpu_bf16_supported, nvml_device_memory
    from qlora_studio.core.models.inspect import inspect_model

    if device != "cuda":
        if cfg.train.fit == "auto":
            report("Auto-fit: training on the CPU, no GPU memory to fit: the settings are kept")
        return cfg
    # the GPUs the run uses (distributed.gpus, or the first `processes`): the least free one
    d = cfg.distributed
    indices = d.gpu_indices or list(range(d.processes if d.world_size > 1 else 1))
    known = [(i, m) for i in indices if (m := nvml_device_memory(i)) is not None]
    index, memory = min(known, key=lambda r: r[1]["free"]) if known else (0, None)
    if memory is None:
        report("Memory check skipped: NVML cannot read the GPU's memory (nvidia-ml-py)")
        return cfg
    try:
        info = inspect_model(
            model_dir,
            allow_pickle=cfg.model.allow_pickle,
            trust_remote_code=cfg.model.trust_remote_code,
        )
    except StudioError as exc:
        report(f"Memory check skipped: the model could not be inspected ({exc.message})")
        return cfg
    cfg, message = fit_config(info, cfg, memory["free"], longest, gpu_bf16_supported(index))
    if message:
        report(f"{message} ({format_gb(memory['free'], 1)} free on the GPU)")
    return cfg


# ---- system RAM --------------------------------------------------------------------------
def _largest_shard(info: ModelInfo) -> tuple[int, str]:
    """The largest safetensors file in the model folder, or the Hub's usual 5 GB shard (or the
    whole model when smaller) when the folder holds no weights."""
    try:
        sizes = [f.stat().st_size for f in Path(info.path).glob("*.safetensors")]
    except OSError:
        sizes = []
    if sizes:
        return max(sizes), f"largest shard on disk {format_gb(max(sizes), 1)}"
    stored = STORED_BYTES.get(info.torch_dtype, 2) * info.params_total
    shard = min(stored, DEFAULT_SHARD_BYTES)
    return shard, f"no weights here: assumed shard {format_gb(shard, 1)}"


def system_ram_needed(
    info: ModelInfo, method: Method, settings: Settings | None = None
) -> dict[str, Any]:
    """CPU RAM a GPU run needs outside the training loop, in bytes, with how each was computed:

    - ``load``: peak while loading. safetensors are memory-mapped, so the stored weights pass
      through RAM about one shard at a time. QLoRA loads with a device map and quantizes on the
      GPU: about one shard. Full and LoRA build the model on the CPU in the training dtype
      (full: bf16 for the lean recipe on a GPU, else fp32; LoRA: the compute dtype) before
      moving it: the whole model plus one shard.
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
        per_param = precision(settings, method).base  # lean full: bf16 on a GPU
        load = int(per_param * params) + shard
        load_detail = (
            f"model built on the CPU at {per_param:g} B x {format_count(params)} before moving to "
            f"the GPU, + {shard_how}"
        )
    if method == "full":
        merge, merge_detail = 0, "a full fine-tune is saved whole: nothing to merge"
    else:
        adapter = lora_trainable_params(info, settings.lora_r, settings.lora_targets)
        merge = int(MERGE_MARGIN * (2 * params + 4 * adapter)) + shard
        merge_detail = (
            f"bf16 base 2 B x {format_count(params)} + fp32 adapter 4 B x {format_count(adapter)}, "
            f"+10%, + one shard being written ({format_gb(shard, 1)})"
        )
    return {"load": load, "merge": merge, "load_detail": load_detail, "merge_detail": merge_detail}
