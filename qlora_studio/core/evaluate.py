"""Base vs tuned: held-out evaluation and side-by-side generation for a finished run.

One model is kept in memory: for LoRA / QLoRA runs the base model carries the adapter and
peft's ``disable_adapter()`` switches it off for the base's turn. A full fine-tune has no
adapter, so its base and tuned models are both loaded.

Scores per side: mean loss and perplexity on the completion tokens (the tokens the run trained
on), exact match and a normalised string similarity of greedy generations against the
reference answers. Reports are saved as JSON in ``RUN_DIR/evaluation/``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import Cancelled, DatasetError, StudioError
from qlora_studio.core.events import NullReporter, Reporter, make_event
from qlora_studio.core.templates import stop_token_ids

SIDES = ("base", "tuned")
EVAL_FOLDER = "evaluation"


class EvaluationError(StudioError):
    """A run or a held-out file that cannot be evaluated."""


@dataclass
class GenerationSettings:
    """How answers are generated. ``temperature`` 0 means greedy (the evaluation's choice)."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def validate(self) -> GenerationSettings:
        if not 1 <= self.max_new_tokens <= 8192:
            raise EvaluationError(
                f"max_new_tokens: {self.max_new_tokens} is out of range",
                "use a value between 1 and 8192",
            )
        if not 0.0 <= self.temperature <= 5.0:
            raise EvaluationError(
                f"temperature: {self.temperature} is out of range", "use 0 (greedy) to 5"
            )
        if not 0.0 < self.top_p <= 1.0:
            raise EvaluationError(f"top_p: {self.top_p} is out of range", "use a value in (0, 1]")
        return self


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
        """Write the report to ``run_dir/evaluation/<data stem>.json`` (atomically); a run on
        the first ``limit`` rows goes to ``<stem>.first<limit>.json``, beside the full one."""
        folder = Path(run_dir) / EVAL_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(self.data).stem) or "heldout"
        path = folder / (f"{stem}.first{limit}.json" if limit else f"{stem}.json")
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
        return path


