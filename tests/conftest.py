from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny_models import ARCHITECTURES, build_tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """arch -> folder of a tiny random model with a real tokenizer (built once per session)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {arch: build_tiny_model(arch, root / arch) for arch in ARCHITECTURES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def _session_user_data(tmp_path_factory):
    """Module- and session-scoped fixtures run before the per-test isolation below: keep their
    runs out of the user's own run history too."""
    saved = os.environ.get("QLORA_STUDIO_DATA")
    os.environ["QLORA_STUDIO_DATA"] = str(tmp_path_factory.getbasetemp() / "user_data")
    yield
    if saved is None:
        os.environ.pop("QLORA_STUDIO_DATA", None)
    else:
        os.environ["QLORA_STUDIO_DATA"] = saved


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory, monkeypatch):
    """Keep the user's data dir out of tests; share one model cache so the demo converts once."""
    monkeypatch.setenv("QLORA_STUDIO_DATA", str(tmp_path_factory.getbasetemp() / "user_data"))
    if "QLORA_STUDIO_CACHE" not in os.environ:
        monkeypatch.setenv("QLORA_STUDIO_CACHE", str(Path.home() / ".cache" / "qlora-studio"))
