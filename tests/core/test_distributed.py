"""Several processes (distributed.strategy: ddp) for real: two CPU processes on the gloo backend
train a tiny LoRA as one process does with the same global batch; a stop reaches both ranks
and resume continues both; one run folder, one events file and one history row; bad requests
are refused before anything starts; a rank that dies ends the whole run."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file
from test_training import make_config

from qlora_studio.config import ConfigError, RunConfig
from qlora_studio.core.errors import TrainingError
from qlora_studio.core.run_folder import ADAPTER, CHECKPOINTS, EVENTS_FILE
from qlora_studio.core.training.distributed import check_launch, sharding_arguments, visible_gpus

ROWS = [  # four different rows: one global batch of 4 is the whole epoch
    ("Convert to ISO date: 3 March 2021", "2021-03-03"),
    ("Convert to ISO date: March 4, 2020", "2020-03-04"),
    ("Convert to ISO date: 12/05/1999 (US)", "1999-12-05"),
    ("Convert to ISO date: 2001.10.28", "2001-10-28"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_file(model_dir: Path, tmp_path: Path, name: str, **train) -> Path:
    cfg = make_config(model_dir, tmp_path, "lora", **train)
    data = tmp_path / "four.jsonl"
    with data.open("w") as f:
        for prompt, answer in ROWS:
            messages = [
                {"role": "user", "content": prompt},
                {"role": "assistant", "content": answer},
            ]
            f.write(json.dumps({"messages": messages}) + "\n")
    cfg.data.path = str(data)
    cfg.data.validation_split = 0.0
    cfg.lora.dropout = 0.0  # each rank draws its own dropout masks: none, to compare exactly
    cfg.output.name = name
    cfg.train.logging_steps = 1
    path = tmp_path / f"{name}.yaml"
    cfg.save(path)
    return path


def cli(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "qlora_studio", *map(str, args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def ddp_args(processes: int = 2) -> list[str]:
    return [
        "--set",
        "distributed.strategy=ddp",
        "--set",
        f"distributed.processes={processes}",
        "--set",
        f"distributed.main_port={free_port()}",
    ]


def events_of(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def adapter_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / ADAPTER / "adapter_model.safetensors"))


def test_two_processes_train_as_one_with_the_same_global_batch(tiny_llama, tmp_path):
    # SGD: Adam turns rounding noise in near-zero gradients (LoRA A's first steps) into full
    # steps, so only a linear optimizer compares two summation orders closely
    steps = {"max_steps": 3, "save_steps": 100, "lr": 0.5, "optimizer": "sgd"}
    alone = config_file(tiny_llama, tmp_path, "alone", batch_size=4, **steps)
    pair = config_file(tiny_llama, tmp_path, "pair", batch_size=2, **steps)
    one = cli("train", alone, "--events", "jsonl")
    two = cli("train", pair, "--events", "jsonl", *ddp_args())
    out_one, err_one = one.communicate(timeout=300)
    out_two, err_two = two.communicate(timeout=300)
    assert one.returncode == 0, err_one[-3000:]
    assert two.returncode == 0, err_two[-3000:]

    runs = tmp_path / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["alone", "pair"]  # one folder, no rank's
    events = events_of(out_two)
    assert events[-1]["type"] == "done"
    assert sum(1 for e in events if e["type"] == "done") == 1  # rank 0 alone reports
    logged = [json.loads(x) for x in (runs / "pair" / EVENTS_FILE).read_text().splitlines()]
    assert [e["type"] for e in logged].count("done") == 1
    assert "rank" not in err_two.lower() or "✗" not in err_two  # no rank printed an error

    def losses(evts):
        return [e["loss"] for e in evts if e["type"] == "metrics" and "loss" in e]

    # the same rows and the same averaged gradient: the same losses and the same adapter
    assert losses(events) == pytest.approx(losses(events_of(out_one)), rel=1e-4)
    assert len(losses(events)) == 3
    first, second = adapter_weights(runs / "alone"), adapter_weights(runs / "pair")
    assert first.keys() == second.keys() and first
    for name, weight in first.items():
        torch.testing.assert_close(second[name], weight, rtol=1e-4, atol=1e-6)

    from qlora_studio.core.history.store import RunHistory

    rows = [r for r in RunHistory.open().list_runs() if Path(r.run_dir).name == "pair"]
    assert len(rows) == 1 and rows[0].status == "done"


def read_until(run: subprocess.Popen, wanted, timeout_s: float = 240) -> dict:
    """The first event on ``run``'s stdout for which ``wanted(event)`` holds."""
    assert run.stdout is not None
    deadline = time.time() + timeout_s
    for line in run.stdout:
        event = json.loads(line) if line.startswith("{") else {}
        if event and wanted(event):
            return event
        assert time.time() < deadline, "timed out waiting for an event"
    raise AssertionError(f"the run ended first: {run.wait()} {run.stderr.read()[-3000:]}")


