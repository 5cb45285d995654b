"""Training data: read a file, folder or hub dataset, normalise its rows to conversations or
raw text, then template, tokenize (with loss masks), split and measure them.

Reading files, folders and hub ids lives in :mod:`.data_files`; chat templates, rendering and
tokenizing live in :mod:`.templates`. Their public names are re-exported here.

Bad input raises :class:`DatasetError` naming the file, the line or row, and what is wrong.
torch is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from typing import Any

from .data_files import EXTENSIONS as EXTENSIONS  # re-exported: the data API in one place
from .data_files import ROW_HINT, RawTable, describe_type, read_source
from .errors import DatasetError
from .events import make_event
from .templates import TEMPLATE_NAMES as TEMPLATE_NAMES  # re-exported: the data API in one place
from .templates import RenderedSample as RenderedSample
from .templates import encode, render
from .templates import preview_example as preview_example
from .templates import render_example as render_example
from .templates import resolve_chat_template as resolve_chat_template
from .templates import tokenize_example as tokenize_example

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "text")
EXPECTED_COLUMNS = {
    "alpaca": "instruction, output (input and system optional)",
    "sharegpt": "conversations = [{from, value}, ...]",
    "messages": "messages = [{role, content}, ...]",
    "prompt_completion": "prompt + completion (or question + answer, prompt + response, "
    "input + output)",
    "text": "text",
}
_PAIRS = (
    ("prompt", "completion"),
    ("question", "answer"),
    ("prompt", "response"),
    ("input", "output"),
)
_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "model": "assistant",
    "bard": "assistant",
    "bot": "assistant",
}
_RAW_ROWS = 50


@dataclass
class Example:
    """One training row: a conversation (``messages``) or raw ``text``; ``row`` is 1-based."""

    row: int
    messages: list[dict] | None
    text: str | None


@dataclass
class LoadedData:
    """Rows read from ``source`` and normalised to :class:`Example` in ``format``."""

    source: str
    format: str
    columns: list[str]
    examples: list[Example]
    raw_rows: list[dict]
    label: str = ""  # what errors call the source: the file name or the hub id
    row_unit: str = "row"  # "line" for .jsonl, whose rows are numbered by line

    def where(self, row: int) -> str:
        """'train.jsonl, line 7': where a row lives, for error messages."""
        return f"{self.label or self.source}, {self.row_unit} {row}"


# ---------------------------------------------------------------- normalising rows


def _fields_for(
    fmt: str, found: list[str], mapping: dict[str, str], forced: bool = False
) -> dict[str, str] | None:
    """Canonical field -> the file's column for ``fmt``, or None when a required one is absent.
    A forced chat format also takes the other chat format's column (turn keys are lenient)."""

    def col(name: str) -> str:
        return mapping.get(name, name)

    present = set(found)
    if fmt in ("messages", "sharegpt"):
        own = "messages" if fmt == "messages" else "conversations"
        other = "conversations" if fmt == "messages" else "messages"
        for name in (col(own), col(other)) if forced else (col(own),):
            if name in present:
                return {"conversation": name, "system": col("system")}
        return None
    if fmt == "alpaca":
        if col("instruction") in present and col("output") in present:
            names = ("instruction", "input", "output", "system")
            return {n: col(n) for n in names}
        return None
    if fmt == "prompt_completion":
        mapped = "prompt" in mapping or "completion" in mapping
        for prompt, completion in [(col("prompt"), col("completion"))] if mapped else _PAIRS:
            if prompt in present and completion in present:
                return {"prompt": prompt, "completion": completion, "system": col("system")}
        return None
    if fmt == "text":
        return {"text": col("text")} if col("text") in present else None
    raise DatasetError(f"unknown data format {fmt!r}", "use auto or one of " + ", ".join(FORMATS))


