"""Which ``data.packing`` mode a loaded model trains with, checked on the model itself.

Padding-free packing is exact only when the model's attention keeps the concatenated rows
apart and its positions restart with ``position_ids``. transformers' masking utilities do this
for the models built on them (SDPA, eager, flex) and flash-attention reads the restarts as varlen
boundaries; a model with its own mask code, a recurrent layer or remote code may not. So the
model answers for itself: two short rows run once packed and once each on its own, and packing
is used only when every hidden state matches. Otherwise the run falls back to ``by_length`` and
says why.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch  # only the training recipe imports this module, after torch is loaded

from qlora_studio.config import Packing
from qlora_studio.core.training.lean_loss import causal_lm, modules_in_mode

ROW_LENGTHS = (5, 7)  # two rows of different lengths: a shared position offset would show


@dataclass(frozen=True)
class PackingChoice:
    """The mode a run uses and the status line saying so."""

    mode: Packing  # off | by_length | padding_free, never auto
    message: str


def choose_packing(model, requested: Packing) -> PackingChoice:
    """``requested`` for ``model``; ``auto`` and ``padding_free`` become ``by_length`` (with the
    reason) when packed rows would see each other or the check cannot run."""
    if requested == "off":
        return PackingChoice("off", "Batches: random rows, padded to the longest (data.packing)")
    if requested == "by_length":
        return PackingChoice(
            "by_length", "Batches: rows of similar lengths, padded to the longest (data.packing)"
        )
    leak = packing_leak(model)
    if leak is None:
        how = "auto: exact for this model" if requested == "auto" else "data.packing"
        return PackingChoice(
            "padding_free",
            "Batches: padding-free, each batch's rows concatenated with positions restarting "
            f"and no attention between rows ({how})",
        )
    return PackingChoice(
        "by_length",
        f"Batches: by length, not padding-free: {leak}. Rows of similar lengths are batched "
        "to cut padding instead",
    )


def packing_leak(model) -> str | None:
    """None when packed rows give ``model`` the same hidden states as the rows alone, else why
    not, in words. The model's modes (dropout) are restored afterwards."""
    hf = causal_lm(model)
    name = type(hf).__name__
    if not hasattr(hf, "get_decoder") or hf.get_decoder() is hf:
        return f"{name} has no separate decoder to check"
    decoder = hf.get_decoder()
    embeddings = hf.get_input_embeddings()
    device = embeddings.weight.device
    vocab = embeddings.num_embeddings
    generator = torch.Generator().manual_seed(0)
    rows = [torch.randint(1, vocab, (n,), generator=generator).to(device) for n in ROW_LENGTHS]
    packed_ids = torch.cat(rows).unsqueeze(0)
    positions = torch.cat([torch.arange(n, device=device) for n in ROW_LENGTHS]).unsqueeze(0)
    try:
        # no dropout: both passes must be deterministic
        with modules_in_mode(hf, training=False), torch.no_grad():
            packed = decoder(
                input_ids=packed_ids, position_ids=positions, use_cache=False
            ).last_hidden_state[0]
            alone = [
                decoder(input_ids=row.unsqueeze(0), use_cache=False).last_hidden_state[0]
                for row in rows
            ]
    except Exception as exc:  # a decoder that takes no position_ids, or needs a cache
        return f"{name} could not run a packed batch ({type(exc).__name__}: {exc})"
    expected = torch.cat(alone).float()
    got = packed.float()
    if got.shape != expected.shape:
        return f"{name} returned {tuple(got.shape)} hidden states for {tuple(expected.shape)}"
    # kernels differ between a masked and a plain causal pass: a rounding difference is far
    # below what one row attending to another does (of the order of the values themselves)
    tolerance = 1e-3 if packed.dtype == torch.float32 else 2e-2
    error = float((got - expected).abs().mean() / expected.abs().mean().clamp_min(1e-12))
    if error > tolerance:
        return f"{name} lets one packed row see another (checked on two rows)"
    return None
