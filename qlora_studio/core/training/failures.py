"""A run that ends in an error keeps its work: a checkpoint of the last completed step (in the
Trainer's own format, so ``resume`` continues from it) and a message with a hint. The
out-of-memory case, which also names the term that grew, is ``out_of_memory.py``'s."""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import StudioError, TrainingError
from qlora_studio.core.events import make_event
from qlora_studio.core.run_folder import last_checkpoint


@dataclass
class LastStepKeeper:
    """Saves a checkpoint of the last completed step into ``run_dir`` (only on the process
    that writes, rank 0), unless one of that step is there already."""

    run_dir: Path
    writes: bool
    reporter: Any

    def keep(self, trainer, after: str, consistent: bool = True) -> Path | None:
        """The newest checkpoint after saving one of ``trainer``'s last completed step, when
        ``consistent`` (its weights are those of that step). A failed save (still out of memory,
        the disk) keeps the older one and says so."""
        step = int(trainer.state.global_step)
        checkpoint = last_checkpoint(self.run_dir)
        saved_step = int(checkpoint.name.removeprefix("checkpoint-")) if checkpoint else 0
        if consistent and self.writes and step > saved_step:
            try:
                trainer._save_checkpoint(trainer.model, trial=None)  # the Trainer's own format
                checkpoint = last_checkpoint(self.run_dir)
                self.reporter.emit(make_event("checkpoint", step=step, path=str(checkpoint)))
            except Exception as exc:
                message = f"Could not save a checkpoint after {after}: {exc}"
                self.reporter.emit(make_event("status", message=message))
        return checkpoint


def explain_lost_rank(trainer, exc: Exception, keeper: LastStepKeeper) -> StudioError:
    """A step of a run with several processes failed, most often because another process
    ended: keep the last completed step (rank 0 holds the whole model under DDP) and say so.
    The launcher reports which process died."""
    # the Trainer's save sums the floating-point operations over every process first (a
    # collective that would fail now): this process's own count is saved instead
    trainer.store_flos = lambda: None
    checkpoint = keeper.keep(trainer, "the failed step")
    step = int(trainer.state.global_step)
    kept = f"{checkpoint.name} is kept" if checkpoint else "no checkpoint was saved yet"
    hint = f"{kept}; `qlora-studio resume {keeper.run_dir}` continues on every process"
    if isinstance(exc, StudioError):
        return exc
    if lost_peer(exc):
        return TrainingError(f"Another training process ended during step {step + 1}", hint)
    text = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return TrainingError(f"Training failed at step {step + 1}: {text}", hint)


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process is gone."""
    import torch.distributed as dist

    words = str(exc).lower()
    lost = ("connection closed", "connection reset", "broken pipe", "peer", "timed out")
    return isinstance(exc, getattr(dist, "DistError", ())) or any(w in words for w in lost)


def explain_training_error(exc: Exception, step: int) -> StudioError:
    """A training failure as a message with a hint where the cause is the user's to fix."""
    if isinstance(exc, StudioError):
        return exc
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return TrainingError(
            f"The disk is full ({exc.filename or 'while saving'})",
            "free some space or point output.dir at another disk; checkpoints so far are kept",
        )
    return TrainingError(f"Training failed at step {step}: {type(exc).__name__}: {exc}", "")
