"""The layering agreements: the core runs with Qt absent; config and the CLI start without torch."""

import subprocess
import sys

import pytest

CORE_MODULES = [
    "qlora_studio.config",
    "qlora_studio.core.data.analyse",
    "qlora_studio.core.data.files",
    "qlora_studio.core.data.prepare",
    "qlora_studio.core.data.rows",
    "qlora_studio.core.data.templates",
    "qlora_studio.core.errors",
    "qlora_studio.core.evaluation.comparison",
    "qlora_studio.core.evaluation.evaluate",
    "qlora_studio.core.events",
    "qlora_studio.core.export",
    "qlora_studio.core.fit",
    "qlora_studio.core.gpu",
    "qlora_studio.core.history.recorder",
    "qlora_studio.core.history.store",
    "qlora_studio.core.lazy_imports",
    "qlora_studio.core.memory",
    "qlora_studio.core.models.files",
    "qlora_studio.core.models.hub",
    "qlora_studio.core.models.inspect",
    "qlora_studio.core.models.loading",
    "qlora_studio.core.models.sources",
    "qlora_studio.core.run_folder",
    "qlora_studio.core.training.callbacks",
    "qlora_studio.core.training.lean_loss",
    "qlora_studio.core.training.optimizer_in_backward",
    "qlora_studio.core.training.out_of_memory",
    "qlora_studio.core.training.probe",
    "qlora_studio.core.training.recipe",
    "qlora_studio.core.training.run",
]


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