def test_a_stop_reaches_both_ranks_resume_continues_both_and_a_dead_rank_ends_the_run(
    tiny_llama, tmp_path
):
    path = config_file(tiny_llama, tmp_path, "stopped", batch_size=2, max_steps=500)
    run = cli("train", path, "--events", "jsonl", *ddp_args())
    step = read_until(run, lambda e: e["type"] == "progress" and e["step"] >= 2)["step"]
    assert run.stdin is not None
    run.stdin.write("stop\n")
    run.stdin.flush()
    out, err = run.communicate(timeout=240)
    assert run.returncode == 130, err[-3000:]
    cancelled = [e for e in events_of(out) if e["type"] == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0]["step"] >= step
    stopped_at = cancelled[0]["step"]
    run_dir = tmp_path / "runs" / "stopped"
    assert (run_dir / CHECKPOINTS / f"checkpoint-{stopped_at}").is_dir()
    assert not (run_dir / ".stop-requested").exists()

    # resume: both ranks restart from that checkpoint and train on (DDP steps need both)
    resumed = cli("resume", run_dir, "--set", "train.save_steps=1000", "--events", "jsonl")
    read_until(resumed, lambda e: "continuing from step" in e.get("message", ""))
    reached = read_until(resumed, lambda e: e["type"] == "progress" and e["step"] > stopped_at)

    # one rank dies: the whole run ends with an error, a checkpoint of the last completed step
    # (none was due: save_steps is 1000), nothing left running
    ranks = [
        p
        for p in psutil.Process(resumed.pid).children(recursive=True)
        if "torch.distributed.run" not in " ".join(p.cmdline())
    ]
    assert len(ranks) == 2
    os.kill(max(ranks, key=lambda p: p.pid).pid, signal.SIGKILL)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 1
    assert "A training process failed" in out
    kept = [e for e in events_of(out) if e["type"] == "checkpoint"]
    assert kept and kept[-1]["step"] >= reached["step"], out[-3000:]
    assert (run_dir / CHECKPOINTS / f"checkpoint-{kept[-1]['step']}").is_dir()
    time.sleep(1)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)
    logged = (run_dir / EVENTS_FILE).read_text().splitlines()
    # one events file: the first session's stop and the resumed session, each once
    assert sum(1 for line in logged if '"type":"cancelled"' in line) == 1
    assert sum(1 for line in logged if "continuing from step" in line) == 1

    # and both ranks continue from the checkpoint the failure left (rank 0's alone)
    again = cli(
        "resume",
        run_dir,
        "--events",
        "jsonl",
        "--set",
        "train.max_steps=" + str(kept[-1]["step"] + 1),
    )
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0, err[-3000:]
    assert f"continuing from step {kept[-1]['step']}" in out
    assert [e["step"] for e in events_of(out) if e["type"] == "done"] == [kept[-1]["step"] + 1]


def test_requests_that_cannot_run_are_refused_before_anything_starts(tiny_llama, tmp_path):
    cfg = RunConfig.load(config_file(tiny_llama, tmp_path, "refused"))
    cfg.distributed.processes = 2
    with pytest.raises(ConfigError) as error:
        cfg.validate()
    assert error.value.field == "distributed.strategy"
    cfg.distributed.strategy = "ddp"
    cfg.validate()
    with pytest.raises(TrainingError, match="this machine has 1 GPU"):
        check_launch(cfg, "cuda", gpu_count=1)
    check_launch(cfg, "cpu", gpu_count=0)  # CPU processes: any number
    cfg.method, cfg.train.full_recipe = "full", "lean"
    with pytest.raises(TrainingError, match="full_recipe: mixed"):
        check_launch(cfg, "cpu", gpu_count=0)
    cfg.distributed.processes = 1
    with pytest.raises(ConfigError, match="at least 2 processes"):
        cfg.validate()
    cfg.distributed.num_machines, cfg.output.name = 2, ""  # every machine must find the folder
    with pytest.raises(ConfigError) as error:
        cfg.validate()
    assert error.value.field == "output.name"


