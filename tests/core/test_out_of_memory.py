"""Out of memory during a run (issue 10): a checkpoint of the last completed step, a message that
names the term that grew with the batch, and a resume that carries on with a smaller batch."""

from __future__ import annotations

import threading

import pytest
import torch
from test_training import StopAtStep, make_config

from qlora_studio.core.errors import TrainingError
from qlora_studio.core.run_folder import last_checkpoint
from qlora_studio.core.training.out_of_memory import is_out_of_memory
from qlora_studio.core.training.run import resume_training, run_training


class RunOutOfMemoryAtStep(StopAtStep):
    """Asks the allocator for more memory than any machine has once step ``step`` is done:
    the real error the CPU allocator raises, inside the Trainer's loop."""

    def emit(self, event):
        super().emit(event)
        if event["type"] == "progress" and event["step"] == self.stop_step:
            torch.empty(1 << 50, dtype=torch.uint8)


def test_out_of_memory_keeps_the_last_step_and_names_the_term(tiny_models, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora", max_steps=6, save_steps=100)
    reporter = RunOutOfMemoryAtStep(threading.Event(), 3)
    with pytest.raises(TrainingError) as failed:
        run_training(cfg, reporter=reporter)
    message, hint = failed.value.message, failed.value.hint
    # data.packing auto packs on the tiny Llama: the four rows are one sequence
    assert message.startswith("Out of memory at step 4 on a packed batch of 4 rows, ")
    assert "'activations'" in message or "'logits and loss'" in message
    assert "The checkpoint of step 3 is kept" in message
    run_dir = tmp_path / "runs" / "lora-run"
    assert last_checkpoint(run_dir).name == "checkpoint-3"
    assert reporter.of_type("checkpoint")[-1]["step"] == 3
    assert f"qlora-studio resume {run_dir}" in hint
    assert "--set train.batch_size=2 --set train.grad_accum=2" in hint

    again = StopAtStep(threading.Event(), 99)
    resumed = resume_training(
        run_dir, reporter=again, overrides=["train.batch_size=2", "train.grad_accum=2"]
    )
    assert resumed.status == "done" and resumed.step == 6
    assert [e["step"] for e in again.of_type("progress")][0] == 4


def test_what_counts_as_out_of_memory():
    with pytest.raises(RuntimeError) as cpu:
        torch.empty(1 << 50, dtype=torch.uint8)
    assert is_out_of_memory(cpu.value)
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
