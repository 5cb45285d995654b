"""The demo as a newcomer runs it: the shipped config on the real Gemma 3 270M, on the CPU."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_studio.core.events import parse_event_line

pytestmark = pytest.mark.slow


def test_demo_qlora_30_steps_learns_and_exports_a_working_adapter(repo_root, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_studio.core.models import resolve_model

    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "qlora_studio",
            "train",
            str(repo_root / "resources" / "configs" / "demo-qlora.yaml"),
            "--set",
            "train.max_steps=30",
            "--set",
            f"output.dir={tmp_path / 'runs'}",
            "--events",
            "jsonl",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    events = [e for e in map(parse_event_line, result.stdout.splitlines()) if e]
    losses = [e["loss"] for e in events if e["type"] == "metrics" and "loss" in e]
    assert len(losses) == 30
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.5 * first, f"loss did not fall: first five {first:.3f}, last five {last:.3f}"
    done = events[-1]
    assert done["type"] == "done" and done["step"] == 30

    # the exported adapter loads with plain peft and generates
    exported = subprocess.run(
        [sys.executable, "-m", "qlora_studio", "export", done["run_dir"]],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    adapter = Path(done["run_dir"]) / "exports" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA"

    base_dir = resolve_model("demo")
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    messages = [{"role": "user", "content": "Convert to ISO date: 7 August 1994"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert re.search(r"\d{4}-\d{2}-\d{2}", answer), f"the tuned model answered {answer!r}"
