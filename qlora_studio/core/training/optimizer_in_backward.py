"""The optimizer step in backward: each parameter is updated as soon as its gradient is
complete, and the gradient is freed at once, so no full set of gradients is ever alive.

This is torchtune's ``optimizer_in_backward``: one optimizer per parameter, stepped from a
``Tensor.register_post_accumulate_grad_hook``. What it gives up: clipping by the norm of all
gradients (each step is taken before the other gradients exist) and gradient accumulation
(each backward pass updates the weights).

:class:`OptimizerInBackward` stands where the Trainer expects one optimizer: its
``param_groups`` are the per-parameter optimizers' own group dicts, so an LR scheduler that
writes ``group["lr"]`` drives them all, and ``state_dict`` / ``load_state_dict`` carry every
per-parameter state, so checkpoints save and resume. :func:`with_optimizer_in_backward` adds
it to a ``transformers.Trainer`` class (any subclass: the mixin only replaces how the
optimizer is built and how the gradient norm is read).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

STATE_KEY = "optimizer_in_backward"  # the key of the per-parameter states in state_dict()


class OptimizerInBackward(torch.optim.Optimizer):
    """One optimizer per parameter, each stepped by its parameter's post-accumulate-grad hook.

    ``step()`` and ``zero_grad()`` do nothing useful: by the time the Trainer calls them the
    steps are taken and the gradients are gone. ``pop_grad_norm()`` returns the norm of the
    gradients of the last backward pass (measured in the hooks, before they were freed).
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, nn.Parameter]],
        build: Callable[[str, nn.Parameter], torch.optim.Optimizer],
    ):
        named = [(name, p) for name, p in named_params if p.requires_grad]
        if not named:
            raise ValueError("no trainable parameters to optimize")
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            name: build(name, p) for name, p in named
        }
        super().__init__([p for _, p in named], defaults={})
        self._share_param_groups()
        self._squared_norm: torch.Tensor | None = None
        self._handles = [
            p.register_post_accumulate_grad_hook(self._hook(self.optimizers[name]))
            for name, p in named
        ]

    def _share_param_groups(self) -> None:
        # the inner optimizers' own dicts, not copies: a scheduler's lr lands where it is read
        self.param_groups = [g for opt in self.optimizers.values() for g in opt.param_groups]

    def _hook(self, optimizer: torch.optim.Optimizer):
        def step_and_free(param: torch.Tensor) -> None:
            squared = torch.linalg.vector_norm(param.grad.detach(), dtype=torch.float32) ** 2
            if self._squared_norm is not None:
                squared = squared + self._squared_norm
            self._squared_norm = squared
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        return step_and_free

    def pop_grad_norm(self) -> float | None:
        """The norm of all gradients of the backward passes since the last call, or None."""
        if self._squared_norm is None:
            return None
        norm = float(self._squared_norm.sqrt())
        self._squared_norm = None
        return norm

    def step(self, closure=None):  # the steps ran in backward
        if closure is None:
            return None
        with torch.enable_grad():
            return closure()

    def state_dict(self) -> dict:
        return {STATE_KEY: {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get(STATE_KEY) if isinstance(state_dict, dict) else None
        if saved is None or set(saved) != set(self.optimizers):
            raise ValueError(
                "the checkpoint's optimizer state does not hold one optimizer per parameter of "
                "this model (was it saved by the mixed-precision full fine-tune?)"
            )
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(saved[name])
        self._share_param_groups()  # load_state_dict builds new group dicts

    def remove_hooks(self) -> None:
        """Detach from the parameters: a later backward pass no longer steps."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def per_parameter_optimizer(
    optimizer_cls: type, param: nn.Parameter, weight_decay: float, **kwargs
) -> torch.optim.Optimizer:
    """``optimizer_cls`` over ``param`` alone, built as transformers builds the shared one."""
    optimizer = optimizer_cls([{"params": [param], "weight_decay": weight_decay}], **kwargs)
    if hasattr(optimizer, "mng"):
        # bitsandbytes keys per-parameter overrides by (group, index) in a process-wide manager:
        # every per-parameter optimizer is (0, 0), so each gets a private one
        from bitsandbytes.optim import GlobalOptimManager

        manager = GlobalOptimManager.__new__(GlobalOptimManager)
        manager.initialize()
        optimizer.mng = manager
    return optimizer


class OptimizerInBackwardMixin:
    """Mix into a ``transformers.Trainer`` (subclass) before it: the optimizer it builds is an
    :class:`OptimizerInBackward` of the configured optimizer class and settings. Needs
    ``gradient_accumulation_steps == 1`` and ``max_grad_norm == 0`` (nothing to clip)."""

    args: Any  # the Trainer's TrainingArguments

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        model = self.model if model is None else model
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError("the optimizer step in backward cannot accumulate gradients")
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        decay = set(self.get_decay_parameter_names(model))

        def build(name: str, param: nn.Parameter) -> torch.optim.Optimizer:
            # every state 8-bit under an 8-bit optimizer, the embeddings' too (as torchtune's
            # lean recipe): the Trainer's 32-bit embedding states would be the largest tensor
            # paged in (4 GB for a 128k vocabulary); the mixed recipe keeps them 32-bit
            wd = self.args.weight_decay if name in decay else 0.0
            return per_parameter_optimizer(optimizer_cls, param, wd, **kwargs)

        self.optimizer = OptimizerInBackward(model.named_parameters(), build)
        self.optimizer_in_backward = self.optimizer  # the Trainer wraps self.optimizer later
        return self.optimizer

    def _get_grad_norm(self, model, grad_norm=None):
        # the gradients are freed in backward: the norm was taken in the hooks
        return self.optimizer_in_backward.pop_grad_norm()


def with_optimizer_in_backward(trainer_cls: type) -> type:
    """``trainer_cls`` with :class:`OptimizerInBackwardMixin` mixed in."""
    if issubclass(trainer_cls, OptimizerInBackwardMixin):
        return trainer_cls
    return type(
        f"{trainer_cls.__name__}WithOptimizerInBackward",
        (OptimizerInBackwardMixin, trainer_cls),
        {},
    )