def load_reports(run_dir: Path) -> list[EvalReport]:
    """The evaluation reports saved in a run folder, newest first; unreadable ones are skipped."""
    reports = []
    for path in sorted((Path(run_dir) / EVAL_FOLDER).glob("*.json")):
        try:
            reports.append(EvalReport.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(reports, key=lambda r: r.created, reverse=True)


# ---------------------------------------------------------------- the models


class ComparisonModel:
    """A run's base and tuned model behind one interface; ``side`` is "base" or "tuned"."""

    def __init__(self, run_dir: Path, cfg: RunConfig, tokenizer, model, base_model, device: str):
        self.run_dir = Path(run_dir)
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.model = model  # a PeftModel (LoRA / QLoRA) or the tuned full model
        self.base_model = base_model  # only for full fine-tunes; None when the adapter toggles
        self.device = device
        self.stop_ids = stop_token_ids(tokenizer)
        self._lock = threading.Lock()  # one generation at a time: the adapter switch is global

    # ---- loading ------------------------------------------------------------------------------
    @classmethod
    def load(
        cls, run_dir: Path, *, device: str = "auto", reporter: Reporter | None = None
    ) -> ComparisonModel:
        """Load the run's base model and its adapter (or both models of a full fine-tune)."""
        from qlora_studio.core.training import pick_device

        reporter = reporter or NullReporter()
        run_dir = Path(run_dir)
        cfg, output_dir = _run_parts(run_dir)
        device = pick_device(device)
        base_dir = _base_model_dir(run_dir, cfg, reporter)
        tokenizer = _tokenizer_of(output_dir, base_dir, cfg)
        _say(reporter, f"Loading the base model {base_dir.name} on {device}")
        base = _load_causal_lm(base_dir, cfg, device, quantize=cfg.method == "qlora")
        if cfg.method == "full":
            _say(reporter, f"Loading the tuned model from {output_dir}")
            tuned = _load_causal_lm(output_dir, cfg, device, quantize=False)
            return cls(run_dir, cfg, tokenizer, tuned, base, device)
        from peft import PeftModel

        _say(reporter, f"Attaching the adapter from {output_dir}")
        try:
            model = PeftModel.from_pretrained(base, str(output_dir))
        except Exception as exc:  # wrong base, damaged files
            raise EvaluationError(
                f"the adapter in {output_dir} does not load onto {base_dir}: {exc}",
                "the run's base model must be the one it was trained on",
            ) from exc
        model.eval()
        return cls(run_dir, cfg, tokenizer, model, None, device)

    def close(self) -> None:
        """Drop the models and give their memory back."""
        import gc

        self.model = self.base_model = None
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    @contextlib.contextmanager
    def use(self, side: str) -> Iterator[Any]:
        """The model that answers for ``side``, with the adapter off for "base"."""
        if side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {side!r}")
        with self._lock:
            if side == "tuned":
                yield self.model
            elif self.base_model is not None:
                yield self.base_model
            else:
                with self.model.disable_adapter():
                    yield self.model

    # ---- prompts ------------------------------------------------------------------------------
    def prompt_text(self, messages: list[dict]) -> str:
        """The conversation rendered with the run's chat template, ready for the answer."""
        return self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True
        )

    def _encode(self, texts: list[str]):
        return self.tokenizer(
            texts, return_tensors="pt", padding=True, add_special_tokens=False
        ).to(self.device)

    # ---- generation ---------------------------------------------------------------------------
    def generate(
        self, conversations: list[list[dict]], side: str, settings: GenerationSettings
    ) -> list[tuple[str, bool]]:
        """Answer each conversation; returns (answer, stopped at a stop token) pairs."""
        import torch

        settings.validate()
        tok = self.tokenizer
        tok.padding_side = "left"  # generation continues from the right edge of every row
        batch = self._encode([self.prompt_text(c) for c in conversations])
        kwargs: dict[str, Any] = {
            "max_new_tokens": settings.max_new_tokens,
            "eos_token_id": self.stop_ids,
            "pad_token_id": tok.pad_token_id,
            "do_sample": settings.temperature > 0,
        }
        if settings.temperature > 0:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
            torch.manual_seed(settings.seed)
        else:  # greedy: silence the sampling defaults some generation configs carry
            kwargs.update(temperature=None, top_p=None, top_k=None)
        with self.use(side) as model, torch.inference_mode():
            out = model.generate(**batch, **kwargs)
        width = batch["input_ids"].shape[1]
        answers = []
        for row in out[:, width:].tolist():
            stop_at = next((i for i, t in enumerate(row) if t in self.stop_ids), None)
            kept = row if stop_at is None else row[:stop_at]
            answers.append(
                (tok.decode(kept, skip_special_tokens=True).strip(), stop_at is not None)
            )
        return answers

    def stream(
        self,
        conversations: dict[str, list[dict]],
        settings: GenerationSettings,
        cancel: threading.Event | None = None,
    ) -> Iterator[tuple[str, str]]:
        """Generate for each side in ``conversations`` ({side: messages}) a token at a time,
        the sides interleaved; yields (side, new text) as the text grows."""
        import torch

        settings.validate()
        states = {}
        for side, messages in conversations.items():
            ids = self._encode([self.prompt_text(messages)])["input_ids"]
            states[side] = {"next": ids, "cache": None, "tokens": [], "text": "", "done": False}
        generator = torch.Generator().manual_seed(settings.seed)
        for _ in range(settings.max_new_tokens):
            if cancel is not None and cancel.is_set():
                return
            live = [s for s, st in states.items() if not st["done"]]
            if not live:
                break
            for side in live:
                st = states[side]
                with self.use(side) as model, torch.inference_mode():
                    out = model(input_ids=st["next"], past_key_values=st["cache"], use_cache=True)
                st["cache"] = out.past_key_values
                token = _pick(out.logits[0, -1].float(), settings, generator)
                if token in self.stop_ids:
                    st["done"] = True
                    yield from self._flush(side, st)
                    continue
                st["tokens"].append(token)
                st["next"] = torch.tensor([[token]], device=self.device)
                yield from self._flush(side, st, partial=True)
        for side, st in states.items():
            if not st["done"]:
                yield from self._flush(side, st)

    def _flush(self, side: str, st: dict, partial: bool = False) -> Iterator[tuple[str, str]]:
        text = self.tokenizer.decode(st["tokens"], skip_special_tokens=True)
        if partial and text.endswith("\ufffd"):
            return  # maybe half a multi-byte character: wait for the next token
        piece, st["text"] = text[len(st["text"]) :], text
        if piece:
            yield side, piece

    # ---- loss ---------------------------------------------------------------------------------
    def completion_losses(self, examples: list, side: str, batch_size: int = 8) -> list[tuple]:
        """(summed loss, trained tokens) of each example's completion tokens, for ``side``."""
        import torch

        from qlora_studio.core.data import PaddingCollator
        from qlora_studio.core.templates import tokenize_example

        collate = PaddingCollator(self.tokenizer.pad_token_id)
        rows = [
            tokenize_example(
                e, self.tokenizer, max_length=self.cfg.data.max_length, train_on="completions"
            )
            for e in examples
        ]
        results = []
        for i in range(0, len(rows), batch_size):
            batch = collate(rows[i : i + batch_size])
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self.use(side) as model, torch.inference_mode():
                logits = model(
                    input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
                ).logits
            labels = batch["labels"][:, 1:]
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), labels, ignore_index=-100, reduction="none"
            )
            counted = (labels != -100).sum(dim=1)
            for loss_sum, n in zip(losses.sum(dim=1).tolist(), counted.tolist(), strict=True):
                results.append((loss_sum, n))
        return results


def _pick(logits, settings: GenerationSettings, generator) -> int:
    import torch

    if settings.temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / settings.temperature, dim=-1)
    if settings.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < settings.top_p
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs.cpu() / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice.to(order.device)])
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


