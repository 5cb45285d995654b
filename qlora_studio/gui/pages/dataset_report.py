"""What the Dataset page shows, as plain functions: the rendered sample and the summary as
HTML, raw cells as text, and the analysis that runs in the worker thread."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

TRAINED_COLOUR = "#c6efce"  # background of the tokens the loss is computed on
CUT_COLOUR = "#9e9e9e"  # text past max length
ERROR_COLOUR = "#b00020"


def sample_html(preview: dict) -> str:
    """The rendered sample as HTML: trained spans on a green background, untrained text plain,
    and whatever max length cuts off greyed after a scissors mark."""
    text = preview["text"]
    cut = preview.get("truncated_at")
    cut = len(text) if cut is None else cut
    parts: list[str] = []
    marked = False
    for start, end, trained in preview["spans"]:
        for a, b in ((start, min(end, cut)), (max(start, cut), end)):
            if a >= b:
                continue
            piece = html.escape(text[a:b])
            if a >= cut:
                if not marked:
                    parts.append(f"<span style='color:{ERROR_COLOUR}'>✂ max length </span>")
                    marked = True
                parts.append(f"<span style='color:{CUT_COLOUR}'>{piece}</span>")
            elif trained:
                parts.append(
                    f"<span style='background-color:{TRAINED_COLOUR}; color:#000'>{piece}</span>"
                )
            else:
                parts.append(piece)
    body = "".join(parts)
    return f"<div style='white-space: pre-wrap; font-family: monospace'>{body}</div>"


PACKING_WORDS = {"off": "random batches", "by_length": "by length", "padding_free": "packed"}


def padding_html(batching: dict | None) -> str:
    """One line: the share of computed tokens that is padding with each data.packing mode."""
    if not batching:
        return ""
    shares = batching["padding_share"]
    modes = " → ".join(
        f"{PACKING_WORDS.get(mode, mode)} <b>{share:.0%}</b>" for mode, share in shares.items()
    )
    return (
        f"<br>Padding in the computed tokens at batch {batching['batch_size']}: {modes} "
        "<span style='color:gray'>(Settings › Batching › packing)</span>"
    )


def summary_html(report: dict) -> str:
    """One paragraph: rows, format, template, split, truncation and the trained share."""
    stats = report["stats"]
    return (
        f"<b>{report['rows']:,}</b> rows, format <b>{report['format']}</b>, template "
        f"<b>{html.escape(str(report.get('template', '')))}</b> · {stats['train_rows']:,} train "
        f"/ {stats['eval_rows']:,} validation · <b>{stats['truncated_rows']:,}</b> truncated at "
        f"{stats['max_length']:,} tokens · {stats['trained_share']:.0%} of tokens trained"
        f"<br>Tokens per row: min {stats['min_length']:,}, mean {stats['mean_length']:,.0f}, "
        f"95% {stats['p95_length']:,}, max {stats['max_length_seen']:,}"
        + padding_html(report.get("batching"))
        + "".join(
            f"<br><span style='color:#b3261e'>⚠ {html.escape(w)}</span>"
            for w in report.get("warnings", [])
        )
    )


def _cell_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text.replace("\r\n", "\n").replace("\n", " ⏎ ")


def _analyse(reporter, cancel, settings: dict) -> dict:
    """Runs in the worker thread: the model's tokenizer, then inspect_data with the settings."""
    from qlora_studio.core.data.analyse import inspect_data
    from qlora_studio.core.errors import Cancelled
    from qlora_studio.core.events import make_event
    from qlora_studio.core.models.sources import load_tokenizer, resolve_model

    trust = settings["trust_remote_code"]
    reporter.emit(make_event("status", message="Loading the model's tokenizer…"))
    folder = (
        Path(settings["model_folder"])
        if settings["model_folder"]
        else resolve_model(
            settings["model"],
            allow_pickle=settings["allow_pickle"],
            trust_remote_code=trust,
            reporter=reporter,
        )
    )
    tokenizer = load_tokenizer(folder, trust_remote_code=trust)
    try:
        model_type = json.loads((folder / "config.json").read_text("utf-8")).get("model_type", "")
    except (OSError, ValueError):
        model_type = ""
    if cancel.is_set():
        raise Cancelled("analysis stopped", "press Analyse to run it again")
    name = Path(settings["path"]).name or settings["path"]
    reporter.emit(make_event("status", message=f"Reading, templating and tokenizing {name}…"))
    return inspect_data(
        settings["path"],
        tokenizer=tokenizer,
        model_type=model_type,
        format=settings["format"],
        columns=settings["columns"],
        chat_template=settings["chat_template"],
        max_length=settings["max_length"],
        train_on=settings["train_on"],
        validation_split=settings["validation_split"],
        system_prompt=settings["system_prompt"],
        batch_size=settings.get("batch_size", 4),
        max_tokens_per_batch=settings.get("max_tokens_per_batch", 0),
    )
