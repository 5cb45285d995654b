"""Start the desktop app: `qlora-studio` or `qlora-studio gui --config RUN.yaml`."""

from __future__ import annotations

import os
import sys
import time

STYLE = """
QListWidget#stepSidebar { font-size: 14px; padding: 6px; border: none;
                          background: palette(alternate-base); }
QListWidget#stepSidebar::item { padding: 8px 6px; }
QLabel.error { color: #b00020; }
"""


def run_app(config: str | None = None, argv: list[str] | None = None) -> int:
    """Open the main window (on ``config`` when given, else the last or the demo run). When
    Qt's platform plugin cannot load, print what to install and return
    :data:`~qlora_studio.gui.qt_platform.EXIT_NO_PLATFORM` instead of Qt's abort."""
    from PySide6.QtWidgets import QApplication

    if QApplication.instance() is None:
        from qlora_studio.gui.qt_platform import EXIT_NO_PLATFORM, check_platform

        platform_problem = check_platform()
        if platform_problem is not None:
            print(platform_problem.text, file=sys.stderr)
            return EXIT_NO_PLATFORM

    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QMessageBox

    from qlora_studio.config import ConfigError, RunConfig
    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.state import StudioState
    from qlora_studio.resources import resources_dir

    app = QApplication.instance() or QApplication(argv or sys.argv[:1])
    app.setApplicationName("QLoRA Studio")
    app.setOrganizationName("QLoRA Studio")
    app.setStyleSheet(STYLE)
    icon = resources_dir() / "icons" / "qlora-studio.png"
    if icon.exists():
        app.setWindowIcon(QIcon(str(icon)))
    cfg, problem = None, ""
    if config:
        try:
            cfg = RunConfig.load(config)
        except ConfigError as exc:
            problem = f"{config}: {exc}"
    window = MainWindow(StudioState(cfg))
    window.show()
    if os.environ.get("QLORA_STUDIO_PRINT_SHOWN"):  # benchmarks/ui_latency.py times the launch
        from PySide6.QtCore import QTimer

        QTimer.singleShot(0, lambda: print(f"window-shown {time.time()}", flush=True))
    exit_after = os.environ.get("QLORA_STUDIO_EXIT_AFTER_MS")  # smoke tests and benchmarks
    if exit_after:
        from PySide6.QtCore import QTimer

        QTimer.singleShot(int(exit_after), window.close)
    if problem:
        QMessageBox.warning(window, "Could not open the config", problem)
    return app.exec()
