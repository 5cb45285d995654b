"""Writing what a run produced: the adapter (or full model), a model card, a merged model.

Every folder is written to a temporary sibling and renamed into place, so an interrupted or
failed export never leaves a half-written folder, and an existing folder is never overwritten
silently.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import Cancelled, ExportError
from qlora_studio.core.events import NullReporter, Reporter, make_event
from qlora_studio.core.run_folder import follow_umask, sweep_stale_temp_folders, temp_folder_suffix

MODEL_CARD = "README.md"


@contextlib.contextmanager
def atomic_folder(dest: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest``; on success rename it to ``dest``.

    With ``replace`` an existing ``dest`` is swapped out only after the new one is complete;
    without it an existing ``dest`` is an :class:`ExportError`.
    """
    dest = Path(dest)
    if dest.exists() and not replace:
        raise ExportError(
            f"{dest} already exists",
            "choose another folder with --out, or delete the old one first",
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale_temp_folders(dest.parent)  # what killed exports left behind
        tmp = Path(
            tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=temp_folder_suffix(), dir=dest.parent)
        )
        follow_umask(tmp)  # mkdtemp makes it 0700; the export is as readable as any new folder
    except OSError as exc:
        raise _disk_error(exc, dest) from exc
    try:
        yield tmp
        if dest.exists():
            old = dest.with_name(f".{dest.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            dest.rename(old)
            tmp.rename(dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dest)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(exc, dest) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _disk_error(exc: OSError, dest: Path) -> ExportError:
    if exc.errno == errno.ENOSPC:
        return ExportError(
            f"The disk is full while writing {dest}", "free some space and export again"
        )
    return ExportError(
        f"Could not write {dest}: {exc.strerror or exc}", "check the folder's permissions"
    )


def save_trained(
    model,
    tokenizer,
    cfg: RunConfig,
    dest: Path,
    *,
    base_model_dir: Path,
    summary: dict[str, Any],
) -> Path:
    """Save the trained adapter (lora/qlora) or the whole model (full) with the tokenizer (its
    chat template and EOS as trained), the run's config and a model card; replace ``dest``."""
    with atomic_folder(Path(dest), replace=True) as tmp:
        if cfg.method == "full":
            model.save_pretrained(tmp)
        else:
            model.save_pretrained(tmp)
            _point_adapter_at_base(tmp, base_model_dir)
        tokenizer.save_pretrained(tmp)
        cfg.save(tmp / "config.yaml")
        (tmp / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        (tmp / MODEL_CARD).write_text(model_card(cfg, summary), encoding="utf-8")
    return Path(dest)


def _point_adapter_at_base(folder: Path, base_model_dir: Path) -> None:
    """Record the local base folder so ``PeftModel.from_pretrained`` users know what to load."""
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = str(base_model_dir)
    path.write_text(json.dumps(config, indent=2))


def model_card(cfg: RunConfig, summary: dict[str, Any]) -> str:
    """A README.md describing the base model, method, settings, steps and loss."""
    lines = [
        "---",
        "library_name: peft" if cfg.method != "full" else "library_name: transformers",
        "tags: [qlora-studio, " + cfg.method + "]",
        "---",
        "",
        f"# {cfg.method.upper()} fine-tune of `{cfg.model.source}`",
        "",
        "Trained with QLoRA Studio.",
        "",
        "| | |",
        "|---|---|",
        f"| Base model | `{cfg.model.source}` (local folder `{summary.get('model_dir', '')}`) |",
        f"| Method | {cfg.method} |",
        f"| Dataset | `{cfg.data.path}` ({summary.get('train_rows', '?')} training rows, "
        f"format {summary.get('format', '?')}) |",
        f"| Chat template | {summary.get('template', '?')} |",
        f"| EOS token | `{summary.get('eos_token', '')}` |",
        "| Stop tokens | "
        + ", ".join(f"`{t}`" for t in summary.get("stop_tokens") or [summary.get("eos_token")])
        + " |",
        f"| Steps | {summary.get('step', '?')} of {summary.get('total_steps', '?')} "
        f"({summary.get('status', '')}) |",
        f"| Final training loss | {_fmt(summary.get('final_loss'))} "
        f"(first {_fmt(summary.get('first_loss'))}) |",
        f"| Validation loss | {_fmt(summary.get('eval_loss'))} |",
        f"| Max length | {cfg.data.max_length} tokens, loss on {cfg.data.train_on} |",
        f"| Optimizer | {cfg.train.optimizer}, lr {cfg.train.lr}, {cfg.train.scheduler} |",
        f"| Batch | {cfg.train.batch_size} x {cfg.train.grad_accum} accumulation |",
    ]
    if cfg.method != "full":
        targets = cfg.lora.target_modules
        lines.append(
            f"| LoRA | r={cfg.lora.r}, alpha={cfg.lora.alpha}, dropout={cfg.lora.dropout}, "
            f"targets={targets if isinstance(targets, str) else ', '.join(targets)}"
            f"{', rsLoRA' if cfg.lora.use_rslora else ''}{', DoRA' if cfg.lora.use_dora else ''} |"
        )
    if cfg.method == "qlora":
        lines.append(
            f"| Quantization | 4-bit {cfg.quant.quant_type}, double quant "
            f"{'on' if cfg.quant.double_quant else 'off'}, compute {cfg.quant.compute_dtype} |"
        )
    lines += ["", "## Use it", "", "```python"]
    if cfg.method == "full":
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    else:
        lines += [
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'base = AutoModelForCausalLM.from_pretrained("path/to/base")',
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")  # trained template',
        ]
    lines += [
        "```",
        "",
        "Prompts must use the chat template the run trained with (below, also saved with the",
        "tokenizer: `tokenizer.apply_chat_template(messages, add_generation_prompt=True)`). The",
        "model learned to end its answers with the stop tokens listed: pass their ids to",
        "`generate(eos_token_id=[...])` so it stops there.",
        "",
        "The exact run can be repeated with `qlora-studio train config.yaml`.",
        "",
    ]
    if summary.get("chat_template"):
        lines += [
            f"## Chat template ({summary.get('template', '?')})",
            "",
            "```jinja",
            str(summary["chat_template"]),
            "```",
            "",
        ]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def export_run(
    run_dir: Path,
    *,
    out: Path | None = None,
    merge: bool = False,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
) -> Path:
    """Export a finished or stopped run: a copy of its adapter (or full model), or with
    ``merge`` the base model with the adapter merged in, in 16-bit, on the CPU. ``cancel`` is
    checked between the merge's phases (load, merge, write): :class:`Cancelled`, nothing kept."""
    from qlora_studio.core.run_folder import trained_output

    reporter = reporter or NullReporter()
    run_dir = Path(run_dir)
    cfg, source = trained_output(run_dir, ExportError)
    if merge and cfg.method == "full":
        merge = False  # a full fine-tune is already a whole model
    default_name = "merged" if merge else source.name
    dest = Path(out) if out else run_dir / "exports" / default_name
    if merge:
        return _export_merged(cfg, source, dest, reporter, cancel)
    reporter.emit(make_event("status", message=f"Copying {source.name} to {dest}"))
    with atomic_folder(dest) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)
    reporter.emit(make_event("status", message=f"Exported to {dest}"))
    return dest


def _export_merged(
    cfg: RunConfig,
    adapter_dir: Path,
    dest: Path,
    reporter: Reporter,
    cancel: threading.Event | None,
) -> Path:
    from peft import PeftModel
    from transformers import AutoTokenizer

    from qlora_studio.core.data.templates import stop_token_ids
    from qlora_studio.core.models.loading import load_causal_lm
    from qlora_studio.core.models.sources import resolve_model

    if dest.exists():
        raise ExportError(f"{dest} already exists", "choose another folder with --out")
    base_dir = resolve_model(
        cfg.model.source,
        allow_pickle=cfg.model.allow_pickle,
        trust_remote_code=cfg.model.trust_remote_code,
        reporter=reporter,
    )
    reporter.emit(
        make_event("status", message=f"Loading the base model in 16-bit on the CPU ({base_dir})")
    )
    # a QLoRA adapter was trained against the 4-bit base; it merges into the 16-bit weights
    base = load_causal_lm(base_dir, cfg, "cpu", purpose="merge", error=ExportError)
    _check(cancel)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    reporter.emit(make_event("status", message="Merging the adapter into the base weights"))
    merged = model.merge_and_unload()
    _check(cancel)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    stop_ids = stop_token_ids(tokenizer)
    if stop_ids:  # plain `generate` on the merged model stops where training taught it to
        merged.generation_config.eos_token_id = stop_ids
    with atomic_folder(dest) as tmp:
        reporter.emit(make_event("status", message=f"Writing the merged model to {dest}"))
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in ("config.yaml", "training_summary.json"):
            if (adapter_dir / name).exists():
                shutil.copy2(adapter_dir / name, tmp / name)
        summary = _read_json(adapter_dir / "training_summary.json")
        card = model_card(cfg, summary).replace(
            "Trained with QLoRA Studio.",
            "Trained with QLoRA Studio; the adapter is merged into the 16-bit base weights.",
        )
        (tmp / MODEL_CARD).write_text(card, encoding="utf-8")
    reporter.emit(make_event("status", message=f"Exported the merged model to {dest}"))
    return dest


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled("export stopped", "nothing was kept; export again to finish")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
