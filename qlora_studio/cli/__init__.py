"""The command line: every GUI action has a twin here, driven by the same config file.

This module builds the parser and dispatches; each command group lives in its own module
(``train``, ``inspect``, ``memory``, ``evaluate``, ``runs``) and shares ``common``. Heavy
libraries load inside the commands, so ``--help`` is instant.
Exit codes: 0 done, 1 failed, 130 cancelled.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from qlora_studio.cli.common import EXIT_OK, events_arg, model_safety_args
from qlora_studio.config import (
    CHAT_TEMPLATES,
    DATA_FORMATS,
    EXPORT_FORMAT_LABELS,
    EXPORT_FORMATS,
    GGUF_TYPES,
    METHODS,
    TRAIN_ON,
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-studio",
        description="Fine-tune language models locally with full fine-tuning, LoRA and QLoRA.",
        epilog="With no command, the desktop app opens.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train from a config file (YAML or JSON)")
    train.add_argument("config", help="run config, e.g. resources/configs/demo-qlora.yaml")
    _set_arg(train, "override a field, e.g. --set train.lr=1e-4 (repeatable)")
    events_arg(train)

    resume = sub.add_parser(
        "resume", help="continue a stopped or crashed run from its last checkpoint"
    )
    resume.add_argument("run_dir", help="the run folder")
    _set_arg(resume, "override a field, e.g. --set train.max_steps=200")
    events_arg(resume)

    script = sub.add_parser(
        "launch-script",
        help="write a cluster job script that trains a config on several machines (Slurm)",
    )
    script.add_argument("config", help="run config to train")
    script.add_argument("--slurm", action="store_true", required=True, help="an sbatch script")
    script.add_argument("--nodes", type=int, default=2, help="machines (default 2)")
    script.add_argument("--gpus-per-node", type=int, default=1, help="GPUs on each machine")
    script.add_argument("--job-name", default="qlora-studio", help="the Slurm job name")
    script.add_argument("--partition", default="", help="the Slurm partition")
    script.add_argument("--time", default="", help="time limit, e.g. 04:00:00")
    script.add_argument("--port", type=int, default=29500, help="meeting port on node 0")
    script.add_argument("-o", "--output", help="write the script here (default: print it)")

    im = sub.add_parser("inspect-model", help="architecture, parameter counts and LoRA targets")
    im.add_argument("source", help="'demo', a local folder, a .gguf file or a hub id")
    model_safety_args(im)
    im.add_argument("--json", action="store_true", help="print JSON")

    idata = sub.add_parser("inspect-data", help="format, rows, token lengths and a rendered sample")
    idata.add_argument("path", help="a data file, folder or hub dataset id")
    idata.add_argument("--model", help="tokenize with this model's tokenizer (for lengths/preview)")
    model_safety_args(idata)
    idata.add_argument(
        "--format", default="auto", choices=DATA_FORMATS, help="force a format (auto detects it)"
    )
    idata.add_argument(
        "--column",
        dest="columns",
        action="append",
        default=[],
        metavar="OURS=YOURS",
        help="column mapping, e.g. --column prompt=question",
    )
    idata.add_argument(
        "--chat-template",
        default="auto",
        help=f"{', '.join(CHAT_TEMPLATES)}, or a Jinja template string",
    )
    idata.add_argument("--max-length", type=int, default=512, help="tokens per example")
    idata.add_argument("--train-on", default="completions", choices=TRAIN_ON)
    idata.add_argument(
        "--batch-size", type=int, default=4, help="rows per batch, for the padding figures"
    )
    idata.add_argument(
        "--max-tokens-per-batch", type=int, default=0, help="token budget of packed batches"
    )
    idata.add_argument("--json", action="store_true", help="print JSON")

    export = sub.add_parser(
        "export",
        help="export a run: its adapter, a merged model, or GGUF for llama.cpp and Ollama",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="formats:\n"
        + "\n".join(f"  {f:<10} {label}" for f, label in EXPORT_FORMAT_LABELS.items()),
    )
    export.add_argument("run_dir", help="the run folder")
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="what to write (default adapter), in RUN_DIR/exports/adapter, merged, gguf-lora "
        "or gguf-<quant> unless --out says where",
    )
    export.add_argument(
        "--merge", action="store_true", help="the same as --format merged (kept for scripts)"
    )
    export.add_argument(
        "--quant",
        metavar="TYPE",
        help=f"with --format gguf: {', '.join(GGUF_TYPES)} (default f16); K-quants such as "
        "q4_k_m need llama.cpp's llama-quantize",
    )
    export.add_argument("--out", help="destination folder (must not exist)")
    events_arg(export)

    est = sub.add_parser(
        "estimate", help="GPU memory for full, LoRA and QLoRA, and whether it fits"
    )
    est.add_argument(
        "source", help="'demo', a local folder (config.json is enough), .gguf or hub id"
    )
    est.add_argument("--config", help="take batch size, sequence length, rank... from a run config")
    model_safety_args(est)
    est.add_argument("--method", default="all", choices=[*METHODS, "all"])
    est.add_argument("--batch-size", type=int, help="examples per step")
    est.add_argument("--seq-len", type=int, help="tokens per example (the longest batch)")
    est.add_argument(
        "--strategy",
        choices=["none", "ddp", "fsdp"],
        help="several GPUs: each GPU's share with ddp (all replicated) or fsdp (sharded); "
        "default: the config's distributed.strategy",
    )
    est.add_argument("--gpus", type=int, help="GPUs training together (default: the config's)")
    est.add_argument(
        "--gpu",
        default="auto",
        help="'auto' (NVML), a card such as 'RTX 4090', a size such as 24GB, or cpu",
    )
    est.add_argument(
        "--probe",
        action="store_true",
        help="also run two real training steps and show the measured peak",
    )
    est.add_argument("--json", action="store_true", help="print JSON")

    probe = sub.add_parser("probe", help="measure the peak memory of two training steps")
    probe.add_argument("config", help="run config")
    _set_arg(probe)
    probe.add_argument("--json", action="store_true", help="print one JSON object")

    from qlora_studio.cli.runs import add_runs_parser

    add_runs_parser(sub)

    from qlora_studio.cli.evaluate import add_parsers as add_eval_parsers

    add_eval_parsers(sub)

    gui = sub.add_parser("gui", help="open the desktop app")
    gui.add_argument("--config", help="open on a saved run config")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command is None or args.command == "gui":
        return _open_gui(getattr(args, "config", None))
    module_name, function = _COMMANDS[args.command]
    module = importlib.import_module(f"qlora_studio.cli.{module_name}")
    return getattr(module, function)(args)


_COMMANDS = {  # command -> (module in qlora_studio.cli, function)
    "train": ("train", "cmd_train"),
    "resume": ("train", "cmd_resume"),
    "launch-script": ("train", "cmd_launch_script"),
    "export": ("train", "cmd_export"),
    "inspect-model": ("inspect", "cmd_inspect_model"),
    "inspect-data": ("inspect", "cmd_inspect_data"),
    "estimate": ("memory", "run_estimate"),
    "probe": ("memory", "run_probe_command"),
    "eval": ("evaluate", "run_eval"),
    "chat": ("evaluate", "run_chat"),
    "runs": ("runs", "run_runs_command"),
}


def _open_gui(config: str | None) -> int:
    try:
        from qlora_studio.gui.app import run_app
    except ImportError:
        print(
            "QLoRA Studio's desktop window is coming in the next release.\n"
            "Until then every step works from the command line; try:\n"
            "  qlora-studio inspect-model demo\n"
            "  qlora-studio train resources/configs/demo-qlora.yaml\n"
            "Run `qlora-studio --help` for all commands.",
            file=sys.stderr,
        )
        return EXIT_OK
    return run_app(config=config)


def _set_arg(parser: argparse.ArgumentParser, help: str = "override a field (repeatable)") -> None:
    """``--set section.field=value``, repeatable, as train, resume and probe take it."""
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="K=V", help=help
    )


if __name__ == "__main__":
    raise SystemExit(main())
