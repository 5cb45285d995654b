"""Export: the trained adapter folder, optionally a merged 16-bit model, and "Open folder"."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QUrl
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

from qlora_studio.gui.pages.base import Page


class ExportPage(Page):
    title = "Export"

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        self.exported: Path | None = None
        self.worker = None
        self._thread = None
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
        self.layout_.addStretch(1)

    def on_shown(self) -> None:
        window = self.window()
        train = getattr(window, "page", None)
        if train and not self.run_edit.text():
            run_dir = window.page("Train").run_dir
            if run_dir:
                self.run_edit.setText(str(run_dir))

    def is_running(self) -> bool:
        return self.worker is not None

    def is_complete(self) -> bool:
        return self.exported is not None

    def _browse_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.run_edit.text())
        if folder:
            self.run_edit.setText(folder)

    def export(self) -> None:
        from qlora_studio.gui.workers import FunctionWorker, start_in_thread

        run_dir = self.run_edit.text().strip()
        if not run_dir:
            self.message.setText("Choose a run folder first.")
            return
        out = self.out_edit.text().strip() or None
        worker = FunctionWorker(_export, run_dir, out, self.merge_box.isChecked())
        worker.status.connect(self.message.setText)
        worker.succeeded.connect(self._on_done)
        worker.failed.connect(self._on_failed)
        worker.finished.connect(self._on_finished)
        self.export_button.setEnabled(False)
        self.bar.show()
        self.worker = worker
        self._thread = start_in_thread(worker, self)

    def _on_done(self, path) -> None:
        self._end_thread()
        self.exported = Path(path)
        self.message.setText(f"Exported to <b>{path}</b>")
        self.open_button.setEnabled(True)
        self.changed.emit()

    def _on_failed(self, message: str, hint: str) -> None:
        self._end_thread()
        self.message.setText(f"<span style='color:#b00020'><b>{message}</b></span><br>{hint}")

    def _end_thread(self) -> None:
        from qlora_studio.gui.workers import end_thread

        thread, self._thread = self._thread, None
        end_thread(thread)

    def _on_finished(self) -> None:
        self._end_thread()
        self.bar.hide()
        self.export_button.setEnabled(True)
        self.worker = None

    def open_folder(self) -> None:
        if self.exported:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.exported)))


def _export(reporter, cancel, run_dir: str, out: str | None, merge: bool) -> str:
    from qlora_studio.core.export import export_run

    return str(
        export_run(Path(run_dir), out=Path(out) if out else None, merge=merge, reporter=reporter)
    )
