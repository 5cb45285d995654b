"""`qlora-studio export --format gguf-lora|gguf` as a user runs it: real subprocesses on a tiny
llama run, read back with gguf's reader (no mocks)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from test_cli import CLI, events_of, run_cli
from test_training import make_config

gguf = pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def llama_run(tiny_models, tmp_path_factory) -> Path:
    from qlora_studio.core.training.run import run_training

    cfg = make_config(tiny_models["llama"], tmp_path_factory.mktemp("export_cli"), "lora")
    return run_training(cfg).run_dir


def _card_lists_sizes(folder: Path) -> str:
    card = (folder / "README.md").read_text(encoding="utf-8")
    for path in folder.glob("*.gguf"):
        assert f"`{path.name}` |" in card and f"{path.stat().st_size:,} bytes" in card
    return card


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_gguf_lora_export_ends_with_its_folder_and_the_commands_that_run_it(
    llama_run, tiny_models, tmp_path
):
    out = tmp_path / "lora-gguf"
    result = run_cli(
        "export", llama_run, "--format", "gguf-lora", "--out", out, "--events", "jsonl"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    events = events_of(result.stdout)
    done = events[-1]
    assert done["type"] == "done" and done["export_dir"] == str(out)
    progress = [e for e in events if e["type"] == "progress"]
    assert progress and progress[-1]["step"] == progress[-1]["total"] == 2 * 7 * 2  # a/b x 14

    reader = gguf.GGUFReader(out / "adapter-lora.gguf")
    assert reader.fields["general.type"].contents() == "adapter"
    assert len(reader.tensors) == 28
    name = f"{llama_run.name}-lora"
    base = tiny_models["llama"].resolve()
    assert done["commands"] == [
        f"python convert_hf_to_gguf.py {base} --outfile base-f16.gguf",  # a Hugging Face base
        f"llama-cli -m base-f16.gguf --lora {out.resolve() / 'adapter-lora.gguf'} -cnv",
        f"ollama create {name} -f {out.resolve() / 'Modelfile'}",
        f"ollama run {name}",
    ]
    card = _card_lists_sizes(out)
    assert "llama-cli -m base-f16.gguf --lora adapter-lora.gguf -cnv" in card  # from the folder
    assert f"ollama create {name} -f Modelfile" in card and f"ollama run {name}" in card
    assert _hidden(tmp_path) == []


def test_merged_q8_0_in_text_mode_prints_the_folder_then_the_commands(llama_run, tmp_path):
    out = tmp_path / "q8"
    result = run_cli("export", llama_run, "--format", "gguf", "--quant", "Q8_0", "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == str(out)
    assert f"  llama-cli -m {out.resolve() / 'model-q8_0.gguf'} -cnv" in lines
    assert f"  ollama run {llama_run.name}-q8_0" in lines

    reader = gguf.GGUFReader(out / "model-q8_0.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_q.weight"] == "Q8_0" and types["blk.0.attn_norm.weight"] == "F32"
    card = _card_lists_sizes(out)
    assert "llama-cli -m model-q8_0.gguf -cnv" in card and "ollama create" in card
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "model-q8_0.gguf"]


def test_quant_needs_the_gguf_format_and_k_quants_point_at_llama_quantize(llama_run, tmp_path):
    for extra in ([], ["--format", "gguf-lora"], ["--merge"]):
        result = run_cli("export", llama_run, *extra, "--quant", "q8_0", "--out", tmp_path / "x")
        assert result.returncode == 1
        assert "--quant is for --format gguf only" in result.stderr, result.stderr
    clash = run_cli("export", llama_run, "--merge", "--format", "gguf", "--out", tmp_path / "x")
    assert clash.returncode == 1 and "--merge is the same as --format merged" in clash.stderr
    k_quant = run_cli("export", llama_run, "--format", "gguf", "--quant", "q4_k_m")
    assert k_quant.returncode == 1 and "llama-quantize" in k_quant.stderr
    assert not (tmp_path / "x").exists() and not (llama_run / "exports" / "gguf-q4_k_m").exists()


def test_a_stop_line_cancels_a_gguf_export_and_leaves_no_folder(llama_run, tmp_path):
    out = tmp_path / "stopped"
    proc = subprocess.Popen(
        [*CLI, "export", str(llama_run), "--format", "gguf", "--out", str(out)]
        + ["--events", "jsonl"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # read before the merge ends: the export stops at its next check, the base loaded or not
    stdout, stderr = proc.communicate("stop\n", timeout=300)
    assert proc.returncode == 130, stderr[-2000:]
    assert [e["type"] for e in events_of(stdout)][-2:] == ["cancelled", "status"]
    assert not out.exists() and _hidden(tmp_path) == []
