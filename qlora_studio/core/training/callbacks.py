"""The bridge from transformers.Trainer hooks to QLoRA Studio events, and the cooperative stop."""

from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

from qlora_studio.core.events import Reporter, make_event

SPEED_WINDOW = 10  # steps: tokens/s and ETA follow the recent pace, not the slow first steps


def make_event_callback(reporter: Reporter, cancel: threading.Event, device: str, run_dir: Path):
    """A TrainerCallback that reports progress, metrics, memory and checkpoints, and stops with
    a checkpoint once ``cancel`` is set or the launcher of several processes asks every rank to
    (core/training/distributed.py). (Built on call: transformers loads only when training.)"""
    from transformers import TrainerCallback

    from qlora_studio.core.gpu import memory_snapshot
    from qlora_studio.core.training.distributed import agree, current_rank, stop_requested

    rank = current_rank()

    class EventCallback(TrainerCallback):
        def __init__(self):
            self.cancelled = False
            self.step = 0
            self.losses: list[tuple[int, float]] = []
            self._pace: deque[tuple[float, int, int]] = deque(maxlen=SPEED_WINDOW + 1)

        def on_train_begin(self, args, state, control, **kwargs):
            self.step = state.global_step
            self._pace.append((time.time(), state.global_step, state.num_input_tokens_seen or 0))
            resumed = f", continuing from step {state.global_step}" if state.global_step else ""
            reporter.emit(
                make_event("status", message=f"Training: {state.max_steps} steps{resumed}")
            )

        def on_step_end(self, args, state, control, **kwargs):
            self.step = state.global_step
            now, tokens = time.time(), state.num_input_tokens_seen or 0
            self._pace.append((now, state.global_step, tokens))
            t0, step0, tokens0 = self._pace[0]
            elapsed = max(now - t0, 1e-9)
            per_step = elapsed / max(state.global_step - step0, 1)
            reporter.emit(
                make_event(
                    "progress",
                    step=state.global_step,
                    total=state.max_steps,
                    epoch=float(state.epoch or 0.0),
                    eta_s=round(per_step * max(state.max_steps - state.global_step, 0), 1),
                    tokens_per_s=round((tokens - tokens0) / elapsed, 1),
                    tokens_seen=int(tokens),
                )
            )
            if state.global_step % max(args.logging_steps, 1) == 0 or state.global_step == 1:
                reporter.emit(make_event("memory", **memory_snapshot(device, state.global_step)))
            wants_stop = cancel.is_set() or stop_requested(run_dir)
            if rank.distributed:  # every rank stops after the same step, or DDP would hang
                wants_stop = agree(wants_stop)
            if wants_stop and not self.cancelled:
                self.cancelled = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            fields = {}
            for key, name in (
                ("loss", "loss"),
                ("learning_rate", "lr"),
                ("grad_norm", "grad_norm"),
            ):
                value = logs.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    fields[name] = float(value)
            if "loss" in fields:
                self.losses.append((state.global_step, fields["loss"]))
                reporter.emit(
                    make_event(
                        "metrics", step=state.global_step, epoch=float(state.epoch or 0), **fields
                    )
                )

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get("eval_loss")
            if isinstance(value, (int, float)) and state.global_step < state.max_steps:
                reporter.emit(make_event("metrics", step=state.global_step, eval_loss=float(value)))

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            reporter.emit(make_event("checkpoint", step=state.global_step, path=str(path)))

    return EventCallback()
