"""Rows of training data: read a file, folder or hub dataset and normalise each row to a
conversation or raw text. Bad input raises :class:`DatasetError` naming the file, the row and
what is wrong."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from qlora_studio.config import ROW_FORMATS as FORMATS  # data.format's choices but auto
from qlora_studio.core.data.files import ROW_HINT, RawTable, describe_type, read_source
from qlora_studio.core.errors import DatasetError

EXPECTED_COLUMNS: dict[str, str] = {
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
