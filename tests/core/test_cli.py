"""The command line as a user (or the GUI's child process) runs it: real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_training import make_config

from qlora_studio.core.events import parse_event_line

CLI = [sys.executable, "-m", "qlora_studio"]


def run_cli(*args, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout, **kwargs
    )


def events_of(stdout: str) -> list[dict]:
    return [e for e in map(parse_event_line, stdout.splitlines()) if e]


@pytest.fixture
def tiny_config(tiny_models, tmp_path) -> Path:
    cfg = make_config(tiny_models["qwen2"], tmp_path, "qlora", max_steps=6, save_steps=3)
    return cfg.save(tmp_path / "run.yaml")


def test_train_jsonl_then_export(tiny_config, tmp_path):
    result = run_cli("train", tiny_config, "--events", "jsonl", "--set", "train.max_steps=4")
    assert result.returncode == 0, result.stderr[-2000:]
    events = events_of(result.stdout)
    assert events[-1]["type"] == "done" and events[-1]["step"] == 4
    assert all(line.startswith("{") for line in result.stdout.splitlines() if line.strip()), (
        "stdout carries only events in jsonl mode"
    )
    run_dir = Path(events[-1]["run_dir"])
    out = tmp_path / "my-adapter"
    exported = run_cli("export", run_dir, "--out", out)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (out / "adapter_model.safetensors").exists()
    again = run_cli("export", run_dir, "--out", out)
    assert again.returncode == 1 and "already exists" in again.stderr


def test_text_mode_shows_step_loss_speed_eta(tiny_config):
    result = run_cli("train", tiny_config, "--set", "train.max_steps=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "step 3/3" in result.stderr and "loss" in result.stderr
    assert "tok/s" in result.stderr and "ETA" in result.stderr
    assert "done at step 3" in result.stderr


def test_stop_line_on_stdin_cancels_with_checkpoint_then_resume(tiny_config):
    proc = subprocess.Popen(
        [
            *CLI,
            "train",
            str(tiny_config),
            "--events",
            "jsonl",
            "--set",
            "train.max_steps=400",
            "--set",
            "train.save_steps=1000",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    events = []
    for line in proc.stdout:
        event = parse_event_line(line)
        if event:
            events.append(event)
            if event["type"] == "progress" and event["step"] == 2:
                proc.stdin.write("stop\n")
                proc.stdin.flush()
    assert proc.wait(timeout=120) == 130
    cancelled = [e for e in events if e["type"] == "cancelled"]
    assert cancelled and 2 <= cancelled[0]["step"] < 400
    stop_step = cancelled[0]["step"]
    checkpoint = Path(cancelled[0]["checkpoint"])
    assert checkpoint.name == f"checkpoint-{stop_step}" and checkpoint.is_dir()

    run_dir = checkpoint.parent.parent
    resumed = run_cli(
        "resume", run_dir, "--events", "jsonl", "--set", f"train.max_steps={stop_step + 2}"
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    steps = [e["step"] for e in events_of(resumed.stdout) if e["type"] == "progress"]
    assert steps == [stop_step + 1, stop_step + 2]


def test_config_error_names_the_field(tiny_config):
    result = run_cli("train", tiny_config, "--set", "train.optimizer=adam")
    assert result.returncode == 1
    assert "train.optimizer" in result.stderr and "paged_adamw_8bit" in result.stderr


def test_bad_data_exit_code_and_message(tiny_config, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,completion\nhello,world\nsecond,\n")
    result = run_cli("train", tiny_config, "--set", f"data.path={bad}", "--events", "jsonl")
    assert result.returncode == 1
    error = [e for e in events_of(result.stdout) if e["type"] == "error"][0]
    assert (
        "bad.csv, row 2" in error["message"] and "completion" in error["message"] and error["hint"]
    )
    assert not (tmp_path / "runs").exists()


def test_inspect_model_and_data(tiny_models, tmp_path):
    model = run_cli("inspect-model", tiny_models["gpt2"], "--json")
    assert model.returncode == 0, model.stderr
    info = json.loads(model.stdout)
    assert info["model_type"] == "gpt2" and "c_attn" in info["lora_targets"]
    text = run_cli("inspect-model", tiny_models["llama"])
    assert "q_proj" in text.stdout and "parameters" in text.stdout

    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"instruction": f"say {i}", "output": str(i)}) for i in range(10))
        + "\n"
    )
    plain = run_cli("inspect-data", data)
    assert plain.returncode == 0 and "alpaca" in plain.stdout and "10 rows" in plain.stdout
    full = run_cli("inspect-data", data, "--model", tiny_models["llama"], "--json")
    assert full.returncode == 0, full.stderr
    report = json.loads(full.stdout)
    assert report["stats"]["rows"] == 10 and report["preview"]["spans"]
    shares = report["batching"]["padding_share"]  # over the 9 train rows, batch 4 by default
    assert shares["padding_free"] == 0 and shares["by_length"] <= shares["off"]
    assert report["batching"]["batch_size"] == 4
    shown = run_cli("inspect-data", data, "--model", tiny_models["llama"], "--max-length", "16")
    assert "[[" in shown.stdout and "truncated" in shown.stdout
    assert "padding of the computed tokens at batch 4: off " in shown.stdout


def test_no_command_opens_the_window(tmp_path):
    env = {
        **__import__("os").environ,
        "QT_QPA_PLATFORM": "offscreen",
        "QLORA_STUDIO_EXIT_AFTER_MS": "1500",
        "XDG_CONFIG_HOME": str(tmp_path),
    }
    result = run_cli(timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
