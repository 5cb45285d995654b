"""An Ollama ``Modelfile`` for an exported run: the model (or base + adapter), the chat template
the run trained with as an Ollama Go template, and a ``stop`` for each token that ends an answer.

Each Go template renders a conversation exactly as the Jinja template of the same name in
``core/data/templates.py`` does with ``add_generation_prompt``, less the BOS token, which
llama.cpp adds itself (``tokenizer.ggml.add_bos_token``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODELFILE = "Modelfile"

# {eos} is replaced by the run's EOS token: alpaca and plain answers end with it.
GO_TEMPLATES = {
    "gemma": (
        '{{ $system := "" }}{{ range .Messages }}{{ if eq .Role "system" }}'
        '{{ $system = printf "%s%s\\n\\n" $system .Content }}'
        '{{ else if eq .Role "assistant" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n'
        "{{ else }}<start_of_turn>user\n{{ $system }}{{ .Content }}<end_of_turn>\n"
        '{{ $system = "" }}{{ end }}{{ end }}<start_of_turn>model\n'
    ),
    "chatml": (
        "{{ range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
        "{{ end }}<|im_start|>assistant\n"
    ),
    "llama3": (
        "{{ range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
        "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
    ),
    "alpaca": (
        "{{ range $i, $m := .Messages }}{{ if $i }}\n\n{{ end }}"
        '{{ if eq $m.Role "system" }}{{ $m.Content }}'
        '{{ else if eq $m.Role "user" }}### Instruction:\n{{ $m.Content }}'
        "{{ else }}### Response:\n{{ $m.Content }}{eos}{{ end }}{{ end }}\n\n### Response:\n"
    ),
    "plain": (
        "{{ range $i, $m := .Messages }}{{ if $i }}\n{{ end }}"
        '{{ if eq $m.Role "system" }}System: {{ $m.Content }}'
        '{{ else if eq $m.Role "user" }}User: {{ $m.Content }}'
        "{{ else }}Assistant: {{ $m.Content }}{eos}{{ end }}{{ end }}\nAssistant: "
    ),
}


def ollama_template(summary: dict[str, Any]) -> str | None:
    """The Go template for the chat template a run trained with (its training_summary.json),
    or None when it is not one of ours (Ollama then reads ``tokenizer.chat_template``)."""
    from qlora_studio.core.data.templates import template_name_of

    name = summary.get("template")
    if name not in GO_TEMPLATES:
        name = template_name_of(summary.get("chat_template"))
    if name not in GO_TEMPLATES:
        return None
    return GO_TEMPLATES[name].replace("{eos}", str(summary.get("eos_token") or ""))


def modelfile_text(base: str, *, adapter: str | None = None, summary: dict[str, Any]) -> str:
    """The Modelfile: ``FROM base`` (a GGUF file or a model folder), ``ADAPTER`` when given,
    the ``TEMPLATE`` and one ``PARAMETER stop`` per stop token the run recorded."""
    lines = [f"FROM {base}"]
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    template = ollama_template(summary)
    if template is not None:
        lines.append(f'TEMPLATE """{template}"""')
    else:
        lines.append("# the run's own chat template is in the GGUF (tokenizer.chat_template)")
    stops = summary.get("stop_tokens") or [summary.get("eos_token")]
    for stop in dict.fromkeys(s for s in stops if s):
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    return "\n".join(lines) + "\n"


def write_modelfile(
    folder: Path, *, base: str, adapter: str | None = None, summary: dict[str, Any]
) -> Path:
    """Write ``folder/Modelfile`` (the folder is an export's temporary folder); return it."""
    path = Path(folder) / MODELFILE
    path.write_text(modelfile_text(base, adapter=adapter, summary=summary), encoding="utf-8")
    return path
