"""The lean loss (core/lean_loss.py) equals the full-logits loss, value and gradients, on the tiny
models; a real run trains the same with it; the QLoRA base keeps its frozen layers 16-bit."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from test_training import make_config
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from qlora_studio.config import TrainConfig
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.training.lean_loss import choose_loss_path, lean_causal_lm_loss
from qlora_studio.core.training.recipe import FineTuneRecipe
from qlora_studio.core.training.run import run_training

PAD = 0


def train_config(**fields) -> TrainConfig:
    train = TrainConfig()
    for key, value in fields.items():
        setattr(train, key, value)
    return train


def lora_model(model_dir, dtype=torch.float32, **config):
    """A LoRA model on ``model_dir`` as the recipe builds it (checkpointing on), with LoRA B
    non-zero so every LoRA weight gets a gradient."""
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype, **config)
    base.config.use_cache = False
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return model.train()


def completion_only_batch(vocab: int) -> dict:
    """4 rows of 14: prompts not trained, right padding, and a row with no trained token."""
    ids = torch.randint(4, vocab, (4, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[:, :6] = -100  # the prompt
    for row, length in ((1, 9), (3, 12)):  # right padding
        ids[row, length:], mask[row, length:], labels[row, length:] = PAD, 0, -100
    labels[2] = -100  # a row with nothing to train
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, batch, compute, num_items=None):
    """The loss, the LoRA gradients and the gradient of the final hidden states."""
    decoder = model.get_base_model().get_decoder()
    kept = []

    def keep(module, args, out):
        out.last_hidden_state.retain_grad()
        kept.append(out)

    hook = decoder.register_forward_hook(keep)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the same dropout masks (GPT-2) on both paths
    try:
        loss = compute(model, batch, num_items)
        loss.backward()
    finally:
        hook.remove()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, kept[-1].last_hidden_state.grad.clone()


def full_logits(model, batch, num_items):
    extra = {} if num_items is None else {"num_items_in_batch": num_items}
    return model(**batch, **extra).loss


def assert_relative(got, expected, tolerance=1e-5):
    error = (got.double() - expected.double()).norm() / expected.double().norm()
    assert error <= tolerance, f"relative error {float(error):.2e}"


CASES = {
    "llama": {},
    "qwen2": {},
    "gpt2": {},
    "gemma3": {},
    "gemma3-softcap": {"final_logit_softcapping": 2.0},  # Gemma 2/3 configs cap the logits
}


@pytest.mark.parametrize("num_items", [None, 23], ids=["mean", "num_items_in_batch"])
@pytest.mark.parametrize("chunk", [3, 1024], ids=["chunk3", "chunk1024"])
@pytest.mark.parametrize("case", list(CASES))
def test_lean_loss_and_gradients_equal_full_logits(tiny_models, case, chunk, num_items):
    model = lora_model(tiny_models[case.split("-")[0]], **CASES[case])
    batch = completion_only_batch(model.get_input_embeddings().num_embeddings)
    trained = int((batch["labels"][:, 1:] != -100).sum())
    assert trained > chunk or chunk == 1024  # chunk3 cuts the trained tokens into several chunks
    path = choose_loss_path(
        model, train_config(loss_impl="chunked", loss_chunk_tokens=chunk), "cpu"
    )
    assert path.impl == "chunked"
    assert path.head.softcap == CASES[case].get("final_logit_softcapping")

    expected = loss_and_grads(model, batch, full_logits, num_items)

    def lean(model, batch, num_items):
        return lean_causal_lm_loss(model, batch, path, num_items)

    got = loss_and_grads(model, batch, lean, num_items)
    assert_relative(got[0], expected[0])
    assert got[1].keys() == expected[1].keys() and len(got[1]) > 0
    for name in expected[1]:
        assert_relative(got[1][name], expected[1][name])
    assert_relative(got[2], expected[2])
    untrained = torch.nn.functional.pad(batch["labels"], (0, 1), value=-100)[:, 1:] == -100
    assert torch.all(got[2][untrained] == 0)  # no logits, no gradient where nothing is trained


def test_a_batch_with_no_trained_token_still_backpropagates(tiny_llama):
    model = lora_model(tiny_llama)
    batch = completion_only_batch(model.get_input_embeddings().num_embeddings)
    batch["labels"][:] = -100  # its rows count in num_items_in_batch from the other micro-batches
    path = choose_loss_path(model, train_config(loss_impl="chunked"), "cpu")
    loss = lean_causal_lm_loss(model, batch, path, num_items_in_batch=torch.tensor(7))
    expected = model(**batch, num_items_in_batch=torch.tensor(7)).loss
    assert float(loss.detach()) == float(expected.detach()) == 0.0
    loss.backward()
    assert all(float(p.grad.abs().max()) == 0 for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(
    "config",
    [
        {"model_type": "granite", "logits_scaling": 4.0},  # Granite divides its logits
        {"model_type": "cohere", "logit_scale": 0.25},  # Cohere multiplies them
    ],
    ids=["granite", "cohere"],
)
def test_logit_scalings_a_config_declares_are_reproduced(config):
    from transformers import AutoConfig

    model_type = config.pop("model_type")
    sizes = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, vocab_size=128)
    sizes.update(num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **sizes, **config))
    batch = completion_only_batch(128)
    path = choose_loss_path(model, train_config(loss_impl="auto", loss_chunk_tokens=4), "cpu")
    assert path.impl == "chunked"
    assert_relative(lean_causal_lm_loss(model, batch, path), model(**batch).loss)


class ScaledLlama(LlamaForCausalLM):
    """A causal LM whose forward rescales its logits in a way no config field declares."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 1.5
        return out


