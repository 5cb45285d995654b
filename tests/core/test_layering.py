"""The layering agreements: the core runs with Qt absent; config and the CLI start without torch;
the import-linter contracts of pyproject.toml (layers, no cycles) hold."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CORE_MODULES = ["qlora_studio.config"] + sorted(  # every engine module, found on disk
    ".".join(path.relative_to(REPO).with_suffix("").parts)
    for path in (REPO / "qlora_studio" / "core").rglob("*.py")
    if path.name != "__init__.py"
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_imports_with_qt_hidden(module):
    code = (
        "import sys\n"
        "for name in ('PySide6', 'pyqtgraph', 'shiboken6'): sys.modules[name] = None\n"
        f"import {module}\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr


def test_cli_and_config_do_not_import_heavy_libraries():
    code = (
        "import sys\n"
        "import qlora_studio.cli, qlora_studio.config, qlora_studio.core.training.run\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'bitsandbytes', 'datasets')"
        " if m in sys.modules]\n"
        "print(heavy)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_help_is_instant_and_lists_commands():
    result = subprocess.run(
        [sys.executable, "-m", "qlora_studio", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0
    for command in ("train", "resume", "inspect-model", "inspect-data", "export", "runs"):
        assert command in result.stdout


def test_import_contracts_hold():
    """gui and cli run on core, core on config, gui never imports cli, no import cycles (the
    contracts in pyproject.toml, also checked by .ci/run)."""
    lint_imports = shutil.which("lint-imports")
    if lint_imports is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    result = subprocess.run(
        [lint_imports, "--no-logo", "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
