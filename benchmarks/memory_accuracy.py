"""How close the memory estimate comes to a measured peak, over a matrix of runs.

    python benchmarks/memory_accuracy.py                      # demo model, 3 methods, CPU or GPU
    python benchmarks/memory_accuracy.py --models demo /path/to/hf-folder \\
        --methods full lora qlora --seq-lens 256 1024 --batch-sizes 1 4

Each cell runs the probe (two real training steps, in a fresh child process so one run's memory
never counts toward the next) on rows of exactly SEQ tokens (raw text, truncated at SEQ) and
prints the estimate, the measured peak and the error. On CUDA the peak is torch's peak
reserved memory plus the CUDA context; on the CPU it is the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qlora_studio.config import RunConfig  # noqa: E402

WORDS = (
    "date march april convert format year month day the of to and a in on with for "
    "meeting posted calendar shared please confirm moved team admin"
).split()


def text_rows(path: Path, n_rows: int, words_per_row: int) -> Path:
    """Raw-text rows long enough to be truncated at any probed length."""
    lines = []
    for i in range(n_rows):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(words_per_row)]
        lines.append(json.dumps({"text": " ".join(words)}))
    path.write_text("\n".join(lines) + "\n")
    return path


def cell_config(model: str, method: str, seq: int, batch: int, data: Path, out: Path) -> RunConfig:
    cfg = RunConfig()
    cfg.method = method
    cfg.model.source = model
    cfg.data.path = str(data)
    cfg.data.format = "text"
    cfg.data.max_length = seq
    cfg.data.train_on = "all"
    cfg.data.validation_split = 0.0
    cfg.train.batch_size = batch
    cfg.train.optimizer = "adamw_torch" if method == "full" else "paged_adamw_8bit"
    cfg.train.gradient_checkpointing = False
    cfg.output.dir = str(out)
    return cfg.validate()


def probe_in_child(cfg_path: Path) -> dict:
    result = subprocess.run(
        [sys.executable, "-m", "qlora_studio", "probe", str(cfg_path), "--json"],
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        return {"error": " | ".join(tail)}
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["demo"])
    parser.add_argument("--methods", nargs="+", default=["full", "lora", "qlora"])
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[128])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[2])
    args = parser.parse_args()

    header = (
        f"{'model':<16} {'method':<6} {'batch':>5} {'seq':>5} {'estimate':>10} "
        f"{'measured':>10} {'error':>8}  dominant term"
    )
    print(header)
    print("-" * len(header), flush=True)
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = text_rows(tmp / "rows.jsonl", 64, max(args.seq_lens) * 2)
        for model in args.models:
            for method in args.methods:
                for seq in args.seq_lens:
                    for batch in args.batch_sizes:
                        cfg = cell_config(model, method, seq, batch, data, tmp / "runs")
                        path = cfg.save(tmp / f"{method}-{seq}-{batch}.yaml")
                        row = probe_in_child(path)
                        name = Path(model).name[:16]
                        if "error" in row:
                            print(
                                f"{name:<16} {method:<6} {batch:>5} {seq:>5}  failed: "
                                f"{row['error']}",
                                flush=True,
                            )
                            continue
                        est, meas = row["estimate_bytes"], row["peak_bytes"]
                        err = 100 * (est - meas) / meas
                        errors.append(abs(err))
                        print(
                            f"{name:<16} {method:<6} {batch:>5} {row['seq_len']:>5} "
                            f"{est / 2**30:>8.2f}GB {meas / 2**30:>8.2f}GB {err:>+7.1f}%  "
                            f"{row['dominant']}",
                            flush=True,
                        )
    if errors:
        print(
            f"\nmean |error| {sum(errors) / len(errors):.1f}%, worst {max(errors):.1f}% "
            f"over {len(errors)} runs"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
