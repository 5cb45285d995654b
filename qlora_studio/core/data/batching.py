"""How tokenized rows become batches (``data.packing``), and the collators that build them.

- ``off``: random batches of ``batch_size`` rows, right-padded to the longest (the Trainer's own
  sampler; :func:`plan_batches` only models it for the padding figure).
- ``by_length``: rows sorted by length (ties in a seeded order) and cut into batches, so each
  batch pads to a neighbour's length; the Trainer shuffles the order of the batches each epoch.
- ``padding_free``: the rows of a batch are concatenated into one sequence whose
  ``position_ids`` restart at each row and which has no attention mask. transformers'
  ``DataCollatorWithFlattening`` builds it; its masking utilities turn the restarting positions
  into a block-diagonal causal mask (SDPA, eager) and flash-attention reads them as varlen
  boundaries, so no row attends to another. Whether a loaded model keeps rows apart is checked
  on the model itself (``core/training/packing.py``) before it is used.

Both packed modes build their batches up front (:func:`plan_batches`, seeded, so a resumed run
sees the same ones) and bound each by ``data.max_tokens_per_batch`` computed tokens. torch and
transformers are imported inside the collators.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qlora_studio.config import Packing

PACKED: tuple[Packing, ...] = ("by_length", "padding_free")


def token_budget(batch_size: int, max_length: int, max_tokens_per_batch: int) -> int:
    """The most tokens one batch computes: ``data.max_tokens_per_batch``, or batch x length."""
    return max_tokens_per_batch or batch_size * max_length


def computed_tokens(lengths: Sequence[int], mode: Packing) -> int:
    """Tokens a batch of rows of ``lengths`` computes: their sum packed, else rows x longest."""
    if not lengths:
        return 0
    return sum(lengths) if mode == "padding_free" else len(lengths) * max(lengths)


def plan_batches(
    lengths: Sequence[int],
    batch_size: int,
    mode: Packing,
    *,
    max_tokens: int = 0,
    seed: int = 0,
) -> list[list[int]]:
    """Row indices per batch, at most ``batch_size`` rows and (when ``max_tokens`` > 0) at most
    ``max_tokens`` computed tokens each; a row is never split nor dropped. ``off`` and
    ``padding_free`` take the rows in a seeded random order, ``by_length`` sorted by length."""
    if batch_size < 1:
        raise ValueError(f"batch_size {batch_size} must be at least 1")
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if mode == "by_length":
        order.sort(key=lambda i: lengths[i])  # stable: equal lengths keep the seeded order
    kind: Packing = "padding_free" if mode == "padding_free" else "off"
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        grown = [lengths[j] for j in batch] + [lengths[i]]
        full = len(batch) >= batch_size
        over = max_tokens > 0 and computed_tokens(grown, kind) > max_tokens
        if batch and (full or over):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def heaviest_batch(
    lengths: Sequence[int], batch_size: int, mode: Packing, max_tokens: int = 0
) -> list[int]:
    """Row indices of the batch that computes the most tokens any plan can make: the longest
    rows, up to ``batch_size`` of them and ``max_tokens`` computed tokens (repeated when the
    data has fewer rows)."""
    if not lengths:
        return []
    ordered = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    kind: Packing = "padding_free" if mode == "padding_free" else "off"
    batch = [ordered[0]]
    for k in range(1, batch_size):
        candidate = batch + [ordered[k % len(ordered)]]
        if max_tokens and computed_tokens([lengths[i] for i in candidate], kind) > max_tokens:
            break
        batch = candidate
    return batch


@dataclass(frozen=True)
class PaddingFigures:
    """Computed tokens that are padding under each mode, for the Dataset page."""

    real_tokens: int
    computed: dict[str, int]  # mode -> computed tokens (padding included)
    batches: dict[str, int]  # mode -> batches per epoch

    def share(self, mode: str) -> float:
        """The share of ``mode``'s computed tokens that are padding (0..1)."""
        computed = self.computed.get(mode, 0)
        return 1 - self.real_tokens / computed if computed else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "real_tokens": self.real_tokens,
            "computed": dict(self.computed),
            "batches": dict(self.batches),
            "padding_share": {mode: round(self.share(mode), 4) for mode in self.computed},
        }


def padding_figures(
    lengths: Sequence[int], batch_size: int, *, max_tokens: int = 0, seed: int = 0
) -> PaddingFigures:
    """What one epoch over rows of ``lengths`` computes with each mode (``off`` as one seeded
    random order of the Trainer's sampler would batch it)."""
    computed, batches = {}, {}
    for mode in ("off", "by_length", "padding_free"):
        budget = max_tokens if mode in PACKED else 0
        plan = plan_batches(lengths, batch_size, mode, max_tokens=budget, seed=seed)
        computed[mode] = sum(computed_tokens([lengths[i] for i in b], mode) for b in plan)
        batches[mode] = len(plan)
    return PaddingFigures(sum(lengths), computed, batches)


