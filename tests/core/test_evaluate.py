"""Base vs tuned on tiny models: evaluation scores, the adapter switch, streaming, stop tokens,
and the eval / chat commands."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import make_config

from qlora_studio.cli import main
from qlora_studio.core.errors import DatasetError
from qlora_studio.core.evaluation.comparison import (
    ComparisonModel,
    EvaluationError,
    GenerationSettings,
)
from qlora_studio.core.evaluation.evaluate import (
    EvalReport,
    evaluate_run,
    exact_match,
    load_reports,
    normalise,
    similarity,
)
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.training.run import run_training

PROMPT = [{"role": "user", "content": "Convert to ISO date: 3 March 2021"}]


def _train(tiny_models, root: Path, arch: str, method: str) -> tuple[Path, Path]:
    """A short, loud fine-tune (high lr) so the tuned model differs clearly from the base."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = make_config(tiny_models[arch], root, method, max_steps=6, lr=2e-2)
    return run_training(cfg).run_dir, Path(cfg.data.path)


@pytest.fixture(scope="module")
def lora_run(tiny_models, tmp_path_factory) -> tuple[Path, Path]:
    return _train(tiny_models, tmp_path_factory.mktemp("lora_eval"), "llama", "lora")


@pytest.fixture(scope="module")
def comparison(lora_run):
    model = ComparisonModel.load(lora_run[0], device="cpu")
    yield model
    model.close()


def test_scoring_normalises_case_space_and_outer_punctuation():
    assert normalise("  2021-03-03.\n") == "2021-03-03"
    assert exact_match("The  Answer", "the answer!")
    assert not exact_match("2021-03-04", "2021-03-03")
    assert similarity("2021-03-03", "2021-03-03") == 1.0
    assert 0.8 < similarity("2021-03-04", "2021-03-03") < 1.0
    assert similarity("", "2021-03-03") == 0.0
    with pytest.raises(EvaluationError, match="top_p"):
        GenerationSettings(top_p=0).validate()
    with pytest.raises(EvaluationError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0).validate()


@pytest.mark.parametrize(
    ("arch", "method"), [("llama", "lora"), ("gemma3", "qlora"), ("gpt2", "full")]
)
def test_evaluation_scores_both_models_and_saves_the_report(tiny_models, tmp_path, arch, method):
    run_dir, data = _train(tiny_models, tmp_path, arch, method)
    reporter = CollectingReporter()
    report = evaluate_run(run_dir, data=str(data), limit=8, device="cpu", reporter=reporter)

    assert set(report.scores) == {"base", "tuned"} and len(report.rows) == 8
    base, tuned = report.scores["base"], report.scores["tuned"]
    # the run trained on these rows: its completion loss must be below the untouched base's
    assert tuned.loss < base.loss
    assert tuned.perplexity == pytest.approx(2.718281828**tuned.loss, rel=1e-3)
    for row in report.rows:
        assert set(row.outputs) == {"base", "tuned"}
        assert row.reference and row.prompt.startswith("Convert to ISO date")
    assert any(row.outputs["base"] != row.outputs["tuned"] for row in report.rows)
    progress = reporter.of_type("progress")
    assert progress and progress[-1]["step"] == progress[-1]["total"]

    saved = run_dir / "evaluation" / "data.first8.json"
    assert saved.exists()
    (loaded,) = load_reports(run_dir)
    assert loaded.scores["tuned"].loss == tuned.loss
    assert loaded.rows[0].outputs == report.rows[0].outputs
    assert json.loads(saved.read_text())["delta_exact_match_points"] == round(
        report.delta_points, 2
    )


def test_base_side_is_the_model_without_its_adapter(lora_run, comparison, tiny_models):
    import torch
    from transformers import AutoModelForCausalLM

    settings = GenerationSettings(max_new_tokens=8)
    tuned_before = comparison.generate([PROMPT], "tuned", settings)
    base = comparison.generate([PROMPT], "base", settings)
    assert comparison.generate([PROMPT], "tuned", settings) == tuned_before  # adapter back on
    assert base != tuned_before

    plain = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]), dtype=torch.float32)
    tok = comparison.tokenizer
    ids = tok(comparison.prompt_text(PROMPT), return_tensors="pt", add_special_tokens=False)
    out = plain.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    expected = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert base[0][0] == expected.strip()


