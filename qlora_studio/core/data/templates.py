"""Chat templates, and how a row becomes training text, trained spans and labelled tokens.

``resolve_chat_template`` picks the template (the tokenizer's own, or one written here for
tokenizers that ship without one); ``render_example`` turns a row into text plus the character
spans that carry loss; ``tokenize_example`` turns that into input ids and -100-masked labels.
Every template here is a Jinja string rendered by ``tokenizer.apply_chat_template``; each
supports ``add_generation_prompt`` and keeps the prefix property the trainer relies on: the
text of ``messages[:i]`` with a generation prompt is a prefix of the text of ``messages[:i+1]``
when message ``i`` is an assistant turn, so an answer's trained span is the difference.
"""

from __future__ import annotations

import weakref
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from qlora_studio.config import TEMPLATE_NAMES  # data.chat_template's named templates
from qlora_studio.core.errors import DatasetError

if TYPE_CHECKING:
    from qlora_studio.core.data.rows import Example

# Jinja runs with trim_blocks/lstrip_blocks in transformers, so every newline is a '\n' literal.
_BOS = "{% if bos_token %}{{ bos_token }}{% endif %}"
_EOS = "{% if eos_token %}{{ eos_token }}{% endif %}"

# System text is folded into the next user turn: Gemma has no system role.
GEMMA = (
    _BOS + "{% set ns = namespace(system='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set ns.system = ns.system + message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<start_of_turn>model\\n' + message['content'] + '<end_of_turn>\\n' }}"
    "{% else %}"
    "{{ '<start_of_turn>user\\n' + ns.system + message['content'] + '<end_of_turn>\\n' }}"
    "{% set ns.system = '' %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

LLAMA3 = (
    _BOS + "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}"
)

# No end-of-turn marker of its own: each answer ends with EOS so the model learns to stop.
ALPACA = (
    _BOS + "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n\\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] }}"
    "{% else %}{{ '### Response:\\n' + message['content'] }}" + _EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\\n\\n' }}{% endif %}{{ '### Response:\\n' }}"
    "{% endif %}"
)

PLAIN = (
    _BOS + "{% for message in messages %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if message['role'] == 'system' %}{{ 'System: ' + message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ 'User: ' + message['content'] }}"
    "{% else %}{{ 'Assistant: ' + message['content'] }}" + _EOS + "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{% if messages %}{{ '\\n' }}{% endif %}{{ 'Assistant: ' }}"
    "{% endif %}"
)

TEMPLATES: dict[str, str] = {
    "gemma": GEMMA,
    "chatml": CHATML,
    "llama3": LLAMA3,
    "alpaca": ALPACA,
    "plain": PLAIN,
}


def _vocab_has(tokenizer: Any, token: str) -> bool:
    try:
        return token in tokenizer.get_vocab()
    except Exception:  # some tokenizers cannot list their vocabulary
        return False


def _fallback_for(tokenizer: Any, model_type: str) -> str:
    if model_type.lower().startswith("gemma"):
        return "gemma"
    if _vocab_has(tokenizer, "<|im_start|>"):
        return "chatml"
    if _vocab_has(tokenizer, "<|start_header_id|>"):
        return "llama3"
    return "plain"


def template_name_of(chat_template: Any) -> str | None:
    """The name of one of our templates when ``chat_template`` is exactly it, else None."""
    for name, text in TEMPLATES.items():
        if chat_template == text:
            return name
    return None


def resolve_chat_template(tokenizer: Any, name: str = "auto", model_type: str = "") -> str:
    """Put the chosen chat template in force on ``tokenizer`` and return the name used.

    ``name`` is "auto" (the tokenizer's own template, else a fallback chosen from
    ``model_type`` and the vocabulary), "tokenizer" (its own, required), one of
    :data:`TEMPLATE_NAMES`, or a Jinja string containing "{%" (returns "custom").
    Returns "tokenizer" when the tokenizer's own template is used; otherwise sets
    ``tokenizer.chat_template``. Raises :class:`DatasetError` for an unknown name or when
    "tokenizer" is asked of a tokenizer without a template.
    """
    name = name or "auto"
    if "{%" in name:
        tokenizer.chat_template = name
        return "custom"
    name = name.strip()
    own = getattr(tokenizer, "chat_template", None)
    if name == "auto":
        if own:
            # A template we put there earlier (same tokenizer object) keeps its name.
            return template_name_of(own) or "tokenizer"
        name = _fallback_for(tokenizer, model_type)
    elif name == "tokenizer":
        if not own:
            raise DatasetError(
                "this model's tokenizer has no chat template",
                "choose one of: " + ", ".join(TEMPLATE_NAMES) + " (or 'auto' to pick one)",
            )
        return "tokenizer"
    if name not in TEMPLATES:
        raise DatasetError(
            f"unknown chat template {name!r}",
            "use auto, tokenizer, " + ", ".join(TEMPLATE_NAMES) + " or a Jinja template string",
        )
    tokenizer.chat_template = TEMPLATES[name]
    return name


# ---------------------------------------------------------------- rendering

_END_MARKERS = ("<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>", "</s>")


def stop_tokens(tokenizer: Any) -> list[str]:
    """The tokens that end an answer: EOS plus the chat template's end-of-turn marker when the
    template uses one that is a single token of the vocabulary."""
    found = []
    eos = getattr(tokenizer, "eos_token", None)
    if eos:
        found.append(eos)
    template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(template, str):
        for marker in _END_MARKERS:
            if marker in template and marker not in found and _vocab_has(tokenizer, marker):
                found.append(marker)
    return found


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The ids of :func:`stop_tokens`, for ``generate(eos_token_id=...)``."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in stop_tokens(tokenizer)]
    return sorted({int(i) for i in ids if i is not None and i != tokenizer.unk_token_id})


def _apply(tokenizer: Any, messages: list[dict], generation: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)


def _locate(text: str, content: str, cursor: int, eos: str) -> tuple[int, int] | None:
    """The span of ``content`` in ``text`` at or after ``cursor``, with its end-of-turn marker."""
    needle = content.strip()
    start = text.find(needle, cursor) if needle else -1
    if start < 0:
        return None
    end = start + len(needle)
    for marker in (*_END_MARKERS, eos):
        if marker and text.startswith(marker, end):
            return start, end + len(marker)
    return start, end


_HONOURS_GENERATION_PROMPT: dict[str, bool] = {}


def _honours_generation_prompt(tokenizer: Any) -> bool:
    """Whether the template in force adds something for add_generation_prompt (cached)."""
    key = str(tokenizer.chat_template)
    if key not in _HONOURS_GENERATION_PROMPT:
        probe = [{"role": "user", "content": "x"}]
        try:
            honours = _apply(tokenizer, probe, True) != _apply(tokenizer, probe, False)
        except Exception:
            honours = False
        if len(_HONOURS_GENERATION_PROMPT) > 64:
            _HONOURS_GENERATION_PROMPT.clear()
        _HONOURS_GENERATION_PROMPT[key] = honours
    return _HONOURS_GENERATION_PROMPT[key]


def _assistant_spans(tokenizer: Any, messages: list[dict], text: str) -> list[tuple[int, int]]:
    """Each assistant turn's span: from the end of the text with a generation prompt for the
    turns before it to the end of the text including it; located by content otherwise."""
    eos = getattr(tokenizer, "eos_token", None) or ""
    # a template that ignores add_generation_prompt would put the turn's header in the span
    by_prefix = _honours_generation_prompt(tokenizer)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or not message["content"].strip():
            continue
        span = None
        if i > 0 and by_prefix:
            try:
                prefix = _apply(tokenizer, messages[:i], True)
                last = i + 1 == len(messages)
                full = text if last else _apply(tokenizer, messages[: i + 1], False)
            except Exception:  # a template may reject a partial conversation
                prefix, full = "", ""
            if full.startswith(prefix) and text.startswith(full) and cursor <= len(prefix):
                span = (len(prefix), len(full)) if len(full) > len(prefix) else None
        span = span or _locate(text, message["content"], cursor, eos)
        if span:
            spans.append(span)
            cursor = span[1]
    return spans


_ADDS_BOS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts BOS in front of text by itself (asked once per tokenizer)."""
    try:
        return _ADDS_BOS[tokenizer]
    except (KeyError, TypeError):
        pass
    bos_id = getattr(tokenizer, "bos_token_id", None)
    try:
        adds = bos_id is not None and tokenizer("a")["input_ids"][:1] == [bos_id]
    except Exception:
        adds = False
    try:
        _ADDS_BOS[tokenizer] = adds
    except TypeError:  # not weak-referenceable: ask again next time
        pass
    return adds


def render(
    example: Example, tokenizer: Any, train_on: str, where: str
) -> tuple[str, list[tuple[int, int]]]:
    """:func:`render_example`, with ``where`` naming the row in errors ('data.jsonl, line 3')."""
    if train_on not in ("completions", "all"):
        raise DatasetError(f"unknown train_on {train_on!r}", "use 'completions' or 'all'")
    eos = getattr(tokenizer, "eos_token", None) or ""
    if example.messages is None:
        text = example.text or ""
        bos = getattr(tokenizer, "bos_token", None) or ""
        if bos and not text.startswith(bos) and _adds_bos(tokenizer):
            text = bos + text  # the tokenizer would add it itself; we tokenize without specials
        if eos and not text.endswith(eos):
            text += eos
        return text, [(0, len(text))]
    if not getattr(tokenizer, "chat_template", None):
        raise DatasetError(
            "the tokenizer has no chat template", "call resolve_chat_template(tokenizer) first"
        )
    try:
        text = _apply(tokenizer, example.messages, False)
    except Exception as exc:
        raise DatasetError(
            f"{where}: the chat template cannot render this conversation ({exc})",
            "the template may need alternating user/assistant turns; fix the row or "
            "choose another chat template",
        ) from None
    spans = (
        [(0, len(text))]
        if train_on == "all"
        else _assistant_spans(tokenizer, example.messages, text)
    )
    if eos and not text.rstrip().endswith(eos):
        spans.append((len(text), len(text) + len(eos)))
        text += eos
    return text, _merge(spans)


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def render_example(
    example: Example, tokenizer: Any, *, train_on: str = "completions"
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``example`` to the exact training text and the character spans trained on.

    Chat rows use ``tokenizer.chat_template`` (see :func:`resolve_chat_template`); with
    "completions" each assistant turn is trained including its end-of-turn marker, with "all"
    every character. The EOS token is appended (and trained) unless the text already ends
    with it. Raw text rows are text + EOS, all trained. Spans are sorted and disjoint.
    """
    return render(example, tokenizer, train_on, f"row {example.row}")


# ---------------------------------------------------------------- tokenizing


def encode(
    texts: list[str], spans: list[list[tuple[int, int]]], tokenizer: Any, max_length: int
) -> list[tuple[dict, list[tuple[int, int]]]]:
    """Tokenize (no special tokens added: the templates hold them), label and truncate each
    text; return the :func:`tokenize_example` dicts with each token's character span."""
    results = []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
        for ids, offsets, trained in zip(
            enc["input_ids"], enc["offset_mapping"], spans, strict=True
        ):
            flags = _trained_flags(offsets, trained)
            results.append((_labelled(ids, flags, max_length), [tuple(o) for o in offsets]))
        return results
    for text, trained in zip(texts, spans, strict=True):  # slow tokenizers: tokenize piece by piece
        ids, flags, offsets = [], [], []
        for start, end, on in _segments(text, trained, len(text)):
            piece = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
            ids += piece
            flags += [on] * len(piece)
            offsets += [(start, end)] * len(piece)
        results.append((_labelled(ids, flags, max_length), offsets))
    return results


def _trained_flags(offsets: list, spans: list[tuple[int, int]]) -> list[bool]:
    """Whether each token's character span overlaps a trained span (both sorted by start)."""
    if len(spans) == 1 and spans[0][0] == 0 and (not offsets or spans[0][1] >= offsets[-1][1]):
        return [True] * len(offsets)
    flags, k = [], 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        if k == len(spans):
            flags.append(False)
        elif start == end:
            flags.append(spans[k][0] <= start)
        else:
            flags.append(spans[k][0] < end)
    return flags


def _labelled(ids: list[int], flags: list[bool], max_length: int) -> dict:
    kept = list(ids[:max_length])
    labels = [t if on else -100 for t, on in zip(kept, flags[:max_length], strict=True)]
    return {
        "input_ids": kept,
        "labels": labels,
        "attention_mask": [1] * len(kept),
        "length": len(ids),
        "truncated": len(ids) > max_length,
    }


def _segments(text: str, spans: list[tuple[int, int]], cut: int) -> list[tuple[int, int, bool]]:
    """Consecutive (start, end, trained) pieces covering ``text``; nothing trained past ``cut``."""
    pieces: list[tuple[int, int, bool]] = []

    def add(start: int, end: int, trained: bool) -> None:
        if end <= start:
            return
        if pieces and pieces[-1][2] == trained and pieces[-1][1] == start:
            start = pieces.pop()[0]
        pieces.append((start, end, trained))

    pos = 0
    for start, end in spans:
        start, end = max(min(start, cut), pos), min(end, cut)
        add(pos, start, False)
        add(start, end, True)
        pos = max(pos, start, end)
    add(pos, len(text), False)
    return pieces


def tokenize_example(
    example: Example, tokenizer: Any, *, max_length: int, train_on: str = "completions"
) -> dict:
    """Render and tokenize one row (no special tokens added: the template has them).

    Returns ``input_ids``, ``labels`` (-100 on tokens outside the trained spans),
    ``attention_mask``, ``length`` (tokens before truncation) and ``truncated``; the lists
    keep the first ``max_length`` tokens.
    """
    text, spans = render_example(example, tokenizer, train_on=train_on)
    return encode([text], [spans], tokenizer, max_length)[0][0]


@dataclass
class RenderedSample:
    """One rendered row split into consecutive (start, end, trained) character spans."""

    row: int
    text: str
    spans: list[tuple[int, int, bool]]
    tokens: int  # tokens of the whole text, before truncation
    trained_tokens: int  # trained tokens kept within max_length
    truncated_at: int | None = None  # character where max_length cuts the text, None if it fits

    def to_dict(self) -> dict:
        data = asdict(self)
        data["spans"] = [list(s) for s in self.spans]
        return data


def preview_example(
    example: Example, tokenizer: Any, *, max_length: int, train_on: str = "completions"
) -> RenderedSample:
    """Render one row for display: its text and which characters are trained after truncation."""
    text, spans = render_example(example, tokenizer, train_on=train_on)
    encoded, offsets = encode([text], [spans], tokenizer, max_length)[0]
    cut = offsets[max_length - 1][1] if encoded["truncated"] else len(text)
    trained = sum(1 for label in encoded["labels"] if label != -100)
    return RenderedSample(
        example.row,
        text,
        _segments(text, spans, cut),
        encoded["length"],
        trained,
        cut if encoded["truncated"] else None,
    )