def test_unknown_logit_processing_falls_back_to_full_logits(tiny_llama):
    model = ScaledLlama.from_pretrained(str(tiny_llama))
    path = choose_loss_path(model, train_config(loss_impl="chunked"), "cpu")
    assert path.impl == "full_logits"
    assert "ScaledLlama post-processes its logits" in path.message


def test_loss_path_follows_the_setting(tiny_llama):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama))
    assert choose_loss_path(model, train_config(loss_impl="auto"), "cpu").impl == "chunked"
    full = choose_loss_path(model, train_config(loss_impl="full_logits"), "cpu")
    assert full.impl == "full_logits" and "train.loss_impl" in full.message
    liger = choose_loss_path(model, train_config(loss_impl="liger"), "cpu")
    assert liger.impl == "chunked" and "runs on CUDA only" in liger.message


def test_bf16_lean_loss_is_close_to_full_logits(tiny_models):
    model = lora_model(tiny_models["gemma3"], dtype=torch.bfloat16, final_logit_softcapping=2.0)
    batch = completion_only_batch(model.get_input_embeddings().num_embeddings)
    path = choose_loss_path(model, train_config(loss_impl="chunked", loss_chunk_tokens=5), "cpu")
    expected = loss_and_grads(model, batch, full_logits)
    got = loss_and_grads(model, batch, lambda m, b, n: lean_causal_lm_loss(m, b, path, n))
    assert got[0].dtype == torch.float32  # the loss itself is fp32, as transformers'
    assert_relative(got[0], expected[0], tolerance=1e-2)
    for name in expected[1]:
        assert_relative(got[1][name].float(), expected[1][name].float(), tolerance=5e-2)


def run_losses(cfg) -> tuple[list[float], float, list[str]]:
    reporter = CollectingReporter()
    result = run_training(cfg, reporter=reporter)
    losses = [e["loss"] for e in reporter.of_type("metrics") if "loss" in e]
    statuses = [e["message"] for e in reporter.of_type("status") if e["message"].startswith("Loss")]
    return losses, result.eval_loss, statuses


