"""The demo as a newcomer runs it: the shipped config on the real Gemma 3 270M, on the CPU, then
`qlora-studio eval` on the held-out dates and the exported adapter used with plain peft."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from qlora_studio.core.events import parse_event_line

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qlora_studio", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )


def test_demo_config_learns_the_task_and_the_tuned_model_stops_at_eos(repo_root, tmp_path):
    config = repo_root / "resources" / "configs" / "demo-qlora.yaml"
    trained = _cli(
        "train",
        str(config),
        "--set",
        f"output.dir={tmp_path / 'runs'}",
        "--events",
        "jsonl",
        cwd=repo_root,
        timeout=1500,
    )
    assert trained.returncode == 0, trained.stderr[-3000:]
    events = [e for e in map(parse_event_line, trained.stdout.splitlines()) if e]
    losses = [e["loss"] for e in events if e["type"] == "metrics" and "loss" in e]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.2 * first, f"loss did not fall: first five {first:.3f}, last five {last:.3f}"
    done = events[-1]
    assert done["type"] == "done"
    run_dir = Path(done["run_dir"])

    # base vs tuned on the held-out dates (the config's data.eval_path); 30 of the 100 rows keep
    # the suite's time down (the full file: base 0%, tuned 95-97%, see the README)
    evaluated = _cli("eval", str(run_dir), "--limit", "30", "--json", cwd=repo_root, timeout=1200)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads(evaluated.stdout)
    base, tuned = report["scores"]["base"], report["scores"]["tuned"]
    assert base["rows"] == 30
    assert base["exact_match"] <= 0.10, f"the base already knows the task: {base}"
    assert report["delta_exact_match_points"] >= 40, f"base {base}, tuned {tuned}"
    assert tuned["loss"] < base["loss"]
    # stop tokens: the tuned answers end at <end_of_turn>/EOS, not at max_new_tokens
    assert tuned["stopped"] >= 0.95, f"the tuned model rambles: {tuned}"
    assert (run_dir / "evaluation" / "dates-heldout.first30.json").exists()

    # the exported adapter records its template and stop tokens and works with plain peft
    exported = _cli("export", str(run_dir), cwd=repo_root, timeout=300)
    assert exported.returncode == 0, exported.stderr[-2000:]
    adapter = run_dir / "exports" / "adapter"
    summary = json.loads((adapter / "training_summary.json").read_text())
    assert summary["template"] == "gemma"
    assert summary["stop_tokens"] == ["<eos>", "<end_of_turn>"]
    card = (adapter / "README.md").read_text()
    assert "| Stop tokens | `<eos>`, `<end_of_turn>` |" in card
    assert "<start_of_turn>model" in card  # the chat template itself

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlora_studio.core.models.sources import resolve_model

    base_model = AutoModelForCausalLM.from_pretrained(
        str(resolve_model("demo")), dtype=torch.float32
    )
    model = PeftModel.from_pretrained(base_model, str(adapter)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    stop_ids = tokenizer.convert_tokens_to_ids(summary["stop_tokens"])
    messages = [{"role": "user", "content": "Convert to ISO date: 7 August 1994"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=40, do_sample=False, eos_token_id=stop_ids)
    new = out[0, ids["input_ids"].shape[1] :].tolist()
    answer = tokenizer.decode(new, skip_special_tokens=True).strip()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", answer), f"the tuned model answered {answer!r}"
    assert new[-1] in stop_ids and len(new) < 40, "it stopped at a stop token, not at the limit"