class PaddingCollator:
    """Right-pads tokenized rows into a batch of torch LongTensors (labels padded with -100)."""

    packed = False  # last_shape is rows x padded width

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        if pad_token_id is None:
            raise ValueError("pad_token_id is None; set tokenizer.pad_token first")
        self.pad_token_id = int(pad_token_id)
        self.pad_to_multiple_of = pad_to_multiple_of
        self.last_shape: tuple[int, int] | None = None  # rows x tokens of the latest batch
        self.widest = 0  # the most tokens a batch before the latest one had

    def _record(self, shape: tuple[int, int]) -> None:
        if self.last_shape is not None:
            self.widest = max(self.widest, self.last_shape[1])
        self.last_shape = shape

    def __call__(self, features: list[dict]) -> dict:
        import math

        import torch

        if not features:
            raise ValueError("cannot collate an empty batch")
        width = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        shape = (len(features), width)
        self._record(shape)
        batch = {
            "input_ids": torch.full(shape, self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros(shape, dtype=torch.long),
            "labels": torch.full(shape, -100, dtype=torch.long),
        }
        for i, feature in enumerate(features):
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)
            n = len(ids)
            batch["input_ids"][i, :n] = ids
            mask = feature.get("attention_mask")
            batch["attention_mask"][i, :n] = 1 if mask is None else torch.as_tensor(mask)
            labels = feature.get("labels")
            batch["labels"][i, :n] = ids if labels is None else torch.as_tensor(labels)
        return batch


class FlatteningCollator(PaddingCollator):
    """The rows of a batch as one sequence: transformers' ``DataCollatorWithFlattening``
    (``position_ids`` restarting at each row, the first label of each row ignored so no row
    learns to predict the next one's first token, no attention mask) plus ``use_cache=False``,
    because the masking utilities read packed rows from ``position_ids`` only when no cache is
    passed."""

    packed = True  # last_shape is rows x the tokens of all of them

    def __init__(self, pad_token_id: int):
        super().__init__(pad_token_id)
        from transformers import DataCollatorWithFlattening

        self._flatten = DataCollatorWithFlattening(return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict:
        if not features:
            raise ValueError("cannot collate an empty batch")
        rows = [{"input_ids": f["input_ids"], "labels": f.get("labels")} for f in features]
        for row in rows:
            if row["labels"] is None:
                row.pop("labels")
        batch = self._flatten(rows)
        self._record((len(rows), int(batch["input_ids"].shape[1])))
        batch["use_cache"] = False
        return batch


class PlannedBatches:
    """A map-style dataset whose items are whole planned batches (lists of rows), for a
    Trainer with a batch size of 1 and :class:`BatchCollator`."""

    def __init__(self, rows: list[dict], plan: list[list[int]]):
        self.rows = rows
        self.plan = plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> list[dict]:
        return [self.rows[i] for i in self.plan[index]]


class BatchCollator:
    """Collates the one planned batch the Trainer hands over with ``inner``."""

    def __init__(self, inner: PaddingCollator):
        self.inner = inner

    @property
    def last_shape(self) -> tuple[int, int] | None:
        return self.inner.last_shape

    @property
    def widest(self) -> int:
        return self.inner.widest

    @property
    def packed(self) -> bool:
        return self.inner.packed

    def __call__(self, features: list[list[dict]]) -> dict:
        return self.inner([row for batch in features for row in batch])


class ListDataset:
    """A list of tokenized examples as a map-style dataset (the Trainer's random batches)."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


@dataclass
class Batches:
    """What the Trainer is given: the collator, the train and eval datasets, and whether the
    batches are planned (one whole batch per item, so per-device batch size 1)."""

    collator: Any
    train: Any
    eval: Any
    planned: bool


def build_batches(
    train_rows: list[dict],
    eval_rows: list[dict],
    mode: Packing,
    pad_token_id: int,
    *,
    batch_size: int,
    max_tokens: int,
    seed: int,
    worst_case_steps: int = 0,
) -> Batches:
    """Rows for the Trainer's own random batches (``off``), or planned batches under the token
    budget, one per Trainer item (``by_length``, ``padding_free``). ``worst_case_steps`` (the
    probe) plans the heaviest batch that many times instead."""
    if mode == "off" and not worst_case_steps:
        rows = ListDataset(eval_rows) if eval_rows else None
        return Batches(PaddingCollator(pad_token_id), ListDataset(train_rows), rows, False)
    inner = (
        FlatteningCollator(pad_token_id)
        if mode == "padding_free"
        else PaddingCollator(pad_token_id)
    )

    def planned(rows: list[dict]) -> PlannedBatches:
        lengths = [len(r["input_ids"]) for r in rows]
        if worst_case_steps:
            heaviest = heaviest_batch(lengths, batch_size, mode, max_tokens)
            return PlannedBatches(rows, [heaviest] * worst_case_steps)
        plan = plan_batches(lengths, batch_size, mode, max_tokens=max_tokens, seed=seed)
        return PlannedBatches(rows, plan)

    eval_batches = planned(eval_rows) if eval_rows else None
    return Batches(BatchCollator(inner), planned(train_rows), eval_batches, True)