def _choose_format(table: RawTable, fmt: str, mapping: dict[str, str]) -> tuple[str, dict]:
    order = ("messages", "sharegpt", "alpaca", "prompt_completion", "text")
    expected = "; ".join(f"{f}: {EXPECTED_COLUMNS[f]}" for f in FORMATS)
    found = ", ".join(table.columns) or "none"
    missing = {ours: yours for ours, yours in mapping.items() if yours not in table.columns}
    if missing:
        ours, yours = next(iter(missing.items()))
        raise DatasetError(
            f"{table.label}: the column mapping {ours}={yours} names a column {yours!r} that is "
            f"not in the file; columns found: {found}",
            f"map {ours} to one of the columns found, e.g. {ours}={table.columns[0]}"
            if table.columns
            else "check the file: it has no columns",
        )
    if fmt not in ("auto", "", None):
        fields = _fields_for(fmt, table.columns, mapping, forced=True)
        if fields is None:
            raise DatasetError(
                f"{table.label}: format {fmt!r} needs {EXPECTED_COLUMNS[fmt]}; columns found: "
                f"{found}",
                "map your column names, e.g. columns: {prompt: question, completion: answer}",
            )
        return fmt, fields
    for candidate in order:
        fields = _fields_for(candidate, table.columns, mapping)
        if fields is not None:
            return candidate, fields
    raise DatasetError(
        f"{table.label}: cannot tell the data format from its columns ({found})",
        f"expected one of - {expected}. Rename the columns or set a column mapping",
    )


def _cell(row: dict, column: str, where: str, *, required: bool) -> str:
    if column not in row:
        if required:
            raise DatasetError(f"{where}: missing column {column!r}", ROW_HINT)
        return ""
    value = row[column]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    elif not isinstance(value, str):
        raise DatasetError(
            f"{where}: {column!r} must be text, got {describe_type(value)}", ROW_HINT
        )
    if required and not value.strip():
        raise DatasetError(f"{where}: {column!r} is empty", ROW_HINT)
    return value


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    # OpenAI-style content parts: keep the text parts
    if (
        isinstance(content, list)
        and content
        and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            for p in content
        )
    ):
        return "".join(p["text"] for p in content)
    return None


def _conversation(value: Any, column: str, where: str) -> list[dict]:
    hint = "a conversation is a list of {role, content} (or {from, value}) objects"
    if isinstance(value, str):  # csv/tsv cells carry conversations as JSON text
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DatasetError(
                f"{where}: {column!r} is not a list of turns (not valid JSON: {exc.msg})", hint
            ) from None
    if not isinstance(value, list):
        raise DatasetError(
            f"{where}: {column!r} must be a list of turns, got {describe_type(value)}", hint
        )
    if not value:
        raise DatasetError(f"{where}: the conversation is empty", hint)
    messages = []
    for k, turn in enumerate(value, 1):
        if not isinstance(turn, dict):
            raise DatasetError(
                f"{where}: turn {k} must be an object, got {describe_type(turn)}", hint
            )
        raw_role = turn.get("role") if turn.get("role") is not None else turn.get("from")
        raw_content = turn.get("content") if turn.get("content") is not None else turn.get("value")
        if raw_role is None:
            raise DatasetError(f"{where}: turn {k} has no 'role' (or 'from')", hint)
        role = _ROLES.get(str(raw_role).strip().lower())
        if role is None:
            raise DatasetError(
                f"{where}: turn {k} has unknown role {raw_role!r}",
                "roles: system, user, assistant (sharegpt: system, human, gpt)",
            )
        content = _content_text(raw_content)
        if content is None:
            raise DatasetError(
                f"{where}: turn {k} ({role}) content must be a string, "
                f"got {describe_type(raw_content)}",
                hint,
            )
        messages.append({"role": role, "content": content})
    answers = [m for m in messages if m["role"] == "assistant"]
    if not answers:
        raise DatasetError(
            f"{where}: conversation has no assistant turn",
            "each conversation needs an assistant (gpt) answer to learn from",
        )
    if not any(m["content"].strip() for m in answers):
        raise DatasetError(f"{where}: every assistant turn is empty", ROW_HINT)
    return messages


