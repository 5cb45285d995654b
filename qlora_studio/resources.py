"""Where the data files shipped with QLoRA Studio live (configs, demo datasets, catalogues)."""

from __future__ import annotations

import os
from pathlib import Path


def resources_dir() -> Path:
    """The ``resources/`` folder: inside the package when installed from a wheel, else the
    repository root (editable installs and checkouts)."""
    override = os.environ.get("QLORA_STUDIO_RESOURCES")
    if override:
        return Path(override)
    here = Path(__file__).resolve().parent
    for candidate in (here / "resources", here.parent / "resources"):
        if candidate.is_dir():
            return candidate
    return here.parent / "resources"


def user_cache_dir() -> Path:
    """Converted models and other rebuildable files (``$QLORA_STUDIO_CACHE`` overrides)."""
    override = os.environ.get("QLORA_STUDIO_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qlora-studio"


def user_data_dir() -> Path:
    """Run history and UI state (``$QLORA_STUDIO_DATA`` overrides)."""
    override = os.environ.get("QLORA_STUDIO_DATA")
    if override:
        return Path(override)
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "qlora-studio"
