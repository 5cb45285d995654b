"""GGUF round trip: the exported GGUF files, run in llama.cpp, answer like the trained run.

    python benchmarks/gguf_roundtrip.py                        # trains the demo first (~4 min, CPU)
    python benchmarks/gguf_roundtrip.py --run runs/qlora-...   # a finished run of the demo config
    python benchmarks/gguf_roundtrip.py --run RUN --limit 20 --json gguf.json --keep
    python benchmarks/gguf_roundtrip.py --run RUN --threads 1   # a machine busy with other work

Exports go to a new temporary folder (under --work), removed at the end unless --keep. llama.cpp
threads spin while they wait: --threads above the free cores makes generation crawl.

Needs llama-cpp-python (a portable CPU build: CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install
llama-cpp-python). For a run (the demo: Gemma 3 270M converted from a Q4_K_M GGUF) it

1. exports the merged model as GGUF F16 and Q8_0 and the adapter as a LoRA GGUF, each timed;
2. answers the run's held-out rows greedily in llama.cpp with the merged F16, the merged Q8_0,
   and the base GGUF (the demo's Q4_K_M, which the adapter export writes beside the adapter)
   with the LoRA GGUF applied. The prompt is the run's chat template rendered by the tokenizer
   saved with the adapter, given to llama.cpp as text with special tokens parsed and no BOS
   added (the template writes it); generation stops at the run's recorded stop tokens. Scored
   with core/evaluation's exact match; also the share of answers that ended at a stop token,
   of answers identical to transformers' and of prompts tokenized exactly as transformers does;
3. takes transformers' tuned exact match on the same rows from the run's saved evaluation
   report (``qlora-studio eval`` is run first when there is none);
4. feeds 5 prompts (transformers' token ids) to each GGUF and to the merged 16-bit model in
   transformers (fp32) and compares the last position's logits: max |diff| and top-1 agreement.

Targets (exit status 1 when one is missed): each GGUF's exact match within 2 points of
transformers', every answer ended at a stop token, and for the F16 GGUF the same top-1 token on
every logits prompt with max |diff| <= LOGIT_TOL. Tokens/s counts generated tokens (the stop
token included) over the wall time of generation, prompt processing included.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qlora_studio.core.evaluation.evaluate import held_out_rows  # noqa: E402
from qlora_studio.core.evaluation.report import exact_match, read_report, report_file  # noqa: E402
from qlora_studio.core.gguf.export import (  # noqa: E402
    ADAPTER_FILE,
    export_gguf_adapter,
    export_gguf_merged,
    gguf_source_of,
    read_run,
)
from qlora_studio.core.run_folder import trained_output  # noqa: E402

DEMO_CONFIG = "resources/configs/demo-qlora.yaml"
EM_TOL_POINTS = 2.0
LOGIT_PROMPTS = 5
THREADS = os.cpu_count() or 1  # --threads; llama.cpp's threads spin: more than free cores crawl
# F16 holds the bf16 merged weights exactly, but llama.cpp's CPU matmuls round activations to
# F16: the demo's logits (top ~20-25) moved by 0.03 at most; a layout or merge bug moves them by
# whole units (Q8_0 and Q4_K_M quantize activations to 8 bits too: ~1 there, no target)
LOGIT_TOL = 0.1


@dataclass
class Variant:
    """One GGUF set-up measured in llama.cpp."""

    name: str
    model: str
    lora: str | None = None
    size_mb: float = 0.0
    base_mb: float | None = None  # the base GGUF a LoRA GGUF is applied to
    export_s: float = 0.0
    exact_match: float | None = None
    stopped: float | None = None
    same_answer: float | None = None
    same_prompt_tokens: float | None = None
    tokens_per_s: float | None = None
    logits_max_abs_diff: float | None = None
    top1_agree: int | None = None


@dataclass
class Prompts:
    """The held-out rows as the run's tokenizer renders them."""

    texts: list[str]
    ids: list[list[int]]  # transformers' token ids (no special tokens added: the text has BOS)
    references: list[str]
    stop_tokens: list[str]


