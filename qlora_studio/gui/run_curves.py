"""The loss curves of several finished or running runs overlaid on one plot (the Runs page).

Unlike the live charts in ``charts.py`` this plot is redrawn only when the selection changes, so
it draws at once instead of from a timer; it shares their look (axes, grid, legend).
"""

from __future__ import annotations

import math

import numpy as np
import pyqtgraph as pg
from PySide6.QtWidgets import QVBoxLayout, QWidget

from qlora_studio.gui.charts import MIN_HEIGHT, PALETTE, styled_plot

RUN_COLOURS = PALETTE  # one colour per run, in selection order


class RunLossChart(QWidget):
    """Training loss against step, one curve per run, labelled with the run's name."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setMinimumHeight(MIN_HEIGHT)
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.plot_widget = styled_plot("step", "loss", si_prefix=True)
        self.plot_item: pg.PlotItem = self.plot_widget.getPlotItem()
        self.plot_item.setLimits(xMin=0, yMin=0)
        self.legend: pg.LegendItem = self.plot_item.addLegend(
            offset=(8, -8),  # bottom left: loss curves start high and fall to the right
            labelTextColor="#333333",
            labelTextSize="8pt",
            brush=pg.mkBrush(255, 255, 255, 180),
            pen=pg.mkPen("#cccccc"),
            verSpacing=-4,
        )
        self.legend.setVisible(False)  # an empty legend is an empty box
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

    def set_curves(self, curves: dict[str, list[tuple[int, float]]]) -> None:
        """Show exactly these curves: run label -> [(step, loss), ...] (empty lists skipped)."""
        self.clear()
        for index, (label, points) in enumerate(curves.items()):
            if not points:
                continue
            steps = np.fromiter((s for s, _ in points), dtype=np.float64, count=len(points))
            losses = np.fromiter(
                (v if math.isfinite(v) else math.nan for _, v in points),
                dtype=np.float64,
                count=len(points),
            )
            colour = RUN_COLOURS[index % len(RUN_COLOURS)]
            self.curves[label] = self.plot_item.plot(
                steps, losses, name=label, pen=pg.mkPen(colour, width=2), antialias=True
            )
        self.legend.setVisible(bool(self.curves))
        self.plot_item.enableAutoRange()

    def clear(self) -> None:
        for curve in self.curves.values():
            self.plot_item.removeItem(curve)
        self.curves.clear()
        self.legend.setVisible(False)
