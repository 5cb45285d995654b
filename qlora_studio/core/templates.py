"""Chat templates for tokenizers that ship without one, and the choice of which one to use.

Every template here is a Jinja string rendered by ``tokenizer.apply_chat_template``; each
supports ``add_generation_prompt`` and keeps the prefix property the trainer relies on: the
text of ``messages[:i]`` with a generation prompt is a prefix of the text of ``messages[:i+1]``
when message ``i`` is an assistant turn, so an answer's trained span is the difference.
"""

from __future__ import annotations

from typing import Any

from .errors import DatasetError

TEMPLATE_NAMES = ("gemma", "chatml", "llama3", "alpaca", "plain")

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
