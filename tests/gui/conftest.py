"""GUI tests run headless and reuse the run configs of the core tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt loads
# `from test_training import make_config`, as tests/core/test_cli.py does
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
