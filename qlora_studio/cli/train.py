"""`qlora-studio train`, `resume` and `export`: a run from its config file to its exports."""

from __future__ import annotations

from pathlib import Path

from qlora_studio.cli.common import (
    config_error_message,
    fail,
    reporter_for,
    run_until_stopped,
)


def cmd_train(args) -> int:
    from qlora_studio.config import ConfigError, RunConfig

    reporter = reporter_for(args.events)
    try:
        cfg = RunConfig.load(args.config)
    except ConfigError as exc:
        return fail(reporter, config_error_message(exc, args.config), exc.hint)
    try:
        cfg = cfg.with_overrides(args.overrides)
    except ConfigError as exc:
        return fail(reporter, config_error_message(exc, args.config, args.overrides), exc.hint)
    return run_until_stopped(lambda cancel: _train(cfg, reporter, cancel), reporter)


def cmd_resume(args) -> int:
    from qlora_studio.config import ConfigError

    reporter = reporter_for(args.events)

    def work(cancel):
        from qlora_studio.core.errors import TrainingError
        from qlora_studio.core.run_folder import CONFIG_FILE
        from qlora_studio.core.training.run import resume_training

        try:
            return resume_training(
                Path(args.run_dir), reporter=reporter, cancel=cancel, overrides=args.overrides
            )
        except ConfigError as exc:
            source = str(Path(args.run_dir) / CONFIG_FILE)
            message = config_error_message(exc, source, args.overrides)
            raise TrainingError(message, exc.hint) from exc

    return run_until_stopped(work, reporter)


def _train(cfg, reporter, cancel):
    from qlora_studio.core.training.run import run_training

    return run_training(cfg, reporter=reporter, cancel=cancel)


def cmd_export(args) -> int:
    reporter = reporter_for(args.events)

    def work(cancel):
        from qlora_studio.core.events import make_event
        from qlora_studio.core.export import export_run

        dest = export_run(
            Path(args.run_dir),
            out=Path(args.out) if args.out else None,
            merge=args.merge,
            reporter=reporter,
        )
        if args.events == "text":
            print(dest)
        else:  # where it went, for the GUI
            reporter.emit(
                make_event(
                    "done", step=0, run_dir=args.run_dir, adapter_dir="", export_dir=str(dest)
                )
            )
        return None

    return run_until_stopped(work, reporter)
