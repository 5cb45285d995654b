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
    export_format = args.format or ("merged" if args.merge else "adapter")
    if args.merge and export_format != "merged":
        return fail(
            reporter,
            f"--merge and --format {export_format} ask for two different exports",
            "--merge is the same as --format merged; keep one of them",
        )
    if args.quant is not None and export_format != "gguf":
        return fail(
            reporter,
            f"--quant is for --format gguf only, not {export_format}",
            "add --format gguf to write a merged GGUF of that type, or drop --quant",
        )

    def work(cancel):
        dest = _export(export_format, args, reporter, cancel)
        commands = _run_commands(export_format, Path(args.run_dir), dest)
        if args.events == "text":
            print(dest)
            if commands:
                print("\nRun it with llama.cpp, or import it into Ollama:")
                print("\n".join(f"  {command}" for command in commands))
        else:  # where it went and how to run it, for the GUI
            from qlora_studio.core.events import make_event

            reporter.emit(
                make_event(
                    "done",
                    step=0,
                    run_dir=args.run_dir,
                    adapter_dir="",
                    export_dir=str(dest),
                    commands=commands,
                )
            )
        return None

    return run_until_stopped(work, reporter)


def _export(export_format: str, args, reporter, cancel) -> Path:
    """Write the export ``export_format`` names; return its folder."""
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else None
    if export_format == "gguf-lora":
        from qlora_studio.core.gguf.export import export_gguf_adapter

        return export_gguf_adapter(run_dir, out=out, reporter=reporter, cancel=cancel)
    if export_format == "gguf":
        from qlora_studio.core.gguf.export import export_gguf_merged

        quant = args.quant or "f16"
        return export_gguf_merged(run_dir, quant=quant, out=out, reporter=reporter, cancel=cancel)
    from qlora_studio.core.export import export_run

    merge = export_format == "merged"
    return export_run(run_dir, out=out, merge=merge, reporter=reporter, cancel=cancel)


def _run_commands(export_format: str, run_dir: Path, dest: Path) -> list[str]:
    """The llama.cpp and Ollama commands that run a GGUF export; none for the others."""
    if not export_format.startswith("gguf"):
        return []
    from qlora_studio.core.gguf.card import run_commands

    return run_commands(dest, run_dir.resolve().name)
