"""Real fine-tunes on tiny random models: full, LoRA and QLoRA on four architectures, with
export, cancel/resume, the event stream and bad data."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from qlora_studio.config import RunConfig
from qlora_studio.core.errors import DatasetError, ExportError
from qlora_studio.core.events import CollectingReporter, validate_event
from qlora_studio.core.export import export_run
from qlora_studio.core.run_folder import last_checkpoint
from qlora_studio.core.training.recipe import FineTuneRecipe
from qlora_studio.core.training.run import resume_training, run_training

ROWS = [
    ("Convert to ISO date: 3 March 2021", "2021-03-03"),
    ("Convert to ISO date: March 4, 2020", "2020-03-04"),
    ("Convert to ISO date: 12/05/1999 (US)", "1999-12-05"),
    ("Convert to ISO date: 2001.10.28", "2001-10-28"),
]


def write_chat_data(path: Path, n: int = 24) -> Path:
    with path.open("w") as f:
        for i in range(n):
            prompt, answer = ROWS[i % len(ROWS)]
            row = {
                "messages": [
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": answer},
                ]
            }
            f.write(json.dumps(row) + "\n")
    return path


def make_config(model_dir: Path, tmp_path: Path, method: str, **train) -> RunConfig:
    cfg = RunConfig()
    cfg.method = method
    cfg.model.source = str(model_dir)
    cfg.data.path = str(write_chat_data(tmp_path / "data.jsonl"))
    cfg.data.max_length = 160
    cfg.data.validation_split = 0.1
    cfg.lora.r = 4
    cfg.lora.alpha = 8
    cfg.train.max_steps = 4
    cfg.train.batch_size = 4
    cfg.train.lr = 5e-3 if method != "full" else 1e-3
    cfg.train.optimizer = "paged_adamw_8bit" if method == "qlora" else "adamw_torch"
    cfg.train.save_steps = 2
    cfg.train.gradient_checkpointing = method == "qlora"
    cfg.train.device = "cpu"
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.output.dir = str(tmp_path / "runs")
    cfg.output.name = f"{method}-run"
    return cfg.validate()


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2", "gemma3"])
def test_train_and_export_every_method_on_every_architecture(tiny_models, tmp_path, arch, method):
    cfg = make_config(tiny_models[arch], tmp_path, method)
    reporter = CollectingReporter()
    result = run_training(cfg, reporter=reporter)

    assert result.status == "done" and result.step == 4
    run_dir = result.run_dir
    assert (run_dir / "config.yaml").exists() and (run_dir / "run.json").exists()
    assert last_checkpoint(run_dir).name == "checkpoint-4"
    losses = [e["loss"] for e in reporter.of_type("metrics") if "loss" in e]
    assert len(losses) >= 4 and all(loss > 0 for loss in losses)
    assert reporter.of_type("done")[0]["adapter_dir"] == str(result.output_dir)

    out = result.output_dir
    if method == "full":
        assert (out / "model.safetensors").exists()
    else:
        assert (out / "adapter_config.json").exists()
        assert (out / "adapter_model.safetensors").exists()
    assert "Base model" in (out / "README.md").read_text()
    exported = export_run(run_dir, out=tmp_path / "exported")
    assert sorted(p.name for p in exported.iterdir()) == sorted(p.name for p in out.iterdir())
    with pytest.raises(ExportError, match="already exists"):
        export_run(run_dir, out=tmp_path / "exported")


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_adapter_loads_with_plain_peft_and_merges(tiny_models, tmp_path, method):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = make_config(tiny_models["llama"], tmp_path, method)
    result = run_training(cfg)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    model = PeftModel.from_pretrained(base, str(result.output_dir))
    tok = AutoTokenizer.from_pretrained(str(result.output_dir))
    assert tok.chat_template, "the trained chat template travels with the adapter"
    ids = tok("Convert to ISO date: 3 March 2021", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]
    adapter_logits = model(**ids).logits

    merged_dir = export_run(result.run_dir, merge=True)
    assert merged_dir == result.run_dir / "exports" / "merged"
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    merged_logits = merged(**ids).logits
    # merged in bf16: close to the adapter's outputs, not bit-identical
    assert torch.allclose(adapter_logits, merged_logits, atol=0.1)
    assert (merged_dir / "tokenizer_config.json").exists()


def test_qlora_base_is_4bit_and_only_lora_trains(tiny_models, tmp_path):
    import bitsandbytes as bnb

    cfg = make_config(tiny_models["llama"], tmp_path, "qlora")
    cfg.quant.quant_type = "fp4"
    recipe = FineTuneRecipe(cfg)
    try:
        recipe.setup()
        model = recipe.model
        four_bit = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert len(four_bit) == 14  # 7 projections x 2 layers
        for module in four_bit:
            state = module.weight.quant_state
            assert state.quant_type == "fp4"
            assert state.nested, "double quantization is on"
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
    finally:
        recipe.cleanup()


def test_double_quant_off_is_honoured(tiny_models, tmp_path):
    import bitsandbytes as bnb

    cfg = make_config(tiny_models["qwen2"], tmp_path, "qlora")
    cfg.quant.double_quant = False
    recipe = FineTuneRecipe(cfg)
    try:
        recipe.setup()
        layer = next(m for m in recipe.model.modules() if isinstance(m, bnb.nn.Linear4bit))
        assert layer.weight.quant_state.quant_type == "nf4"
        assert not layer.weight.quant_state.nested
    finally:
        recipe.cleanup()


class StopAtStep(CollectingReporter):
    """Asks the run to stop once it reports ``step`` (as the GUI's Stop button would)."""

    def __init__(self, cancel: threading.Event, step: int):
        super().__init__()
        self.cancel, self.stop_step = cancel, step

    def emit(self, event):
        super().emit(event)
        if event["type"] == "progress" and event["step"] >= self.stop_step:
            self.cancel.set()


def test_cancel_leaves_checkpoint_and_resume_continues(tiny_models, tmp_path):
    cfg = make_config(tiny_models["gemma3"], tmp_path, "qlora", max_steps=8, save_steps=100)
    cancel = threading.Event()
    reporter = StopAtStep(cancel, step=3)
    result = run_training(cfg, reporter=reporter, cancel=cancel)

    assert result.status == "cancelled" and result.step == 3
    assert last_checkpoint(result.run_dir).name == "checkpoint-3"
    assert reporter.of_type("cancelled")[0]["step"] == 3
    assert (result.output_dir / "adapter_model.safetensors").exists()
    assert json.loads((result.run_dir / "run.json").read_text())["status"] == "cancelled"

    again = CollectingReporter()
    resumed = resume_training(result.run_dir, reporter=again)
    steps = [e["step"] for e in again.of_type("progress")]
    assert steps[0] == 4, "resume continues after the checkpoint, not from 0"
    assert resumed.status == "done" and resumed.step == 8


def test_events_file_follows_the_schema(tiny_models, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora")
    result = run_training(cfg)
    lines = (result.run_dir / "events.jsonl").read_text().splitlines()
    events = [validate_event(json.loads(line)) for line in lines]
    types = {e["type"] for e in events}
    assert {"status", "progress", "metrics", "memory", "checkpoint", "done"} <= types
    progress = [e for e in events if e["type"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4]
    assert all(e["total"] == 4 and e["tokens_per_s"] > 0 for e in progress)
    memory = [e for e in events if e["type"] == "memory"]
    assert all(e["rss_bytes"] > 10_000_000 for e in memory)
    assert any(e.get("eval_loss") for e in events if e["type"] == "metrics")


def test_broken_row_fails_before_anything_is_written(tiny_models, tmp_path):
    cfg = make_config(tiny_models["llama"], tmp_path, "lora")
    data = Path(cfg.data.path)
    lines = data.read_text().splitlines()
    lines[6] = '{"messages": [{"role": "user", "content": "hi"}'  # cut off: not JSON
    data.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        run_training(cfg)
    assert "data.jsonl" in err.value.message and "7" in err.value.message
    runs = Path(cfg.output.dir)
    assert not runs.exists() or not any(runs.iterdir())


def test_export_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(ExportError, match="not a run folder"):
        export_run(tmp_path)