def test_a_real_qlora_run_trains_the_same_with_the_chunked_loss(tiny_models, tmp_path):
    # Gemma 3, the demo's architecture; grad_accum 2: the Trainer passes num_items_in_batch;
    # 32-bit Adam: 8-bit state quantization would magnify last-digit differences
    common = dict(optimizer="adamw_torch", batch_size=2, grad_accum=2, loss_chunk_tokens=16)
    runs = {}
    for impl in ("full_logits", "chunked"):
        (tmp_path / impl).mkdir()
        cfg = make_config(tiny_models["gemma3"], tmp_path / impl, "qlora", loss_impl=impl, **common)
        runs[impl] = run_losses(cfg)
    (full, full_eval, full_status), (lean, lean_eval, lean_status) = runs.values()
    assert full_status == ["Loss: full logits, the whole batch at once (train.loss_impl)"]
    assert lean_status[0].startswith("Loss: chunked cross-entropy on the trained tokens only")
    assert len(full) == len(lean) >= 4
    for a, b in zip(full, lean, strict=True):
        assert b == pytest.approx(a, rel=1e-4)
    assert lean_eval == pytest.approx(full_eval, rel=1e-4)


def test_qlora_frozen_layers_stay_in_the_compute_dtype(tiny_models, tmp_path):
    import bitsandbytes as bnb

    cfg = make_config(tiny_models["gemma3"], tmp_path, "qlora", max_steps=1)
    cfg.quant.compute_dtype = "bf16"  # a GPU's compute dtype, forced on the CPU
    recipe = FineTuneRecipe(cfg)
    try:
        recipe.setup()
        model = recipe.model
        base = model.get_base_model()
        assert base.get_input_embeddings().weight.dtype == torch.bfloat16
        assert base.get_output_embeddings().weight.dtype == torch.bfloat16
        norms = [p for n, p in base.named_parameters() if "norm" in n]
        assert norms and all(p.dtype == torch.bfloat16 for p in norms)
        lora = [p for n, p in model.named_parameters() if "lora_" in n]
        assert lora and all(p.dtype == torch.float32 and p.requires_grad for p in lora)
        four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(four_bit) == 14 and all(not m.weight.requires_grad for m in four_bit)
        result = recipe.train()
        assert result.step == 1 and result.final_loss is not None and result.final_loss > 0
    finally:
        recipe.cleanup()


def test_lora_starts_the_same_whatever_ran_before(tiny_models, tmp_path):
    starts = []
    for k in range(2):
        torch.rand(k + 1)  # something used the global RNG before the run
        (tmp_path / str(k)).mkdir()
        recipe = FineTuneRecipe(make_config(tiny_models["llama"], tmp_path / str(k), "lora"))
        try:
            recipe.setup()
            starts.append({n: p.detach().clone() for n, p in recipe.model.named_parameters()})
        finally:
            recipe.cleanup()
    lora_a = [n for n in starts[0] if "lora_A" in n]
    assert lora_a and all(torch.equal(starts[0][n], starts[1][n]) for n in lora_a)


def test_an_evaluation_mid_run_keeps_the_qlora_gradients(tiny_models, tmp_path):
    """bitsandbytes would repack 4-bit CPU weights on an eval forward into a layout whose
    matmul has no backward (on CPUs with AVX512-BF16); the recipe keeps the trainable layout."""
    recipe = FineTuneRecipe(make_config(tiny_models["llama"], tmp_path, "qlora"))
    try:
        recipe.setup()
        model = recipe.model
        with torch.no_grad():
            for name, param in model.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.05)
        batch = completion_only_batch(model.get_input_embeddings().num_embeddings)

        def first_layer_grads():
            model.train()
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)  # the same LoRA dropout masks
            model(**batch).loss.backward()
            return [
                p.grad.clone()
                for n, p in model.named_parameters()
                if "layers.0." in n and p.grad is not None
            ]

        before = first_layer_grads()
        model.eval()
        with torch.no_grad():
            model(**batch)  # what Trainer.evaluate does between steps
        after = first_layer_grads()
        assert before and all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    finally:
        recipe.cleanup()
