"""The causal-LM loss without whole-batch logits (DESIGN.md, "Memory-lean recipe").

The lm_head runs only at the positions whose shifted label is trained (completion-only and
padding positions get no logits), ``train.loss_chunk_tokens`` tokens at a time, and each chunk's
logits are recomputed in backward: no batch x seq x vocab tensor exists. On CUDA with
liger-kernel installed, its fused linear cross-entropy does the same in Triton kernels.

The value equals transformers' ``ForCausalLMLoss`` as the Trainer uses it: the sum over trained
tokens divided by ``num_items_in_batch`` when the Trainer passes it to the model (gradient
accumulation), else their mean. A model whose logits are not ``lm_head(final hidden states)``
up to the scalings handled here keeps the full-logits path, with a status line saying why.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch  # only the training recipe imports this module, after torch is loaded

IGNORE_INDEX = -100
LIGER_HINT = "pip install 'qlora-studio[gpu]' (liger-kernel) on a CUDA machine"


@dataclass(frozen=True)
class LogitHead:
    """What a causal LM's forward does to ``lm_head(hidden)`` before its loss."""

    softcap: float | None = None  # Gemma 2/3: cap * tanh(logits / cap)
    multiply: float | None = None  # Cohere: logits * logit_scale
    divide: float | None = None  # Granite: logits / logits_scaling

    def logits(self, lm_head, hidden):
        """The model's logits for ``hidden``, in the same operations and order as its forward."""
        logits = lm_head(hidden)
        if self.multiply is not None:
            logits = logits * self.multiply
        if self.divide is not None:
            logits = logits / self.divide
        if self.softcap is not None:
            logits = logits / self.softcap
            logits = torch.tanh(logits)
            logits = logits * self.softcap
        return logits


@dataclass(frozen=True)
class LossPath:
    """How the training loss is computed for one model: ``impl`` and the status line saying so."""

    impl: str  # "chunked" | "liger" | "full_logits"
    message: str
    chunk_tokens: int = 256
    head: LogitHead = LogitHead()


def liger_installed() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def choose_loss_path(model, train, device: str) -> LossPath:
    """The loss path for ``model`` from ``train.loss_impl`` (auto: liger on CUDA when installed,
    else chunked); full logits when asked for or when the model's logits cannot be reproduced
    exactly from its final hidden states."""
    requested = train.loss_impl
    if requested == "full_logits":
        return LossPath(
            "full_logits", "Loss: full logits, the whole batch at once (train.loss_impl)"
        )
    hf = causal_lm(model)
    head = logit_head(hf.config)
    reason = _why_not_lean(hf, head)
    if reason:
        return LossPath("full_logits", f"Loss: full logits, because {reason}")
    lm_head = hf.get_output_embeddings()
    liger_reason = _why_not_liger(lm_head, head, device)
    if requested in ("auto", "liger") and liger_reason is None:
        return LossPath(
            "liger",
            "Loss: liger-kernel fused linear cross-entropy on the trained tokens only "
            "(no whole-batch logits)",
            train.loss_chunk_tokens,
            head,
        )
    message = (
        f"Loss: chunked cross-entropy on the trained tokens only, {train.loss_chunk_tokens} "
        "tokens per lm_head chunk (no whole-batch logits)"
    )
    if requested == "liger":
        message += f"; liger was asked for but {liger_reason}"
    elif device == "cuda":  # auto on a GPU: say why the fused kernel is not used
        message += f"; liger-kernel not used: {liger_reason}"
    return LossPath("chunked", message, train.loss_chunk_tokens, head)


def causal_lm(model):
    """The transformers causal-LM model inside ``model`` (a peft model or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def logit_head(config) -> LogitHead:
    """The logit scalings a model config declares and its causal-LM forward applies."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text, "model_type", "") or ""
    softcap = getattr(text, "final_logit_softcapping", None)
    multiply = getattr(text, "logit_scale", None) if model_type.startswith("cohere") else None
    divide = getattr(text, "logits_scaling", None) if model_type.startswith("granite") else None
    return LogitHead(softcap=softcap or None, multiply=multiply, divide=divide)


