"""Base vs tuned on a held-out file: how much did the fine-tune change the answers?

Scores per side: mean loss and perplexity on the completion tokens (the tokens the run trained
on), exact match and a normalised string similarity of greedy generations against the
reference answers, and how many answers ended at a stop token. The models come from
:class:`~qlora_studio.core.evaluation.comparison.ComparisonModel` (one model, the adapter
switched on and off). Reports are saved as JSON in ``RUN_DIR/evaluation/`` (see ``report.py``).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import Cancelled, DatasetError
from qlora_studio.core.evaluation.comparison import ComparisonModel
from qlora_studio.core.evaluation.report import (  # noqa: F401 (this module's public names)
    EVAL_FOLDER,
    EvalReport,
    EvalRow,
    SideScores,
    exact_match,
    load_reports,
    normalise,
    read_report,
    report_file,
    similarity,
)
from qlora_studio.core.evaluation.settings import SIDES, EvaluationError, GenerationSettings
from qlora_studio.core.events import NullReporter, Reporter, report_progress, say
from qlora_studio.core.run_folder import trained_output

# ---------------------------------------------------------------- evaluation


@dataclass
class HeldOutRow:
    row: int
    conversation: list[dict]  # everything before the last answer
    reference: str
    example: Any  # the data.Example, for the completion loss


def held_out_rows(path: str, cfg: RunConfig, limit: int | None = None) -> list[HeldOutRow]:
    """The rows of a held-out file split into (conversation so far, reference answer)."""
    from qlora_studio.core.data.rows import load_examples

    loaded = load_examples(
        path,
        format=cfg.data.format,
        columns=dict(cfg.data.columns or {}),
        system_prompt=cfg.data.system_prompt,
    )
    rows = []
    for example in loaded.examples:
        messages = example.messages or []
        last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
        if last is None:
            raise DatasetError(
                f"{loaded.where(example.row)}: no answer to compare with",
                "evaluation needs rows with a reference answer (chat, alpaca or "
                "prompt/completion formats); raw text rows have none",
            )
        rows.append(HeldOutRow(example.row, messages[:last], messages[last]["content"], example))
        if limit and len(rows) >= limit:
            break
    if not rows:
        raise DatasetError(f"{path} has no rows", "choose a held-out file with rows in it")
    return rows


def default_eval_data(run_dir: Path) -> str:
    """The held-out file a run is evaluated on by default: its config's ``data.eval_path``."""
    cfg, _ = trained_output(Path(run_dir), EvaluationError)
    if cfg.data.eval_path:
        return cfg.data.eval_path
    raise EvaluationError(
        f"{run_dir} names no held-out file (data.eval_path is empty)",
        "pass one with --data FILE (rows the run did not train on)",
    )


def evaluate_run(
    run_dir: Path,
    *,
    data: str | None = None,
    limit: int | None = None,
    settings: GenerationSettings | None = None,
    batch_size: int = 16,
    device: str = "auto",
    model: ComparisonModel | None = None,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
    save: bool = True,
) -> EvalReport:
    """Score the base and the tuned model of ``run_dir`` on a held-out file and save the report.

    ``data`` defaults to the run's ``data.eval_path``; ``settings`` default to greedy decoding
    with room for twice the longest reference. ``model`` reuses an already loaded pair.
    """
    reporter = reporter or NullReporter()
    cancel = cancel or threading.Event()
    run_dir = Path(run_dir)
    cfg, _ = trained_output(run_dir, EvaluationError)
    data = data or default_eval_data(run_dir)
    rows = held_out_rows(data, cfg, limit)
    started = time.monotonic()
    owned = model is None
    model = model or ComparisonModel.load(run_dir, device=device, reporter=reporter)
    try:
        if settings is None:
            longest = max(len(model.tokenizer(r.reference)["input_ids"]) for r in rows)
            settings = GenerationSettings(max_new_tokens=min(512, 2 * longest + 8))
        settings.validate()
        total = 2 * (len(rows) + math.ceil(len(rows) / batch_size))
        done = 0
        outputs: dict[str, list[tuple[str, bool]]] = {}
        losses: dict[str, list[tuple[float, int]]] = {}
        for side in SIDES:
            say(reporter, f"Evaluating the {side} model on {len(rows)} rows of {data}")
            losses[side] = []
            for i in range(0, len(rows), batch_size):
                _check(cancel)
                chunk = rows[i : i + batch_size]
                losses[side] += model.completion_losses([r.example for r in chunk], side)
                done += 1
                report_progress(reporter, done, total, started)
            outputs[side] = []
            for i in range(0, len(rows), batch_size):
                _check(cancel)
                chunk = rows[i : i + batch_size]
                outputs[side] += model.generate([r.conversation for r in chunk], side, settings)
                done += len(chunk)
                report_progress(reporter, done, total, started)
        report = EvalReport(
            run_dir=str(run_dir),
            data=str(data),
            method=cfg.method,
            scores={s: _scores(rows, outputs[s], losses[s]) for s in SIDES},
            rows=[
                EvalRow(
                    row=r.row,
                    prompt=_last_user_text(r.conversation),
                    reference=r.reference,
                    outputs={s: outputs[s][k][0] for s in SIDES},
                    exact={s: exact_match(outputs[s][k][0], r.reference) for s in SIDES},
                    similarity={
                        s: round(similarity(outputs[s][k][0], r.reference), 4) for s in SIDES
                    },
                    stopped={s: outputs[s][k][1] for s in SIDES},
                )
                for k, r in enumerate(rows)
            ],
            settings=settings,
            runtime_s=round(time.monotonic() - started, 1),
            device=model.device,
        )
    finally:
        if owned:
            model.close()
    if save:
        path = report.save(run_dir, limit)
        say(reporter, f"Saved the evaluation to {path}", report_path=str(path))
    return report


def _scores(rows: list[HeldOutRow], outputs: list[tuple[str, bool]], losses: list) -> SideScores:
    n_tokens = sum(n for _, n in losses)
    loss = sum(s for s, _ in losses) / n_tokens if n_tokens else None
    n = len(rows)
    return SideScores(
        loss=round(loss, 5) if loss is not None else None,
        perplexity=round(math.exp(min(loss, 50.0)), 4) if loss is not None else None,
        exact_match=sum(
            exact_match(o, r.reference) for (o, _), r in zip(outputs, rows, strict=True)
        )
        / n,
        similarity=round(
            sum(similarity(o, r.reference) for (o, _), r in zip(outputs, rows, strict=True)) / n, 4
        ),
        stopped=sum(stopped for _, stopped in outputs) / n,
        rows=n,
    )


def _last_user_text(conversation: list[dict]) -> str:
    users = [m["content"] for m in conversation if m["role"] == "user"]
    return users[-1] if users else ""


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled("Evaluation stopped", "nothing was saved; run it again to finish")
