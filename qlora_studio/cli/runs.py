"""`qlora-studio runs`: the run history as a table, one run in detail, and deleting a run."""

from __future__ import annotations

import argparse
import json
import sys

from qlora_studio.cli.common import EXIT_OK, print_failure
from qlora_studio.core.history.store import STATUSES

TABLE = ("id", "name", "status", "method", "steps", "best loss", "peak memory", "started", "folder")


def add_runs_parser(sub) -> None:
    """Register ``runs``, ``runs show ID`` and ``runs delete ID`` on the CLI's subparsers."""
    runs = sub.add_parser("runs", help="the run history: list, show or delete runs")
    runs.add_argument("--json", action="store_true", help="print JSON")
    runs.add_argument("--status", choices=STATUSES, help="only runs with this status")
    actions = runs.add_subparsers(dest="runs_action", metavar="ACTION")
    show = actions.add_parser("show", help="everything recorded about one run")
    show.add_argument("id", type=int, help="the run's id (first column of `qlora-studio runs`)")
    show.add_argument("--json", dest="show_json", action="store_true", help="print JSON")
    delete = actions.add_parser("delete", help="delete a run's folder and its history row")
    delete.add_argument("id", type=int, help="the run's id")
    delete.add_argument("--yes", action="store_true", help="do not ask for confirmation")


def run_runs_command(args: argparse.Namespace) -> int:
    from qlora_studio.core.history.store import RunHistory, RunHistoryError

    try:
        with RunHistory.open() as history:  # opening marks runs whose process died as crashed
            if args.runs_action == "show":
                return _show(history, args.id, args.json or args.show_json)
            if args.runs_action == "delete":
                return _delete(history, args.id, args.yes)
            return _list(history, args.status, args.json)
    except RunHistoryError as exc:
        return print_failure(exc.message, exc.hint)


def _list(history, status: str | None, as_json: bool) -> int:
    from qlora_studio.core.history.store import describe_memory, format_time

    records = history.list_runs(status)
    if as_json:
        print(json.dumps([r.to_dict(with_config=False) for r in records], indent=2))
        return EXIT_OK
    if not records:
        which = f" with status {status}" if status else ""
        print(f"No runs{which} yet. `qlora-studio train CONFIG` starts one.")
        return EXIT_OK
    rows = [
        (
            str(r.id),
            r.name,
            r.status,
            r.method,
            f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step),
            f"{r.best_loss:.4f}" if r.best_loss is not None else "",
            describe_memory(r),
            format_time(r.started),
            r.run_dir,
        )
        for r in records
    ]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(TABLE)]
    for row in (TABLE, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _show(history, run_id: int, as_json: bool) -> int:
    from qlora_studio.core.history.store import describe_memory, format_time

    record = history.get(run_id)
    if record is None:
        return print_failure(f"There is no run {run_id}", "`qlora-studio runs` lists them")
    curve = history.loss_curve(run_id)
    if as_json:
        print(json.dumps({**record.to_dict(), "loss_curve": curve}, indent=2))
        return EXIT_OK
    loss = f"{record.final_loss:.4f}" if record.final_loss is not None else "–"
    best = f"{record.best_loss:.4f}" if record.best_loss is not None else "–"
    lines = [
        ("run", f"{record.id}  {record.name}"),
        ("status", record.status + (f" ({record.error})" if record.error else "")),
        ("method", record.method),
        ("model", record.model_source),
        ("steps", f"{record.step} of {record.total_steps}"),
        ("loss", f"final {loss}, best {best} ({len(curve)} points logged)"),
        ("peak memory", describe_memory(record) or "–"),
        ("started", format_time(record.started)),
        ("ended", format_time(record.ended) or "–"),
        ("process", f"pid {record.pid} on {record.host}"),
        ("folder", record.run_dir),
        ("checkpoint", record.checkpoint_dir or "–"),
        ("adapter", record.adapter_dir or "–"),
    ]
    if record.resumes:
        lines.append(("resumed", f"{record.resumes} time(s)"))
    for key, value in lines:
        print(f"{key:<12} {value}")
    print("config at start:")
    for line in record.config.rstrip().splitlines():
        print("  " + line)
    return EXIT_OK


def _delete(history, run_id: int, yes: bool) -> int:
    record = history.get(run_id)
    if record is None:
        return print_failure(f"There is no run {run_id}", "`qlora-studio runs` lists them")
    if not yes:
        if sys.stdin is None or not sys.stdin.isatty():
            return print_failure(
                f"Not deleting run {run_id} without a confirmation",
                f"run `qlora-studio runs delete {run_id} --yes` to delete it and its folder",
            )
        question = f"Delete run {run_id} ({record.name}) and its folder {record.run_dir}? [y/N] "
        answer = input(question)
        if answer.strip().lower() not in {"y", "yes"}:
            print("Nothing deleted.")
            return EXIT_OK
    folder = history.delete(run_id)
    print(f"Deleted run {run_id} and {folder}")
    return EXIT_OK
