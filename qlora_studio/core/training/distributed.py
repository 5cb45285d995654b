"""Several processes (``distributed.strategy: ddp``): torchrun starts them, the Trainer (through
accelerate) wraps the model in DistributedDataParallel, and only rank 0 writes.

The command a user types (``train`` or ``resume``) becomes a launcher: it checks the request,
makes the run folder, and starts ``python -m torch.distributed.run`` with the same command for
every rank, pointed at that folder by ``QLORA_STUDIO_RUN_DIR``. Rank 0 writes the events, the
run history row, the checkpoints, the adapter and the console; the other ranks compute and
print only their errors. A stop (Ctrl-C, SIGTERM or a 'stop' line on the launcher's stdin)
leaves a request file in the run folder; at the end of each step every rank reads it and the
ranks agree (an all-reduce) so that all stop after the same step and rank 0 saves its
checkpoint. Pure Python here; torch is imported only where a rank needs it.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qlora_studio.core.errors import TrainingError

if TYPE_CHECKING:
    from qlora_studio.config import RunConfig

RUN_DIR_ENV = "QLORA_STUDIO_RUN_DIR"  # the run folder the launcher made, for every rank
STOP_FILE = ".stop-requested"  # in the run folder while a stop is asked for


@dataclass(frozen=True)
class Rank:
    """This process's place in a launch (torchrun's environment); rank 0 of 1 when alone."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_rank() -> Rank:
    env = os.environ
    try:
        return Rank(
            int(env.get("RANK", "0")),
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", "0")),
        )
    except ValueError:
        return Rank()


def needs_launch(cfg: RunConfig) -> bool:
    """Whether ``cfg`` asks for several processes and this process is not one of them yet."""
    return cfg.distributed.world_size > 1 and "RANK" not in os.environ


SHARDING = ("fsdp", "deepspeed")  # strategies that split the model across GPUs


def check_launch(cfg: RunConfig, device: str, gpu_count: int) -> None:
    """Refuse, before anything starts, a launch that cannot run: more processes than GPUs (or
    a chosen GPU this machine lacks) on a GPU run, a sharding strategy on the CPU or without
    its package, or the lean full recipe (its optimizer steps in backward, before the
    gradients are averaged or sharded)."""
    d = cfg.distributed
    indices = d.gpu_indices
    if device == "cuda" and indices is not None and max(indices) >= gpu_count:
        raise TrainingError(
            f"distributed.gpus lists GPU {max(indices)}, but this machine has {gpu_count} GPU(s) "
            f"(0 to {gpu_count - 1})",
            "choose GPUs from `nvidia-smi -L`, or set distributed.gpus: all",
        )
    if device == "cuda" and d.processes > gpu_count:
        raise TrainingError(
            f"distributed.processes is {d.processes}, but this machine has {gpu_count} GPU(s)",
            f"set distributed.processes to {gpu_count} or fewer (one process per GPU)",
        )
    if d.strategy in SHARDING and device != "cuda":
        raise TrainingError(
            f"{d.strategy} shards the model across GPUs, and this run is on the {device}: "
            "accelerate runs it on GPUs only",
            "use distributed.strategy: ddp for several CPU processes",
        )
    if d.strategy == "deepspeed":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TrainingError(
                "distributed.strategy is deepspeed, but the deepspeed package is not installed",
                "pip install deepspeed, or use distributed.strategy: fsdp",
            )
        if d.config_file and not Path(d.config_file).is_file():
            raise TrainingError(
                f"distributed.config_file {d.config_file} does not exist",
                "point it at a DeepSpeed JSON config, or leave it empty to use zero_stage",
            )
    if cfg.method == "full" and cfg.train.full_recipe == "lean":
        raise TrainingError(
            "the lean full fine-tuning recipe steps each parameter in backward, which "
            f"{d.strategy}'s gradient averaging cannot follow",
            "set train.full_recipe: mixed for full fine-tuning with several processes, or use "
            "LoRA/QLoRA",
        )


def visible_gpus(cfg: RunConfig) -> dict[str, str]:
    """The environment that keeps a run to ``distributed.gpus`` (CUDA_VISIBLE_DEVICES), or
    nothing for all GPUs."""
    indices = cfg.distributed.gpu_indices
    return {} if indices is None else {"CUDA_VISIBLE_DEVICES": ",".join(map(str, indices))}


