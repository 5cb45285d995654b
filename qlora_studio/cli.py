"""The command line: every GUI action has a twin here, driven by the same config file.

Heavy libraries load inside the commands, so ``--help`` is instant.
Exit codes: 0 done, 1 failed, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-studio",
        description="Fine-tune language models locally with full fine-tuning, LoRA and QLoRA.",
        epilog="With no command, the desktop app opens.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = sub.add_parser("train", help="train from a config file (YAML or JSON)")
    train.add_argument("config", help="run config, e.g. resources/configs/demo-qlora.yaml")
    train.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override a field, e.g. --set train.lr=1e-4 (repeatable)",
    )
    _events_arg(train)

    resume = sub.add_parser(
        "resume", help="continue a stopped or crashed run from its last checkpoint"
    )
    resume.add_argument("run_dir", help="the run folder")
    resume.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="K=V",
        help="override a field, e.g. --set train.max_steps=200",
    )
    _events_arg(resume)

    im = sub.add_parser("inspect-model", help="architecture, parameter counts and LoRA targets")
    im.add_argument("source", help="'demo', a local folder, a .gguf file or a hub id")
    _model_safety_args(im)
    im.add_argument("--json", action="store_true", help="print JSON")

    idata = sub.add_parser("inspect-data", help="format, rows, token lengths and a rendered sample")
    idata.add_argument("path", help="a data file, folder or hub dataset id")
    idata.add_argument("--model", help="tokenize with this model's tokenizer (for lengths/preview)")
    _model_safety_args(idata)
    idata.add_argument("--format", default="auto", help="force a format (alpaca, sharegpt, ...)")
    idata.add_argument(
        "--column",
        dest="columns",
        action="append",
        default=[],
        metavar="OURS=YOURS",
        help="column mapping, e.g. --column prompt=question",
    )
    idata.add_argument("--chat-template", default="auto", help="template name (see config)")
    idata.add_argument("--max-length", type=int, default=512, help="tokens per example")
    idata.add_argument("--train-on", default="completions", choices=["completions", "all"])
    idata.add_argument("--json", action="store_true", help="print JSON")

    export = sub.add_parser("export", help="export a run's adapter, or merge it into the base")
    export.add_argument("run_dir", help="the run folder")
    export.add_argument("--merge", action="store_true", help="merge into a 16-bit base model")
    export.add_argument("--out", help="destination folder (must not exist)")
    _events_arg(export)

    est = sub.add_parser(
        "estimate", help="GPU memory for full, LoRA and QLoRA, and whether it fits"
    )
    est.add_argument(
        "source", help="'demo', a local folder (config.json is enough), .gguf or hub id"
    )
    est.add_argument("--config", help="take batch size, sequence length, rank... from a run config")
    _model_safety_args(est)
    est.add_argument("--method", default="all", choices=["full", "lora", "qlora", "all"])
    est.add_argument("--batch-size", type=int, help="examples per step")
    est.add_argument("--seq-len", type=int, help="tokens per example (the longest batch)")
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
    probe.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    probe.add_argument("--json", action="store_true", help="print one JSON object")

    from qlora_studio.cli_runs import add_runs_parser

    add_runs_parser(sub)

    from qlora_studio.cli_eval import add_parsers as add_eval_parsers

    add_eval_parsers(sub)

    gui = sub.add_parser("gui", help="open the desktop app")
    gui.add_argument("--config", help="open on a saved run config")
    return parser


def _model_safety_args(parser: argparse.ArgumentParser) -> None:
    """The same two safety flags on every command that reads a model given on the command line
    (a run config carries them as model.allow_pickle / model.trust_remote_code)."""
    parser.add_argument(
        "--allow-pickle", action="store_true", help="accept .bin/.pt weights (they can run code)"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run the model's own Python code"
    )


def _events_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        choices=["text", "jsonl"],
        default="text",
        help="'jsonl' prints one JSON event a line (used by the GUI)",
    )


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command is None or args.command == "gui":
        return _open_gui(getattr(args, "config", None))
    handler = {
        "train": _cmd_train,
        "resume": _cmd_resume,
        "inspect-model": _cmd_inspect_model,
        "inspect-data": _cmd_inspect_data,
        "export": _cmd_export,
        "estimate": _cmd_estimate,
        "probe": _cmd_probe,
        "eval": _cmd_eval,
        "chat": _cmd_chat,
        "runs": _cmd_runs,
    }[args.command]
    return handler(args)


# ---- commands -------------------------------------------------------------------------------
def _cmd_train(args) -> int:
    from qlora_studio.config import ConfigError, RunConfig

    reporter = _reporter(args.events)
    try:
        cfg = RunConfig.load(args.config)
    except ConfigError as exc:
        return _fail(reporter, config_error_message(exc, args.config), exc.hint)
    try:
        cfg = cfg.with_overrides(args.overrides)
    except ConfigError as exc:
        return _fail(reporter, config_error_message(exc, args.config, args.overrides), exc.hint)
    return _run(lambda cancel: _train(cfg, reporter, cancel), reporter)


def _cmd_resume(args) -> int:
    from qlora_studio.config import ConfigError

    reporter = _reporter(args.events)

    def work(cancel):
        from qlora_studio.core.errors import TrainingError
        from qlora_studio.core.training import CONFIG_FILE, resume_training

        try:
            return resume_training(
                Path(args.run_dir), reporter=reporter, cancel=cancel, overrides=args.overrides
            )
        except ConfigError as exc:
            source = str(Path(args.run_dir) / CONFIG_FILE)
            message = config_error_message(exc, source, args.overrides)
            raise TrainingError(message, exc.hint) from exc

    return _run(work, reporter)


def config_error_message(exc, source: str, overrides: list[str] = ()) -> str:
    """'Config error in FILE: field: message', or 'in --set K=V' when an override is at fault."""
    named = [item for item in overrides if item.partition("=")[0].strip() == exc.field]
    if named:
        where = f"--set {named[-1]}"
    elif overrides:
        where = f"{source} with --set " + " ".join(overrides)
    else:
        where = source
    return f"Config error in {where}: {exc.field}: {exc.message}"


def _train(cfg, reporter, cancel):
    from qlora_studio.core.training import run_training

    return run_training(cfg, reporter=reporter, cancel=cancel)


def _cmd_export(args) -> int:
    reporter = _reporter(args.events)

    def work(cancel):
        from qlora_studio.core.export import export_run

        dest = export_run(
            Path(args.run_dir),
            out=Path(args.out) if args.out else None,
            merge=args.merge,
            reporter=reporter,
        )
        if args.events == "text":
            print(dest)
        return None

    return _run(work, reporter)


def _cmd_inspect_model(args) -> int:
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.models import inspect_model

    reporter = _reporter("text")
    try:
        info = inspect_model(
            args.source,
            allow_pickle=args.allow_pickle,
            trust_remote_code=args.trust_remote_code,
            reporter=reporter,
        )
    except StudioError as exc:
        return _fail(reporter, exc.message, exc.hint)
    data = info.to_dict()
    if args.json:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"{data['architecture']} ({data['model_type']})  from {data['path']}")
    print(f"  parameters     {data['params_total']:,}")
    for kind, count in data["params_by_kind"].items():
        share = 100 * count / max(data["params_total"], 1)
        note = "  (tied to the embeddings)" if kind == "lm_head" and data["tied_embeddings"] else ""
        print(f"    {kind:<12} {count:>15,}  {share:5.1f}%{note}")
    print(
        f"  layers {data['num_layers']}, hidden {data['hidden_size']}, "
        f"intermediate {data['intermediate_size']}, heads {data['num_heads']} "
        f"(kv {data['num_kv_heads']}, head dim {data['head_dim']})"
    )
    print(
        f"  vocabulary {data['vocab_size']:,}, context {data['context_length']:,}, "
        f"tied embeddings {'yes' if data['tied_embeddings'] else 'no'}, "
        f"stored as {data['torch_dtype']}"
    )
    print(f"  chat template  {'yes' if data['has_chat_template'] else 'none (a fallback is used)'}")
    print("  LoRA targets (all-linear):")
    for layer in data["linear_layers"]:
        print(
            f"    {layer['name']:<12} {layer['kind']:<9} x{layer['count']:<3} "
            f"{layer['in_features']} -> {layer['out_features']}"
        )
    return EXIT_OK


def _cmd_inspect_data(args) -> int:
    from qlora_studio.core.data import inspect_data
    from qlora_studio.core.errors import StudioError

    reporter = _reporter("text")
    columns = {}
    for item in args.columns:
        ours, sep, yours = item.partition("=")
        if not sep:
            return _fail(
                reporter, f"--column {item!r} must look like ours=yours", "e.g. prompt=question"
            )
        columns[ours.strip()] = yours.strip()
    try:
        tokenizer, model_type = None, ""
        if args.model:
            from qlora_studio.core.models import load_tokenizer, resolve_model

            folder = resolve_model(
                args.model,
                allow_pickle=args.allow_pickle,
                trust_remote_code=args.trust_remote_code,
                reporter=reporter,
            )
            tokenizer = load_tokenizer(folder, trust_remote_code=args.trust_remote_code)
            model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
        report = inspect_data(
            args.path,
            tokenizer=tokenizer,
            model_type=model_type,
            format=args.format,
            columns=columns or None,
            chat_template=args.chat_template,
            max_length=args.max_length,
            train_on=args.train_on,
        )
    except StudioError as exc:
        return _fail(reporter, exc.message, exc.hint)
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return EXIT_OK
    print(f"{report['source']}: {report['rows']} rows, format {report['format']}")
    print(f"  columns: {', '.join(report['columns'])}")
    stats = report.get("stats")
    if stats:
        print(
            f"  template {report['template']}; tokens per row: min {stats['min_length']}, "
            f"mean {stats['mean_length']:.0f}, p95 {stats['p95_length']}, "
            f"max {stats['max_length_seen']}"
        )
        print(
            f"  truncated at {stats['max_length']}: {stats['truncated_rows']} rows; "
            f"trained tokens {stats['trained_tokens']:,} of {stats['total_tokens']:,} "
            f"({100 * stats['trained_share']:.1f}%)"
        )
        _print_histogram(stats["histogram"], stats["max_length"])
        for warning in report.get("warnings", []):
            print(f"  ! warning: {warning}")
        preview = report.get("preview")
        if preview:
            print(f"  row {preview['row']} as trained ([[...]] = tokens with loss):")
            text = "".join(
                f"[[{preview['text'][a:b]}]]" if trained else preview["text"][a:b]
                for a, b, trained in preview["spans"]
            )
            for line in text.splitlines():
                print("    " + line)
    else:
        print("  (pass --model to see token lengths, truncation and the trained tokens)")
        for row in report.get("sample_rows", [])[:3]:
            print("    " + json.dumps(row, ensure_ascii=False)[:160])
    return EXIT_OK


def _cmd_estimate(args) -> int:
    from qlora_studio.cli_memory import run_estimate

    return run_estimate(args)


def _cmd_probe(args) -> int:
    from qlora_studio.cli_memory import run_probe_command

    return run_probe_command(args)


def _cmd_runs(args) -> int:
    from qlora_studio.cli_runs import run_runs_command

    return run_runs_command(args)


def _cmd_eval(args) -> int:
    from qlora_studio.cli_eval import run_eval

    return run_eval(args)


def _cmd_chat(args) -> int:
    from qlora_studio.cli_eval import run_chat

    return run_chat(args)


def _print_histogram(histogram: dict, max_length: int) -> None:
    counts, edges = histogram.get("counts", []), histogram.get("edges", [])
    top = max(counts or [1]) or 1
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1] if i + 1 < len(edges) else edges[i]
        mark = "  <- max_length" if lo <= max_length < hi else ""
        print(f"    {lo:>6}-{hi:<6} {'#' * round(30 * count / top):<30} {count}{mark}")


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


# ---- plumbing -------------------------------------------------------------------------------
def _reporter(mode: str):
    from qlora_studio.core.events import JsonLinesReporter, TextReporter

    return JsonLinesReporter(sys.stdout) if mode == "jsonl" else TextReporter(sys.stderr)


def print_failure(message: str, hint: str = "") -> int:
    """Print '✗ message' and '  hint: ...' on stderr, as a text run shows an error event, and
    return the failure exit code (for the commands that report no events)."""
    print(f"✗ {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return EXIT_FAILED


def _fail(reporter, message: str, hint: str = "") -> int:
    from qlora_studio.core.events import make_event

    reporter.emit(make_event("error", message=message, hint=hint or ""))
    return EXIT_FAILED


def _run(work, reporter) -> int:
    """Run ``work(cancel_event)`` with Ctrl-C / a 'stop' line on stdin as a graceful stop."""
    from qlora_studio.core.errors import Cancelled, StudioError
    from qlora_studio.core.events import make_event

    cancel = threading.Event()
    _listen_for_stop(cancel)
    try:
        result = work(cancel)
    except Cancelled as exc:
        reporter.emit(make_event("cancelled", step=0, checkpoint=""))
        reporter.emit(make_event("status", message=exc.message))
        return EXIT_CANCELLED
    except StudioError as exc:
        return _fail(reporter, exc.message, exc.hint)
    except KeyboardInterrupt:
        reporter.emit(
            make_event("error", message="Interrupted", hint="the last checkpoint is kept")
        )
        return EXIT_CANCELLED
    if getattr(result, "status", "done") == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK


def _listen_for_stop(cancel: threading.Event) -> None:
    """First Ctrl-C (or SIGTERM, or a 'stop' line on stdin) asks for a graceful stop;
    a second Ctrl-C interrupts at once."""

    def on_signal(signum, frame):
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)

    if sys.stdin is not None and not sys.stdin.isatty():

        def read_stdin():
            try:
                for line in sys.stdin:
                    if line.strip().lower() in {"stop", "cancel"}:
                        cancel.set()
                        return
            except (OSError, ValueError):
                return

        threading.Thread(target=read_stdin, name="stop-listener", daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
