"""Padding-free packing and length grouping (data.packing): packed rows train exactly as the same
rows padded, no packed row sees another, a model that cannot pack exactly falls back with a
message, and a real run says which mode it used and counts only real tokens."""

from __future__ import annotations

import json

import pytest
import torch
from test_lean_loss import lora_model
from test_training import make_config

from qlora_studio.config import ConfigError
from qlora_studio.core.data.batching import (
    FlatteningCollator,
    PaddingCollator,
    computed_tokens,
    heaviest_batch,
    padding_figures,
    plan_batches,
)
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.run_folder import SUMMARY_FILE
from qlora_studio.core.training.lean_loss import LossPath, lean_causal_lm_loss
from qlora_studio.core.training.packing import choose_packing, packing_leak
from qlora_studio.core.training.run import run_training

PAD = 0
LENGTHS = (9, 14, 5, 11)


def completion_rows(vocab: int) -> list[dict]:
    """Rows of different lengths whose first half (the prompt) is not trained."""
    generator = torch.Generator().manual_seed(3)
    rows = []
    for n in LENGTHS:
        ids = torch.randint(4, vocab, (n,), generator=generator).tolist()
        labels = [-100] * (n // 2) + ids[n // 2 :]
        rows.append({"input_ids": ids, "attention_mask": [1] * n, "labels": labels})
    return rows


def row_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of one row's logits (t x V) against its labels (t), shifted."""
    return torch.nn.functional.cross_entropy(
        logits[:-1].float(), labels[1:], ignore_index=-100, reduction="sum"
    )


# ---- batch planning -----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["off", "by_length", "padding_free"])
def test_plans_keep_every_row_once_within_the_batch_and_token_limits(mode):
    lengths = [((i * 37) % 97) + 3 for i in range(101)]
    plan = plan_batches(lengths, 8, mode, max_tokens=300, seed=5)
    assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
    for batch in plan:
        assert 1 <= len(batch) <= 8
        assert computed_tokens([lengths[i] for i in batch], mode) <= 300 or len(batch) == 1
    assert plan == plan_batches(lengths, 8, mode, max_tokens=300, seed=5)  # resumable
    assert plan != plan_batches(lengths, 8, mode, max_tokens=300, seed=6)


def test_by_length_batches_similar_lengths_and_padding_free_computes_no_padding():
    lengths = [5] * 40 + [200] * 10
    figures = padding_figures(lengths, 8, seed=0)
    assert figures.share("padding_free") == 0
    assert figures.share("by_length") < 0.05 < figures.share("off")
    assert figures.computed["padding_free"] == sum(lengths) == figures.real_tokens
    by_length = plan_batches(lengths, 8, "by_length", seed=0)
    assert all(len({lengths[i] for i in batch}) == 1 for batch in by_length[:5])


def test_heaviest_batch_takes_the_longest_rows_up_to_the_budget():
    lengths = [10, 50, 30, 40, 20]
    assert heaviest_batch(lengths, 3, "padding_free") == [1, 3, 2]
    assert heaviest_batch(lengths, 3, "padding_free", max_tokens=95) == [1, 3]
    assert heaviest_batch(lengths, 3, "off", max_tokens=120) == [1, 3]  # 2 x 50 padded
    assert heaviest_batch([7], 3, "off") == [0, 0, 0]  # fewer rows than a batch: repeated


def test_a_token_budget_below_the_row_length_is_refused(tiny_llama, tmp_path):
    cfg = make_config(tiny_llama, tmp_path, "lora")
    cfg.data.max_tokens_per_batch = 100
    with pytest.raises(ConfigError) as error:
        cfg.validate()
    assert error.value.field == "data.max_tokens_per_batch"
    cfg.data.max_tokens_per_batch = 0
    cfg.data.packing = "tight"
    with pytest.raises(ConfigError, match="data.packing"):
        cfg.validate()


# ---- exactness on each tiny architecture ----------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3"])
def test_packed_rows_train_exactly_as_the_same_rows_padded(tiny_models, arch):
    model = lora_model(tiny_models[arch]).eval()  # eval: no dropout, the graph still trains
    vocab = model.get_input_embeddings().num_embeddings
    rows = completion_rows(vocab)
    padded = PaddingCollator(PAD)(rows)
    packed = FlatteningCollator(PAD)(rows)
    assert packed["input_ids"].shape == (1, sum(LENGTHS)) and "attention_mask" not in packed
    trained = sum(sum(1 for x in r["labels"][1:] if x != -100) for r in rows)
    path = LossPath("chunked", "", chunk_tokens=7)

    def loss_and_grads(batch):
        model.zero_grad(set_to_none=True)
        loss = lean_causal_lm_loss(model, batch, path, torch.tensor(trained))
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return loss.detach(), grads

    padded_loss, padded_grads = loss_and_grads(padded)
    packed_loss, packed_grads = loss_and_grads(packed)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-4, atol=1e-6)
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for name, grad in padded_grads.items():
        scale = grad.abs().max().item() or 1.0
        torch.testing.assert_close(packed_grads[name], grad, rtol=1e-4, atol=1e-4 * scale)

    with torch.no_grad():  # and row by row, from the model's own logits
        padded_logits = model(**padded).logits
        packed_logits = model(**{k: v for k, v in packed.items() if k != "labels"}).logits[0]
    start = 0
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        labels = torch.tensor(row["labels"])
        alone = row_losses(padded_logits[i, :n], labels)
        together = row_losses(packed_logits[start : start + n], labels)
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)
        start += n


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_no_packed_row_sees_another(tiny_models, arch):
    model = lora_model(tiny_models[arch]).eval()
    vocab = model.get_input_embeddings().num_embeddings
    rows = completion_rows(vocab)
    changed = [dict(r) for r in rows]
    changed[0] = dict(rows[0], input_ids=[(x + 1) % vocab or 4 for x in rows[0]["input_ids"]])
    outputs = []
    with torch.no_grad():
        for batch_rows in (rows, changed):
            batch = FlatteningCollator(PAD)(batch_rows)
            batch.pop("labels")
            outputs.append(model(**batch).logits[0])
    first = LENGTHS[0]
    assert not torch.allclose(outputs[0][:first], outputs[1][:first])  # row 1 did change
    torch.testing.assert_close(outputs[1][first:], outputs[0][first:], rtol=0, atol=1e-5)


