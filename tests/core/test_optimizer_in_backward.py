"""The optimizer step in backward (lean full fine-tuning): the same weights as a normal optimizer
step, gradients freed in backward, LR schedules and checkpoints that resume, on real tiny models
and real runs on the CPU."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import torch
from test_training import StopAtStep, make_config

from qlora_studio.config import ConfigError, RunConfig
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.training.optimizer_in_backward import (
    STATE_KEY,
    OptimizerInBackward,
    per_parameter_optimizer,
)
from qlora_studio.core.training.run import resume_training, run_training

# fp32 on the CPU: the same arithmetic in the same order, so the weights agree to rounding
RTOL, ATOL = 1e-5, 1e-6
OPTIMIZERS = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "adamw": (torch.optim.AdamW, {"lr": 3e-3, "weight_decay": 0.01}),
}


def _model(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    model.train()
    return model


def _batch(vocab_size: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab_size, (2, 24), generator=generator)
    return {"input_ids": ids, "labels": ids}


def _in_backward(model, optimizer_cls, options):
    options = dict(options)
    weight_decay = options.pop("weight_decay")
    return OptimizerInBackward(
        model.named_parameters(),
        lambda _name, p: per_parameter_optimizer(optimizer_cls, p, weight_decay, **options),
    )


def _schedule(optimizer):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / 10)


def _assert_same_weights(a, b):
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=RTOL, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("arch", ["llama", "qwen2"])  # qwen2 ties lm_head to the embeddings
def test_steps_in_backward_match_a_normal_optimizer_step(tiny_models, arch, optimizer):
    optimizer_cls, options = OPTIMIZERS[optimizer]
    model = _model(tiny_models[arch])
    reference = copy.deepcopy(model)
    normal = optimizer_cls(reference.parameters(), **options)
    normal_schedule = _schedule(normal)
    lean = _in_backward(model, optimizer_cls, options)
    lean_schedule = _schedule(lean)

    for step in range(4):
        batch = _batch(model.config.vocab_size, seed=step)
        reference(**batch).loss.backward()
        expected_norm = torch.nn.utils.clip_grad_norm_(reference.parameters(), float("inf"))
        normal.step()
        normal.zero_grad(set_to_none=True)
        normal_schedule.step()

        model(**batch).loss.backward()
        assert all(p.grad is None for p in model.parameters()), "gradients freed in backward"
        assert lean.pop_grad_norm() == pytest.approx(float(expected_norm), rel=1e-4)
        lean.step()
        lean_schedule.step()

    inner_lrs = {g["lr"] for opt in lean.optimizers.values() for g in opt.param_groups}
    assert inner_lrs == {normal.param_groups[0]["lr"]}, "the schedule reached every optimizer"
    _assert_same_weights(reference, model)
    untrained = _model(tiny_models[arch]).parameters()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), untrained, strict=True))


def test_gradient_checkpointing_gives_the_same_steps(tiny_models):
    # recomputing a layer in backward reads its weights before their own step: still the same
    optimizer_cls, options = OPTIMIZERS["adamw"]
    model = _model(tiny_models["llama"])
    reference = copy.deepcopy(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    normal = optimizer_cls(reference.parameters(), **options)
    lean = _in_backward(model, optimizer_cls, options)
    for step in range(3):
        batch = _batch(model.config.vocab_size, seed=step)
        reference(**batch).loss.backward()
        normal.step()
        normal.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        assert lean.pop_grad_norm() > 0 and all(p.grad is None for p in model.parameters())
    _assert_same_weights(reference, model)


def test_state_dict_round_trip_continues_the_same_steps(tiny_models, tmp_path):
    optimizer_cls, options = OPTIMIZERS["adamw"]
    model = _model(tiny_models["llama"])
    lean = _in_backward(model, optimizer_cls, options)
    schedule = _schedule(lean)
    for step in range(2):
        model(**_batch(model.config.vocab_size, seed=step)).loss.backward()
        lean.step()
        schedule.step()
    torch.save(lean.state_dict(), tmp_path / "optimizer.pt")  # as the Trainer saves it

    copy_model = copy.deepcopy(model)
    restored = _in_backward(copy_model, optimizer_cls, {**options, "lr": 1.0})
    restored_schedule = _schedule(restored)  # the Trainer's order: schedule, states, schedule
    restored.load_state_dict(torch.load(tmp_path / "optimizer.pt", weights_only=True))
    restored_schedule.load_state_dict(schedule.state_dict())
    assert restored.param_groups[0]["lr"] == lean.param_groups[0]["lr"] < 1.0

    batch = _batch(model.config.vocab_size, seed=7)
    for m, opt, sched in ((model, lean, schedule), (copy_model, restored, restored_schedule)):
        m(**batch).loss.backward()
        opt.step()
        sched.step()
    _assert_same_weights(model, copy_model)

    with pytest.raises(ValueError, match="one optimizer per parameter"):
        restored.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_lean_full_run_trains_checkpoints_and_resumes_to_the_same_weights(tiny_models, tmp_path):
    from safetensors.torch import load_file

    # the configured default optimizer: bitsandbytes' paged 8-bit AdamW, one per parameter
    settings = dict(max_steps=6, save_steps=100, lr=3e-3, optimizer="paged_adamw_8bit")
    straight = make_config(tiny_models["llama"], tmp_path, "full", **settings)
    assert straight.train.full_recipe == "lean"
    reporter = CollectingReporter()
    done = run_training(straight, reporter=reporter)

    losses = [loss for _, loss in done.losses]
    assert done.status == "done" and done.step == 6
    assert losses[-1] < 0.9 * losses[0], f"the loss falls: {losses}"
    norms = [e["grad_norm"] for e in reporter.of_type("metrics") if "grad_norm" in e]
    assert norms and all(n > 0 for n in norms), "the gradient norm is measured in backward"
    saved = torch.load(done.checkpoint / "optimizer.pt", weights_only=True)
    assert set(saved) == {STATE_KEY} and len(saved[STATE_KEY]) > 10

    stopped_cfg = make_config(tiny_models["llama"], tmp_path, "full", **settings)
    stopped_cfg.output.name = "full-stopped"
    cancel = threading.Event()
    stopped = run_training(stopped_cfg, reporter=StopAtStep(cancel, step=3), cancel=cancel)
    assert stopped.status == "cancelled" and stopped.checkpoint.name == "checkpoint-3"
    resumed = resume_training(stopped.run_dir)
    assert resumed.status == "done" and resumed.step == 6
    assert json.loads((resumed.run_dir / "run.json").read_text())["status"] == "done"

    a = load_file(done.output_dir / "model.safetensors")
    b = load_file(resumed.output_dir / "model.safetensors")
    assert a.keys() == b.keys() and all(t.dtype == torch.float32 for t in a.values())
    for name in a:  # the optimizer states and the LR schedule came back with the checkpoint
        torch.testing.assert_close(a[name], b[name], rtol=RTOL, atol=ATOL, msg=name)


def test_a_mixed_checkpoint_resumed_as_lean_says_why(tiny_models, tmp_path):
    from qlora_studio.core.errors import TrainingError

    cfg = make_config(tiny_models["llama"], tmp_path, "full", max_steps=4, save_steps=100)
    cfg.train.full_recipe = "mixed"
    cancel = threading.Event()
    stopped = run_training(cfg, reporter=StopAtStep(cancel, step=1), cancel=cancel)
    assert "state" in torch.load(stopped.checkpoint / "optimizer.pt", weights_only=True)

    with pytest.raises(TrainingError, match="one optimizer per parameter"):
        resume_training(stopped.run_dir, overrides=["train.full_recipe=lean"])


def test_lean_full_refuses_gradient_accumulation():
    cfg = RunConfig()
    cfg.method = "full"
    cfg.data.path = "data.jsonl"
    cfg.train.grad_accum = 4
    with pytest.raises(ConfigError) as caught:
        cfg.validate()
    assert caught.value.field == "train.grad_accum"
    assert "full_recipe: mixed" in caught.value.hint

    cfg.train.full_recipe = "mixed"
    assert cfg.validate().train.grad_accum == 4
    cfg.train.full_recipe = "lean"
    cfg.method = "lora"  # adapters step normally: accumulation is fine
    assert cfg.validate().train.grad_accum == 4
    with pytest.raises(ConfigError, match="train.grad_accum"):
        cfg.with_overrides(["method=full"])
