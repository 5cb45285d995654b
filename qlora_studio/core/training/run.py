"""Run or resume a fine-tune end to end: the recipe's phases, the final event, and what a
failure leaves in the run folder."""

from __future__ import annotations

import threading
from pathlib import Path

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import Cancelled, StudioError, TrainingError
from qlora_studio.core.events import (
    Reporter,
    make_event,
)
from qlora_studio.core.run_folder import (  # noqa: F401  (the run folder's layout, re-exported)
    ADAPTER,
    CHECKPOINTS,
    CONFIG_FILE,
    EVENTS_FILE,
    FULL_MODEL,
    SUMMARY_FILE,
    RunFolderLock,
    create_run_folder,
    last_checkpoint,
    tidy_checkpoints,
    write_json_atomic,
)
from qlora_studio.core.training.recipe import FineTuneRecipe, TrainResult


def run_training(
    cfg: RunConfig,
    *,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
    run_dir: Path | None = None,
    resume: bool = False,
) -> TrainResult:
    """Run (or resume) a fine-tune end to end and report its events; return what it left.

    Raises StudioError subclasses with a message and a hint; ``Cancelled`` only when stopped
    before the first step (a stop during training returns a result with status 'cancelled').
    """
    recipe = FineTuneRecipe(cfg, reporter=reporter, cancel=cancel, run_dir=run_dir, resume=resume)
    try:
        recipe.setup()
        result = recipe.train()
        recipe.save(result)
        if result.status == "cancelled":
            recipe.reporter.emit(
                make_event(
                    "cancelled",
                    step=result.step,
                    checkpoint=str(result.checkpoint) if result.checkpoint else "",
                )
            )
        else:
            recipe.reporter.emit(
                make_event(
                    "done",
                    step=result.step,
                    run_dir=str(result.run_dir),
                    adapter_dir=str(result.output_dir),
                    final_loss=result.final_loss,
                    runtime_s=round(result.runtime_s, 2),
                )
            )
        return result
    except StudioError as exc:
        if recipe.writes_run_dir and not isinstance(exc, Cancelled):
            write_json_atomic(
                recipe.run_dir / SUMMARY_FILE, {"status": "failed", "error": exc.message}
            )
        recipe.record_outcome("cancelled" if isinstance(exc, Cancelled) else "failed", exc.message)
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: the checkpoints so far are kept
        if recipe.writes_run_dir:  # ...but not one it cut short while saving
            tidy_checkpoints(recipe.run_dir, recipe.cfg.train.save_total_limit)
        recipe.record_outcome("cancelled", "interrupted")
        raise
    except Exception as exc:
        recipe.record_outcome("failed", f"{type(exc).__name__}: {exc}")
        raise
    finally:
        recipe.cleanup()


def resume_training(
    run_dir: Path,
    *,
    reporter: Reporter | None = None,
    cancel: threading.Event | None = None,
    overrides: list[str] | None = None,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint with its saved config."""
    run_dir = Path(run_dir)
    config_path = run_dir / CONFIG_FILE
    if not config_path.exists():
        raise TrainingError(
            f"{run_dir} is not a run folder (no {CONFIG_FILE})",
            "pass the folder that `qlora-studio train` printed as 'Run folder'",
        )
    cfg = RunConfig.load(config_path)
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return run_training(cfg, reporter=reporter, cancel=cancel, run_dir=run_dir, resume=True)
