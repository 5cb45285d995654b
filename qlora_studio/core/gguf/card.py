"""What a GGUF export folder says about itself: the commands that run it with llama.cpp and
Ollama, and a README.md model card listing its GGUF files, their sizes and those commands.

The commands are read from the folder itself (its GGUF files and the ``FROM`` of its
Modelfile), so the card written in the temporary folder and the commands the CLI prints after
the rename are the same.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from qlora_studio.core.events import format_mb
from qlora_studio.core.gguf.ollama import MODELFILE

ADAPTER_FILE = "adapter-lora.gguf"
CARD_FILE = "README.md"
CONVERTER = "convert_hf_to_gguf.py"  # llama.cpp's converter, for a Hugging Face base


def ollama_name(run_name: str, folder: Path) -> str:
    """A model name Ollama accepts (lower case, ``[a-z0-9._-]``): the run's name and what the
    folder holds, e.g. ``my-run-q8_0`` or ``my-run-lora``."""
    tag = "lora" if (Path(folder) / ADAPTER_FILE).is_file() else _merged_quant(folder)
    name = re.sub(r"[^a-z0-9._-]+", "-", f"{run_name}-{tag}".lower()).strip("-._")
    return name or "qlora-studio-model"


def run_commands(folder: Path, run_name: str, *, absolute: bool = True) -> list[str]:
    """The shell commands that run the export in ``folder``: llama.cpp's, then Ollama's
    ``create`` and ``run``. Paths are absolute, or relative to the folder (for its card)."""
    folder = Path(folder)

    def here(name: str) -> str:
        return shlex.quote(str(folder.resolve() / name) if absolute else name)

    commands = []
    if (folder / ADAPTER_FILE).is_file():
        base = _modelfile_from(folder)
        base_path = Path(base) if Path(base).is_absolute() else folder / base
        if base.lower().endswith(".gguf"):
            base_arg = here(base_path.name) if base_path.parent == folder else shlex.quote(base)
        else:  # a Hugging Face base: llama.cpp needs it as GGUF first
            commands.append(f"python {CONVERTER} {shlex.quote(base)} --outfile base-f16.gguf")
            base_arg = "base-f16.gguf"
        commands.append(f"llama-cli -m {base_arg} --lora {here(ADAPTER_FILE)} -cnv")
    else:
        commands.append(f"llama-cli -m {here(f'model-{_merged_quant(folder)}.gguf')} -cnv")
    name = ollama_name(run_name, folder)
    commands += [f"ollama create {name} -f {here(MODELFILE)}", f"ollama run {name}"]
    return commands


def gguf_card(folder: Path, run_name: str, summary: dict[str, Any], *, base: str) -> str:
    """The README.md of a GGUF export folder: what it holds (each GGUF file and its size),
    what it was made from, and the exact commands that run it."""
    folder = Path(folder)
    adapter = (folder / ADAPTER_FILE).is_file()
    what = "LoRA adapter" if adapter else f"merged model ({_merged_quant(folder).upper()})"
    commands = run_commands(folder, run_name, absolute=False)
    llama = [c for c in commands if not c.startswith("ollama ")]
    ollama = [c for c in commands if c.startswith("ollama ")]
    lines = [
        "---",
        "tags: [qlora-studio, gguf, llama.cpp, ollama]",
        "---",
        "",
        f"# {run_name}: {what} as GGUF",
        "",
        "Trained and exported with QLoRA Studio. Every command below runs from this folder.",
        "",
        "| File | Size |",
        "|---|---|",
    ]
    for path in sorted(folder.glob("*.gguf")):
        size = path.stat().st_size
        lines.append(f"| `{path.name}` | {format_mb(size)} ({size:,} bytes) |")
    lines += [
        f"| `{MODELFILE}` | Ollama's recipe: the model, the chat template, the stop tokens |",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{base}` |",
        f"| Chat template | {summary.get('template', '?')} |",
        f"| Steps | {summary.get('step', '?')} of {summary.get('total_steps', '?')} |",
        "",
        "## llama.cpp",
        "",
        "```sh",
        *llama,
        "```",
        "",
    ]
    if adapter and not _modelfile_from(folder).lower().endswith(".gguf"):
        lines += [
            f"The base is a Hugging Face folder: llama.cpp's `{CONVERTER}` turns it into the",
            "GGUF file the adapter applies to (the adapter's tensors use llama.cpp's names).",
            "",
        ]
    if not adapter and _merged_quant(folder) in ("f16", "bf16"):
        source = f"model-{_merged_quant(folder)}.gguf"
        lines += [
            "Smaller K-quants come from llama.cpp's quantizer:",
            f"`llama-quantize {source} model-q4_k_m.gguf Q4_K_M`.",
            "",
        ]
    lines += ["## Ollama", "", "```sh", *ollama, "```", ""]
    return "\n".join(lines)


def write_card(folder: Path, run_name: str, summary: dict[str, Any], *, base: str) -> Path:
    """Write ``folder/README.md`` (the export's temporary folder, after its GGUF files and
    Modelfile); return it."""
    path = Path(folder) / CARD_FILE
    path.write_text(gguf_card(folder, run_name, summary, base=base), encoding="utf-8")
    return path


def _merged_quant(folder: Path) -> str:
    """``q8_0`` for a folder holding ``model-q8_0.gguf``."""
    for path in sorted(Path(folder).glob("model-*.gguf")):
        return path.stem.removeprefix("model-")
    return "gguf"


def _modelfile_from(folder: Path) -> str:
    """What the folder's Modelfile builds on (its ``FROM``), with a leading ``./`` removed."""
    for line in (Path(folder) / MODELFILE).read_text(encoding="utf-8").splitlines():
        if line.startswith("FROM "):
            return line.removeprefix("FROM ").strip().removeprefix("./")
    return ""