def _example(row: dict, n: int, where: str, fmt: str, fields: dict, system_prompt: str) -> Example:
    if fmt == "text":
        return Example(n, None, _cell(row, fields["text"], where, required=True))
    system = _cell(row, fields["system"], where, required=False).strip()
    if fmt in ("messages", "sharegpt"):
        column = fields["conversation"]
        if column not in row:
            raise DatasetError(f"{where}: missing column {column!r}", ROW_HINT)
        messages = _conversation(row[column], column, where)
    elif fmt == "alpaca":
        instruction = _cell(row, fields["instruction"], where, required=True)
        extra = _cell(row, fields["input"], where, required=False)
        user = instruction + ("\n\n" + extra if extra.strip() else "")
        output = _cell(row, fields["output"], where, required=True)
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    else:
        prompt = _cell(row, fields["prompt"], where, required=True)
        completion = _cell(row, fields["completion"], where, required=True)
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": completion},
        ]
    system = system or system_prompt
    if system and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return Example(n, messages, None)


def load_examples(
    path: str,
    *,
    format: str = "auto",
    columns: dict[str, str] | None = None,
    system_prompt: str = "",
) -> LoadedData:
    """Read ``path`` (a data file, a dataset folder or a hub id) and normalise every row.

    ``format`` forces a format ("auto" detects it from the columns); ``columns`` maps our
    canonical names to the file's. Every format but "text" becomes chat messages, and
    ``system_prompt`` is added to conversations without a system message. Raises
    :class:`DatasetError` naming the file and the row at the first bad row.
    """
    path = os.fspath(path) if isinstance(path, os.PathLike) else path
    if not isinstance(path, str) or not path.strip():
        raise DatasetError("no dataset given", "choose a data file, a folder or a hub id")
    table = read_source(path.strip())
    fmt, fields = _choose_format(table, format, dict(columns or {}))
    examples = []
    for row, n in zip(table.rows, table.numbers, strict=True):
        where = f"{table.label}, {table.unit} {n}"
        examples.append(_example(row, n, where, fmt, fields, system_prompt))
    return LoadedData(
        path, fmt, list(table.columns), examples, table.rows[:_RAW_ROWS], table.label, table.unit
    )


# ---------------------------------------------------------------- preparing a dataset


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


