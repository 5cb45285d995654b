"""The held-out evaluation shown on the Compare page: the scores of both models and each row's
base and tuned answers next to the reference."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

SCORE_ROWS = (  # label, attribute, as percent, format
    ("Exact match", "exact_match", True, ".1f"),
    ("Similarity", "similarity", True, ".1f"),
    ("Loss on completions", "loss", False, ".4f"),
    ("Perplexity", "perplexity", False, ".2f"),
    ("Stopped at a stop token", "stopped", True, ".1f"),
)
ROW_COLUMNS = ("row", "prompt", "reference", "base", "tuned")
_GOOD, _BAD = QColor("#e3f4e3"), QColor("#fbe4e4")


class EvaluationView(QWidget):
    """Shows an :class:`~qlora_studio.core.evaluation.report.EvalReport` (or nothing)."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.headline = QLabel("No evaluation yet.")
        self.headline.setWordWrap(True)
        self.headline.setTextFormat(Qt.TextFormat.RichText)
        layout.addWidget(self.headline)
        self.scores = QTableWidget(len(SCORE_ROWS), 3)
        self.scores.setHorizontalHeaderLabels(("base", "tuned", "change"))
        self.scores.setVerticalHeaderLabels([label for label, *_ in SCORE_ROWS])
        self.scores.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.scores.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.scores.setMaximumHeight(28 * (len(SCORE_ROWS) + 1) + 6)
        layout.addWidget(self.scores)
        self.rows = QTableWidget(0, len(ROW_COLUMNS))
        self.rows.setHorizontalHeaderLabels(ROW_COLUMNS)
        self.rows.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.rows.setWordWrap(True)
        self.rows.verticalHeader().setVisible(False)
        header = self.rows.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        for column in range(1, len(ROW_COLUMNS)):
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Stretch)
        layout.addWidget(self.rows, 1)
        self.report = None

    def show_report(self, report) -> None:
        self.report = report
        if report is None:
            self.headline.setText("No evaluation yet.")
            self.scores.clearContents()
            self.rows.setRowCount(0)
            return
        base, tuned = report.scores["base"], report.scores["tuned"]
        self.headline.setText(
            f"<b>Exact match {100 * base.exact_match:.0f}% → {100 * tuned.exact_match:.0f}%</b> "
            f"({report.delta_points:+.0f} points) on {base.rows} rows of "
            f"<code>{report.data}</code>; greedy answers up to "
            f"{report.settings.max_new_tokens} tokens, {report.runtime_s:.0f} s on "
            f"{report.device}, {report.created}"
        )
        for i, (_, attr, percent, fmt) in enumerate(SCORE_ROWS):
            values = [getattr(base, attr), getattr(tuned, attr)]
            if percent:
                values = [100 * v for v in values]
            cells = [_fmt(v, fmt) for v in values]
            cells.append("-" if None in values else format(values[1] - values[0], "+" + fmt))
            for j, text in enumerate(cells):
                item = QTableWidgetItem(text)
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.scores.setItem(i, j, item)
        self.rows.setRowCount(len(report.rows))
        for i, row in enumerate(report.rows):
            cells = [str(row.row), row.prompt, row.reference]
            for side in ("base", "tuned"):
                cells.append(("✓ " if row.exact[side] else "✗ ") + row.outputs[side])
            for j, text in enumerate(cells):
                item = QTableWidgetItem(" ".join(text.split()))  # rambling answers: one paragraph
                item.setToolTip(text)
                if j >= 3:
                    side = ROW_COLUMNS[j]
                    item.setBackground(QBrush(_GOOD if row.exact[side] else _BAD))
                self.rows.setItem(i, j, item)
        self.rows.resizeRowsToContents()


def _fmt(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)
