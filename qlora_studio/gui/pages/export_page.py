"""Export: the trained adapter folder, optionally a merged 16-bit model, and "Open folder".
The export runs as the CLI in a child process, so the window never loads a model."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import (
    QCheckBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
)

from qlora_studio.gui.pages.base import Page, error_html

STOP_GRACE_S = 5.0  # an export has no step to stop after: killed soon after a stop


class ExportPage(Page):
    title = "Export"

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        self.exported: Path | None = None
        form = QFormLayout()
        run_row = QHBoxLayout()
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("the run folder (filled in when a run finishes)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_run)
        run_row.addWidget(self.run_edit, 1)
        run_row.addWidget(browse)
        form.addRow("Run folder", run_row)
        self.merge_box = QCheckBox("Also merge the adapter into the base (16-bit, on the CPU)")
        self.merge_box.setToolTip(
            "A standalone model for tools that do not load adapters; "
            "needs about 2 bytes per parameter of RAM"
        )
        form.addRow("", self.merge_box)
        self.out_edit = QLineEdit()
        self.out_edit.setPlaceholderText("default: <run folder>/exports/adapter (or merged)")
        form.addRow("Destination", self.out_edit)
        self.layout_.addLayout(form)
        buttons = QHBoxLayout()
        self.export_button = QPushButton("Export")
        self.open_button = QPushButton("Open folder")
        self.open_button.setEnabled(False)
        self.export_button.clicked.connect(self.export)
        self.open_button.clicked.connect(self.open_folder)
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.open_button)
        buttons.addStretch(1)
        self.layout_.addLayout(buttons)
        self.bar = QProgressBar()
        self.bar.setRange(0, 0)
        self.bar.hide()
        self.layout_.addWidget(self.bar)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.layout_.addWidget(self.message)
        self.command = QLabel("")  # the command that runs, as a user would type it
        self.command.setWordWrap(True)
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.layout_.addWidget(self.command)
        self.layout_.addStretch(1)
        state.run_chosen.connect(self._on_run_chosen)
        state.run_finished.connect(self._on_run_finished)

    def on_shown(self) -> None:
        if not self.run_edit.text() and self.state.last_run_dir is not None:
            self.run_edit.setText(str(self.state.last_run_dir))

    def _on_run_chosen(self, run_dir) -> None:
        self.run_edit.setText(str(run_dir))

    def _on_run_finished(self, run_dir) -> None:
        if not self.run_edit.text():
            self.run_edit.setText(str(run_dir))

    def is_complete(self) -> bool:
        return self.exported is not None

    def _browse_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.run_edit.text())
        if folder:
            self.run_edit.setText(folder)

    def export(self) -> None:
        """Export in a child process (``qlora-studio export RUN [--merge] --out DEST``): a
        merge loads the 16-bit base model, which must never happen in the window's process."""
        from qlora_studio.gui.jobs import ChildJob

        run_dir = self.run_edit.text().strip()
        if not run_dir:
            self.message.setText("Choose a run folder first.")
            return
        args = ["export", run_dir, "--events", "jsonl"]
        out = self.out_edit.text().strip()
        if out:
            args += ["--out", out]
        if self.merge:
            args.append("--merge")
        job = ChildJob(args, grace_s=STOP_GRACE_S)
        job.status.connect(self.message.setText)
        job.succeeded.connect(self._on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self.export_button.setEnabled(False)
        self.bar.show()
        self.command.setText(f"<code>{html.escape(job.display_command())}</code>")
        self.run_job(job)

    @property
    def merge(self) -> bool:
        return self.merge_box.isChecked()

    def _on_done(self, event: dict) -> None:
        self.exported = Path(event["export_dir"])
        self.message.setText(f"Exported to <b>{html.escape(str(self.exported))}</b>")
        self.open_button.setEnabled(True)
        self.changed.emit()

    def _on_failed(self, message: str, hint: str) -> None:
        self.message.setText(error_html(message, hint))

    def _on_cancelled(self, _event: dict) -> None:
        self.message.setText("Export stopped; nothing was written.")

    def _on_finished(self) -> None:
        self.bar.hide()
        self.export_button.setEnabled(True)

    def open_folder(self) -> None:
        if self.exported:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.exported)))
