"""A saved evaluation: the scores of both sides, each row's answers, and where it is kept.

Plain data with no ML import: the GUI reads the reports a child ``qlora-studio eval`` wrote.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qlora_studio.core.evaluation.settings import GenerationSettings

EVAL_FOLDER = "evaluation"


# ---------------------------------------------------------------- scoring


def normalise(text: str) -> str:
    """Case-folded, Unicode-normalised, whitespace collapsed, outer punctuation stripped."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"\s+", " ", text).strip()
    return text.strip(" .,;:!?\"'`")


def exact_match(output: str, reference: str) -> bool:
    """The answer equals the reference once both are :func:`normalise`\\ d."""
    return normalise(output) == normalise(reference)


def similarity(output: str, reference: str) -> float:
    """Character-level similarity of the normalised strings in [0, 1] (difflib's ratio)."""
    a, b = normalise(output), normalise(reference)
    if not a and not b:
        return 1.0
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


@dataclass
class SideScores:
    """One model's scores over the evaluated rows."""

    loss: float | None  # mean cross-entropy per completion token
    perplexity: float | None
    exact_match: float  # share of rows, 0..1
    similarity: float  # mean, 0..1
    stopped: float  # share of answers that ended at a stop token (not at max_new_tokens)
    rows: int


@dataclass
class EvalRow:
    row: int
    prompt: str  # the last user turn
    reference: str
    outputs: dict[str, str]  # side -> generated answer
    exact: dict[str, bool]
    similarity: dict[str, float]
    stopped: dict[str, bool]


@dataclass
class EvalReport:
    """What ``evaluate_run`` measured; ``delta`` is tuned minus base exact match in points."""

    run_dir: str
    data: str
    method: str
    scores: dict[str, SideScores]
    rows: list[EvalRow]
    settings: GenerationSettings
    runtime_s: float
    device: str
    created: str = field(default_factory=lambda: datetime.now().isoformat(timespec="seconds"))

    @property
    def delta_points(self) -> float:
        return 100.0 * (self.scores["tuned"].exact_match - self.scores["base"].exact_match)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["delta_exact_match_points"] = round(self.delta_points, 2)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        return cls(
            run_dir=data["run_dir"],
            data=data["data"],
            method=data.get("method", ""),
            scores={k: SideScores(**v) for k, v in data["scores"].items()},
            rows=[EvalRow(**r) for r in data["rows"]],
            settings=GenerationSettings(**data.get("settings", {})),
            runtime_s=data.get("runtime_s", 0.0),
            device=data.get("device", ""),
            created=data.get("created", ""),
        )

    def save(self, run_dir: Path, limit: int | None = None) -> Path:
        """Write the report to :func:`report_file` (atomically) and return that path."""
        path = report_file(run_dir, self.data, limit)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path


def report_file(run_dir: Path, data: str, limit: int | None = None) -> Path:
    """Where the report on ``data`` is saved: ``run_dir/evaluation/<data stem>.json``, or
    ``<stem>.first<limit>.json`` for a run on the first ``limit`` rows, beside the full one."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(data).stem) or "heldout"
    name = f"{stem}.first{limit}.json" if limit else f"{stem}.json"
    return Path(run_dir) / EVAL_FOLDER / name


def read_report(path: Path) -> EvalReport:
    """The report saved at ``path``; raises OSError / ValueError when it cannot be read."""
    try:
        return EvalReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is not an evaluation report: {exc}") from exc


def load_reports(run_dir: Path) -> list[EvalReport]:
    """The evaluation reports saved in a run folder, newest first; unreadable ones are skipped."""
    reports = []
    for path in sorted((Path(run_dir) / EVAL_FOLDER).glob("*.json")):
        try:
            reports.append(read_report(path))
        except (OSError, ValueError):
            continue
    return sorted(reports, key=lambda r: r.created, reverse=True)