def lean_causal_lm_loss(
    model, inputs: dict[str, Any], path: LossPath, num_items_in_batch=None, wrapper=None
):
    """The causal-LM loss of ``model`` on ``inputs`` (with ``labels``), computed from the final
    hidden states at trained positions only: the sum over trained tokens divided by
    ``num_items_in_batch`` when given, else by their count (transformers' ForCausalLMLoss).

    ``wrapper`` is the module the Trainer wraps ``model`` in for several processes
    (DistributedDataParallel): the forward pass must go through it, or it does not average the
    gradients after the first step. It then runs with ``logits_to_keep=1`` (one position's
    logits) and the decoder's output is taken from a forward hook."""
    import torch.nn.functional as F

    hf = causal_lm(model)
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    shift_labels = inputs.pop("shift_labels", None)
    if wrapper is None:
        hidden = hf.get_decoder()(**inputs).last_hidden_state
    else:
        hidden = _hidden_through(wrapper, hf.get_decoder(), inputs)
    if shift_labels is None:  # position t predicts token t + 1, as in ForCausalLMLoss
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    trained = shift_labels != IGNORE_INDEX
    total = _loss_sum(hidden[trained], shift_labels[trained], hf.get_output_embeddings(), path)
    if num_items_in_batch is None:
        return total / trained.sum()  # the mean; 0/0 = nan with no trained token, as today
    if hasattr(num_items_in_batch, "to"):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def _hidden_through(wrapper, decoder, inputs: dict[str, Any]):
    """The decoder's last hidden state from a forward pass through ``wrapper``."""
    captured: list[Any] = []

    def keep(module, args, output):
        if not captured:  # the first call: checkpointing may run layers again, not the decoder
            captured.append(
                output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
            )

    handle = decoder.register_forward_hook(keep)
    try:
        wrapper(**inputs, logits_to_keep=1)
    finally:
        handle.remove()
    return captured[0]


def _loss_sum(hidden, targets, lm_head, path: LossPath):
    """Sum of the cross-entropy over ``hidden`` (n x h) rows against ``targets`` (n), fp32."""
    from torch.utils.checkpoint import checkpoint

    if hidden.shape[0] == 0:  # no trained token: a zero that keeps the graph connected
        return hidden.sum(dtype=torch.float32)
    if path.impl == "liger":
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        weight = lm_head.weight
        return liger_fused_linear_cross_entropy(
            hidden.to(weight.dtype),
            weight,
            targets,
            bias=lm_head.bias,
            ignore_index=IGNORE_INDEX,
            reduction="sum",
            softcap=path.head.softcap,
        )
    total = None
    for start in range(0, hidden.shape[0], path.chunk_tokens):
        end = start + path.chunk_tokens
        chunk = (lm_head, path.head, hidden[start:end], targets[start:end])
        if torch.is_grad_enabled():  # keep no logits for backward: recompute them per chunk
            part = checkpoint(_chunk_loss_sum, *chunk, use_reentrant=False)
        else:
            part = _chunk_loss_sum(*chunk)
        total = part if total is None else total + part
    return total


def _chunk_loss_sum(lm_head, head: LogitHead, hidden, targets):
    logits = head.logits(lm_head, hidden).float()  # upcast before the softmax, as transformers
    return _CrossEntropySum.apply(logits, targets)


