"""Real tokens per second on long-tailed data: the engine's packing modes next to a plain padded
loop and TRL's SFTTrainer, same model, LoRA, rows, seed and learning rate, one run.

    python benchmarks/packing.py                  # demo model, LoRA, batch 8, 2 alternating repeats
    python benchmarks/packing.py --quick          # smoke run: 16 rows of <= 96 tokens, 1 repeat
    python benchmarks/packing.py --rows 200 --max-length 512 --only plain engine-padding_free

The data is made from text this machine already has: "Summarise the Python package X." answered
with prose paragraphs of X's long description (the body of its ``*.dist-info/METADATA``), cut
after a seeded, Pareto-distributed number of characters, so most answers are a sentence or two
and a few run to thousands of characters (truncated at --max-length tokens). Packages are split
by name between the training rows and a held-out set, so the held-out loss is on packages never
trained on.

Every configuration trains the demo model with the demo config's LoRA (r, alpha, all-linear,
dropout), optimizer (paged 8-bit AdamW), learning rate, cosine schedule with warm-up, grad
clipping and seed, at batch 8, for exactly one pass over the same tokenized rows (the engine's
own tokenization, completion-only labels), so each sees the same real tokens:

- plain: a hand-written transformers + peft loop, random batches of 8 padded to the longest
  (as benchmarks/throughput.py does);
- engine-off / engine-by_length / engine-padding_free: ``run_training`` with ``data.packing``;
- trl-packing: TRL's SFTTrainer, ``packing=True`` (best-fit-decreasing packs of --max-length
  tokens, padding-free; batch 8 = 8 packs);
- trl-padding_free: SFTTrainer, ``padding_free=True`` (8 random rows concatenated per batch).

Each configuration runs in its own subprocess, so its peak RSS is its own; configurations run in
alternating order (a b c ..., then ... c b a). Printed per configuration:

- real tokens/s: non-padding input tokens (prompt and answer) per second, over the steps after
  the first (the first step is warm-up), best of the repeats;
- peak RSS: the process's ``ru_maxrss`` when training ends (model, data, optimizer, activations),
  the highest of the repeats;
- held-out loss: after the one pass, the mean cross-entropy per answer token over the held-out
  rows, each row run alone (no padding, no packing), the same function for every configuration.
  Every configuration has then seen the same real tokens, whatever its batch shapes or number of
  steps, and a held-out figure is not skewed by which rows came last, as a training-loss
  average would be.

The padding share of each engine mode comes from ``qlora_studio.core.data.batching``. The
targets (issue 13) are printed with a verdict. TRL is a benchmark-only extra
(``pip install -e .[bench]``; with transformers pinned, ``pip install --no-deps trl``); when it is
missing or fails, its rows say why. Figures on a shared CPU are noisy: compare within one run.
"""

from __future__ import annotations

import argparse
import email.parser
import json
import math
import os
import random
import re
import resource
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QUESTION = "Summarise the Python package {name}."
MIN_CHARS = 60  # the shortest answer asked for: about one sentence
PARETO_ALPHA = 0.7  # a long tail: ~9% of answers are asked to run past 2,000 characters
MAX_CHARS = 12_000
HELD_OUT_EVERY = 8  # every 8th package (by name) is held out, never trained on

CONFIGS = (
    "plain",
    "engine-off",
    "engine-by_length",
    "engine-padding_free",
    "trl-packing",
    "trl-padding_free",
)
LABELS = {
    "plain": "plain loop, padded",
    "engine-off": "engine, packing=off",
    "engine-by_length": "engine, packing=by_length",
    "engine-padding_free": "engine, packing=padding_free",
    "trl-packing": "TRL SFTTrainer, packing=True",
    "trl-padding_free": "TRL SFTTrainer, padding_free=True",
}
PADDING_MODE = {  # which padding figure describes each configuration's batches
    "plain": "off",
    "engine-off": "off",
    "engine-by_length": "by_length",
    "engine-padding_free": "padding_free",
}


