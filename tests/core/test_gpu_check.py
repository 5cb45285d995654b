"""benchmarks/gpu_check.py, the check kept for a day with a GPU: its help, and a clean exit with
a clear message where there is no CUDA GPU (forced here, so the test means the same on any
machine)."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(repo_root, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # torch then sees no GPU
    script = str(repo_root / "benchmarks" / "gpu_check.py")
    return subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_help_names_the_options(repo_root):
    result = _run(repo_root, "--help")
    assert result.returncode == 0, result.stderr
    assert "--smoke" in result.stdout and "--budget-s" in result.stdout


def test_without_cuda_it_says_so_and_exits_cleanly(repo_root):
    result = _run(repo_root)
    assert result.returncode == 0, result.stderr
    assert "no CUDA GPU here" in result.stdout and "nothing was measured" in result.stdout
    assert "Traceback" not in result.stderr
