"""What every command shares: exit codes, failure printing, the reporter, stop handling."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130


def model_safety_args(parser: argparse.ArgumentParser) -> None:
    """The same two safety flags on every command that reads a model given on the command line
    (a run config carries them as model.allow_pickle / model.trust_remote_code)."""
    parser.add_argument(
        "--allow-pickle", action="store_true", help="accept .bin/.pt weights (they can run code)"
    )
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run the model's own Python code"
    )


def events_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        choices=["text", "jsonl"],
        default="text",
        help="'jsonl' prints one JSON event a line (used by the GUI)",
    )


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


def reporter_for(mode: str):
    from qlora_studio.core.events import JsonLinesReporter, TextReporter

    return JsonLinesReporter(sys.stdout) if mode == "jsonl" else TextReporter(sys.stderr)


def print_failure(message: str, hint: str = "") -> int:
    """Print '✗ message' and '  hint: ...' on stderr, as a text run shows an error event, and
    return the failure exit code (for the commands that report no events)."""
    print(f"✗ {message}", file=sys.stderr)
    if hint:
        print(f"  hint: {hint}", file=sys.stderr)
    return EXIT_FAILED


def fail(reporter, message: str, hint: str = "") -> int:
    from qlora_studio.core.events import make_event

    reporter.emit(make_event("error", message=message, hint=hint or ""))
    return EXIT_FAILED


def run_until_stopped(work, reporter) -> int:
    """Run ``work(cancel_event)`` with Ctrl-C / a 'stop' line on stdin as a graceful stop."""
    from qlora_studio.core.errors import Cancelled, StudioError
    from qlora_studio.core.events import make_event

    cancel = threading.Event()
    listen_for_stop(cancel)
    try:
        result = work(cancel)
    except Cancelled as exc:
        reporter.emit(make_event("cancelled", step=0, checkpoint=""))
        reporter.emit(make_event("status", message=exc.message))
        return EXIT_CANCELLED
    except StudioError as exc:
        return fail(reporter, exc.message, exc.hint)
    except KeyboardInterrupt:
        reporter.emit(
            make_event("error", message="Interrupted", hint="the last checkpoint is kept")
        )
        return EXIT_CANCELLED
    if getattr(result, "status", "done") == "cancelled":
        return EXIT_CANCELLED
    return EXIT_OK


def listen_for_stop(cancel: threading.Event) -> None:
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
