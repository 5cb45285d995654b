"""Model: choose the base model (the demo, a local folder, a GGUF file or a hub id), inspect it
in a thread and show what it is made of: sizes, parameters by kind, LoRA targets."""

from __future__ import annotations

import html
import re
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QRadioButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.config import RunConfig, field_help
from qlora_studio.core.events import format_duration
from qlora_studio.gui import theme
from qlora_studio.gui.pages.base import Page, error_html

DEMO, FOLDER, GGUF, HUB = "demo", "folder", "gguf", "hub"
KIND_LABELS = {
    DEMO: "Demo model (Gemma 3 270M)",
    FOLDER: "Local folder",
    GGUF: "GGUF file",
    HUB: "Hugging Face hub id",
}
PLACEHOLDERS = {
    DEMO: "Gemma 3 270M, converted once from the packaged GGUF",
    FOLDER: "a folder holding config.json and *.safetensors",
    GGUF: "a .gguf file, e.g. the one llama.cpp or Ollama runs",
    HUB: "org/name, e.g. Qwen/Qwen2.5-0.5B-Instruct",
}
SELECTABLE = Qt.TextInteractionFlag.TextSelectableByMouse
RIGHT = Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def source_kind(source: str) -> str:
    """Which radio button a saved ``model.source`` belongs to."""
    text = source.strip()
    if text.lower() == DEMO:
        return DEMO
    if text.lower().endswith(".gguf"):
        return GGUF
    if text and not Path(text).expanduser().exists() and _HUB_ID.match(text):
        return HUB
    return FOLDER


def format_count(n: int) -> str:
    """Parameters the way people say them: 270.4 M, 7.24 B."""
    return f"{n / 1e9:,.2f} B" if n >= 1e9 else f"{n / 1e6:,.1f} M"


def demo_needs_conversion() -> bool:
    """True before the demo GGUF has been converted into the cache (the ~60 s first use)."""
    from qlora_studio.core.models.files import DEMO_FOLDER, MARKER
    from qlora_studio.resources import user_cache_dir

    return not (user_cache_dir() / "models" / DEMO_FOLDER / MARKER).is_file()


def _read_only_table(headers: tuple[str, ...]) -> QTableWidget:
    table = QTableWidget(0, len(headers))
    table.setHorizontalHeaderLabels(list(headers))
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
    table.verticalHeader().hide()
    table.horizontalHeader().setStretchLastSection(True)
    return table


def _fill(table: QTableWidget, rows: list[tuple[str, ...]], right_aligned: set[int]) -> None:
    table.setRowCount(len(rows))
    for i, row in enumerate(rows):
        for j, value in enumerate(row):
            item = QTableWidgetItem(value)
            if j in right_aligned:
                item.setTextAlignment(RIGHT)
            table.setItem(i, j, item)
    table.resizeColumnsToContents()
    # tall enough for every row (a handful), so the page scrolls rather than each table
    height = table.horizontalHeader().height() + sum(table.rowHeight(i) for i in range(len(rows)))
    table.setFixedHeight(height + 2 * table.frameWidth() + 2)