# ---------------------------------------------------------------- the run and its reference


def train_demo(work: Path) -> Path:
    """Train the shipped demo config into ``work/runs`` and return the run folder."""
    out = work / "runs"
    cmd = [sys.executable, "-m", "qlora_studio", "train", DEMO_CONFIG, "--set", f"output.dir={out}"]
    print("training the demo:", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    runs = [p for p in out.iterdir() if (p / "adapter").is_dir()]
    if len(runs) != 1:
        sys.exit(f"expected one trained run in {out}, found {runs}")
    return runs[0]


def transformers_report(run_dir: Path, data: str, limit: int | None):
    """The run's saved evaluation on ``data`` (``qlora-studio eval`` is run when missing)."""
    path = report_file(run_dir, data, limit)
    if not path.exists():
        cmd = [sys.executable, "-m", "qlora_studio", "eval", str(run_dir), "--data", data]
        cmd += ["--limit", str(limit)] if limit else []
        print("transformers' reference:", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)
    return read_report(path)


def load_prompts(run_dir: Path, data: str, limit: int | None) -> Prompts:
    from transformers import AutoTokenizer

    from qlora_studio.core.data.templates import stop_tokens

    cfg, adapter_dir = trained_output(run_dir)
    summary = json.loads((adapter_dir / "training_summary.json").read_text(encoding="utf-8"))
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    if not tokenizer.chat_template:
        tokenizer.chat_template = summary["chat_template"]
    rows = held_out_rows(data, cfg, limit)
    texts = [
        tokenizer.apply_chat_template(r.conversation, add_generation_prompt=True, tokenize=False)
        for r in rows
    ]
    return Prompts(
        texts=texts,
        ids=[tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
        references=[r.reference for r in rows],
        stop_tokens=summary.get("stop_tokens") or stop_tokens(tokenizer),
    )


# ---------------------------------------------------------------- exports


def export_all(run_dir: Path, work: Path) -> list[Variant]:
    """Merged F16, merged Q8_0, and the LoRA GGUF over its base GGUF, each export timed."""
    variants = []
    for quant in ("f16", "q8_0"):
        started = time.monotonic()
        file = export_gguf_merged(run_dir, quant=quant, out=work / f"gguf-{quant}")
        file = file / f"model-{quant}.gguf"
        name = f"merged {quant.upper()}"
        variants.append(Variant(name, str(file), size_mb=_mb(file), export_s=_since(started)))
        print(f"exported {file} ({variants[-1].size_mb} MB, {variants[-1].export_s} s)")
    started = time.monotonic()
    folder = export_gguf_adapter(run_dir, out=work / "gguf-lora")
    adapter_s = _since(started)
    lora = folder / ADAPTER_FILE
    base = next((p for p in folder.glob("*.gguf") if p.name != ADAPTER_FILE), None)
    if base is None:  # a base converted from the user's own GGUF file: that file
        source = gguf_source_of(read_run(run_dir).base_dir)
        base = Path(source) if source else None
    if base is None:
        print("no base GGUF for the LoRA GGUF (a Hugging Face base): it is not measured")
        return variants
    name = f"{base.stem} + LoRA"
    variants.append(Variant(name, str(base), str(lora), _mb(lora), _mb(base), export_s=adapter_s))
    print(f"exported {lora} ({_mb(lora)} MB, {adapter_s} s) over {base} ({_mb(base)} MB)")
    return variants


def _mb(path: Path) -> float:
    return round(Path(path).stat().st_size / 1e6, 1)


def _since(started: float) -> float:
    return round(time.monotonic() - started, 1)


# ---------------------------------------------------------------- llama.cpp


def open_llama(variant: Variant, logits_all: bool = False):
    import llama_cpp

    return llama_cpp.Llama(
        model_path=variant.model,
        lora_path=variant.lora,
        n_ctx=512,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=logits_all,  # llm.scores is only filled with it; it slows generation
        seed=0,
        verbose=False,
    )


def stop_ids(llm, stop_tokens: list[str]) -> set[int]:
    """Each stop token's id in llama.cpp's vocabulary; it must be one token there."""
    ids = set()
    for token in stop_tokens:
        found = llm.tokenize(token.encode(), add_bos=False, special=True)
        if len(found) != 1:
            sys.exit(f"the stop token {token!r} is {len(found)} tokens in llama.cpp: {found}")
        ids.add(found[0])
    return ids


def answer_all(llm, variant: Variant, prompts: Prompts, max_new: int, reference: list[str]):
    """Greedy answers in llama.cpp, scored into ``variant``; returns the answers."""
    stops = stop_ids(llm, prompts.stop_tokens)
    answers, ended, same_tokens, generated, elapsed = [], 0, 0, 0, 0.0
    for text, hf_ids in zip(prompts.texts, prompts.ids, strict=True):
        # the template writes <bos> itself; special=True parses it and the turn markers
        prompt = llm.tokenize(text.encode(), add_bos=False, special=True)
        same_tokens += prompt == hf_ids
        kept: list[int] = []
        started = time.perf_counter()
        for n, token in enumerate(
            llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0),
            start=1,
        ):
            generated += 1
            if token in stops:
                ended += 1
                break
            kept.append(token)
            if n >= max_new:  # transformers' max_new_tokens counts the stop token too
                break
        elapsed += time.perf_counter() - started
        answers.append(llm.detokenize(kept).decode("utf-8", errors="replace").strip())
    n = len(answers)
    variant.exact_match = sum(map(exact_match, answers, prompts.references)) / n
    variant.stopped = ended / n
    variant.same_answer = sum(a == b for a, b in zip(answers, reference, strict=True)) / n
    variant.same_prompt_tokens = same_tokens / n
    variant.tokens_per_s = round(generated / elapsed, 1)
    return answers


def last_logits_llama(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)


def last_logits_transformers(merged_dir: Path, prompts: list[list[int]]):
    """The merged 16-bit model's last-position logits in fp32, one row per prompt."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
    with torch.inference_mode():
        rows = [model(torch.tensor([ids])).logits[0, -1].float().numpy() for ids in prompts]
    del model
    return rows


def measure(variant: Variant, prompts: Prompts, max_new: int, reference, hf_logits) -> list[str]:
    import numpy as np

    llm = open_llama(variant, logits_all=True)
    diffs, agree = [], 0
    for ids, expected in zip(prompts.ids, hf_logits, strict=False):
        got = last_logits_llama(llm, ids)
        if got.shape != expected.shape:
            sys.exit(f"{variant.name}: {got.shape[0]} logits in llama.cpp, {expected.shape[0]}")
        diffs.append(float(np.abs(got - expected).max()))
        agree += int(got.argmax()) == int(expected.argmax())
    llm.close()
    variant.logits_max_abs_diff = round(max(diffs), 4)
    variant.top1_agree = agree
    print(f"{variant.name}: answering {len(prompts.texts)} rows", flush=True)
    llm = open_llama(variant)
    try:
        return answer_all(llm, variant, prompts, max_new, reference)
    finally:
        llm.close()


# ---------------------------------------------------------------- the report


def table(hf: dict, variants: list[Variant], n_logits: int) -> str:
    head = (
        "| model | exact match | Δ vs transformers | ended at stop token | same answer as "
        "transformers | prompt tokens = transformers | tokens/s | file MB | export s | "
        f"logits max abs diff ({n_logits} prompts) | top-1 agree |"
    )
    lines = [head, "|" + "---|" * 11]
    lines.append(
        f"| transformers (fp32, tuned) | {hf['exact_match']:.0%} | — | {hf['stopped']:.0%} | — "
        "| — | — | — | — | reference | — |"
    )
    for v in variants:
        delta = 100 * (v.exact_match - hf["exact_match"])
        size = f"{v.size_mb} + {v.base_mb} base" if v.base_mb else f"{v.size_mb}"
        lines.append(
            f"| {v.name} | {v.exact_match:.0%} | {delta:+.0f} pts | {v.stopped:.0%} | "
            f"{v.same_answer:.0%} | {v.same_prompt_tokens:.0%} | {v.tokens_per_s} | {size} | "
            f"{v.export_s} | {v.logits_max_abs_diff} | {v.top1_agree}/{n_logits} |"
        )
    return "\n".join(lines)


def targets(hf: dict, variants: list[Variant], n_logits: int) -> list[str]:
    """The targets missed, in words (empty when all are met)."""
    missed = []
    for v in variants:
        if abs(v.exact_match - hf["exact_match"]) * 100 > EM_TOL_POINTS:
            missed.append(f"{v.name}: exact match more than {EM_TOL_POINTS} points off")
        if v.stopped < 1.0:
            missed.append(f"{v.name}: {1 - v.stopped:.0%} of answers did not end at a stop token")
    f16 = next((v for v in variants if v.name == "merged F16"), None)
    if f16 and (f16.top1_agree != n_logits or f16.logits_max_abs_diff > LOGIT_TOL):
        missed.append(
            f"merged F16 logits: top-1 {f16.top1_agree}/{n_logits}, "
            f"max abs diff {f16.logits_max_abs_diff} (tolerance {LOGIT_TOL})"
        )
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: train the demo)")
    parser.add_argument("--data", help="held-out file (default: the run's data.eval_path)")
    parser.add_argument("--limit", type=int, help="only the first N held-out rows")
    parser.add_argument("--work", type=Path, help="folder for exports (default: a new temp one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--threads", type=int, help="llama.cpp threads (default: every core)")
    args = parser.parse_args()
    global THREADS
    THREADS = args.threads or THREADS

    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="gguf-roundtrip-", dir=args.work))
    try:
        run_dir = (args.run or train_demo(work)).resolve()
        cfg, _ = trained_output(run_dir)
        data = args.data or cfg.data.eval_path
        report = transformers_report(run_dir, data, args.limit)
        hf = {k: getattr(report.scores["tuned"], k) for k in ("exact_match", "stopped")}
        reference = [row.outputs["tuned"] for row in report.rows]
        prompts = load_prompts(run_dir, data, args.limit)
        variants = export_all(run_dir, work)

        from qlora_studio.core.export import export_run

        merged = export_run(run_dir, out=work / "merged-hf", merge=True)
        hf_logits = last_logits_transformers(merged, prompts.ids[:LOGIT_PROMPTS])
        answers = {"transformers": reference}
        for variant in variants:
            max_new = report.settings.max_new_tokens
            answers[variant.name] = measure(variant, prompts, max_new, reference, hf_logits)
        n_logits = len(hf_logits)
        print()
        print(table(hf, variants, n_logits))
        missed = targets(hf, variants, n_logits)
        wall = _since(started)
        print(
            f"\n{len(prompts.texts)} held-out rows of {data}, greedy, at most "
            f"{report.settings.max_new_tokens} new tokens, stop tokens {prompts.stop_tokens}; "
            f"logits tolerance {LOGIT_TOL}; wall time {wall} s"
        )
        print("targets met" if not missed else "targets missed:\n  " + "\n  ".join(missed))
        if args.json:
            figures = {
                "run_dir": str(run_dir),
                "data": data,
                "rows": len(prompts.texts),
                "max_new_tokens": report.settings.max_new_tokens,
                "stop_tokens": prompts.stop_tokens,
                "transformers": hf,
                "variants": [asdict(v) for v in variants],
                "logit_prompts": n_logits,
                "logit_tolerance": LOGIT_TOL,
                "targets_missed": missed,
                "wall_s": wall,
                "threads": THREADS,
                "references": prompts.references,
                "answers": answers,
            }
            args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
        return 1 if missed else 0
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
