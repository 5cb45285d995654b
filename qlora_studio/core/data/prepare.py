"""A dataset ready to train: templated, tokenized with loss masks, split and measured (the
collators that batch it are in ``core/data/batching.py``)."""

from __future__ import annotations

import json
import math
import random
from dataclasses import asdict, dataclass
from typing import Any

from qlora_studio.core.data.rows import LoadedData, load_examples
from qlora_studio.core.data.templates import (
    encode,
    render,
    resolve_chat_template,
)
from qlora_studio.core.errors import DatasetError
from qlora_studio.core.events import say


@dataclass
class DatasetStats:
    """What the user sees before training; lengths are in tokens after templating."""

    rows: int
    format: str
    template: str
    train_rows: int
    eval_rows: int
    max_length: int
    lengths: list[int]  # before truncation, every row (train and eval) in file order
    histogram: dict  # {"edges": [...], "counts": [...]}, len(edges) == len(counts) + 1
    truncated_rows: int
    total_tokens: int  # after truncation
    trained_tokens: int  # after truncation
    trained_share: float  # trained_tokens / total_tokens
    min_length: int
    mean_length: float
    p95_length: int
    max_length_seen: int
    skipped_rows: int = 0  # truncated before their answer: counted here, not trained on

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreparedDataset:
    """Tokenized train and eval rows ready for a collator, with their statistics."""

    train: list[dict]
    eval: list[dict]
    stats: DatasetStats
    template: str
    chat_template: str | None
    format: str


