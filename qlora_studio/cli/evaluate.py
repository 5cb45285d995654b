"""`qlora-studio eval` and `qlora-studio chat`: did the fine-tune work, base vs tuned."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path

from qlora_studio.cli.common import EXIT_CANCELLED, EXIT_OK, print_failure


def add_parsers(sub) -> None:
    """Register the ``eval`` and ``chat`` subcommands on the CLI's subparsers."""
    ev = sub.add_parser(
        "eval", help="score base vs tuned on a held-out file (loss, exact match, similarity)"
    )
    ev.add_argument("run_dir", help="the run folder")
    ev.add_argument("--data", help="held-out file (default: the run's data.eval_path)")
    ev.add_argument("--limit", type=int, help="evaluate only the first N rows")
    ev.add_argument("--max-new-tokens", type=int, help="default: twice the longest reference + 8")
    ev.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    ev.add_argument("--device", default="auto", help="auto, cuda or cpu")
    ev.add_argument("--rows", type=int, default=10, help="rows of the table to print")
    ev.add_argument("--json", action="store_true", help="print the whole report as JSON")
    ev.add_argument(
        "--events", choices=["text", "jsonl"], default="text", help="progress as JSON lines"
    )

    chat = sub.add_parser("chat", help="talk to the tuned model, optionally next to the base")
    chat.add_argument("run_dir", help="the run folder")
    chat.add_argument("--base", action="store_true", help="also answer with the base model")
    chat.add_argument("--prompt", help="answer this one prompt and exit (no interactive loop)")
    chat.add_argument("--system", default="", help="a system message for the conversation")
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--seed", type=int, default=0)
    chat.add_argument("--device", default="auto", help="auto, cuda or cpu")
    chat.add_argument(
        "--serve",
        action="store_true",
        help="answer JSON requests on stdin with JSON-line events on stdout (used by the GUI): "
        '{"op": "generate", "id": 1, "messages": [{"role": "user", "content": "Hi"}], '
        '"sides": ["base", "tuned"], "settings": {"max_new_tokens": 64}}, '
        '{"op": "stop"}, {"op": "reset"}, {"op": "quit"}',
    )


# ---------------------------------------------------------------- eval


def run_eval(args: argparse.Namespace) -> int:
    """Score base vs tuned. Ctrl-C, SIGTERM or a 'stop' line on stdin stop it cleanly (exit
    130, a ``cancelled`` event); with ``--events jsonl`` the last event is ``done`` and its
    ``report_path`` names the saved report."""
    from qlora_studio.cli.common import fail, listen_for_stop, reporter_for
    from qlora_studio.core.errors import Cancelled, StudioError
    from qlora_studio.core.evaluation.evaluate import evaluate_run, report_file
    from qlora_studio.core.evaluation.settings import GenerationSettings
    from qlora_studio.core.events import make_event

    jsonl = args.events == "jsonl"
    reporter = _StepTracker(reporter_for(args.events))
    settings = None
    if args.max_new_tokens:
        settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    cancel = threading.Event()
    listen_for_stop(cancel)
    try:
        report = evaluate_run(
            Path(args.run_dir),
            data=args.data,
            limit=args.limit,
            settings=settings,
            batch_size=args.batch_size,
            device=args.device,
            reporter=reporter,
            cancel=cancel,
        )
    except (Cancelled, KeyboardInterrupt) as exc:
        message, hint = "Evaluation stopped", "nothing was saved; run it again to finish"
        if isinstance(exc, Cancelled):
            message, hint = exc.message, exc.hint
        if jsonl:
            reporter.emit(make_event("cancelled", step=reporter.step, checkpoint=""))
            reporter.emit(make_event("status", message=f"{message}: {hint}"))
        else:
            print_failure(message, hint)
        return EXIT_CANCELLED
    except StudioError as exc:
        if jsonl:
            return fail(reporter, exc.message, exc.hint)
        return print_failure(exc.message, exc.hint)
    if jsonl:
        path = report_file(Path(args.run_dir), report.data, args.limit)
        reporter.emit(
            make_event(
                "done",
                step=reporter.step,
                run_dir=str(report.run_dir),
                adapter_dir=str(Path(report.run_dir) / _output_name(report.method)),
                report_path=str(path),
                runtime_s=report.runtime_s,
            )
        )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    elif not jsonl:
        print_report(report, rows=args.rows)
    return EXIT_OK


class _StepTracker:
    """Passes events on and remembers the last progress step (for the cancelled event)."""

    def __init__(self, reporter):
        self.reporter, self.step = reporter, 0

    def emit(self, event: dict) -> None:
        if event.get("type") == "progress":
            self.step = event["step"]
        self.reporter.emit(event)


def _output_name(method: str) -> str:
    from qlora_studio.core.run_folder import ADAPTER, FULL_MODEL

    return FULL_MODEL if method == "full" else ADAPTER


