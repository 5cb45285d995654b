"""Runs: the run history (every run from the GUI or the CLI), filtered by status, with the loss
curves of the selected runs overlaid, and open / resume / export / compare / delete."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QModelIndex, QPersistentModelIndex, Qt, QTimer, QUrl
from PySide6.QtGui import QColor, QDesktopServices, QPalette
from PySide6.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.core.history.store import STATUSES, RunHistory, RunHistoryError, RunRecord
from qlora_studio.gui import theme
from qlora_studio.gui.pages.base import Page

COLUMNS = (
    "id",
    "name",
    "status",
    "method",
    "steps",
    "best loss",
    "peak memory",
    "started",
    "folder",
)
ALL = "all"
RESUMABLE = ("cancelled", "crashed", "failed")
REFRESH_MS = 3000  # while shown and a run is running
_ERROR_COLOUR = QColor(theme.ERROR_RED)
FAILED = ("failed", "crashed")
CHART_HINT = "<b>Loss</b> — select two or more runs to overlay their curves"


class _StatusDelegate(QStyledItemDelegate):
    """A failed run's status stays red when its row is selected: the cell is highlighted in red
    (white text) instead of the selection colour, which painted over the red text."""

    def initStyleOption(  # noqa: N802 (Qt's name)
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        if index.data(Qt.ItemDataRole.ForegroundRole) is None:
            return
        if option.state & QStyle.StateFlag.State_Selected:
            palette = option.palette
            palette.setColor(QPalette.ColorRole.Highlight, _ERROR_COLOUR)
            palette.setColor(QPalette.ColorRole.HighlightedText, QColor("#ffffff"))


class RunsPage(Page):
    title = "Runs"

    def __init__(self, state, parent=None):
        from qlora_studio.gui.run_curves import RunLossChart

        super().__init__(state, parent)
        self.records: list[RunRecord] = []
        self._failed_icon = theme.icon("mdi6.alert-circle", theme.ERROR_RED)
        self._curve_cache: dict[str, tuple[tuple[int, int], list[tuple[int, float]]]] = {}

        top = QHBoxLayout()
        top.addWidget(QLabel("Status"))
        self.status_filter = QComboBox()
        self.status_filter.addItems([ALL, *STATUSES])
        self.status_filter.setToolTip("Show only the runs with this status")
        self.status_filter.currentTextChanged.connect(self.refresh)
        top.addWidget(self.status_filter)
        self.refresh_button = QPushButton("Refresh")
        theme.set_icon(self.refresh_button, "mdi6.refresh")
        self.refresh_button.clicked.connect(self.refresh)
        top.addWidget(self.refresh_button)
        top.addStretch(1)
        self.count_label = QLabel("")
        top.addWidget(self.count_label)
        self.layout_.addLayout(top)

        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        self.table.itemSelectionChanged.connect(self._on_selection_changed)
        self._status_delegate = _StatusDelegate(self.table)
        self.table.setItemDelegateForColumn(COLUMNS.index("status"), self._status_delegate)

        buttons = QHBoxLayout()
        self.open_button = QPushButton("Open folder")
        self.resume_button = QPushButton("Resume")
        self.export_button = QPushButton("Export…")
        self.compare_button = QPushButton("Compare…")
        self.delete_button = QPushButton("Delete")
        tips = (
            (self.open_button, "Open the run's folder in the file manager", self.open_folder),
            (
                self.resume_button,
                "Continue a stopped, crashed or failed run from its last "
                "checkpoint (on the Train page)",
                self.resume_selected,
            ),
            (
                self.export_button,
                "Export this run's adapter (on the Export page)",
                self.export_selected,
            ),
            (
                self.compare_button,
                "Compare this run with its base model (on the Compare page)",
                self.compare_selected,
            ),
            (
                self.delete_button,
                "Delete the selected runs' folders and history rows",
                self.delete_selected,
            ),
        )
        icons = ("folder-open-outline", "restore", "export-variant", "compare-horizontal")
        for (button, tip, slot), icon in zip(tips, (*icons, "delete-outline"), strict=True):
            theme.set_icon(button, f"mdi6.{icon}")
            button.setToolTip(tip)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.message = QLabel("")
        self.message.setWordWrap(True)

        table_box = QWidget()
        table_layout = QVBoxLayout(table_box)
        table_layout.setContentsMargins(0, 0, 0, 0)
        table_layout.addWidget(self.table, 1)
        table_layout.addLayout(buttons)
        table_layout.addWidget(self.message)
        self.chart = RunLossChart()
        chart_box = QWidget()
        chart_layout = QVBoxLayout(chart_box)
        chart_layout.setContentsMargins(0, 0, 0, 0)
        self.chart_title = QLabel(CHART_HINT)
        chart_layout.addWidget(self.chart_title)
        chart_layout.addWidget(self.chart, 1)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(table_box)
        splitter.addWidget(chart_box)
        splitter.setSizes([300, 300])
        self.layout_.addWidget(splitter, 1)

        self._timer = QTimer(self)
        self._timer.setInterval(REFRESH_MS)
        self._timer.timeout.connect(self._on_tick)
        self._timer.start()
        self.refresh()  # at app start: runs whose process died get marked crashed

    # ---- Page contract ------------------------------------------------------------------
    def is_complete(self) -> bool:
        return self.table.rowCount() > 0

    def on_shown(self) -> None:
        self.refresh()

    # ---- the table ----------------------------------------------------------------------
    def refresh(self) -> None:
        """Reread the history (marking dead runs crashed) and keep the selection."""
        from qlora_studio.core.history.store import describe_memory, format_time

        status = self.status_filter.currentText()
        was_complete = self.is_complete()
        selected = set(self.selected_ids())
        try:
            with RunHistory.open(timeout_s=1.0) as history:
                self.records = history.list_runs(None if status == ALL else status)
        except RunHistoryError as exc:
            self.records = []
            self._say(f"<span style='color:#b00020'>{exc.message}</span> {exc.hint}")
        self.table.blockSignals(True)
        self.table.clearSelection()
        self.table.setRowCount(len(self.records))
        for row, r in enumerate(self.records):
            steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step)
            values = (
                str(r.id),
                r.name,
                r.status,
                r.method,
                steps,
                f"{r.best_loss:.4f}" if r.best_loss is not None else "",
                describe_memory(r),
                format_time(r.started),
                r.run_dir,
            )
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if r.error:
                    item.setToolTip(r.error)
                if column == COLUMNS.index("status") and r.status in FAILED:
                    item.setForeground(_ERROR_COLOUR)
                    item.setIcon(self._failed_icon)
                self.table.setItem(row, column, item)
            if r.id in selected:
                self.table.selectRow(row)
        self.table.blockSignals(False)
        self.table.resizeColumnsToContents()
        shown = len(self.records)
        self.count_label.setText(f"{shown} run{'s' if shown != 1 else ''}")
        self._on_selection_changed()
        if self.is_complete() != was_complete:
            self.changed.emit()

    def selected_ids(self) -> list[int]:
        rows = sorted({index.row() for index in self.table.selectionModel().selectedRows()})
        return [self.records[row].id for row in rows if row < len(self.records)]

    def selected_records(self) -> list[RunRecord]:
        ids = set(self.selected_ids())
        return [r for r in self.records if r.id in ids]

    def select_ids(self, ids) -> None:
        """Select the rows of these run ids (the others are deselected)."""
        wanted = set(ids)
        self.table.clearSelection()
        mode = self.table.selectionMode()
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.MultiSelection)
        for row, record in enumerate(self.records):
            if record.id in wanted:
                self.table.selectRow(row)
        self.table.setSelectionMode(mode)

    def _on_selection_changed(self) -> None:
        selected = self.selected_records()
        one = selected[0] if len(selected) == 1 else None
        trained = one is not None and _has_output(one)
        self.open_button.setEnabled(one is not None and Path(one.run_dir).is_dir())
        self.resume_button.setEnabled(one is not None and _can_resume(one))
        self.export_button.setEnabled(trained)
        self.compare_button.setEnabled(trained)
        self.delete_button.setEnabled(
            bool(selected) and all(r.status != "running" for r in selected)
        )
        self._show_curves(selected)

    def _show_curves(self, records: list[RunRecord]) -> None:
        self.chart.set_curves({f"{r.id} {r.name}": self._curve(r) for r in records})
        if len(records) == 1:
            self.chart_title.setText(
                f"<b>Loss</b> of run {records[0].id} — select more runs to overlay their curves"
            )
        elif records:
            self.chart_title.setText(f"<b>Loss</b> of {len(records)} runs")
        else:
            self.chart_title.setText(CHART_HINT)

    def _curve(self, record: RunRecord) -> list[tuple[int, float]]:
        """The run's loss curve, reread only when its events.jsonl changed."""
        from qlora_studio.core.history.store import read_loss_curve
        from qlora_studio.core.run_folder import EVENTS_FILE

        try:
            stat = (Path(record.run_dir) / EVENTS_FILE).stat()
            key = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            return []
        cached = self._curve_cache.get(record.run_dir)
        if cached is None or cached[0] != key:
            cached = self._curve_cache[record.run_dir] = (key, read_loss_curve(record.run_dir))
        return cached[1]

    def _on_tick(self) -> None:
        if self.isVisible() and any(r.status == "running" for r in self.records):
            self.refresh()

    # ---- actions ------------------------------------------------------------------------
    def _single(self) -> RunRecord | None:
        selected = self.selected_records()
        if len(selected) != 1:
            self._say("Select one run.")
            return None
        return selected[0]

    def _say(self, text: str) -> None:
        self.message.setText(text)

    def open_folder(self) -> None:
        record = self._single()
        if record is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(record.run_dir))

    def resume_selected(self) -> None:
        """Continue the run on the Train page, after a warning if its config.yaml changed."""
        from qlora_studio.core.history.store import config_changes
        from qlora_studio.core.run_folder import CONFIG_FILE

        record = self._single()
        if record is None:
            return
        if self.state.running:
            self._say("A training run is in progress: stop it or let it finish first.")
            return
        try:
            current = (Path(record.run_dir) / CONFIG_FILE).read_text(encoding="utf-8")
        except OSError as exc:
            self._say(f"Cannot read the run's config: {exc}")
            return
        changes = config_changes(record.config, current)
        if changes:
            shown = "\n".join(f"  • {c}" for c in changes[:12])
            more = f"\n  … and {len(changes) - 12} more" if len(changes) > 12 else ""
            question = (
                f"{CONFIG_FILE} in {record.run_dir} differs from the config run {record.id} "
                f"started with:\n\n{shown}{more}\n\nResume with the changed config?"
            )
            if not self.confirm("The run's config changed", question):
                self._say("Not resumed.")
                return
        self.state.run_dir = Path(record.run_dir)
        self.state.navigate.emit("Train")
        self.state.resume_requested.emit(Path(record.run_dir), self._curve(record))
        self._say(f"Resuming run {record.id} on the Train page.")

    def export_selected(self) -> None:
        record = self._single()
        if record is not None:
            self.state.choose_run(Path(record.run_dir), "Export")

    def compare_selected(self) -> None:
        record = self._single()
        if record is not None:
            self.state.choose_run(Path(record.run_dir), "Compare")

    def confirm(self, title: str, question: str) -> bool:
        """Ask a yes/no question (No by default). Tests replace it with an answer: nothing
        answers a modal question under pytest-qt."""
        answer = QMessageBox.question(
            self,
            title,
            question,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def delete_selected(self) -> None:
        records = self.selected_records()
        if not records:
            return
        names = "\n".join(f"  • {r.id} {r.name}: {r.run_dir}" for r in records[:10])
        more = f"\n  … and {len(records) - 10} more" if len(records) > 10 else ""
        question = (
            f"Delete {'these runs' if len(records) > 1 else 'this run'} and everything in "
            f"{'their folders' if len(records) > 1 else 'its folder'} (checkpoints, adapter, "
            f"exports)?\n\n{names}{more}\n\nThis cannot be undone."
        )
        if not self.confirm("Delete runs" if len(records) > 1 else "Delete run", question):
            return
        problems = []
        try:
            with RunHistory.open(timeout_s=1.0) as history:
                for record in records:
                    try:
                        history.delete(record.id)
                    except RunHistoryError as exc:
                        problems.append(f"{exc.message} ({exc.hint})")
        except RunHistoryError as exc:
            problems.append(exc.message)
        self.refresh()
        deleted = len(records) - len(problems)
        self._say(
            f"Deleted {deleted} run{'s' if deleted != 1 else ''}."
            + ("".join(f"<br><span style='color:#b00020'>{p}</span>" for p in problems))
        )


def _has_output(record: RunRecord) -> bool:
    """The run left an adapter (or a full model) to export or compare."""
    from qlora_studio.core.run_folder import ADAPTER, FULL_MODEL

    folder = Path(record.run_dir)
    return (folder / ADAPTER).is_dir() or (folder / FULL_MODEL).is_dir()


def _can_resume(record: RunRecord) -> bool:
    from qlora_studio.core.run_folder import last_checkpoint

    return record.status in RESUMABLE and last_checkpoint(Path(record.run_dir)) is not None
