"""A newcomer's first run, engine side: real library warnings land in the run's debug.log (the
one that matters comes back as one plain line, none reach the console); dequantizing a GGUF
reports progress by tensor; a run the window drives leaves the window a core."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

import pytest

from qlora_studio.core.child import THREAD_VARIABLES, ChildProcess, _group_name, usable_cores
from qlora_studio.core.events import CollectingReporter
from qlora_studio.core.library_logs import DEBUG_LOG, NOTICES, LibraryLogs, route_library_logs

PAGED_LINE = NOTICES[0].line


@pytest.fixture
def fresh_warnings():
    """Every warning shown, even one this process showed before (the default filter shows a
    warning once per code location)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        yield


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.exists() else ""


def test_paged_optimizer_on_cpu_is_one_plain_line_and_the_debug_log(
    tmp_path, capfd, fresh_warnings
):
    import bitsandbytes as bnb
    import torch

    capfd.readouterr()  # bitsandbytes' import-time notes are not this test's business
    lines: list[str] = []
    debug = tmp_path / DEBUG_LOG
    with LibraryLogs(debug, lines.append):
        for _ in range(2):  # two optimizers: bitsandbytes warns for each, the user reads it once
            weight = torch.nn.Parameter(torch.ones(64))
            optimizer = bnb.optim.PagedAdamW8bit([weight], lr=1e-3)
            weight.sum().backward()
            optimizer.step()

    assert lines == [PAGED_LINE]
    log = read(debug)
    assert log.count("Paged optimizers are not supported on CPU") == 2
    assert "UserWarning bitsandbytes/optim/optimizer.py" in log
    out, err = capfd.readouterr()
    assert "Paged optimizers" not in out + err


def test_transformers_future_warnings_and_log_records_stay_out_of_the_console(
    tmp_path, capfd, fresh_warnings
):
    from transformers import TrainingArguments
    from transformers.utils import logging as hf_logging

    debug = tmp_path / DEBUG_LOG
    hf_logger = hf_logging.get_logger("transformers.trainer")
    with LibraryLogs(debug):
        # the deprecated argument name: a real FutureWarning from transformers itself
        TrainingArguments(output_dir=str(tmp_path / "out"), gradient_checkpointing=True)
        hf_logger.warning("a note transformers prints to stderr")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s", "no kernels"
        )
        hf_logger.error("a real failure")

    log = read(debug)
    assert "FutureWarning transformers/training_args.py" in log
    assert "`gradient_checkpointing` is deprecated" in log
    assert "WARNING transformers.trainer: a note transformers prints to stderr" in log
    assert "gemm_4bit_forward from kernels-community: no kernels" in log
    out, err = capfd.readouterr()
    assert "deprecated" not in err and "a note" not in err and "gemm_4bit" not in err
    assert "transformers.trainer: a real failure" in err  # errors stay visible
    assert out == ""

    # closed: transformers' own console handler is back (which stream it prints to depends
    # on when transformers was first imported, so its handler is checked, not the stream)
    root = logging.getLogger("transformers")
    assert any(isinstance(h, logging.StreamHandler) for h in root.handlers)
    assert not any(type(h).__name__ == "_ToLibraryLogs" for h in root.handlers)
    hf_logger.warning("after the run")
    assert "after the run" not in read(debug)


def test_a_second_route_replaces_the_first_and_close_restores(tmp_path, fresh_warnings):
    shown_before = warnings.showwarning
    first = route_library_logs(tmp_path / "first.log")
    second = route_library_logs(tmp_path / "second.log")
    try:
        warnings.warn("which file?", UserWarning, stacklevel=1)
    finally:
        second.close()
    assert "which file?" in read(tmp_path / "second.log")
    assert not (tmp_path / "first.log").exists()
    assert warnings.showwarning is shown_before
    assert logging.getLogger("bitsandbytes").propagate
    first.close()  # already closed by the second: harmless


def test_a_reporter_that_fails_does_not_break_the_library_call(tmp_path, fresh_warnings):
    def closed(line: str) -> None:
        raise ValueError("I/O operation on closed file")

    with LibraryLogs(tmp_path / DEBUG_LOG, closed):
        warnings.warn("Paged optimizers are not supported on CPU.", UserWarning, stacklevel=1)
    assert "could not report" in read(tmp_path / DEBUG_LOG)


def test_a_qlora_run_uses_current_names_and_shows_one_plain_line(tmp_path, capfd, fresh_warnings):
    """A real QLoRA run on a tiny model, checkpointing on, paged 8-bit Adam on the CPU."""
    from tiny_models import build_tiny_model

    from qlora_studio.config import RunConfig
    from qlora_studio.core.training.run import run_training

    cfg = RunConfig()
    cfg.method = "qlora"
    cfg.model.source = str(build_tiny_model("llama", tmp_path / "tiny-llama"))
    data = tmp_path / "data.jsonl"
    row = '{"messages": [{"role": "user", "content": "3 March 2021"}, '
    row += '{"role": "assistant", "content": "2021-03-03"}]}\n'
    data.write_text(row * 8)
    cfg.data.path = str(data)
    cfg.data.validation_split = 0.0
    cfg.lora.r = 4
    cfg.train.max_steps = 1
    cfg.train.batch_size = 2
    cfg.train.optimizer = "paged_adamw_8bit"
    cfg.train.gradient_checkpointing = True
    cfg.train.device = "cpu"
    cfg.train.save_steps = 100
    cfg.output.dir = str(tmp_path / "runs")
    reporter = CollectingReporter()
    capfd.readouterr()
    result = run_training(cfg.validate(), reporter=reporter)

    assert result.status == "done"
    statuses = [e["message"] for e in reporter.of_type("status")]
    assert statuses.count(PAGED_LINE) == 1
    log = read(result.run_dir / DEBUG_LOG)
    assert "Paged optimizers are not supported on CPU" in log
    # our own calls use the current names: no deprecation raised from recipe.py's calls
    assert "`gradient_checkpointing_enable` is deprecated" not in log
    assert "`gradient_checkpointing` is deprecated" not in log
    assert "`gradient_checkpointing_kwargs` is deprecated" not in log
    _, err = capfd.readouterr()
    assert "Warning" not in err and "Paged optimizers" not in err