def print_report(report, rows: int = 10) -> None:
    """The scores of both models and the first ``rows`` rows, for a terminal."""
    base, tuned = report.scores["base"], report.scores["tuned"]

    def num(value, fmt):
        return "-" if value is None else format(value, fmt)

    print(f"Held-out data: {report.data} ({base.rows} rows), run {report.run_dir}")
    print(f"Greedy answers, up to {report.settings.max_new_tokens} new tokens, on {report.device}")
    print()
    print(f"  {'':<22}{'base':>12}{'tuned':>12}{'change':>12}")
    lines = [
        ("loss (completions)", base.loss, tuned.loss, ".4f"),
        ("perplexity", base.perplexity, tuned.perplexity, ".2f"),
        ("exact match %", 100 * base.exact_match, 100 * tuned.exact_match, ".1f"),
        ("similarity %", 100 * base.similarity, 100 * tuned.similarity, ".1f"),
        ("stopped at EOS %", 100 * base.stopped, 100 * tuned.stopped, ".1f"),
    ]
    for name, b, t, fmt in lines:
        change = "-" if b is None or t is None else format(t - b, "+" + fmt)
        print(f"  {name:<22}{num(b, fmt):>12}{num(t, fmt):>12}{change:>12}")
    print()
    width = max(20, (shutil.get_terminal_size((120, 20)).columns - 16) // 4)
    if rows > 0:
        print(f"  {'prompt':<{width}} {'reference':<{width}} {'base':<{width}} tuned")
        for row in report.rows[:rows]:
            cells = [row.prompt, row.reference]
            for side in ("base", "tuned"):
                mark = "✓" if row.exact[side] else "✗"
                cells.append(f"{mark} {row.outputs[side]}")
            print("  " + " ".join(_cut(c, width) for c in cells))
        if len(report.rows) > rows:
            print(f"  ... {len(report.rows) - rows} more rows in the saved report")
    print()
    print(
        f"Exact match: base {100 * base.exact_match:.1f}% -> tuned {100 * tuned.exact_match:.1f}%"
    )


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return (text if len(text) <= width else text[: width - 1] + "…").ljust(width)


# ---------------------------------------------------------------- chat


def run_chat(args: argparse.Namespace) -> int:
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.evaluation.comparison import ComparisonModel, GenerationSettings
    from qlora_studio.core.events import TextReporter

    settings = GenerationSettings(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    if args.serve:
        return _serve(args, settings)
    try:
        settings.validate()
        model = ComparisonModel.load(
            Path(args.run_dir), device=args.device, reporter=TextReporter(sys.stderr)
        )
    except StudioError as exc:
        return print_failure(exc.message, exc.hint)
    sides = ("base", "tuned") if args.base else ("tuned",)
    system = [{"role": "system", "content": args.system}] if args.system else []
    histories: dict[str, list[dict]] = {side: list(system) for side in sides}
    try:
        if args.prompt is not None:
            _answer(model, histories, args.prompt, settings)
            return EXIT_OK
        print(
            "Type a message; /reset starts over, /quit (or Ctrl-D) leaves.\n"
            f"Template: the run's chat template; stop tokens {model.stop_ids}",
            file=sys.stderr,
        )
        while True:
            try:
                text = input("you> ")
            except EOFError:
                print(file=sys.stderr)
                return EXIT_OK
            if text.strip() in {"/quit", "/exit"}:
                return EXIT_OK
            if text.strip() == "/reset":
                histories = {side: list(system) for side in sides}
                continue
            if text.strip():
                _answer(model, histories, text, settings)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_OK
    finally:
        model.close()


def _serve(args: argparse.Namespace, settings) -> int:
    """``chat --serve``: load once, then answer requests until quit or the end of stdin."""
    from qlora_studio.cli.common import fail
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.evaluation.chat import serve
    from qlora_studio.core.evaluation.comparison import ComparisonModel
    from qlora_studio.core.events import JsonLinesReporter

    reporter = JsonLinesReporter(sys.stdout)
    try:
        settings.validate()
        model = ComparisonModel.load(Path(args.run_dir), device=args.device, reporter=reporter)
    except StudioError as exc:
        return fail(reporter, exc.message, exc.hint)
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    try:
        return serve(model, sys.stdin, reporter, defaults=settings, system=args.system)
    except KeyboardInterrupt:
        return EXIT_CANCELLED
    finally:
        model.close()


def _answer(model, histories: dict[str, list[dict]], text: str, settings) -> None:
    """Stream each side's answer (base first when both) and extend its own history."""
    for side, history in histories.items():
        history.append({"role": "user", "content": text})
        label = f"{side}> " if len(histories) > 1 else "tuned> "
        sys.stdout.write(label)
        sys.stdout.flush()
        answer = ""
        for _, piece in model.stream({side: history}, settings):
            answer += piece
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": answer.strip()})