class ModelPage(Page):
    title = "Model"

    def __init__(self, state, parent: QWidget | None = None):
        super().__init__(state, parent)
        self.info = None  # ModelInfo of the last successful inspection
        self._info_key: tuple | None = None  # the source it describes
        self._running_key: tuple | None = None
        self._texts = {FOLDER: "", GGUF: "", HUB: ""}  # what each kind's line edit held
        self._kind = DEMO
        self._loading = False
        self._auto_ran = False

        self._build_source()
        self._build_inspect_row()
        self._build_results()
        self.layout_.addStretch(1)
        self._show_kind(DEMO)

    # ---- widgets ------------------------------------------------------------------------
    def _build_source(self) -> None:
        box = QGroupBox("Base model")
        column = QVBoxLayout(box)
        radios = QHBoxLayout()
        self.kind_group = QButtonGroup(self)
        self.radios: dict[str, QRadioButton] = {}
        for kind, label in KIND_LABELS.items():
            radio = QRadioButton(label)
            radio.setToolTip(field_help("model", "source"))
            self.kind_group.addButton(radio)
            self.radios[kind] = radio
            radios.addWidget(radio)
            radio.toggled.connect(self._on_kind_toggled)
        radios.addStretch(1)
        column.addLayout(radios)

        row = QHBoxLayout()
        self.source_edit = QLineEdit()
        self.source_edit.setToolTip(field_help("model", "source"))
        self.source_edit.textChanged.connect(self._on_text_edited)
        self.source_edit.returnPressed.connect(self.inspect)
        self.browse_button = QPushButton("Browse…")
        theme.set_icon(self.browse_button, "mdi6.folder-open-outline")
        self.browse_button.clicked.connect(self._browse)
        row.addWidget(self.source_edit, 1)
        row.addWidget(self.browse_button)
        column.addLayout(row)

        form = QFormLayout()
        self.recent_combo = QComboBox()
        self.recent_combo.setToolTip("Models inspected before")
        self.recent_combo.activated.connect(self._on_recent)
        form.addRow("Recent", self.recent_combo)
        flags = QHBoxLayout()
        self.pickle_box = QCheckBox("allow pickle weights")
        self.pickle_box.setToolTip(field_help("model", "allow_pickle"))
        self.remote_code_box = QCheckBox("trust remote code")
        self.remote_code_box.setToolTip(field_help("model", "trust_remote_code"))
        for box_ in (self.pickle_box, self.remote_code_box):
            box_.toggled.connect(self._on_source_changed)
            flags.addWidget(box_)
        flags.addStretch(1)
        form.addRow("Safety", flags)
        column.addLayout(form)
        self.layout_.addWidget(box)
        self._fill_recent()

    def _build_inspect_row(self) -> None:
        row = QHBoxLayout()
        self.inspect_button = QPushButton("Inspect")
        theme.set_icon(self.inspect_button, "mdi6.magnify")
        self.inspect_button.setToolTip(
            "Read the model's config and count its parameters (no weights are loaded)"
        )
        self.inspect_button.clicked.connect(self.inspect)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)  # indeterminate: inspection has no step count
        self.progress.setMaximumWidth(160)
        self.progress.hide()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        row.addWidget(self.inspect_button)
        row.addWidget(self.progress)
        row.addWidget(self.status_label, 1)
        self.layout_.addLayout(row)
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(SELECTABLE)
        self.error_label.hide()
        self.layout_.addWidget(self.error_label)

    def _build_results(self) -> None:
        self.results = QWidget()
        row = QHBoxLayout(self.results)
        row.setContentsMargins(0, 0, 0, 0)
        summary_box = QGroupBox("Summary")
        self.summary = QFormLayout(summary_box)
        self.summary_values: dict[str, QLabel] = {}
        for name in (
            "Architecture",
            "Model type",
            "Parameters",
            "Layers",
            "Hidden size",
            "Heads",
            "Vocabulary",
            "Context",
            "Tied embeddings",
            "Stored dtype",
            "Chat template",
            "Weights",
        ):
            value = QLabel("")
            value.setTextInteractionFlags(SELECTABLE)
            self.summary_values[name] = value
            self.summary.addRow(name, value)
        self.folder_edit = QLineEdit()
        self.folder_edit.setReadOnly(True)
        self.folder_edit.setToolTip("The local folder the model was read from")
        self.summary.addRow("Folder", self.folder_edit)
        row.addWidget(summary_box, 2)

        tables = QVBoxLayout()
        tables.addWidget(QLabel("<b>Parameters by kind</b>"))
        self.kinds_table = _read_only_table(("kind", "parameters", "share"))
        tables.addWidget(self.kinds_table)
        tables.addWidget(QLabel("<b>LoRA targets</b> (the linear layers 'all-linear' adapts)"))
        self.targets_table = _read_only_table(("name", "kind", "count", "in → out"))
        tables.addWidget(self.targets_table)
        tables.addStretch(1)
        row.addLayout(tables, 3)
        self.results.hide()
        self.layout_.addWidget(self.results)

    # ---- the source being edited ----------------------------------------------------------
    def current_source(self) -> str:
        return DEMO if self._kind == DEMO else self.source_edit.text().strip()

    def _current_key(self) -> tuple:
        return (
            self.current_source(),
            self.pickle_box.isChecked(),
            self.remote_code_box.isChecked(),
        )

    def _show_kind(self, kind: str) -> None:
        """Check ``kind``'s radio and show its text (each kind keeps what was typed for it)."""
        self._kind = kind
        self._loading, was_loading = True, self._loading
        self.radios[kind].setChecked(True)
        self.source_edit.setEnabled(kind != DEMO)
        self.source_edit.setText("" if kind == DEMO else self._texts[kind])
        self.source_edit.setPlaceholderText(PLACEHOLDERS[kind])
        self.browse_button.setEnabled(kind in (FOLDER, GGUF))
        self._loading = was_loading

    def set_source(self, source: str) -> None:
        """Show ``source`` (a saved ``model.source`` or a recent entry) in the widgets."""
        kind = source_kind(source)
        if kind != DEMO:
            self._texts[kind] = source.strip()
        self._show_kind(kind)
        self._on_source_changed()

    def _on_kind_toggled(self, checked: bool) -> None:
        if not checked or self._loading:
            return
        kind = next(k for k, r in self.radios.items() if r.isChecked())
        if kind != self._kind:
            self._show_kind(kind)
            self._on_source_changed()

    def _on_text_edited(self, text: str) -> None:
        if self._loading:
            return
        if self._kind != DEMO:
            self._texts[self._kind] = text.strip()
        self._on_source_changed()

    def _on_source_changed(self) -> None:
        if self._loading:
            return
        if self._info_key is not None and self._info_key != self._current_key():
            self._forget()
        self.error_label.hide()
        self.changed.emit()

    def _forget(self) -> None:
        """The shown inspection no longer describes the chosen source."""
        self.info, self._info_key = None, None
        self.results.hide()
        self.status_label.setText("")
        self.state.set_model_info(None)

    def _browse(self) -> None:
        start = self.source_edit.text() or str(Path.home())
        if self._kind == FOLDER:
            chosen = QFileDialog.getExistingDirectory(self, "Model folder", start)
        else:
            chosen, _ = QFileDialog.getOpenFileName(
                self, "GGUF model", start, "GGUF models (*.gguf);;All files (*)"
            )
        if chosen:
            self.source_edit.setText(chosen)
            self.inspect()

    def _fill_recent(self) -> None:
        self.recent_combo.clear()
        recent = self.state.recent("models")
        self.recent_combo.addItem("Recent models…" if recent else "(none yet)")
        for item in recent:
            self.recent_combo.addItem(item)
        self.recent_combo.setEnabled(bool(recent))

    def _on_recent(self, index: int) -> None:
        if index <= 0:
            return
        self.set_source(self.recent_combo.itemText(index))
        self.recent_combo.setCurrentIndex(0)
        self.inspect()

    # ---- Page contract --------------------------------------------------------------------
    def load_config(self, cfg: RunConfig) -> None:
        self._loading = True
        try:
            self.pickle_box.setChecked(cfg.model.allow_pickle)
            self.remote_code_box.setChecked(cfg.model.trust_remote_code)
            kind = source_kind(cfg.model.source)
            if kind != DEMO:
                self._texts[kind] = cfg.model.source.strip()
            self._show_kind(kind)
        finally:
            self._loading = False
        if self._info_key is not None and self._info_key != self._current_key():
            self._forget()

    def apply_config(self, cfg: RunConfig) -> None:
        cfg.model.source = self.current_source()
        cfg.model.allow_pickle = self.pickle_box.isChecked()
        cfg.model.trust_remote_code = self.remote_code_box.isChecked()

    def is_complete(self) -> bool:
        return self.info is not None and self._info_key == self._current_key()

    def on_shown(self) -> None:
        """The first time the page is shown, inspect the configured source once."""
        if self._auto_ran:
            return
        self._auto_ran = True
        if self.current_source() and self.info is None and not self.is_running():
            self.inspect()

    # ---- inspection -----------------------------------------------------------------------
    def inspect(self) -> None:
        """Inspect the chosen source in a thread; asked again meanwhile, the newer request
        replaces the running one."""
        from qlora_studio.gui.jobs import ThreadJob

        source = self.current_source()
        if not source:
            self._show_error("Choose a model first.", PLACEHOLDERS[self._kind])
            return
        key = self._current_key()
        self._running_key = key
        self.error_label.hide()
        if source == DEMO and demo_needs_conversion():
            self.status_label.setText(
                "First use of the demo model: converting its GGUF once "
                "(about a minute; instant afterwards)…"
            )
        else:
            self.status_label.setText(f"Inspecting {html.escape(source)}…")
        job = ThreadJob(_inspect, source, key[1], key[2])
        job.status.connect(self.status_label.setText)
        job.progress.connect(self._on_progress)
        job.succeeded.connect(self._on_inspected)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self.inspect_button.setEnabled(False)
        self.progress.show()
        self.run_job(job)

    def _on_inspected(self, info) -> None:
        if self._running_key != self._current_key():
            self.status_label.setText(
                "The source changed while it was inspected: press Inspect again."
            )
            return
        self.info, self._info_key = info, self._running_key
        self._show_info(info.to_dict())
        self.status_label.setText("")
        self.state.set_model_info(info)
        self.state.add_recent("models", self._running_key[0])
        self._fill_recent()
        self.changed.emit()

    def _on_failed(self, message: str, hint: str) -> None:
        self.status_label.setText("")
        if self._running_key == self._current_key():
            self._show_error(message, hint)

    def _on_cancelled(self, _event: dict) -> None:
        self.status_label.setText("Inspection cancelled.")

    def _on_progress(self, event: dict) -> None:
        """Counted work (a GGUF's tensors dequantized on first use): a percentage and an ETA
        instead of the busy bar."""
        total = max(int(event.get("total") or 0), 1)
        eta = event.get("eta_s")
        self.progress.setRange(0, total)
        self.progress.setValue(min(int(event.get("step") or 0), total))
        self.progress.setFormat("%p%" + (f" · {format_duration(eta)} left" if eta else ""))
        self.progress.setTextVisible(True)

    def _on_finished(self) -> None:
        self.progress.hide()
        self.progress.setRange(0, 0)  # busy again for the next inspection
        self.inspect_button.setEnabled(True)

    def _show_error(self, message: str, hint: str) -> None:
        self.error_label.setText(error_html(message, hint))
        self.error_label.show()

    def _show_info(self, info: dict) -> None:
        values = self.summary_values
        values["Architecture"].setText(info["architecture"])
        values["Model type"].setText(info["model_type"])
        total = info["params_total"]
        values["Parameters"].setText(f"{format_count(total)}  ({total:,})")
        values["Layers"].setText(str(info["num_layers"]))
        hidden, mlp = info["hidden_size"], info["intermediate_size"]
        values["Hidden size"].setText(f"{hidden:,} (MLP {mlp:,})")
        heads = f"{info['num_heads']} attention"
        if info["num_kv_heads"] != info["num_heads"]:
            heads += f", {info['num_kv_heads']} key/value"
        values["Heads"].setText(f"{heads} (head dim {info['head_dim']})")
        values["Vocabulary"].setText(f"{info['vocab_size']:,} tokens")
        values["Context"].setText(f"{info['context_length']:,} tokens")
        values["Tied embeddings"].setText(
            "yes (lm_head shares the input embedding)" if info["tied_embeddings"] else "no"
        )
        values["Stored dtype"].setText(info["torch_dtype"])
        values["Chat template"].setText(
            "yes" if info["has_chat_template"] else "none (the Dataset page picks a fallback)"
        )
        values["Weights"].setText(info["weights_format"])
        self.folder_edit.setText(info["path"])
        self.folder_edit.setCursorPosition(0)

        kinds = [
            (kind, f"{count:,}", f"{100 * count / total:.1f} %" if total else "–")
            for kind, count in info["params_by_kind"].items()
            if count
        ]
        _fill(self.kinds_table, kinds, right_aligned={1, 2})
        targets = [
            (
                layer["name"],
                layer["kind"],
                str(layer["count"]),
                f"{layer['in_features']:,} → {layer['out_features']:,}",
            )
            for layer in info["linear_layers"]
        ]
        _fill(self.targets_table, targets, right_aligned={2})
        self.results.show()


def _inspect(reporter, cancel, source: str, allow_pickle: bool, trust_remote_code: bool):
    """Runs in the worker thread: the ModelInfo (plain data) of ``source``."""
    from qlora_studio.core.models.inspect import inspect_model

    return inspect_model(
        source, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, reporter=reporter
    )
