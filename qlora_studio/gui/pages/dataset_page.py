"""Dataset: choose the training file and how its rows become examples, then analyse it with the
model's tokenizer in a worker thread: row count, format, a rendered sample with the trained
tokens highlighted, the token-length histogram and how many rows max length truncates."""

from __future__ import annotations

import html
from pathlib import Path

import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.config import CHAT_TEMPLATES, DATA_FORMATS, TRAIN_ON, RunConfig, field_help
from qlora_studio.gui import theme
from qlora_studio.gui.pages.base import ERROR_COLOUR, Page, error_html
from qlora_studio.gui.pages.dataset_report import (
    _analyse,
    _cell_text,
    sample_html,
    summary_html,
)

DATA_FILTER = "Data files (*.jsonl *.json *.csv *.tsv *.parquet *.txt);;All files (*)"
DEBOUNCE_MS = 400
TRAINED_COLOUR = "#c6efce"  # background of the tokens the loss is computed on
CUT_COLOUR = "#9e9e9e"  # text past max length
CELL_CHARS = 120  # raw-row cells are cut here (the tooltip holds more)
OUR_NAMES = (
    "instruction",
    "input",
    "output",
    "system",
    "conversations",
    "messages",
    "prompt",
    "completion",
    "text",
)


class DatasetPage(Page):
    title = "Dataset"

    def __init__(self, state, parent: QWidget | None = None):
        super().__init__(state, parent)
        self.report: dict | None = None  # the last successful analysis
        self.sample = ""  # its rendered sample as HTML
        self._report_key: tuple | None = None  # the settings it was made with
        self._attempt_key: tuple | None = None  # the settings of the last analysis started
        self._loading = False
        self._bars: pg.BarGraphItem | None = None
        self.setAcceptDrops(True)

        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self.analyse)

        self._build_settings()
        self._build_analyse_row()
        self._build_results()
        state.model_info_changed.connect(self._on_model_changed)

    # ---- widgets ------------------------------------------------------------------------
    def _build_settings(self) -> None:
        row = QHBoxLayout()
        left = QFormLayout()
        path_row = QHBoxLayout()
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a data file, or drop one onto this page")
        self.path_edit.setToolTip(field_help("data", "path"))
        self.path_edit.textChanged.connect(self._on_path_changed)
        self.path_edit.returnPressed.connect(self.analyse)
        browse = QPushButton("Browse…")
        theme.set_icon(browse, "mdi6.folder-open-outline")
        browse.clicked.connect(self._browse)
        path_row.addWidget(self.path_edit, 1)
        path_row.addWidget(browse)
        left.addRow("Data file", path_row)
        self.recent_combo = QComboBox()
        self.recent_combo.activated.connect(self._on_recent)
        left.addRow("Recent", self.recent_combo)
        self.format_combo = QComboBox()
        for name in DATA_FORMATS:
            self.format_combo.addItem("auto (detect)" if name == "auto" else name, name)
        self.format_combo.setToolTip(field_help("data", "format"))
        left.addRow("Format", self.format_combo)
        self.template_combo = QComboBox()
        for name in CHAT_TEMPLATES:
            self.template_combo.addItem(name, name)
        self.template_combo.setToolTip(field_help("data", "chat_template"))
        left.addRow("Chat template", self.template_combo)
        self.train_on_combo = QComboBox()
        for name in TRAIN_ON:
            self.train_on_combo.addItem(name, name)
        self.train_on_combo.setToolTip(field_help("data", "train_on"))
        left.addRow("Train on", self.train_on_combo)
        row.addLayout(left, 3)

        right = QFormLayout()
        self.max_length_spin = QSpinBox()
        self.max_length_spin.setRange(8, 32768)
        self.max_length_spin.setSingleStep(64)
        self.max_length_spin.setSuffix(" tokens")
        self.max_length_spin.setToolTip(field_help("data", "max_length"))
        right.addRow("Max length", self.max_length_spin)
        self.split_spin = QDoubleSpinBox()
        self.split_spin.setRange(0.0, 0.9)
        self.split_spin.setSingleStep(0.05)
        self.split_spin.setDecimals(2)
        self.split_spin.setToolTip(field_help("data", "validation_split"))
        right.addRow("Validation split", self.split_spin)
        self.system_edit = QLineEdit()
        self.system_edit.setPlaceholderText("optional")
        self.system_edit.setToolTip(field_help("data", "system_prompt"))
        right.addRow("System prompt", self.system_edit)
        self.columns_table = QTableWidget(0, 2)
        self.columns_table.setHorizontalHeaderLabels(["ours", "yours"])
        self.columns_table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.columns_table.verticalHeader().hide()
        self.columns_table.setFixedHeight(84)
        self.columns_table.setToolTip(
            field_help("data", "columns") + "\nour names: " + ", ".join(OUR_NAMES)
        )
        self.columns_table.itemChanged.connect(self._on_setting_changed)
        add = QPushButton("+")
        add.setToolTip("Add a column mapping")
        add.clicked.connect(lambda: self.add_column_mapping("", ""))
        remove = QPushButton("−")
        remove.setToolTip("Remove the selected mapping")
        remove.clicked.connect(self._remove_column_mapping)
        for button in (add, remove):
            button.setFixedWidth(28)
        buttons = QVBoxLayout()
        buttons.addWidget(add)
        buttons.addWidget(remove)
        buttons.addStretch(1)
        columns_row = QHBoxLayout()
        columns_row.addWidget(self.columns_table, 1)
        columns_row.addLayout(buttons)
        right.addRow("Columns", columns_row)
        row.addLayout(right, 2)
        self.layout_.addLayout(row)

        for combo in (self.format_combo, self.template_combo, self.train_on_combo):
            combo.currentIndexChanged.connect(self._on_setting_changed)
        self.split_spin.valueChanged.connect(self._on_setting_changed)
        self.system_edit.textChanged.connect(self._on_setting_changed)
        self.max_length_spin.valueChanged.connect(self._on_max_length_changed)
        self._fill_recent()

    def _build_analyse_row(self) -> None:
        row = QHBoxLayout()
        self.analyse_button = QPushButton("Analyse")
        theme.set_icon(self.analyse_button, "mdi6.text-box-search-outline")
        self.analyse_button.setToolTip(
            "Read, template and tokenize every row with the model's tokenizer"
        )
        self.analyse_button.clicked.connect(self.analyse)
        self.progress = QProgressBar()
        self.progress.setRange(0, 0)
        self.progress.setMaximumWidth(160)
        self.progress.hide()
        self.status_label = QLabel("")
        self.status_label.setWordWrap(True)
        row.addWidget(self.analyse_button)
        row.addWidget(self.progress)
        row.addWidget(self.status_label, 1)
        self.layout_.addLayout(row)
        self.error_label = QLabel("")
        self.error_label.setWordWrap(True)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()
        self.layout_.addWidget(self.error_label)

    def _build_results(self) -> None:
        self.results = QWidget()
        column = QVBoxLayout(self.results)
        column.setContentsMargins(0, 0, 0, 0)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        column.addWidget(self.summary_label)

        splitter = QSplitter(Qt.Orientation.Horizontal)
        sample_box = QWidget()
        sample_column = QVBoxLayout(sample_box)
        sample_column.setContentsMargins(0, 0, 0, 0)
        self.sample_title = QLabel("<b>Rendered sample</b>")
        sample_column.addWidget(self.sample_title)
        self.sample_view = QTextBrowser()
        self.sample_view.setOpenLinks(False)
        sample_column.addWidget(self.sample_view, 1)
        sample_column.addWidget(
            QLabel(
                f"<span style='background-color:{TRAINED_COLOUR}'>highlighted</span> = tokens the "
                f"loss is computed on; <span style='color:{CUT_COLOUR}'>grey</span> = cut off by "
                "max length"
            )
        )
        splitter.addWidget(sample_box)

        plot_box = QWidget()
        plot_column = QVBoxLayout(plot_box)
        plot_column.setContentsMargins(0, 0, 0, 0)
        plot_column.addWidget(QLabel("<b>Tokens per row</b> (after templating)"))
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMinimumHeight(200)
        self.plot.setLabel("bottom", "tokens")
        self.plot.setLabel("left", "rows")
        self.plot.showGrid(y=True, alpha=0.2)
        self.plot.setMouseEnabled(x=False, y=False)
        plot_column.addWidget(self.plot, 1)
        self.truncated_label = QLabel("")
        plot_column.addWidget(self.truncated_label)
        splitter.addWidget(plot_box)
        splitter.setSizes([520, 420])
        column.addWidget(splitter, 1)

        column.addWidget(QLabel("<b>First rows</b> as read from the file"))
        self.rows_table = QTableWidget(0, 0)
        self.rows_table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rows_table.setWordWrap(False)
        self.rows_table.setTextElideMode(Qt.TextElideMode.ElideRight)
        self.rows_table.setMinimumHeight(150)
        column.addWidget(self.rows_table)
        self.layout_.addWidget(self.results, 1)
        self.layout_.addStretch(1)
        self._show_results(False)

    # ---- settings -------------------------------------------------------------------------
    def add_column_mapping(self, ours: str, yours: str) -> None:
        row = self.columns_table.rowCount()
        self.columns_table.insertRow(row)
        self.columns_table.setItem(row, 0, QTableWidgetItem(ours))
        self.columns_table.setItem(row, 1, QTableWidgetItem(yours))
        if not ours and not self._loading:
            self.columns_table.editItem(self.columns_table.item(row, 0))

    def _remove_column_mapping(self) -> None:
        row = self.columns_table.currentRow()
        if row < 0:
            row = self.columns_table.rowCount() - 1
        if row >= 0:
            self.columns_table.removeRow(row)
            self._on_setting_changed()

    def column_mapping(self) -> dict[str, str]:
        mapping = {}
        for row in range(self.columns_table.rowCount()):
            cells = [self.columns_table.item(row, j) for j in (0, 1)]
            ours, yours = (c.text().strip() if c is not None else "" for c in cells)
            if ours and yours:
                mapping[ours] = yours
        return mapping

    def _settings(self) -> dict:
        """The page's settings and the model they are analysed with, as plain data."""
        model = self.state.cfg.model
        info = self.state.model_info
        folder = info.path if info is not None and info.source == model.source else ""
        return {
            "path": self.path_edit.text().strip(),
            "format": self.format_combo.currentData(),
            "columns": self.column_mapping(),
            "chat_template": self.template_combo.currentData(),
            "max_length": self.max_length_spin.value(),
            "validation_split": round(self.split_spin.value(), 4),
            "train_on": self.train_on_combo.currentData(),
            "system_prompt": self.system_edit.text(),
            "batch_size": self.state.cfg.train.batch_size,
            "max_tokens_per_batch": self.state.cfg.data.max_tokens_per_batch,
            "model": model.source,
            "model_folder": folder,
            "allow_pickle": model.allow_pickle,
            "trust_remote_code": model.trust_remote_code,
        }

    def _current_key(self) -> tuple:
        settings = self._settings()
        settings.pop("model_folder")  # where the model lives does not change the analysis
        return tuple(
            (k, tuple(sorted(v.items())) if isinstance(v, dict) else v) for k, v in settings.items()
        )

    def _on_path_changed(self, _text: str = "") -> None:
        if self._loading:
            return
        self._debounce.stop()
        if self.report is not None:
            self._clear_results()
            self.state.set_data_report(None)
        self.error_label.hide()
        self.changed.emit()

    def _on_setting_changed(self, *_args) -> None:
        if self._loading:
            return
        self._mark_stale()
        self.changed.emit()

    def _on_max_length_changed(self, _value: int) -> None:
        if self._loading:
            return
        self._mark_stale()
        if self.report is not None:  # re-measure truncation once the user stops spinning
            self._debounce.start()
        self.changed.emit()

    def _on_model_changed(self, _info) -> None:
        self._mark_stale()
        self.changed.emit()

    def _mark_stale(self) -> None:
        if self.report is not None and self._report_key != self._current_key():
            self.status_label.setText(
                "The settings changed since this analysis: press Analyse to update it."
            )

    def _browse(self) -> None:
        start = self.path_edit.text() or str(Path.home())
        chosen, _ = QFileDialog.getOpenFileName(self, "Training data", start, DATA_FILTER)
        if chosen:
            self.choose_file(chosen)

    def choose_file(self, path: str) -> None:
        """Use ``path`` as the data file and analyse it when a model is set."""
        self.path_edit.setText(path)
        if self.state.cfg.model.source.strip():
            self.analyse()

    def _fill_recent(self) -> None:
        self.recent_combo.clear()
        recent = self.state.recent("datasets")
        self.recent_combo.addItem("Recent datasets…" if recent else "(none yet)")
        for item in recent:
            self.recent_combo.addItem(item)
        self.recent_combo.setEnabled(bool(recent))

    def _on_recent(self, index: int) -> None:
        if index > 0:
            path = self.recent_combo.itemText(index)
            self.recent_combo.setCurrentIndex(0)
            self.choose_file(path)

    # ---- drag and drop --------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:  # noqa: N802 (Qt's name)
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:  # noqa: N802 (Qt's name)
        urls = event.mimeData().urls()
        if urls and urls[0].isLocalFile():
            event.acceptProposedAction()
            self.choose_file(urls[0].toLocalFile())

    # ---- Page contract --------------------------------------------------------------------
    def load_config(self, cfg: RunConfig) -> None:
        data = cfg.data
        self._loading = True
        try:
            self.path_edit.setText(data.path)
            _select(self.format_combo, data.format)
            if self.template_combo.findData(data.chat_template) < 0:  # a Jinja string
                self.template_combo.addItem("custom (from the config)", data.chat_template)
            _select(self.template_combo, data.chat_template)
            _select(self.train_on_combo, data.train_on)
            self.max_length_spin.setValue(data.max_length)
            self.split_spin.setValue(data.validation_split)
            self.system_edit.setText(data.system_prompt)
            self.columns_table.setRowCount(0)
            for ours, yours in data.columns.items():
                self.add_column_mapping(ours, yours)
        finally:
            self._loading = False
        if self.report is not None and self._report_key != self._current_key():
            if dict(self._report_key)["path"] != data.path.strip():
                self._clear_results()
            else:
                self._mark_stale()

    def apply_config(self, cfg: RunConfig) -> None:
        settings = self._settings()
        data = cfg.data
        data.path = settings["path"]
        data.format = settings["format"]
        data.columns = settings["columns"]
        data.chat_template = settings["chat_template"]
        data.max_length = settings["max_length"]
        data.validation_split = settings["validation_split"]
        data.train_on = settings["train_on"]
        data.system_prompt = settings["system_prompt"]

    def is_complete(self) -> bool:
        return (
            bool(self.path_edit.text().strip())
            and self.report is not None
            and self._report_key == self._current_key()
        )

    def on_shown(self) -> None:
        """Analyse when a file and a model are set and these settings were not tried yet."""
        key = self._current_key()
        ready = self.path_edit.text().strip() and self.state.cfg.model.source.strip()
        if ready and not self.is_running() and key not in (self._attempt_key, self._report_key):
            self.analyse()

    # ---- analysis -------------------------------------------------------------------------
    def analyse(self) -> None:
        """Analyse the file with the current settings in a thread; asked again meanwhile, the
        newer request replaces the running one (its result would be stale)."""
        from qlora_studio.gui.jobs import ThreadJob

        self._debounce.stop()
        settings = self._settings()
        if not settings["path"]:
            self._show_error("Choose a data file first.", "Browse…, or drop a file on this page")
            return
        if not settings["model"].strip():
            self._show_error("Choose a model first.", "the tokenizer comes from the Model page")
            return
        self._attempt_key = self._current_key()
        self.error_label.hide()
        self.status_label.setText(f"Analysing {html.escape(Path(settings['path']).name)}…")
        job = ThreadJob(_analyse, settings)
        job.status.connect(self.status_label.setText)
        job.succeeded.connect(self._on_analysed)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self.analyse_button.setEnabled(False)
        self.progress.show()
        self.run_job(job)

    def _on_analysed(self, report: dict) -> None:
        self.report, self._report_key = report, self._attempt_key
        self.status_label.setText("")
        self._show_report(report)
        self.state.set_data_report(report)
        self.state.add_recent("datasets", dict(self._attempt_key)["path"])
        self._fill_recent()
        self._mark_stale()
        self.changed.emit()

    def _on_failed(self, message: str, hint: str) -> None:
        self.status_label.setText("")
        self._clear_results()
        self.state.set_data_report(None)
        self._show_error(message, hint)
        self.changed.emit()

    def _on_cancelled(self, _event: dict) -> None:
        self.status_label.setText("Analysis cancelled.")

    def _on_finished(self) -> None:
        self.progress.hide()
        self.analyse_button.setEnabled(True)

    def _show_error(self, message: str, hint: str) -> None:
        self.error_label.setText(error_html(message, hint))
        self.error_label.show()

    def _clear_results(self) -> None:
        self.report, self._report_key, self.sample = None, None, ""
        self._show_results(False)
        self.summary_label.setText("")
        self.sample_view.clear()
        self.plot.clear()
        self._bars = None
        self.truncated_label.setText("")
        self.rows_table.clear()
        self.rows_table.setRowCount(0)
        self.rows_table.setColumnCount(0)

    def _show_results(self, visible: bool) -> None:
        """Show or hide the results; while hidden the trailing stretch takes their room, so
        the settings above keep their height."""
        self.results.setVisible(visible)
        self.layout_.setStretch(self.layout_.count() - 1, 0 if visible else 1)

    def _show_report(self, report: dict) -> None:
        self.summary_label.setText(summary_html(report))
        preview = report["preview"]
        self.sample = sample_html(preview)
        self.sample_title.setText(
            f"<b>Rendered sample</b> (row {preview['row']}, "
            f"{preview['tokens']:,} tokens, {preview['trained_tokens']:,} "
            "trained)"
        )
        self.sample_view.setHtml(self.sample)
        self._draw_histogram(report["stats"])
        self._fill_rows(report["columns"], report["sample_rows"])
        self._show_results(True)

    def _draw_histogram(self, stats: dict) -> None:
        edges, counts = stats["histogram"]["edges"], stats["histogram"]["counts"]
        max_length, truncated = stats["max_length"], stats["truncated_rows"]
        self.plot.clear()
        self._bars = pg.BarGraphItem(
            x0=edges[:-1], x1=edges[1:], height=counts, brush="#4e79a7", pen=pg.mkPen("#ffffff")
        )
        self.plot.addItem(self._bars)
        # the max-length line is shown when it is near the data; far right it would squash it
        right = edges[-1]
        if max_length <= 1.5 * right:
            right = max(right, max_length)
            line = pg.InfiniteLine(
                pos=max_length,
                angle=90,
                pen=pg.mkPen(ERROR_COLOUR, width=2, style=Qt.PenStyle.DashLine),
                label=f"max length {max_length:,}",
                labelOpts={"position": 0.9, "color": ERROR_COLOUR},
            )
            self.plot.addItem(line)
        self.plot.setXRange(edges[0], right + 0.03 * (right - edges[0] + 1), padding=0)
        highest = max(counts + [1])
        self.plot.setYRange(0, highest * 1.1, padding=0)
        if highest < 10:  # whole rows: no 0.5 ticks
            self.plot.getAxis("left").setTickSpacing(1, 1)
        else:
            self.plot.getAxis("left").setTickSpacing()
        beyond = "" if max_length <= 1.5 * edges[-1] else " (max length is far past the longest)"
        self.truncated_label.setText(
            f"<b>{truncated:,}</b> rows truncated at {max_length:,} tokens{beyond}"
        )

    def _fill_rows(self, columns: list[str], rows: list[dict]) -> None:
        table = self.rows_table
        table.clear()
        table.setColumnCount(len(columns))
        table.setHorizontalHeaderLabels(columns)
        table.setRowCount(len(rows))
        for i, row in enumerate(rows):
            for j, column in enumerate(columns):
                text = _cell_text(row.get(column, "")) if column in row else ""
                short = text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 1] + "…"
                item = QTableWidgetItem(short)
                item.setToolTip(text[:2000])
                table.setItem(i, j, item)
        table.resizeColumnsToContents()
        for j in range(len(columns)):
            table.setColumnWidth(j, min(table.columnWidth(j), 320))


def _select(combo: QComboBox, value: str) -> None:
    index = combo.findData(value)
    combo.setCurrentIndex(max(index, 0))
