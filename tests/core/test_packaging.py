"""The installer inputs: PyInstaller spec, entry script, desktop entry and icon (no build here)."""

from __future__ import annotations

import ast
import configparser
import importlib.util
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
ICONS = REPO / "resources" / "icons"


def _load_launcher():
    spec = importlib.util.spec_from_file_location("qlora_launcher", PACKAGING / "launcher.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _string_constants(tree: ast.AST) -> set[str]:
    return {
        n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
    }


def test_spec_is_python_naming_entry_script_and_resources():
    tree = ast.parse((PACKAGING / "qlora_studio.spec").read_text(encoding="utf-8"))
    strings = _string_constants(tree)
    assert {"packaging", "launcher.py"} <= strings  # ROOT / "packaging" / "launcher.py"
    assert "resources" in strings and "qlora-studio" in strings
    assert "transformers" in strings and "pyz+py" in strings  # lazy modules need their source
    called = {
        n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and hasattr(n.func, "id")
    }
    assert {"Analysis", "PYZ", "EXE", "COLLECT"} <= called
    assert (PACKAGING / "launcher.py").is_file()
    assert (REPO / "resources" / "gpus.json").is_file()


def test_launcher_drops_a_leading_dash_m_like_python_would():
    launcher = _load_launcher()
    assert launcher._cli_args(["app", "-m", "qlora_studio", "probe", "x.yaml"]) == [
        "probe",
        "x.yaml",
    ]
    assert launcher._cli_args(["app", "train", "c.yaml"]) == ["train", "c.yaml"]
    assert launcher._cli_args(["app"]) == []


def test_launcher_runs_the_cli():
    result = subprocess.run(
        [sys.executable, str(PACKAGING / "launcher.py"), "-m", "qlora_studio", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "inspect-data" in result.stdout and "train" in result.stdout


def test_desktop_entry_has_the_required_keys_and_its_icon_exists():
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read(PACKAGING / "qlora-studio.desktop", encoding="utf-8")
    entry = parser["Desktop Entry"]
    for key in ("Type", "Name", "Exec", "Icon", "Categories", "Terminal"):
        assert entry.get(key), key
    assert entry["Type"] == "Application"
    assert entry["Exec"].split()[0] == "qlora-studio"
    assert entry["Categories"].endswith(";")
    assert (ICONS / f"{entry['Icon']}.png").is_file()
    assert (ICONS / f"{entry['Icon']}.svg").is_file()


def test_icon_png_is_256_square_and_svg_is_square():
    data = (ICONS / "qlora-studio.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (256, 256)
    root = ET.parse(ICONS / "qlora-studio.svg").getroot()
    assert root.tag.endswith("svg")
    _, _, view_w, view_h = root.get("viewBox").split()
    assert view_w == view_h


def test_build_outputs_are_ignored_by_git():
    ignored = (REPO / ".gitignore").read_text(encoding="utf-8").split()
    assert "build/" in ignored and "dist/" in ignored
