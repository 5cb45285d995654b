"""`qlora-studio train`, `resume` and `export`: a run from its config file to its exports."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from qlora_studio.cli.common import (
    EXIT_CANCELLED,
    EXIT_OK,
    config_error_message,
    fail,
    listen_for_stop,
    print_failure,
    reporter_for,
    run_until_stopped,
)


def cmd_train(args) -> int:
    from qlora_studio.config import ConfigError, RunConfig
    from qlora_studio.core.training.distributed import RUN_DIR_ENV, needs_launch, visible_gpus

    reporter = rank_reporter(args.events)
    try:
        cfg = RunConfig.load(args.config)
    except ConfigError as exc:
        return fail(reporter, config_error_message(exc, args.config), exc.hint)
    try:
        cfg = cfg.with_overrides(args.overrides)
    except ConfigError as exc:
        return fail(reporter, config_error_message(exc, args.config, args.overrides), exc.hint)
    if needs_launch(cfg):
        rank_args = ["train", str(Path(args.config).resolve()), *_set_args(args)]
        return launch_ranks(cfg, rank_args, reporter, args.events, run_dir=None)
    run_dir = os.environ.get(RUN_DIR_ENV)  # a rank of a launch: the launcher made the folder
    if run_dir is None:  # one process: keep it to the chosen GPU before CUDA starts
        os.environ.update(visible_gpus(cfg))
    return _rank_exit(
        run_until_stopped(
            lambda cancel: _train(cfg, reporter, cancel, Path(run_dir) if run_dir else None),
            reporter,
        )
    )


def cmd_resume(args) -> int:
    from qlora_studio.config import ConfigError, RunConfig
    from qlora_studio.core.run_folder import CONFIG_FILE
    from qlora_studio.core.training.distributed import RUN_DIR_ENV, needs_launch, visible_gpus

    reporter = rank_reporter(args.events)
    config_path = Path(args.run_dir) / CONFIG_FILE
    if config_path.exists():
        try:
            cfg = RunConfig.load(config_path).with_overrides(args.overrides)
        except ConfigError:
            cfg = None  # the resume below reports it with the field at fault
        if cfg is not None and needs_launch(cfg):
            rank_args = ["resume", str(Path(args.run_dir).resolve()), *_set_args(args)]
            return launch_ranks(cfg, rank_args, reporter, args.events, run_dir=Path(args.run_dir))
        if cfg is not None and RUN_DIR_ENV not in os.environ:
            os.environ.update(visible_gpus(cfg))  # one process: the chosen GPU

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

    return _rank_exit(run_until_stopped(work, reporter))


def _train(cfg, reporter, cancel, run_dir: Path | None = None):
    from qlora_studio.core.training.run import run_training

    return run_training(cfg, reporter=reporter, cancel=cancel, run_dir=run_dir)


def cmd_launch_script(args) -> int:
    """Print (or write) an sbatch script that trains ``args.config`` on several machines."""
    from qlora_studio.config import ConfigError, RunConfig
    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.run_folder import write_text_atomic
    from qlora_studio.core.training.distributed import slurm_script

    try:
        cfg = RunConfig.load(args.config)
        text = slurm_script(
            cfg,
            Path(args.config),
            nodes=args.nodes,
            gpus_per_node=args.gpus_per_node,
            job_name=args.job_name,
            partition=args.partition,
            time_limit=args.time,
            port=args.port,
        )
    except ConfigError as exc:
        return print_failure(config_error_message(exc, args.config), exc.hint)
    except StudioError as exc:
        return print_failure(exc.message, exc.hint)
    if not args.output:
        print(text, end="")
        return EXIT_OK
    write_text_atomic(Path(args.output), text)
    print(f"Wrote {args.output}: submit it with `sbatch {args.output}`", file=sys.stderr)
    return EXIT_OK


# ---- several processes (distributed.strategy: ddp) ----------------------------------------
def rank_reporter(events: str):
    """The screen of this process: the user's, or only errors (on stderr) for ranks other
    than 0 of a launch, whose progress rank 0 already reports."""
    from qlora_studio.core.training.distributed import current_rank

    rank = current_rank()
    if rank.is_main:
        return reporter_for(events)
    return _ErrorsOnly(rank.rank)


class _ErrorsOnly:
    def __init__(self, rank: int):
        self.rank = rank

    def emit(self, event: dict) -> None:
        if event.get("type") == "error":
            print_failure(f"rank {self.rank}: {event.get('message')}", event.get("hint") or "")


def _rank_exit(code: int) -> int:
    """A rank that stopped as asked exits 0, so torchrun does not report it as a failure; the
    launcher knows a stop was asked for and exits with the cancelled code itself."""
    from qlora_studio.core.training.distributed import current_rank

    return EXIT_OK if code == EXIT_CANCELLED and current_rank().distributed else code


def _set_args(args) -> list[str]:
    return [item for override in args.overrides for item in ("--set", override)]


def launch_ranks(cfg, rank_args: list[str], reporter, events: str, run_dir: Path | None) -> int:
    """Start every process of this machine through torchrun and wait for them: the run
    folder made first and shared, a stop passed on to every rank as a request file, a second
    Ctrl-C ending them all at once."""
    import signal
    import subprocess
    import threading
    import time

    from qlora_studio.core.errors import StudioError
    from qlora_studio.core.events import make_event
    from qlora_studio.core.gpu import list_gpus
    from qlora_studio.core.models.loading import pick_device
    from qlora_studio.core.run_folder import CONFIG_FILE
    from qlora_studio.core.training.distributed import (
        RUN_DIR_ENV,
        check_launch,
        clear_stop,
        request_stop,
        torchrun_command,
        visible_gpus,
    )

    try:
        device = pick_device(cfg.train.device)
        check_launch(cfg, device, len(list_gpus()) if device == "cuda" else 0)
        folder = run_dir if run_dir is not None else _launch_folder(cfg)
    except StudioError as exc:
        return fail(reporter, exc.message, exc.hint)
    d = cfg.distributed
    reporter.emit(
        make_event(
            "status",
            message=f"Starting {d.processes} processes on {device} ({d.strategy}, "
            f"{d.world_size} in all on {d.num_machines} machine(s)); rank 0 reports",
            run_dir=str(folder),
        )
    )
    env = {**os.environ, RUN_DIR_ENV: str(folder), **visible_gpus(cfg)}
    command = torchrun_command(cfg, [*rank_args, "--events", events])
    cancel = threading.Event()
    listen_for_stop(cancel)
    # a session of its own: a Ctrl-C in the terminal reaches this launcher only, which asks
    # every rank to stop after the same step instead of torchrun killing them mid-step
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    asked = False
    try:
        while process.poll() is None:
            if cancel.is_set() and not asked:
                asked = True
                request_stop(folder)
                reporter.emit(make_event("status", message="Stopping every rank after its step"))
            time.sleep(0.2)
    except KeyboardInterrupt:  # a second Ctrl-C: end them all now, checkpoints so far kept
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        reporter.emit(
            make_event("error", message="Interrupted", hint="the last checkpoint is kept")
        )
        return EXIT_CANCELLED
    finally:
        clear_stop(folder)
        made_here = run_dir is None and cfg.distributed.machine_rank == 0
        if made_here and not (folder / CONFIG_FILE).exists():
            _remove_if_empty(folder)  # the ranks failed before the run began
    if process.returncode != 0:
        return fail(
            reporter,
            f"A training process failed (torchrun exit code {process.returncode}); its error "
            "is printed above",
            f"the checkpoints so far are kept in {folder}; fix the cause and run "
            f"`qlora-studio resume {folder}`",
        )
    return EXIT_CANCELLED if asked else EXIT_OK


def _launch_folder(cfg) -> Path:
    """The run folder of a new launch: made by the main machine; the others use the same
    path (output.dir/output.name on a shared disk) and never write to it."""
    from qlora_studio.core.errors import TrainingError
    from qlora_studio.core.run_folder import make_run_dir

    named = Path(os.path.abspath(Path(cfg.output.dir).expanduser())) / cfg.output.name
    if cfg.distributed.num_machines == 1:
        return make_run_dir(cfg)
    if cfg.distributed.machine_rank == 0:
        if named.exists():  # the others would not find a "-2" folder
            raise TrainingError(
                f"{named} exists already; the machines of a new run need a new folder name",
                "set another output.name, or resume that run with `qlora-studio resume`",
            )
        return make_run_dir(cfg)
    return named


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


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
