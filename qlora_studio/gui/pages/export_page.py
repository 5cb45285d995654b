"""Export: the trained adapter, a merged 16-bit model, or GGUF for llama.cpp and Ollama (the
adapter on its own, or the merged model in the type chosen), then "Open folder" and the
commands that run it. The export runs as the CLI in a child process, so the window never loads
a model."""

from __future__ import annotations

import html
from pathlib import Path

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QFontDatabase, QGuiApplication
from PySide6.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
)

from qlora_studio.config import (
    EXPORT_FORMAT_LABELS,
    EXPORT_FORMAT_SUMMARIES,
    EXPORT_FORMATS,
    GGUF_TYPE_LABELS,
    GGUF_TYPES,
)
from qlora_studio.gui.pages.base import Page, error_html

STOP_GRACE_S = 5.0  # a copy or a merge has no step to stop after: killed soon after a stop
GGUF_STOP_GRACE_S = 30.0  # a GGUF export stops between tensors and removes what it wrote
K_QUANT_NOTE = (
    "K-quants (Q4_K_M, Q5_K_M…) come from llama.cpp's <code>llama-quantize</code> run on the "
    "F16 file."
)


class ExportPage(Page):
    title = "Export"

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        self.exported: Path | None = None
        form = QFormLayout()
        form.addRow("Run folder", self._run_row())
        form.addRow("Format", self._format_choice())
        self.gguf_type = QComboBox()
        for quant in GGUF_TYPES:
            self.gguf_type.addItem(GGUF_TYPE_LABELS[quant], quant)
        self.gguf_type.setToolTip("The type of the merged GGUF's weights (norms stay F32)")
        self.gguf_type.currentIndexChanged.connect(self._update_destination_hint)
        form.addRow("GGUF type", self.gguf_type)
        self.k_quant_note = QLabel(K_QUANT_NOTE)
        self.k_quant_note.setWordWrap(True)
        form.addRow("", self.k_quant_note)
        self.out_edit = QLineEdit()
        form.addRow("Destination", self.out_edit)
        self.layout_.addLayout(form)
        self.layout_.addLayout(self._buttons())
        self.bar = QProgressBar()
        self.bar.hide()
        self.layout_.addWidget(self.bar)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        self.layout_.addWidget(self.message)
        self.command = QLabel("")  # the command that runs, as a user would type it
        self.command.setWordWrap(True)
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.layout_.addWidget(self.command)
        self.layout_.addLayout(self._run_commands_box())
        self.layout_.addStretch(1)
        self.choose_format("adapter")
        state.run_chosen.connect(self._on_run_chosen)
        state.run_finished.connect(self._on_run_finished)

    # ---- building -----------------------------------------------------------------------
    def _run_row(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("the run folder (filled in when a run finishes)")
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_run)
        row.addWidget(self.run_edit, 1)
        row.addWidget(browse)
        return row

    def _format_choice(self) -> QVBoxLayout:
        """One radio button per export format, labelled and explained from the config."""
        column = QVBoxLayout()
        self.format_group = QButtonGroup(self)
        self.format_buttons: dict[str, QRadioButton] = {}
        for export_format in EXPORT_FORMATS:
            button = QRadioButton(EXPORT_FORMAT_LABELS[export_format])
            button.setToolTip(EXPORT_FORMAT_SUMMARIES[export_format])
            self.format_group.addButton(button)
            self.format_buttons[export_format] = button
            column.addWidget(button)
        self.format_group.buttonToggled.connect(self._on_format_toggled)
        return column

    def _buttons(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.export_button = QPushButton("Export")
        self.stop_button = QPushButton("■ Stop")
        self.stop_button.setToolTip("Stop the export; nothing half-written is kept")
        self.stop_button.setEnabled(False)
        self.open_button = QPushButton("Open folder")
        self.open_button.setEnabled(False)
        self.export_button.clicked.connect(self.export)
        self.stop_button.clicked.connect(self.stop)
        self.open_button.clicked.connect(self.open_folder)
        for button in (self.export_button, self.stop_button, self.open_button):
            row.addWidget(button)
        row.addStretch(1)
        return row

    def _run_commands_box(self) -> QVBoxLayout:
        """Where a GGUF export's llama.cpp and Ollama commands appear, with a copy button."""
        column = QVBoxLayout()
        header = QHBoxLayout()
        self.run_commands_label = QLabel("<b>Run it</b> (also in the folder's README.md)")
        self.copy_button = QPushButton("Copy")
        self.copy_button.setToolTip("Copy the commands to the clipboard")
        self.copy_button.clicked.connect(self.copy_run_commands)
        header.addWidget(self.run_commands_label)
        header.addStretch(1)
        header.addWidget(self.copy_button)
        self.run_commands = QPlainTextEdit()
        self.run_commands.setReadOnly(True)
        self.run_commands.setFont(QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont))
        self.run_commands.setMaximumHeight(110)
        column.addLayout(header)
        column.addWidget(self.run_commands)
        self._show_run_commands([])
        return column

    # ---- the choices --------------------------------------------------------------------
    @property
    def export_format(self) -> str:
        """The format chosen: one of ``EXPORT_FORMATS``."""
        for export_format, button in self.format_buttons.items():
            if button.isChecked():
                return export_format
        return EXPORT_FORMATS[0]

    def choose_format(self, export_format: str) -> None:
        self.format_buttons[export_format].setChecked(True)

    @property
    def quant(self) -> str:
        """The merged GGUF's type: one of ``GGUF_TYPES``."""
        return str(self.gguf_type.currentData())

    def _on_format_toggled(self, _button, checked: bool) -> None:
        if checked:
            self.gguf_type.setEnabled(self.export_format == "gguf")
            self.k_quant_note.setEnabled(self.export_format == "gguf")
            self._update_destination_hint()

    def _update_destination_hint(self) -> None:
        folder = {"adapter": "adapter (or model)", "gguf": f"gguf-{self.quant}"}
        name = folder.get(self.export_format, self.export_format)
        self.out_edit.setPlaceholderText(f"default: <run folder>/exports/{name}")

    def export_args(self) -> list[str]:
        """The CLI arguments after ``qlora-studio`` for the export chosen."""
        args = ["export", self.run_edit.text().strip(), "--format", self.export_format]
        if self.export_format == "gguf":
            args += ["--quant", self.quant]
        out = self.out_edit.text().strip()
        if out:
            args += ["--out", out]
        return [*args, "--events", "jsonl"]

    # ---- the run folder -----------------------------------------------------------------
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

    # ---- the job ------------------------------------------------------------------------
    def export(self) -> None:
        """Export in a child process (``qlora-studio export RUN --format F ... --events
        jsonl``): a merge loads the 16-bit base model, which must never happen in the window's
        process."""
        from qlora_studio.gui.jobs import ChildJob

        if not self.run_edit.text().strip():
            self.message.setText("Choose a run folder first.")
            return
        grace = GGUF_STOP_GRACE_S if self.export_format.startswith("gguf") else STOP_GRACE_S
        job = ChildJob(self.export_args(), grace_s=grace)
        job.status.connect(self.message.setText)
        job.progress.connect(self._on_progress)
        job.succeeded.connect(self._on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self.export_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self._show_run_commands([])
        self.bar.setRange(0, 0)  # busy until the first tensor is written (a merge comes first)
        self.bar.setFormat("")
        self.bar.show()
        self.message.setText("")
        self.command.setText(f"<code>{html.escape(job.display_command())}</code>")
        self.run_job(job)

    def stop(self) -> None:
        job = self.job()
        if job is not None:
            job.request_stop()
            self.stop_button.setEnabled(False)
            self.message.setText("Stopping…")

    def _on_progress(self, event: dict) -> None:
        self.bar.setRange(0, max(int(event["total"]), 1))
        self.bar.setValue(int(event["step"]))
        self.bar.setFormat("%v of %m tensors")

    def _on_done(self, event: dict) -> None:
        self.exported = Path(event["export_dir"])
        self.message.setText(f"Exported to <b>{html.escape(str(self.exported))}</b>")
        self._show_run_commands(list(event.get("commands") or []))
        self.open_button.setEnabled(True)
        self.changed.emit()

    def _on_failed(self, message: str, hint: str) -> None:
        self.message.setText(error_html(message, hint))

    def _on_cancelled(self, _event: dict) -> None:
        self.message.setText("Export stopped; nothing was written.")

    def _on_finished(self) -> None:
        self.bar.hide()
        self.export_button.setEnabled(True)
        self.stop_button.setEnabled(False)

    # ---- after it -----------------------------------------------------------------------
    def _show_run_commands(self, commands: list[str]) -> None:
        self.run_commands.setPlainText("\n".join(commands))
        for widget in (self.run_commands_label, self.copy_button, self.run_commands):
            widget.setVisible(bool(commands))

    def copy_run_commands(self) -> None:
        QGuiApplication.clipboard().setText(self.run_commands.toPlainText())

    def open_folder(self) -> None:
        if self.exported:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(self.exported)))