# ---- the data ---------------------------------------------------------------------------------
def prose_paragraphs(body: str) -> list[str]:
    """The paragraphs of a long description that read as prose: no code, tables, badges,
    headings, lists or markup."""
    kept = []
    for block in re.split(r"\n\s*\n", body):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines or any(line.startswith(("    ", "\t")) for line in lines):
            continue  # an indented block is code (or a reST directive's body)
        text = " ".join(line.strip() for line in lines)
        if len(text) < 40 or text.startswith(
            ("<", "[!", "!", "```", "|", "..", ":", "#", "$", ">>>", "*", "-", "+", "=")
        ):
            continue
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if letters / len(text) < 0.85 or not re.search(r"[a-z]\.( |$)", text):
            continue
        kept.append(text)
    return kept


def package_descriptions() -> dict[str, list[str]]:
    """Prose paragraphs of each installed package's long description, by name (sorted)."""
    found: dict[str, list[str]] = {}
    for folder in sorted(set(site.getsitepackages())):
        for metadata in sorted(Path(folder).glob("*.dist-info/METADATA")):
            message = email.parser.Parser().parsestr(metadata.read_text(errors="replace"))
            name = message["Name"]
            body = message.get_payload()
            if not isinstance(body, str) or not body.strip():
                body = message["Description"] or ""
            paragraphs = prose_paragraphs(body)
            if name and paragraphs and name not in found:
                found[name] = paragraphs
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def answer_from(paragraphs: list[str], start: int, target: int) -> tuple[str, int]:
    """Sentences of ``paragraphs`` from paragraph ``start`` on (wrapping once) until ``target``
    characters are reached; the text and how many paragraphs it used."""
    parts: list[str] = []
    length = 0
    used = 0
    for k in range(len(paragraphs)):
        paragraph = paragraphs[(start + k) % len(paragraphs)]
        sentences = re.split(r"(?<=[.!?])\s+", paragraph)
        taken = []
        for sentence in sentences:
            taken.append(sentence)
            length += len(sentence) + 1
            if length >= target:
                break
        parts.append(" ".join(taken))
        used += 1
        if length >= target:
            break
    return "\n\n".join(parts), used


def make_rows(descriptions: dict[str, list[str]], names: list[str], n_rows: int, seed: int):
    """``n_rows`` question/answer rows over ``names`` (visited in a seeded order, round robin,
    each visit continuing that package's description), answers of Pareto-distributed length."""
    rng = random.Random(seed)
    order = list(names)
    rng.shuffle(order)
    cursor = dict.fromkeys(order, 0)
    rows = []
    for i in range(n_rows):
        name = order[i % len(order)]
        target = min(MAX_CHARS, int(MIN_CHARS * rng.paretovariate(PARETO_ALPHA)))
        answer, used = answer_from(descriptions[name], cursor[name], target)
        cursor[name] += used
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": QUESTION.format(name=name)},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return rows


def write_data(folder: Path, n_train: int, n_held_out: int, seed: int) -> tuple[Path, Path]:
    """train.jsonl and held_out.jsonl in ``folder``, from disjoint sets of packages."""
    descriptions = package_descriptions()
    names = list(descriptions)
    held_names = names[::HELD_OUT_EVERY]
    train_names = [n for n in names if n not in set(held_names)]
    paths = []
    for file, chosen, count in (
        ("train.jsonl", train_names, n_train),
        ("held_out.jsonl", held_names, n_held_out),
    ):
        path = folder / file
        rows = make_rows(descriptions, chosen, count, seed)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        paths.append(path)
    return paths[0], paths[1]