def test_a_model_that_cannot_pack_exactly_falls_back_to_by_length():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    recurrent = MambaForCausalLM(
        MambaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, state_size=4)
    )
    assert "lets one packed row see another" in packing_leak(recurrent)
    for requested in ("auto", "padding_free"):
        choice = choose_packing(recurrent, requested)
        assert choice.mode == "by_length"
        assert "not padding-free" in choice.message and "MambaForCausalLM" in choice.message


# ---- a real run ---------------------------------------------------------------------------
@pytest.mark.parametrize("packing", ["padding_free", "by_length"])
def test_a_run_says_which_packing_it_used_and_counts_real_tokens(tiny_llama, tmp_path, packing):
    cfg = make_config(tiny_llama, tmp_path, "lora", max_steps=3, save_steps=10, logging_steps=1)
    cfg.data.packing = packing
    cfg.data.validation_split = 0.0
    reporter = CollectingReporter()
    result = run_training(cfg, reporter=reporter)
    assert result.status == "done"
    said = [e for e in reporter.events if e.get("packing")]
    assert [e["packing"] for e in said] == [packing]
    summary = json.loads((result.run_dir / SUMMARY_FILE).read_text())
    assert summary["packing"] == packing
    seen = [e["tokens_seen"] for e in reporter.events if e.get("tokens_seen") is not None]
    rows_trained = 3 * cfg.train.batch_size  # 24 rows: no epoch ends within 3 steps of 4
    # every row of the chat data templates to a length within max_length: the real tokens of
    # 12 rows lie between 12 x the shortest and 12 x the longest, padding never counted
    lengths = sorted(_prepared_lengths(tiny_llama, cfg))
    assert seen and rows_trained * lengths[0] <= seen[-1] <= rows_trained * lengths[-1]
    if packing == "padding_free":  # three batches of four rows, all real tokens
        assert seen[-1] <= 3 * sum(lengths[-4:])


def _prepared_lengths(model_dir, cfg) -> list[int]:
    from qlora_studio.core.data.prepare import prepare_dataset
    from qlora_studio.core.models.sources import load_tokenizer

    prepared = prepare_dataset(cfg.data, load_tokenizer(model_dir), seed=cfg.train.seed)
    return [len(r["input_ids"]) for r in prepared.train]