class _CrossEntropySum(torch.autograd.Function):
    """``F.cross_entropy(logits, targets, reduction="sum")`` for rows that are all trained,
    whose backward turns the saved logits into their gradient in place: one chunk x vocab
    buffer alive instead of autograd's three (logits, log-softmax, and their gradients)."""

    @staticmethod
    def forward(ctx, logits, targets):
        lse = torch.logsumexp(logits, dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return (lse - logits.gather(1, targets.unsqueeze(1)).squeeze(1)).sum()

    @staticmethod
    def backward(ctx, grad_total):
        logits, targets, lse = ctx.saved_tensors
        # no other node saved these logits (linear, scaling and tanh keep their own tensors)
        grad = logits.sub_(lse.unsqueeze(1)).exp_()  # softmax
        grad[torch.arange(len(targets), device=grad.device), targets] -= 1
        return grad.mul_(grad_total), None


def _why_not_lean(hf, head: LogitHead) -> str | None:
    """None when the lean loss reproduces ``hf``'s loss exactly, else the reason in words."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    name = type(hf).__name__
    if not hasattr(hf, "get_decoder") or hf.get_output_embeddings() is None:
        return f"{name} has no separate decoder and lm_head"
    if hf.get_decoder() is hf:
        return f"{name} has no separate decoder module"
    if getattr(hf.config, "output_router_logits", False):
        return f"{name} adds a router loss to the cross-entropy"
    try:
        standard = hf.loss_function is ForCausalLMLoss
    except (AttributeError, ValueError):
        standard = False
    if not standard:
        return f"{name} does not use the standard causal-LM loss"
    if not _head_matches_forward(hf, head):
        return f"{name} post-processes its logits in a way the chunked loss does not reproduce"
    return None


@contextmanager
def modules_in_mode(model, *, training: bool) -> Iterator[None]:
    """Every module of ``model`` in training (or eval) mode while inside, each module's own
    mode restored afterwards: a check's forward passes leave the run as they found it."""
    modes = {module: module.training for module in model.modules()}
    for module in modes:
        module.training = training
    try:
        yield
    finally:
        for module, was in modes.items():
            module.training = was


def _head_matches_forward(hf, head: LogitHead) -> bool:
    """Whether ``head.logits(lm_head, decoder(ids))`` equals the model's own logits on a few
    tokens: catches logit scalings of architectures this module does not know."""
    embeddings = hf.get_input_embeddings()
    device = embeddings.weight.device
    ids = (torch.arange(1, 9, device=device) % embeddings.num_embeddings).unsqueeze(0)
    # training mode and one seed for both passes: the same dropout masks, the global RNG
    # untouched, and no eval-mode forward (bitsandbytes repacks 4-bit CPU weights on one)
    cuda = [device.index or 0] if device.type == "cuda" else []
    try:
        with modules_in_mode(hf, training=True), torch.no_grad():
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(0)
                expected = hf(input_ids=ids).logits.float()
                torch.manual_seed(0)
                hidden = hf.get_decoder()(input_ids=ids).last_hidden_state
                got = head.logits(hf.get_output_embeddings(), hidden).float()
    except Exception:  # a forward that needs more than input ids: keep the standard path
        return False
    if got.shape != expected.shape:
        return False
    scale = float(expected.abs().max()) or 1.0
    return bool(torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * scale))


def _why_not_liger(lm_head, head: LogitHead, device: str) -> str | None:
    if device != "cuda":
        return "it runs on CUDA only"
    if not liger_installed():
        return f"liger-kernel is not installed ({LIGER_HINT})"
    if type(lm_head) is not torch.nn.Linear:
        return f"the lm_head is a {type(lm_head).__name__}, not a plain Linear"
    if head.multiply is not None or head.divide is not None:
        return "the model scales its logits"
    return None


class LeanLossMixin:
    """Trainer mixin: ``compute_loss`` (training and evaluation) uses :func:`lean_causal_lm_loss`
    and returns no logits; with several processes the forward goes through the DDP wrapper."""

    loss_path: LossPath

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if "labels" not in inputs or self.label_smoother is not None or self.compute_loss_func:
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        if not self.model_accepts_loss_kwargs:
            num_items_in_batch = None  # as today: the model averages, the Trainer divides by GA
        unwrapped = self.accelerator.unwrap_model(model)
        wrapper = model if model is not unwrapped else None  # DDP: forward through it
        loss = lean_causal_lm_loss(unwrapped, inputs, self.loss_path, num_items_in_batch, wrapper)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss (1 here)
        if return_outputs:
            from transformers.modeling_outputs import CausalLMOutputWithPast

            return loss, CausalLMOutputWithPast(loss=loss)
        return loss


def with_lean_loss(trainer_cls, path: LossPath):
    """``trainer_cls`` with its loss computed along ``path`` (itself for full logits)."""
    if path.impl == "full_logits":
        return trainer_cls
    name = f"LeanLoss{trainer_cls.__name__}"
    return type(name, (LeanLossMixin, trainer_cls), {"loss_path": path})