# ---- shared settings --------------------------------------------------------------------------
def build_config(args, folder: Path, packing: str = "off", name: str = "engine"):
    from qlora_studio.config import RunConfig

    cfg = RunConfig.load(REPO / "resources" / "configs" / "demo-qlora.yaml")
    cfg.method = args.method
    cfg.model.source = args.model
    cfg.data.path = str(folder / "train.jsonl")
    cfg.data.eval_path = ""  # no evaluation inside the runs: held_out_loss does it
    cfg.data.validation_split = 0.0
    cfg.data.max_length = args.max_length
    cfg.data.packing = packing
    cfg.data.max_tokens_per_batch = 0  # batch x max_length: no batch is cut short
    cfg.train.batch_size = args.batch_size
    cfg.train.max_steps = 0
    cfg.train.epochs = 1.0
    cfg.train.eval_steps = 0
    cfg.train.save_steps = 100_000  # no checkpoint inside the timed steps
    cfg.output.dir = str(folder / "runs")
    cfg.output.name = name
    return cfg.validate()


def tokenized_rows(cfg) -> tuple[list[dict], list[dict], object]:
    """The engine's own tokenization of the training and held-out rows (completion labels)."""
    import copy

    from qlora_studio.core.data.prepare import prepare_dataset
    from qlora_studio.core.models.sources import load_tokenizer, resolve_model

    model_dir = resolve_model(cfg.model.source)
    tokenizer = load_tokenizer(model_dir)
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type", "")
    held = copy.deepcopy(cfg.data)
    held.path = str(Path(cfg.data.path).with_name("held_out.jsonl"))
    rows = [
        prepare_dataset(data, tokenizer, model_type=model_type, seed=cfg.train.seed).train
        for data in (cfg.data, held)
    ]
    return rows[0], rows[1], tokenizer


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def held_out_loss(model, rows: list[dict]) -> float:
    """Mean cross-entropy per labelled token over ``rows``, each run alone (no padding)."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            labels = torch.tensor(row["labels"][1:])
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            mask = labels != -100
            total += float(F.cross_entropy(logits[mask], labels[mask], reduction="sum"))
            count += int(mask.sum())
    return total / count


def rate(times: list[float], tokens: list[int], warmup: int, begin: float) -> dict:
    """Real tokens/s over the steps after ``warmup``, or over every step since ``begin`` (the
    start of training) when there are no more steps than that; ``tokens`` are cumulative."""
    if len(times) > warmup >= 1:
        start_t, start_n = times[warmup - 1], tokens[warmup - 1]
    else:
        start_t, start_n = begin, 0
    seconds = times[-1] - start_t
    measured = tokens[-1] - start_n
    return {
        "tokens_per_s": measured / seconds if seconds > 0 else float("nan"),
        "timed_tokens": measured,
        "seconds": seconds,
        "steps": len(times),
        "real_tokens": tokens[-1],
    }


def base_and_lora(cfg, model_dir: Path):
    """The base model and LoRA the way a user writes them by hand (same dtype and settings as
    the engine; the seed set before the adapters are made, so they start the same)."""
    import transformers
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from qlora_studio.core.models.loading import (
        compute_dtype_name,
        pick_device,
        quantization_config,
        torch_dtype,
    )

    device = pick_device(cfg.train.device)
    compute = torch_dtype(compute_dtype_name(cfg.quant.compute_dtype, device))
    kwargs: dict = {"dtype": compute}
    if cfg.method == "qlora":
        kwargs["quantization_config"] = quantization_config(cfg.quant, compute)
        kwargs["device_map"] = {"": device}
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), **kwargs)
    if cfg.method != "qlora":
        model.to(device)
    model.config.use_cache = False
    for param in model.parameters():
        param.requires_grad_(False)
    transformers.set_seed(cfg.train.seed)
    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), device


# ---- the configurations (each in its own process) ---------------------------------------------
def run_plain(cfg, train: list[dict], tokenizer, warmup: int):
    """Random batches of ``batch_size`` rows padded to the longest, a hand-written loop."""
    import bitsandbytes as bnb
    import torch
    from transformers import get_scheduler

    from qlora_studio.core.data.batching import PaddingCollator
    from qlora_studio.core.models.sources import resolve_model

    model_dir = resolve_model(cfg.model.source)
    model, device = base_and_lora(cfg, model_dir)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = bnb.optim.PagedAdamW8bit(
        params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
    )
    loader = torch.utils.data.DataLoader(
        [{k: r[k] for k in ("input_ids", "labels")} for r in train],
        batch_size=cfg.train.batch_size,
        shuffle=True,
        collate_fn=PaddingCollator(tokenizer.pad_token_id),
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    total = len(loader)
    scheduler = get_scheduler(
        cfg.train.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.train.warmup_ratio * total),
        num_training_steps=total,
    )
    times, tokens, seen = [], [], 0
    begin = time.time()
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        seen += int(batch["attention_mask"].sum())
        times.append(time.time())
        tokens.append(seen)
    return model, rate(times, tokens, warmup, begin)


def run_engine(cfg, warmup: int):
    """``run_training`` with the config's ``data.packing``; the trained adapter, reloaded."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from qlora_studio.core.events import CollectingReporter
    from qlora_studio.core.models.loading import compute_dtype_name, pick_device, torch_dtype
    from qlora_studio.core.models.sources import resolve_model
    from qlora_studio.core.training.run import run_training

    reporter = CollectingReporter()
    result = run_training(cfg, reporter=reporter)
    progress = reporter.of_type("progress")
    begin = [e["time"] for e in reporter.of_type("status") if e["message"].startswith("Training:")]
    figures = rate(
        [e["time"] for e in progress], [e["tokens_seen"] for e in progress], warmup, begin[0]
    )
    figures["peak_rss_mib"] = peak_rss_mib()  # before the reload below
    used = [e["packing"] for e in reporter.of_type("status") if "packing" in e]
    figures["packing_used"] = used[-1] if used else "?"
    device = pick_device(cfg.train.device)
    compute = torch_dtype(compute_dtype_name(cfg.quant.compute_dtype, device))
    if cfg.method == "qlora":
        from qlora_studio.core.models.loading import quantization_config

        base = AutoModelForCausalLM.from_pretrained(
            str(resolve_model(cfg.model.source)),
            dtype=compute,
            quantization_config=quantization_config(cfg.quant, compute),
            device_map={"": device},
        )
    else:
        base = AutoModelForCausalLM.from_pretrained(
            str(resolve_model(cfg.model.source)), dtype=compute
        )
    return PeftModel.from_pretrained(base, str(result.output_dir)), figures