# ---------------------------------------------------------------- evaluation


@dataclass
class HeldOutRow:
    row: int
    conversation: list[dict]  # everything before the last answer
    reference: str
    example: Any  # the data.Example, for the completion loss


def held_out_rows(path: str, cfg: RunConfig, limit: int | None = None) -> list[HeldOutRow]:
    """The rows of a held-out file split into (conversation so far, reference answer)."""
    from qlora_studio.core.data import load_examples

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
    cfg, _ = _run_parts(Path(run_dir))
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
    cfg, _ = _run_parts(run_dir)
    data = data or default_eval_data(run_dir)
    rows = held_out_rows(data, cfg, limit)
    started = time.time()
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
            _say(reporter, f"Evaluating the {side} model on {len(rows)} rows of {data}")
            losses[side] = []
            for i in range(0, len(rows), batch_size):
                _check(cancel)
                chunk = rows[i : i + batch_size]
                losses[side] += model.completion_losses([r.example for r in chunk], side)
                done += 1
                _progress(reporter, done, total, started)
            outputs[side] = []
            for i in range(0, len(rows), batch_size):
                _check(cancel)
                chunk = rows[i : i + batch_size]
                outputs[side] += model.generate([r.conversation for r in chunk], side, settings)
                done += len(chunk)
                _progress(reporter, done, total, started)
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
            runtime_s=round(time.time() - started, 1),
            device=model.device,
        )
    finally:
        if owned:
            model.close()
    if save:
        path = report.save(run_dir, limit)
        _say(reporter, f"Saved the evaluation to {path}")
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


# ---------------------------------------------------------------- run folder helpers


def _run_parts(run_dir: Path) -> tuple[RunConfig, Path]:
    from qlora_studio.core.training import trained_output

    return trained_output(run_dir, EvaluationError)


def _base_model_dir(run_dir: Path, cfg: RunConfig, reporter: Reporter) -> Path:
    from qlora_studio.core.models import resolve_model
    from qlora_studio.core.training import SUMMARY_FILE

    try:
        recorded = json.loads((run_dir / SUMMARY_FILE).read_text()).get("model_dir")
    except (OSError, ValueError):
        recorded = None
    if recorded and (Path(recorded) / "config.json").exists():
        return Path(recorded)
    return resolve_model(
        cfg.model.source,
        allow_pickle=cfg.model.allow_pickle,
        trust_remote_code=cfg.model.trust_remote_code,
        reporter=reporter,
    )


def _tokenizer_of(output_dir: Path, base_dir: Path, cfg: RunConfig):
    """The tokenizer saved with the adapter: it carries the chat template the run used."""
    from qlora_studio.core.models import load_tokenizer
    from qlora_studio.core.templates import resolve_chat_template

    try:
        tokenizer = load_tokenizer(output_dir, trust_remote_code=cfg.model.trust_remote_code)
    except StudioError:
        tokenizer = load_tokenizer(base_dir, trust_remote_code=cfg.model.trust_remote_code)
    if not getattr(tokenizer, "chat_template", None):
        resolve_chat_template(tokenizer, cfg.data.chat_template, _model_type(base_dir))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _model_type(folder: Path) -> str:
    try:
        return json.loads((folder / "config.json").read_text()).get("model_type", "")
    except (OSError, ValueError):
        return ""


def _load_causal_lm(folder: Path, cfg: RunConfig, device: str, *, quantize: bool):
    """Load for inference: on a GPU as trained (4-bit for QLoRA); on the CPU in fp32."""
    import torch
    from transformers import AutoModelForCausalLM

    from qlora_studio.core.training import (
        _torch_dtype,
        compute_dtype_name,
        quantization_config,
    )

    kwargs: dict[str, Any] = {"trust_remote_code": cfg.model.trust_remote_code}
    if device == "cuda":
        compute = _torch_dtype(compute_dtype_name(cfg.quant.compute_dtype, device))
        kwargs["dtype"] = compute
        if quantize:
            kwargs["quantization_config"] = quantization_config(cfg.quant, compute)
            kwargs["device_map"] = {"": device}
    else:
        kwargs["dtype"] = torch.float32
    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), **kwargs)
    except Exception as exc:
        raise EvaluationError(
            f"could not load the model in {folder}: {exc}",
            "check that the folder holds the model the run was trained on",
        ) from exc
    if not quantize or device != "cuda":
        model.to(device)
    model.config.use_cache = True
    return model.eval()


def _say(reporter: Reporter, message: str) -> None:
    reporter.emit(make_event("status", message=message))


def _progress(reporter: Reporter, done: int, total: int, started: float) -> None:
    elapsed = time.time() - started
    eta = elapsed / done * (total - done) if done else None
    reporter.emit(
        make_event(
            "progress",
            step=done,
            total=total,
            epoch=0.0,
            eta_s=round(eta, 1) if eta is not None else None,
            tokens_per_s=0.0,
        )
    )


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled("Evaluation stopped", "nothing was saved; run it again to finish")