def _histogram(lengths: list[int], bins: int = 20) -> dict:
    if not lengths:
        return {"edges": [0, 1], "counts": [0]}
    low, high = min(lengths), max(lengths)
    width = max(1, math.ceil((high - low + 1) / bins))
    n_bins = max(1, math.ceil((high - low + 1) / width))
    counts = [0] * n_bins
    for length in lengths:
        counts[(length - low) // width] += 1
    return {"edges": [low + k * width for k in range(n_bins + 1)], "counts": counts}


def dataset_stats(
    rows: list[dict], *, fmt: str, template: str, train_rows: int, eval_rows: int, max_length: int
) -> DatasetStats:
    lengths = [r["length"] for r in rows]
    total = sum(len(r["input_ids"]) for r in rows)
    trained = sum(1 for r in rows for label in r["labels"] if label != -100)
    ordered = sorted(lengths)
    return DatasetStats(
        rows=len(rows),
        format=fmt,
        template=template,
        train_rows=train_rows,
        eval_rows=eval_rows,
        max_length=max_length,
        lengths=lengths,
        histogram=_histogram(lengths),
        truncated_rows=sum(1 for r in rows if r["truncated"]),
        total_tokens=total,
        trained_tokens=trained,
        trained_share=trained / total if total else 0.0,
        min_length=ordered[0] if ordered else 0,
        mean_length=sum(lengths) / len(lengths) if lengths else 0.0,
        p95_length=ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)] if ordered else 0,
        max_length_seen=ordered[-1] if ordered else 0,
    )


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    n_eval = min(max(1, round(n * fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def ensure_pad_token(tokenizer: Any) -> None:
    if getattr(tokenizer, "pad_token", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise DatasetError("the tokenizer has neither a pad nor an EOS token", "")
        tokenizer.pad_token = tokenizer.eos_token


def use_template(fmt: str, tokenizer: Any, name: str, model_type: str) -> tuple[str, str | None]:
    if fmt == "text":
        return "none", None
    used = resolve_chat_template(tokenizer, name, model_type)
    template = tokenizer.chat_template
    return used, template if isinstance(template, str) else json.dumps(template)


def tokenize_all(
    loaded: LoadedData, tokenizer: Any, max_length: int, train_on: str, chunk: int = 512
) -> list[tuple[dict, list[tuple[int, int]]]]:
    out = []
    for i in range(0, len(loaded.examples), chunk):
        texts, spans = [], []
        for example in loaded.examples[i : i + chunk]:
            text, trained = render(example, tokenizer, train_on, loaded.where(example.row))
            texts.append(text)
            spans.append(trained)
        out += encode(texts, spans, tokenizer, max_length)
    return out


def has_trained_token(row: dict) -> bool:
    """Whether truncation left the row a token to learn (a label other than -100)."""
    return any(label != -100 for label in row["labels"])


def prepare_dataset(
    data_cfg: Any, tokenizer: Any, *, model_type: str = "", seed: int = 42, reporter: Any = None
) -> PreparedDataset:
    """Load, template, tokenize and split the data described by ``data_cfg`` (a DataConfig).

    Sets the tokenizer's pad token to EOS when it has none and puts the chosen chat template
    in force. ``eval_path`` rows become the eval set; otherwise ``validation_split`` of the
    rows is held out, chosen by ``seed`` (at least one eval and one train row when possible).
    Raises :class:`DatasetError` for bad rows and when no row keeps a trained token within
    ``max_length``.
    """
    columns = dict(data_cfg.columns or {})
    loaded = load_examples(
        data_cfg.path, format=data_cfg.format, columns=columns, system_prompt=data_cfg.system_prompt
    )
    held_out = None
    if data_cfg.eval_path:
        held_out = load_examples(
            data_cfg.eval_path,
            format=loaded.format,
            columns=columns,
            system_prompt=data_cfg.system_prompt,
        )
    ensure_pad_token(tokenizer)
    template, chat_template = use_template(
        loaded.format, tokenizer, data_cfg.chat_template, model_type
    )
    n_rows = len(loaded.examples) + (len(held_out.examples) if held_out else 0)
    say(
        reporter,
        f"Tokenizing {n_rows} rows ({loaded.format}, template {template}, "
        f"max length {data_cfg.max_length})",
    )
    rows = [r for r, _ in tokenize_all(loaded, tokenizer, data_cfg.max_length, data_cfg.train_on)]
    if held_out:
        train_rows = rows
        eval_rows = [
            r for r, _ in tokenize_all(held_out, tokenizer, data_cfg.max_length, data_cfg.train_on)
        ]
    else:
        train_idx, eval_idx = split_indices(len(rows), data_cfg.validation_split, seed)
        train_rows, eval_rows = [rows[i] for i in train_idx], [rows[i] for i in eval_idx]
    every = rows + (eval_rows if held_out else [])
    stats = dataset_stats(
        every,
        fmt=loaded.format,
        template=template,
        train_rows=len(train_rows),
        eval_rows=len(eval_rows),
        max_length=data_cfg.max_length,
    )
    if stats.trained_tokens == 0:
        raise DatasetError(
            f"{loaded.label or loaded.source}: no row has a token to learn within "
            f"max_length {data_cfg.max_length} (longest row: {stats.max_length_seen} tokens)",
            "raise max_length, shorten the prompts, or train on all tokens",
        )
    # a row truncated before its answer teaches nothing, and a batch made only of such rows
    # has no label at all (NaN loss): such rows are counted in the stats but not trained on
    learnable = [r for r in train_rows if has_trained_token(r)]
    learnable_eval = [r for r in eval_rows if has_trained_token(r)]
    skipped = len(train_rows) - len(learnable) + len(eval_rows) - len(learnable_eval)
    train_rows, eval_rows = learnable, learnable_eval
    stats.train_rows, stats.eval_rows, stats.skipped_rows = len(train_rows), len(eval_rows), skipped
    if not train_rows:
        raise DatasetError(
            f"{loaded.label or loaded.source}: no training row keeps its answer within "
            f"max_length {data_cfg.max_length}",
            "raise max_length, shorten the prompts, or train on all tokens",
        )
    say(
        reporter,
        f"Prepared {len(train_rows)} training and {len(eval_rows)} validation rows; "
        f"{stats.truncated_rows} truncated at {data_cfg.max_length} tokens"
        + (f"; {skipped} rows skipped: their answer lies past max_length" if skipped else ""),
    )
    return PreparedDataset(train_rows, eval_rows, stats, template, chat_template, loaded.format)