def test_streamed_answers_match_batch_generation_on_both_sides(comparison):
    settings = GenerationSettings(max_new_tokens=10)
    streamed = {"base": "", "tuned": ""}
    order = []
    for side, piece in comparison.stream({"base": PROMPT, "tuned": PROMPT}, settings):
        streamed[side] += piece
        order.append(side)
    for side in ("base", "tuned"):
        assert streamed[side].strip() == comparison.generate([PROMPT], side, settings)[0][0]
    assert order[:2] == ["base", "tuned"], "the two sides are interleaved token by token"


def test_sampling_is_seeded_and_generation_stops_at_a_stop_token(comparison):
    hot = GenerationSettings(max_new_tokens=6, temperature=1.5, top_p=0.9, seed=3)
    first = [p for _, p in comparison.stream({"tuned": PROMPT}, hot)]
    again = [p for _, p in comparison.stream({"tuned": PROMPT}, hot)]
    assert first == again

    greedy = GenerationSettings(max_new_tokens=6)
    ((answer, stopped),) = comparison.generate([PROMPT], "tuned", greedy)
    assert not stopped and answer
    first_token = comparison.tokenizer(answer, add_special_tokens=False)["input_ids"][0]
    saved = comparison.stop_ids
    comparison.stop_ids = [*saved, first_token]  # the answer's first token now ends it
    try:
        assert comparison.generate([PROMPT], "tuned", greedy) == [("", True)]
        assert [p for _, p in comparison.stream({"tuned": PROMPT}, greedy)] == []
    finally:
        comparison.stop_ids = saved


def test_the_adapter_records_its_template_and_stop_tokens(lora_run):
    run_dir, _ = lora_run
    summary = json.loads((run_dir / "adapter" / "training_summary.json").read_text())
    assert summary["eos_token"] == "</s>" and summary["stop_tokens"] == ["</s>"]
    card = (run_dir / "adapter" / "README.md").read_text()
    assert "| Stop tokens | `</s>` |" in card
    assert "## Chat template (plain)" in card and "Assistant: " in card


def test_eval_needs_rows_with_answers_and_a_held_out_file(lora_run, tmp_path):
    run_dir, _ = lora_run
    text_file = tmp_path / "notes.txt"
    text_file.write_text("just some text\nmore text\n")
    with pytest.raises(DatasetError, match="no answer to compare with"):
        evaluate_run(run_dir, data=str(text_file), device="cpu")
    with pytest.raises(EvaluationError, match="--data"):
        evaluate_run(run_dir, device="cpu")  # the test config has no data.eval_path
    with pytest.raises(EvaluationError, match="not a run folder"):
        evaluate_run(tmp_path, data=str(text_file))


def test_eval_command_prints_json_and_a_table(lora_run, capsys):
    run_dir, data = lora_run
    code = main(["eval", str(run_dir), "--data", str(data), "--limit", "4", "--json"])
    assert code == 0
    report = EvalReport.from_dict(json.loads(capsys.readouterr().out))
    assert len(report.rows) == 4 and report.scores["tuned"].loss < report.scores["base"].loss

    code = main(["eval", str(run_dir), "--data", str(data), "--limit", "3", "--rows", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "exact match %" in out and "perplexity" in out and "1 more rows" in out

    assert main(["eval", str(run_dir / "nope")]) == 1
    assert "not a run folder" in capsys.readouterr().err


def test_chat_command_answers_with_both_models(lora_run):
    run_dir, _ = lora_run
    args = [sys.executable, "-m", "qlora_studio", "chat", str(run_dir), "--device", "cpu"]
    one = subprocess.run(
        [*args, "--base", "--prompt", "Convert to ISO date: 1 May 2020", "--max-new-tokens", "6"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    lines = one.stdout.splitlines()
    assert lines[0].startswith("base> ") and lines[1].startswith("tuned> ")

    # interactive: two messages, /reset, then end of input
    talk = subprocess.run(
        [*args, "--max-new-tokens", "4"],
        input="hello\n/reset\nConvert to ISO date: 2 May 2020\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert talk.returncode == 0, talk.stderr[-2000:]
    assert talk.stdout.count("tuned> ") == 2 and "/reset starts over" in talk.stderr