def launch_script(config: Path, *args) -> subprocess.CompletedProcess:
    """`qlora-studio launch-script CONFIG --slurm ARGS`, run to its end."""
    command = [sys.executable, "-m", "qlora_studio", "launch-script", config, "--slurm", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_the_slurm_script_runs_one_launcher_per_node(tiny_llama, tmp_path):
    config = config_file(tiny_llama, tmp_path, "cluster")
    script = tmp_path / "job.sh"
    made = launch_script(
        config, "--nodes", "2", "--gpus-per-node", "4", "--time", "01:00:00", "-o", script
    )
    assert made.returncode == 0, made.stderr
    text = script.read_text()
    assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=4" in text
    assert "#SBATCH --time=01:00:00" in text
    assert subprocess.run(["bash", "-n", script]).returncode == 0  # valid bash
    # what srun runs on node 1: the node's own rank and node 0's address, one shared folder
    srun = next(line for line in text.splitlines() if line.startswith("srun "))
    inner = shlex.split(srun)[-1]
    echo = 'qlora-studio() { printf "%s\\n" "$@"; }; '
    env = {**os.environ, "SLURM_NODEID": "1", "MAIN_ADDRESS": "node7", "SLURM_JOB_ID": "42"}
    argv = subprocess.run(
        ["bash", "-c", echo + inner], capture_output=True, text=True, env=env
    ).stdout.splitlines()
    assert argv[:2] == ["train", str(config.resolve())]
    sets = dict(a.split("=", 1) for a in argv[2:] if a != "--set")
    assert sets["distributed.machine_rank"] == "1" and sets["distributed.num_machines"] == "2"
    assert sets["distributed.main_address"] == "node7" and sets["distributed.processes"] == "4"
    assert sets["output.name"] == "cluster-42"
    cfg = RunConfig.load(config).with_overrides([f"{k}={v}" for k, v in sets.items()])
    assert cfg.distributed.world_size == 8

    one_gpu = launch_script(config, "--nodes", "1", "--gpus-per-node", "1")
    assert one_gpu.returncode == 1 and "single process" in one_gpu.stderr


def test_sharding_strategies_and_gpu_choices_are_refused_where_they_cannot_run(
    tiny_llama, tmp_path
):
    cfg = RunConfig.load(config_file(tiny_llama, tmp_path, "sharded"))
    cfg.distributed.strategy, cfg.distributed.processes = "fsdp", 2
    cfg.validate()
    with pytest.raises(TrainingError, match="GPUs only") as error:
        check_launch(cfg, "cpu", gpu_count=0)
    assert "strategy: ddp" in error.value.hint
    check_launch(cfg, "cuda", gpu_count=2)
    cfg.distributed.gpus = "0,3"
    cfg.validate()
    with pytest.raises(TrainingError, match="lists GPU 3, but this machine has 2"):
        check_launch(cfg, "cuda", gpu_count=2)
    assert visible_gpus(cfg) == {"CUDA_VISIBLE_DEVICES": "0,3"}
    cfg.distributed.gpus = "all"
    assert visible_gpus(cfg) == {}
    for bad, field in (("0,0", "distributed.gpus"), ("1", "distributed.gpus"), ("a", None)):
        cfg.distributed.gpus = bad
        with pytest.raises(ConfigError) as config_error:
            cfg.validate()
        assert config_error.value.field == (field or "distributed.gpus")
    cfg.distributed.gpus = "all"
    cfg.distributed.strategy = "deepspeed"
    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(TrainingError, match="deepspeed package is not installed"):
            check_launch(cfg, "cuda", gpu_count=2)
    cfg.distributed.zero_stage = 1
    with pytest.raises(ConfigError) as config_error:
        cfg.validate()
    assert config_error.value.field == "distributed.zero_stage"


def test_fsdp_and_zero_become_trainer_arguments_and_shardable_4bit_storage(tiny_llama, tmp_path):
    from transformers import TrainingArguments

    from qlora_studio.core.models.loading import load_causal_lm

    cfg = RunConfig.load(config_file(tiny_llama, tmp_path, "fsdp"))
    cfg.method = "qlora"
    cfg.distributed.strategy, cfg.distributed.processes = "fsdp", 2
    cfg.validate()
    assert cfg.distributed.shards_weights
    arguments = sharding_arguments(cfg, ["LlamaDecoderLayer"], checkpointing=True)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, **arguments)
    plugin = args.fsdp_plugin_args  # what accelerate's FSDP plugin is built from
    assert plugin["fsdp_version"] == 2 and plugin["reshard_after_forward"] is True
    assert plugin["transformer_cls_names_to_wrap"] == "LlamaDecoderLayer"
    assert plugin["activation_checkpointing"] is True  # FSDP's, in place of the model's
    cfg.distributed.strategy, cfg.distributed.zero_stage = "deepspeed", 3
    zero = sharding_arguments(cfg, [], checkpointing=False)["deepspeed"]
    assert zero["zero_optimization"]["stage"] == 3 and cfg.distributed.shards_weights
    cfg.distributed.zero_stage = 2
    assert not cfg.distributed.shards_weights
    assert sharding_arguments(cfg, [], False)["deepspeed"]["zero_optimization"]["stage"] == 2

    # FSDP shards floating-point tensors only: the packed 4-bit weights are stored in the
    # compute dtype (fp32 on the CPU) instead of uint8, and still train
    cfg.distributed.strategy = "fsdp"
    model = load_causal_lm(tiny_llama, cfg, "cpu", purpose="train")
    packed = [m.weight for m in model.modules() if type(m).__name__ == "Linear4bit"]
    assert packed and {w.dtype for w in packed} == {torch.float32}
    ids = torch.tensor([[1, 5, 9, 13]])
    model(input_ids=ids, labels=ids).loss.backward()  # dequantizes from the float storage
    cfg.distributed.strategy = "ddp"
    plain = load_causal_lm(tiny_llama, cfg, "cpu", purpose="train")
    assert {m.weight.dtype for m in plain.modules() if type(m).__name__ == "Linear4bit"} == {
        torch.uint8
    }