# ---- dequantizing a GGUF: progress by tensor --------------------------------------------
def test_dequantizing_a_gguf_reports_progress_by_tensor(tmp_path, monkeypatch):
    from test_models import write_tiny_llama_gguf
    from tiny_models import build_tiny_model

    from qlora_studio.core.models import sources
    from qlora_studio.core.models.loading import tensor_progress

    monkeypatch.setenv("QLORA_STUDIO_CACHE", str(tmp_path / "cache"))
    gguf_file = write_tiny_llama_gguf(
        build_tiny_model("llama", tmp_path / "tiny-llama"), tmp_path / "tiny.Q8_0.gguf"
    )

    # every tensor, counted one by one, while transformers dequantizes them
    from transformers import AutoModelForCausalLM, GgufConfig

    every = CollectingReporter()
    with tensor_progress(every, every_s=0.0):
        AutoModelForCausalLM.from_pretrained(
            str(tmp_path), gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True)
        )
    steps = [e["step"] for e in every.of_type("progress")]
    total = every.of_type("progress")[0]["total"]
    assert total > 10 and steps == list(range(total + 1))
    assert all(e["eta_s"] is not None for e in every.of_type("progress")[1:])

    # the conversion the demo goes through on first use: throttled, from 0 to all
    reporter = CollectingReporter()
    sources.convert_gguf(gguf_file, reporter=reporter)
    progress = reporter.of_type("progress")
    counts = [e["step"] for e in progress]
    assert counts[0] == 0 and counts[-1] == progress[-1]["total"] == total
    assert counts == sorted(counts)
    messages = [e.get("type") + ":" + e.get("message", "") for e in reporter.events]
    dequantizing = next(i for i, m in enumerate(messages) if "Dequantizing" in m)
    assert dequantizing < messages.index("progress:")  # the bar follows the announcement

    # after the block, transformers' loops report to nobody
    seen = len(every.events)
    AutoModelForCausalLM.from_pretrained(
        str(tmp_path), gguf_file=gguf_file.name, quantization_config=GgufConfig(dequantize=True)
    )
    assert len(every.events) == seen


# ---- a run the window drives: lower priority, one core left --------------------------------
REPORT_PRIORITY = """
import json, os, time
autogroup = f"/proc/{os.getpid()}/autogroup"
print(json.dumps({
    "type": "done", "time": time.time(), "step": 0, "run_dir": "", "adapter_dir": "",
    "nice": os.nice(0), "threads": {k: os.environ.get(k) for k in NAMES},
    "autogroup": open(autogroup).read() if os.path.exists(autogroup) else "",
    "own_group": os.getpgrp() == os.getpid(),
}))
""".replace("NAMES", repr(THREAD_VARIABLES))


class PriorityReportingChild(ChildProcess):
    """The real child machinery (environment, start, priority, reading), running a program
    that reports its own priority and thread settings instead of the CLI (torch sizes its
    pool from OMP_NUM_THREADS, and MKL_NUM_THREADS when set)."""

    def command(self) -> list[str]:
        return [sys.executable, "-c", REPORT_PRIORITY]


@pytest.mark.skipif(os.name != "posix", reason="nice values are Linux's and macOS's")
def test_a_background_child_runs_lower_on_one_core_fewer(monkeypatch):
    for name in THREAD_VARIABLES:  # the user's own setting would win
        monkeypatch.delenv(name, raising=False)
    ours = os.nice(0)
    background = PriorityReportingChild(["train"], background=True).run()
    assert background["type"] == "done", background
    assert background["nice"] == min(19, ours + 10)
    assert set(background["threads"].values()) == {str(max(1, usable_cores() - 1))}
    assert background["own_group"]  # a kill reaches its dataloader workers too
    if background["autogroup"]:  # Linux weighs sessions (autogroups) against each other
        if sys.version_info >= (3, 11):  # in the window's session, whose weight is untouched
            assert background["autogroup"] == Path("/proc/self/autogroup").read_text()
        else:  # in a session of its own, lowered with it
            assert background["autogroup"].split()[-1] == "10"

    foreground = PriorityReportingChild(["eval"]).run()
    assert foreground["nice"] == ours
    assert set(foreground["threads"].values()) == {None}

    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the user's own choice wins
    chosen = PriorityReportingChild(["train"], background=True).run()["threads"]
    assert chosen == {name: "7" if name == "OMP_NUM_THREADS" else None for name in chosen}


def test_an_empty_or_missing_autogroup_file_reads_as_no_group(tmp_path):
    # the CI machine's kernel has /proc/PID/autogroup but it reads empty: a run must still start
    empty = tmp_path / "autogroup"
    empty.write_text("")
    assert _group_name(empty) == ""
    assert _group_name(tmp_path / "missing") == ""
    empty.write_text("/autogroup-210 nice 0\n")
    assert _group_name(empty) == "/autogroup-210"
