"""What this computer's GPUs make of a run with ``distributed`` settings: one line per GPU NVML
sees (its memory, whether the run uses it, what each GPU of the run needs) and how many GPUs of
one kind the run needs.

Plain data for display, from the arithmetic of ``core/memory_shards.py``; no torch. A GPU
"fits" as :func:`qlora_studio.core.fit.judge` says it: the need within 90% of its free memory,
"tight" up to 100%.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qlora_studio.config import DistributedConfig, Method
from qlora_studio.core.events import format_gb
from qlora_studio.core.fit import FIT_SHARE, fit_status
from qlora_studio.core.memory_settings import Settings
from qlora_studio.core.memory_shards import gpus_needed, per_gpu_estimate, sharded_as

if TYPE_CHECKING:
    from qlora_studio.core.gpu import GpuInfo
    from qlora_studio.core.models.inspect import ModelInfo

MOST_GPUS = 8  # one machine's worth: the verdict stops looking there


@dataclass
class GpuLine:
    """One GPU NVML sees, against the run."""

    index: int  # NVML index
    name: str
    free_bytes: int
    total_bytes: int
    chosen: bool  # listed in distributed.gpus (or gpus is all)
    used: bool  # the run trains on it: the first chosen GPUs, one per process
    need_bytes: int  # what each GPU of the run needs, with the configured strategy
    status: str  # "fits" | "tight" | "does not fit", need against this GPU's free memory


@dataclass
class GpuPlan:
    """The run across this computer's GPUs, ready to show."""

    strategy: str  # distributed.strategy as configured
    priced_as: str  # how its memory is priced: none | ddp | fsdp (memory_shards.sharded_as)
    processes: int  # GPUs that share the run (distributed.world_size)
    need_bytes: int  # what each of them needs
    lines: list[GpuLine]
    needed: int | None  # fewest GPUs of the judged kind that hold the run; None: not even MOST
    needed_each_bytes: int  # what each of those needs (0 when needed is None)
    verdict: str
    # the run as configured on GPUs of the judged kind: fits | tight | does not fit ("" unjudged)
    status: str = ""
    warnings: list[str] = field(default_factory=list)  # the config against these GPUs


def strategy_label(distributed: DistributedConfig) -> str:
    """The strategy as the verdict names it: "fsdp", "deepspeed ZeRO-2", ..."""
    if distributed.strategy == "deepspeed":
        return f"deepspeed ZeRO-{distributed.zero_stage}"
    return distributed.strategy


def plan_gpus(
    info: ModelInfo,
    settings: Settings,
    method: Method,
    distributed: DistributedConfig,
    gpus: list[GpuInfo],
    kind: GpuInfo | None = None,
    most: int = MOST_GPUS,
) -> GpuPlan:
    """Each of ``gpus`` (NVML's) against ``method`` trained with ``distributed``, and how many
    GPUs like ``kind`` the run needs: one when one holds it, else the fewest with fsdp, which
    alone splits the model. ``kind`` defaults to the chosen GPU with the least free memory, the
    one that limits the run; with no ``gpus`` and no ``kind`` the verdict is empty."""
    priced_as = sharded_as(distributed)
    processes = max(distributed.world_size, 1)
    need = per_gpu_estimate(info, settings, method, priced_as, processes).total_bytes
    chosen = _chosen(distributed, gpus)
    runs_on = chosen[:1] if priced_as == "none" else chosen[: distributed.processes]
    lines = [
        GpuLine(
            index=gpu.index,
            name=gpu.name,
            free_bytes=gpu.free_bytes,
            total_bytes=gpu.total_bytes,
            chosen=gpu.index in chosen,
            used=gpu.index in runs_on,
            need_bytes=need,
            status=fit_status(need, gpu.free_bytes),
        )
        for gpu in gpus
    ]
    if kind is None:
        limiting = [gpu for gpu in gpus if gpu.index in chosen] or gpus
        kind = min(limiting, key=lambda gpu: gpu.free_bytes) if limiting else None
    plan = GpuPlan(distributed.strategy, priced_as, processes, need, lines, None, 0, "")
    plan.warnings = _warnings(distributed, gpus, chosen)
    if kind is not None:
        _judge(plan, info, settings, method, distributed, kind, most)
    return plan


def _chosen(distributed: DistributedConfig, gpus: list[GpuInfo]) -> list[int]:
    """The NVML indices distributed.gpus picks, in the order the run numbers them."""
    seen = [gpu.index for gpu in gpus]
    wanted = distributed.gpu_indices
    return seen if wanted is None else [index for index in wanted if index in seen]


def _warnings(distributed: DistributedConfig, gpus: list[GpuInfo], chosen: list[int]) -> list[str]:
    if not gpus:
        return []
    warnings = []
    missing = [i for i in distributed.gpu_indices or [] if i not in {g.index for g in gpus}]
    if missing:
        listed = ", ".join(map(str, missing))
        warnings.append(f"distributed.gpus lists GPU {listed}, which this computer does not have")
    if distributed.strategy != "none" and distributed.processes > len(chosen):
        warnings.append(
            f"distributed.processes is {distributed.processes}, but {len(chosen)} GPU(s) are "
            "chosen: one process per GPU"
        )
    return warnings


def _judge(
    plan: GpuPlan,
    info: ModelInfo,
    settings: Settings,
    method: Method,
    distributed: DistributedConfig,
    kind: GpuInfo,
    most: int,
) -> None:
    """Fill ``plan``'s needed, needed_each_bytes and verdict for GPUs like ``kind``."""
    budget = int(FIT_SHARE * kind.free_bytes)
    plan.status = fit_status(plan.need_bytes, kind.free_bytes)
    needed = gpus_needed(info, settings, method, budget, "fsdp", most)
    plan.needed = needed
    if needed is not None:
        split = per_gpu_estimate(info, settings, method, "fsdp", needed)
        plan.needed_each_bytes = split.total_bytes
    label = strategy_label(distributed)
    splitter = label if plan.priced_as == "fsdp" else "fsdp"  # ZeRO-3 splits as fsdp does
    if plan.priced_as == "ddp" and plan.need_bytes > budget:
        if needed == 1:  # one GPU would hold the run, not with the gradient buckets beside it
            plan.verdict = (
                f"Fits one {kind.name} alone, but not with {label}'s gradient buckets "
                f"({format_gb(plan.need_bytes)} per GPU): choose fsdp, or a smaller batch"
            )
            return
        plan.verdict = f"{label} copies the whole model to every GPU: choose fsdp to split it"
        if needed is None:
            plan.verdict += f"; even {most} GPUs of this kind are not enough with fsdp"
        else:
            each = format_gb(plan.needed_each_bytes)
            plan.verdict += f" (it needs {needed} GPUs of this kind, {each} each)"
        return
    if needed == 1:
        plan.verdict = f"Fits one {kind.name}"
    elif needed is None:
        plan.verdict = f"Does not fit even {most} GPUs of this kind"
    else:
        each = format_gb(plan.needed_each_bytes)
        plan.verdict = f"Needs {needed} GPUs of this kind with {splitter} ({each} each)"
        if plan.priced_as == "none":
            plan.verdict += ": choose fsdp under Settings, Several GPUs"
        elif plan.processes < needed:
            plan.verdict += f"; {plan.processes} are set (distributed.processes)"
