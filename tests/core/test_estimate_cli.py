"""`qlora-studio estimate` and the probe, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tiny_models import LLAMA3_8B_CONFIG

# Llama 3.1 8B: the 3.0 config with the 128k context
LLAMA_8B = {**LLAMA3_8B_CONFIG, "max_position_embeddings": 131072}


def estimate(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "qlora_studio", "estimate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def llama_8b_config_only(tmp_path):
    folder = tmp_path / "llama-3-8b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_8B))
    return folder


def test_8b_from_config_json_alone_orders_full_lora_qlora(llama_8b_config_only):
    result = estimate(
        llama_8b_config_only, "--gpu", "RTX 4090", "--batch-size", "4", "--seq-len", "512", "--json"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    totals = {m: e["estimate"]["total_bytes"] for m, e in report["methods"].items()}
    assert totals["full"] > totals["lora"] > totals["qlora"]
    for method, entry in report["methods"].items():
        names = [t["name"] for t in entry["estimate"]["terms"]]
        assert {
            "weights",
            "gradients",
            "optimizer states",
            "activations",
            "logits and loss",
            "CUDA context",
            "allocator slack",
        } <= set(names), method
        assert all(t["bytes"] >= 0 and t["detail"] for t in entry["estimate"]["terms"])
    assert "quantization constants" in [
        t["name"] for t in report["methods"]["qlora"]["estimate"]["terms"]
    ]
    verdicts = {m: e["verdict"]["status"] for m, e in report["methods"].items()}
    assert verdicts["full"] == "does not fit" and verdicts["qlora"] in ("fits", "tight")
    assert report["methods"]["full"]["verdict"]["advice"]


def test_readable_table_shows_terms_gpu_and_verdict(llama_8b_config_only):
    result = estimate(llama_8b_config_only, "--gpu", "24GB")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for text in (
        "Full fine-tuning",
        "LoRA",
        "QLoRA",
        "quantization constants",
        "total",
        "verdict: DOES NOT FIT",
        "24.00 GB total",
        "largest batch that fits",
    ):
        assert text in out, text


def test_without_a_gpu_it_still_estimates_and_says_so(llama_8b_config_only):
    result = estimate(llama_8b_config_only, "--method", "qlora", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "no NVIDIA GPU" in report["target"]["line"]
    assert report["methods"]["qlora"]["estimate"]["total_bytes"] > 0
    assert "verdict" not in report["methods"]["qlora"]


def test_unknown_gpu_name_is_a_clear_error(llama_8b_config_only):
    result = estimate(llama_8b_config_only, "--gpu", "Voodoo 3")
    assert result.returncode == 1 and "hint" in result.stderr


@pytest.mark.slow
def test_demo_qlora_estimate_within_25_percent_of_the_cpu_probe(repo_root):
    result = estimate(
        "demo",
        "--config",
        repo_root / "resources/configs/demo-qlora.yaml",
        "--method",
        "qlora",
        "--gpu",
        "cpu",
        "--probe",
        "--json",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    probe = json.loads(result.stdout)["probe"]
    assert probe["device"] == "cpu" and probe["steps"] == 2
    assert probe["peak_bytes"] > 1e9
    assert abs(probe["error_pct"]) <= 25, probe