def _stats(
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


def _split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    n_eval = min(max(1, round(n * fraction)), n - 1)
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return sorted(order[n_eval:]), sorted(order[:n_eval])


def _ensure_pad_token(tokenizer: Any) -> None:
    if getattr(tokenizer, "pad_token", None) is None:
        if getattr(tokenizer, "eos_token", None) is None:
            raise DatasetError("the tokenizer has neither a pad nor an EOS token", "")
        tokenizer.pad_token = tokenizer.eos_token


def _use_template(fmt: str, tokenizer: Any, name: str, model_type: str) -> tuple[str, str | None]:
    if fmt == "text":
        return "none", None
    used = resolve_chat_template(tokenizer, name, model_type)
    template = tokenizer.chat_template
    return used, template if isinstance(template, str) else json.dumps(template)


def _tokenize_all(
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


def _say(reporter: Any, message: str) -> None:
    if reporter is not None:
        reporter.emit(make_event("status", message=message))


def _has_trained_token(row: dict) -> bool:
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
    _ensure_pad_token(tokenizer)
    template, chat_template = _use_template(
        loaded.format, tokenizer, data_cfg.chat_template, model_type
    )
    n_rows = len(loaded.examples) + (len(held_out.examples) if held_out else 0)
    _say(
        reporter,
        f"Tokenizing {n_rows} rows ({loaded.format}, template {template}, "
        f"max length {data_cfg.max_length})",
    )
    rows = [r for r, _ in _tokenize_all(loaded, tokenizer, data_cfg.max_length, data_cfg.train_on)]
    if held_out:
        train_rows = rows
        eval_rows = [
            r for r, _ in _tokenize_all(held_out, tokenizer, data_cfg.max_length, data_cfg.train_on)
        ]
    else:
        train_idx, eval_idx = _split(len(rows), data_cfg.validation_split, seed)
        train_rows, eval_rows = [rows[i] for i in train_idx], [rows[i] for i in eval_idx]
    every = rows + (eval_rows if held_out else [])
    stats = _stats(
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
    learnable = [r for r in train_rows if _has_trained_token(r)]
    learnable_eval = [r for r in eval_rows if _has_trained_token(r)]
    skipped = len(train_rows) - len(learnable) + len(eval_rows) - len(learnable_eval)
    train_rows, eval_rows = learnable, learnable_eval
    stats.train_rows, stats.eval_rows, stats.skipped_rows = len(train_rows), len(eval_rows), skipped
    if not train_rows:
        raise DatasetError(
            f"{loaded.label or loaded.source}: no training row keeps its answer within "
            f"max_length {data_cfg.max_length}",
            "raise max_length, shorten the prompts, or train on all tokens",
        )
    _say(
        reporter,
        f"Prepared {len(train_rows)} training and {len(eval_rows)} validation rows; "
        f"{stats.truncated_rows} truncated at {data_cfg.max_length} tokens"
        + (f"; {skipped} rows skipped: their answer lies past max_length" if skipped else ""),
    )
    return PreparedDataset(train_rows, eval_rows, stats, template, chat_template, loaded.format)


class PaddingCollator:
    """Right-pads tokenized rows into a batch of torch LongTensors (labels padded with -100)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token first")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.last_shape: tuple[int, int] | None = None  # rows x tokens of the latest batch
        self.widest = 0  # the most tokens a batch before the latest one had

    def __call__(self, features: list[dict]) -> dict:
        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        shape = (len(features), width)
        if self.last_shape is not None:
            self.widest = max(self.widest, self.last_shape[1])
        self.last_shape = shape
        batch = {
            "input_ids": torch.full(shape, self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "labels": torch.full(shape, -100, dtype=torch.long),
        }
        for i, feature in enumerate(features):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            n = len(ids)
            batch["input_ids"][i, :n] = ids
            mask = feature.get("attention_mask")
            batch["attention_mask"][i, :n] = 1 if mask is None else torch.as_tensor(mask)
            labels = feature.get("labels")
            batch["labels"][i, :n] = ids if labels is None else torch.as_tensor(labels)
        return batch


def inspect_data(
    path: str,
    *,
    tokenizer: Any = None,
    model_type: str = "",
    format: str = "auto",
    columns: dict[str, str] | None = None,
    chat_template: str = "auto",
    max_length: int = 512,
    train_on: str = "completions",
    validation_split: float = 0.1,
    system_prompt: str = "",
) -> dict:
    """Summarise a dataset for display as a JSON-serialisable dict.

    Always: source, format, rows, columns, sample_rows (first 5 raw rows). With a tokenizer
    also: template, stats (:meth:`DatasetStats.to_dict` over every row) and preview (the
    first row as a :class:`RenderedSample` dict); like :func:`prepare_dataset` it puts the chat
    template in force on the tokenizer and sets a missing pad token. Raises
    :class:`DatasetError` for bad data.
    """
    loaded = load_examples(path, format=format, columns=columns, system_prompt=system_prompt)
    sample = json.loads(json.dumps(loaded.raw_rows[:5], default=str))
    info: dict[str, Any] = {
        "source": loaded.source,
        "format": loaded.format,
        "rows": len(loaded.examples),
        "columns": loaded.columns,
        "sample_rows": sample,
    }
    if tokenizer is None:
        return info
    _ensure_pad_token(tokenizer)
    template, _ = _use_template(loaded.format, tokenizer, chat_template, model_type)
    rows = [r for r, _ in _tokenize_all(loaded, tokenizer, max_length, train_on)]
    train_idx, eval_idx = _split(len(rows), validation_split, 42)
    stats = _stats(
        rows,
        fmt=loaded.format,
        template=template,
        train_rows=len(train_idx),
        eval_rows=len(eval_idx),
        max_length=max_length,
    )
    preview = preview_example(
        loaded.examples[0], tokenizer, max_length=max_length, train_on=train_on
    )
    warnings = []
    if stats.trained_tokens == 0:  # the same condition makes prepare_dataset refuse to train
        warnings.append(
            f"no row has a token to learn within max_length {max_length} (longest row: "
            f"{stats.max_length_seen} tokens): training would refuse this data; raise "
            "max_length, shorten the prompts, or train on all tokens"
        )
    else:
        unlearnable = sum(1 for r in rows if not _has_trained_token(r))
        if unlearnable:
            warnings.append(
                f"{unlearnable} of {len(rows)} rows lose their whole answer to truncation at "
                f"max_length {max_length} and will be skipped in training"
            )
    info.update(
        template=template, stats=stats.to_dict(), preview=preview.to_dict(), warnings=warnings
    )
    return info
