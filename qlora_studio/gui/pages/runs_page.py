"""Runs: the run folders under the output folder with their status, step and loss."""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtWidgets import QHBoxLayout, QPushButton, QTableWidget, QTableWidgetItem

from qlora_studio.gui.pages.base import Page

COLUMNS = ("run", "method", "status", "step", "final loss", "folder")


def find_runs(root: Path) -> list[dict]:
    """Every run folder under ``root`` (newest first) with what its run.json says."""
    runs = []
    if not root.is_dir():
        return runs
    for folder in root.iterdir():
        if not (folder / "config.yaml").exists():
            continue
        try:
            summary = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError):
            summary = {"status": "running or crashed"}
        runs.append({"run": folder.name, "folder": str(folder), **summary,
                     "mtime": folder.stat().st_mtime})
    return sorted(runs, key=lambda r: r["mtime"], reverse=True)


class RunsPage(Page):
    title = "Runs"

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.layout_.addWidget(self.table, 1)
        row = QHBoxLayout()
        refresh = QPushButton("Refresh")
        refresh.clicked.connect(self.on_shown)
        row.addWidget(refresh)
        row.addStretch(1)
        self.layout_.addLayout(row)

    def is_complete(self) -> bool:
        return self.table.rowCount() > 0

    def on_shown(self) -> None:
        runs = find_runs(Path(self.state.cfg.output.dir).expanduser())
        self.table.setRowCount(len(runs))
        for i, run in enumerate(runs):
            loss = run.get("final_loss")
            values = (run["run"], run.get("method", ""), run.get("status", ""),
                      str(run.get("step", "")), f"{loss:.4f}" if isinstance(loss, float) else "",
                      run["folder"])
            for j, value in enumerate(values):
                self.table.setItem(i, j, QTableWidgetItem(str(value)))
        self.table.resizeColumnsToContents()