def sharding_arguments(
    cfg: RunConfig, layer_classes: list[str], checkpointing: bool
) -> dict[str, object]:
    """``TrainingArguments`` keywords for a sharding strategy ({} otherwise):

    - fsdp: FSDP2 full shard through accelerate, one unit per decoder layer (``layer_classes``,
      the model's ``_no_split_modules``), the adapter or model saved whole by rank 0, and
      FSDP's own activation checkpointing in place of the model's when checkpointing is on;
    - deepspeed: the user's DeepSpeed JSON as it is, or ZeRO ``zero_stage`` with the batch,
      accumulation, clipping and precision left to the Trainer ("auto").
    """
    d = cfg.distributed
    if d.strategy == "fsdp":
        return {
            "fsdp": True,  # full shard: reshard_after_forward below
            "fsdp_config": {
                "version": 2,
                "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "transformer_layer_cls_to_wrap": list(layer_classes),
                "state_dict_type": "FULL_STATE_DICT",
                "cpu_ram_efficient_loading": False,
                "reshard_after_forward": True,
                "activation_checkpointing": checkpointing,
            },
        }
    if d.strategy == "deepspeed":
        if d.config_file:
            return {"deepspeed": str(Path(d.config_file).resolve())}
        return {
            "deepspeed": {
                "zero_optimization": {"stage": d.zero_stage, "overlap_comm": True},
                "bf16": {"enabled": "auto"},
                "fp16": {"enabled": "auto"},
                "train_micro_batch_size_per_gpu": "auto",
                "gradient_accumulation_steps": "auto",
                "gradient_clipping": "auto",
                "train_batch_size": "auto",
            }
        }
    return {}


def torchrun_command(cfg: RunConfig, rank_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run ... -m qlora_studio RANK_ARGS`` for this machine."""
    d = cfg.distributed
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={d.processes}",
        f"--nnodes={d.num_machines}",
        f"--node-rank={d.machine_rank}",
        f"--master-addr={d.main_address}",
        f"--master-port={d.main_port}",
        "-m",
        "qlora_studio",
        *rank_args,
    ]


def request_stop(run_dir: Path) -> None:
    """Ask every rank to stop after its current step."""
    try:
        (Path(run_dir) / STOP_FILE).touch()
    except OSError:
        pass


def clear_stop(run_dir: Path) -> None:
    try:
        (Path(run_dir) / STOP_FILE).unlink()
    except OSError:
        pass


def stop_requested(run_dir: Path | None) -> bool:
    return run_dir is not None and (Path(run_dir) / STOP_FILE).exists()


def agree(flag: bool) -> bool:
    """True on every rank when any rank says True (an all-reduce; ``flag`` when alone)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def slurm_script(
    cfg: RunConfig,
    config_path: Path,
    *,
    nodes: int,
    gpus_per_node: int,
    job_name: str = "qlora-studio",
    partition: str = "",
    time_limit: str = "",
    port: int = 29500,
) -> str:
    """An ``sbatch`` script that trains ``config_path`` on ``nodes`` machines of
    ``gpus_per_node`` GPUs: one ``qlora-studio train`` per machine (srun), each starting its
    machine's processes through torchrun, the first machine's address as the meeting point,
    and one run folder named after the job on the shared disk."""
    import shlex

    if nodes < 1 or gpus_per_node < 1:
        raise TrainingError(
            f"a Slurm job needs at least one node and one GPU per node, got {nodes} and "
            f"{gpus_per_node}",
            "pass --nodes N and --gpus-per-node G",
        )
    if nodes * gpus_per_node < 2:
        raise TrainingError(
            "one node with one GPU is a single process: no launch is needed",
            "run `qlora-studio train` in an ordinary Slurm job, or ask for more GPUs",
        )
    name = cfg.output.name or job_name
    options = [
        f"--job-name={job_name}",
        f"--nodes={nodes}",
        "--ntasks-per-node=1",
        f"--gpus-per-node={gpus_per_node}",
        f"--output={job_name}-%j.log",
    ]
    if partition:
        options.append(f"--partition={partition}")
    if time_limit:
        options.append(f"--time={time_limit}")
    settings = [
        "distributed.strategy=ddp",
        f"distributed.processes={gpus_per_node}",
        f"distributed.num_machines={nodes}",
        "distributed.machine_rank=$SLURM_NODEID",
        "distributed.main_address=$MAIN_ADDRESS",
        f"distributed.main_port={port}",
        "train.device=cuda",
        f"output.name={name}-$SLURM_JOB_ID",
    ]
    sets = " ".join(f'--set "{s}"' for s in settings)
    config = _double_quoted(str(Path(config_path).resolve()))
    # the node's own shell expands $SLURM_NODEID and $MAIN_ADDRESS inside srun
    command = shlex.quote(f"qlora-studio train {config} {sets}")
    lines = [
        "#!/bin/bash",
        f"# Generated by `qlora-studio launch-script --slurm` from {Path(config_path).name}.",
        "# One `qlora-studio train` per node; each starts its node's GPUs through torchrun.",
        "# The run folder is output.dir/<name>-<job id>, on a disk every node sees.",
        *(f"#SBATCH {option}" for option in options),
        "set -euo pipefail",
        'MAIN_ADDRESS=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MAIN_ADDRESS",
        f"srun --kill-on-bad-exit=1 bash -c {command}",
        "",
    ]
    return "\n".join(lines)


def _double_quoted(text: str) -> str:
    """``text`` as one word inside a bash command, with nothing in it expanded."""
    escaped = "".join("\\" + c if c in '"$`\\' else c for c in text)
    return f'"{escaped}"'
