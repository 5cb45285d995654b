"""The dataset check before training: format, rows, token lengths and a rendered sample."""

from __future__ import annotations

import json
from typing import Any

from qlora_studio.core.data.batching import padding_figures
from qlora_studio.core.data.prepare import (
    dataset_stats,
    ensure_pad_token,
    has_trained_token,
    split_indices,
    tokenize_all,
    use_template,
)
from qlora_studio.core.data.rows import load_examples
from qlora_studio.core.data.templates import (
    preview_example,
)


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
    batch_size: int = 4,
    max_tokens_per_batch: int = 0,
) -> dict:
    """Summarise a dataset for display as a JSON-serialisable dict.

    Always: source, format, rows, columns, sample_rows (first 5 raw rows). With a tokenizer
    also: template, stats (:meth:`DatasetStats.to_dict` over every row), preview (the
    first row as a :class:`RenderedSample` dict) and batching (the share of computed tokens
    that is padding with each ``data.packing`` mode at ``batch_size``, over the train rows).
    Like :func:`prepare_dataset` it puts the chat template in force on the tokenizer and sets
    a missing pad token. Raises
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
    ensure_pad_token(tokenizer)
    template, _ = use_template(loaded.format, tokenizer, chat_template, model_type)
    rows = [r for r, _ in tokenize_all(loaded, tokenizer, max_length, train_on)]
    train_idx, eval_idx = split_indices(len(rows), validation_split, 42)
    stats = dataset_stats(
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
        unlearnable = sum(1 for r in rows if not has_trained_token(r))
        if unlearnable:
            warnings.append(
                f"{unlearnable} of {len(rows)} rows lose their whole answer to truncation at "
                f"max_length {max_length} and will be skipped in training"
            )
    train_lengths = [len(rows[i]["input_ids"]) for i in train_idx if has_trained_token(rows[i])]
    batching = padding_figures(
        train_lengths, max(1, batch_size), max_tokens=max_tokens_per_batch, seed=42
    ).to_dict()
    batching["batch_size"] = batch_size
    info.update(
        template=template,
        stats=stats.to_dict(),
        preview=preview.to_dict(),
        warnings=warnings,
        batching=batching,
    )
    return info