def run_trl(cfg, train: list[dict], tokenizer, mode: str, warmup: int, folder: Path):
    """TRL's SFTTrainer on the same tokenized rows, with the engine's optimizer settings
    (TRL's own defaults, bf16 and gradient checkpointing, set back to the engine's)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from qlora_studio.core.models.sources import resolve_model

    model, device = base_and_lora(cfg, resolve_model(cfg.model.source))
    t = cfg.train
    packing = mode == "packing"
    args = SFTConfig(
        output_dir=str(folder / f"trl-{mode}"),
        per_device_train_batch_size=t.batch_size,
        num_train_epochs=1.0,
        learning_rate=t.lr,
        lr_scheduler_type=t.scheduler,
        warmup_steps=float(t.warmup_ratio),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        optim="paged_adamw_8bit",
        seed=t.seed,
        data_seed=t.seed,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        dataloader_pin_memory=device == "cuda",
        packing=packing,
        padding_free=not packing,
        # packing: packs of max_length tokens; padding-free alone: the rows are already cut
        max_length=cfg.data.max_length if packing else None,
        include_num_input_tokens_seen="all",  # padding-free batches: every token is real
    )

    class Steps(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.tokens: list[int] = []
            self.begin = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.time()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.time())
            self.tokens.append(int(state.num_input_tokens_seen))

    steps = Steps()
    dataset = Dataset.from_list([{k: r[k] for k in ("input_ids", "labels")} for r in train])
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[steps],
    )
    trainer.train()
    return trainer.model, rate(steps.times, steps.tokens, warmup, steps.begin)


def worker(args) -> int:
    """Run one configuration; write its figures as JSON to ``args.result``."""
    folder = Path(args.data)
    name = args.worker
    packing = name.split("-", 1)[1] if name.startswith("engine-") else "off"
    cfg = build_config(args, folder, packing, name=f"{name}-{args.repeat}")
    train, held_out, tokenizer = tokenized_rows(cfg)
    if name == "plain":
        model, figures = run_plain(cfg, train, tokenizer, args.warmup)
    elif name.startswith("engine-"):
        model, figures = run_engine(cfg, args.warmup)
    else:
        import trl

        model, figures = run_trl(cfg, train, tokenizer, name.split("-", 1)[1], args.warmup, folder)
        figures["version"] = trl.__version__
    figures.setdefault("peak_rss_mib", peak_rss_mib())
    figures["held_out_loss"] = held_out_loss(model, held_out)
    Path(args.result).write_text(json.dumps(figures))
    return 0


# ---- the run ----------------------------------------------------------------------------------
def run_config(args, name: str, repeat: int, folder: Path) -> dict:
    result = folder / f"{name}-{repeat}.json"
    log = folder / f"{name}-{repeat}.log"
    command = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--data",
        str(folder),
        "--result",
        str(result),
        "--repeat",
        str(repeat),
        "--model",
        args.model,
        "--method",
        args.method,
        "--batch-size",
        str(args.batch_size),
        "--max-length",
        str(args.max_length),
        "--warmup",
        str(args.warmup),
    ]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    with open(log, "w") as out:
        proc = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not result.exists():
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        errors = [line for line in lines if re.match(r"^\w*(Error|Exception)\b", line)]
        return {"error": (errors or lines or [f"exit code {proc.returncode}"])[-1][:160]}
    return json.loads(result.read_text())


def summarise_lengths(lengths: list[int]) -> str:
    ordered = sorted(lengths)

    def at(q: float) -> int:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return (
        f"{len(ordered)} rows, {sum(ordered)} tokens; length min {ordered[0]}, median {at(0.5)}, "
        f"p90 {at(0.9)}, max {ordered[-1]}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--method", default="lora", choices=["lora", "qlora"])
    parser.add_argument("--rows", type=int, default=48, help="training rows (one pass)")
    parser.add_argument("--held-out", type=int, default=12, help="rows for the held-out loss")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--seed", type=int, default=42, help="the data's seed")
    parser.add_argument("--only", nargs="+", choices=CONFIGS, help="a subset of configurations")
    parser.add_argument("--quick", action="store_true", help="smoke run: 16 rows, 1 repeat")
    parser.add_argument("--keep", help="write the data, logs and runs here instead of a temp dir")
    # a worker: one configuration in its own process
    parser.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.rows, args.held_out, args.max_length, args.repeats = 16, 4, 96, 1

    names = list(args.only or CONFIGS)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        write_data(folder, args.rows, args.held_out, args.seed)
        from qlora_studio.core.data.batching import padding_figures

        cfg = build_config(args, folder)
        train, held_out, _ = tokenized_rows(cfg)
        lengths = [len(r["input_ids"]) for r in train]
        pad = padding_figures(lengths, args.batch_size, seed=cfg.train.seed)
        print(f"data: {summarise_lengths(lengths)}; {len(held_out)} held-out rows", flush=True)
        print(
            "padding share of computed tokens: "
            + ", ".join(
                f"{mode} {100 * pad.share(mode):.0f}% ({pad.computed[mode]} computed)"
                for mode in ("off", "by_length", "padding_free")
            ),
            flush=True,
        )
        print(
            f"{args.method} on {args.model}, batch {args.batch_size}, max_length "
            f"{args.max_length}, one pass, {args.repeats} alternating repeats, "
            f"first {args.warmup} step(s) untimed",
            flush=True,
        )
        runs: dict[str, list[dict]] = {name: [] for name in names}
        started = time.time()
        for repeat in range(args.repeats):
            order = names if repeat % 2 == 0 else list(reversed(names))
            for name in order:
                figures = run_config(args, name, repeat, folder)
                runs[name].append(figures)
                if "error" in figures:
                    print(f"  {name:<20} #{repeat + 1}: failed: {figures['error']}", flush=True)
                    continue
                print(
                    f"  {name:<20} #{repeat + 1}: {figures['tokens_per_s']:7.1f} real tokens/s "
                    f"({figures['timed_tokens']} in {figures['seconds']:.1f} s, "
                    f"{figures['steps']} steps), peak RSS {figures['peak_rss_mib']:.0f} MiB, "
                    f"held-out loss {figures['held_out_loss']:.4f}",
                    flush=True,
                )
        print(f"wall time: {(time.time() - started) / 60:.1f} min", flush=True)
        print_table(runs, pad)
    return 0


def print_table(runs: dict[str, list[dict]], pad) -> None:
    best: dict[str, dict] = {}
    for name, figures in runs.items():
        good = [f for f in figures if "error" not in f]
        if not good:
            continue
        timed = [f for f in good if math.isfinite(f["tokens_per_s"])] or good
        top = max(timed, key=lambda f: f["tokens_per_s"])
        best[name] = {
            **top,
            "peak_rss_mib": max(f["peak_rss_mib"] for f in good),
            "held_out_loss": sum(f["held_out_loss"] for f in good) / len(good),
        }
    plain = best.get("plain")
    print()
    print(
        f"| {'configuration':<34} | {'padding':>7} | {'steps':>5} | {'real tokens/s':>13} "
        f"| {'vs plain':>8} | {'peak RSS MiB':>12} | {'held-out loss':>13} |"
    )
    print(f"|{'-' * 36}|{'-' * 8}:|{'-' * 6}:|{'-' * 14}:|{'-' * 9}:|{'-' * 13}:|{'-' * 14}:|")
    for name, figures in runs.items():
        label = LABELS[name]
        if name not in best:
            error = next((f["error"] for f in figures if "error" in f), "not run")
            print(f"| {label:<34} | failed: {error} |")
            continue
        b = best[name]
        mode = PADDING_MODE.get(name)
        padding = f"{100 * pad.share(mode):.0f}%" if mode else "0%"
        ratio = f"{b['tokens_per_s'] / plain['tokens_per_s']:.2f}x" if plain else "n/a"
        print(
            f"| {label:<34} | {padding:>7} | {b['steps']:>5} | {b['tokens_per_s']:>13.1f} "
            f"| {ratio:>8} | {b['peak_rss_mib']:>12.0f} | {b['held_out_loss']:>13.4f} |"
        )
    versions = {b["version"] for b in best.values() if "version" in b}
    if versions:
        print(f"\nTRL {', '.join(sorted(versions))}")
    print()
    free = best.get("engine-padding_free")
    if free is None:
        print("targets: engine padding_free did not run")
        return
    trl = [best[n] for n in ("trl-packing", "trl-padding_free") if n in best]
    off = best.get("engine-off")
    speedup = free["tokens_per_s"] / plain["tokens_per_s"] if plain else None
    vs_trl = free["tokens_per_s"] / max(b["tokens_per_s"] for b in trl) if trl else None
    memory = free["peak_rss_mib"] / off["peak_rss_mib"] if off else None
    losses = [b["held_out_loss"] for b in (plain, off) if b]
    drift = max(abs(free["held_out_loss"] / x - 1) for x in losses) if losses else None
    checks = [
        ("padding_free >= 1.5x plain real tokens/s", speedup, "x", lambda v: v >= 1.5),
        ("padding_free >= 1.0x TRL's best", vs_trl, "x", lambda v: v >= 1.0),
        ("peak RSS <= engine off", memory, "x", lambda v: v <= 1.0),
        ("held-out loss within 3% of plain and off", drift, "%", lambda v: v <= 0.03),
    ]
    print("targets (issue 13, CPU, demo, batch 8):")
    for label, value, unit, target in checks:
        if value is None:
            print(f"  {label:<42} n/a (did not run)")
        else:
            shown = f"{100 * value:.1f}%" if unit == "%" else f"{value:.2f}x"
            print(f"  {label:<42} {shown:>7}  {'met' if target(value) else 'MISSED'}")


if __name__ == "__main__":
    raise SystemExit(main())
