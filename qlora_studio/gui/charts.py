"""Live training charts: loss (raw, smoothed, eval) against step, and memory against time.

Events only append to numpy buffers and mark a curve dirty; a QTimer redraws dirty curves every
``refresh_ms`` (pyqtgraph ``examples/scrollingPlots.py``), so a burst of events costs one redraw,
and peak downsampling with clip-to-view keeps long runs cheap to draw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

GIB = 2**30  # "GB" everywhere in the app means 2**30 bytes
MIN_HEIGHT = 180

# Colours that read well on the white plot background (Tableau 10, as on the Memory page).
BACKGROUND = "w"
AXIS_COLOUR = "#555555"
GRID_ALPHA = 0.15
PALETTE = (  # Tableau 10
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)


def styled_plot(x_label: str, y_label: str, *, si_prefix: bool = False) -> pg.PlotWidget:
    """A plot in the app's chart style: white, light grid, grey labelled axes, peak
    downsampling and clipping to the view (cheap redraws of long curves)."""
    widget = pg.PlotWidget(background=BACKGROUND)
    item: pg.PlotItem = widget.getPlotItem()
    # Without auto=True, mode="peak" alone leaves downsampling off (ds stays 1).
    item.setDownsampling(auto=True, mode="peak")
    item.setClipToView(True)
    item.showGrid(x=True, y=True, alpha=GRID_ALPHA)
    item.layout.setContentsMargins(2, 2, 6, 2)
    for side, text in (("bottom", x_label), ("left", y_label)):
        axis = item.getAxis(side)
        axis.setPen(AXIS_COLOUR)
        axis.setTextPen(AXIS_COLOUR)
        item.setLabel(side, text, color=AXIS_COLOUR)
        axis.enableAutoSIPrefix(si_prefix)  # off: "0.55 GB", not "550 (x0.001) GB"
        # major and minor ticks only: the faint third grid level doubled each repaint's cost
        axis.setStyle(maxTickLevel=1)
    return widget


class GrowingSeries:
    """x/y float64 buffers that double their capacity when full.

    Appending is amortised O(1) and :meth:`view` returns slices without copying, so a chart can
    hand the same memory to ``setData`` on every redraw.
    """

    def __init__(self, capacity: int = 1024):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self._initial = capacity
        self._x = np.empty(capacity, dtype=np.float64)
        self._y = np.empty(capacity, dtype=np.float64)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return len(self._x)

    def append(self, x: float, y: float) -> None:
        if self._n == len(self._x):
            self._grow()
        self._x[self._n] = x
        self._y[self._n] = y
        self._n += 1

    def view(self) -> tuple[np.ndarray, np.ndarray]:
        """The stored points, oldest first (views into the buffers, not copies)."""
        return self._x[: self._n], self._y[: self._n]

    def last(self) -> tuple[float, float] | None:
        if not self._n:
            return None
        return float(self._x[self._n - 1]), float(self._y[self._n - 1])

    def discard_from(self, x: float) -> None:
        """Forget the points at ``x`` and after (x must be ascending, as steps and times are)."""
        self._n = int(np.searchsorted(self._x[: self._n], x, side="left"))

    def clear(self) -> None:
        # Fresh buffers rather than a reset count: a curve may still hold views of the old ones.
        self._x = np.empty(self._initial, dtype=np.float64)
        self._y = np.empty(self._initial, dtype=np.float64)
        self._n = 0

    def _grow(self) -> None:
        capacity = 2 * len(self._x)
        for name in ("_x", "_y"):
            old = getattr(self, name)
            new = np.empty(capacity, dtype=np.float64)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)


@dataclass(frozen=True)
class CurveStyle:
    """How one named curve is drawn; ``width=0`` draws symbols only."""

    name: str
    colour: str
    width: float = 1.0
    symbol: str | None = None


class _LiveChart(QWidget):
    """A compact pyqtgraph plot whose curves redraw from a timer, only when new data arrived.

    Curves are created on their first data, so the legend lists only what has been measured;
    a chart with no curve hides its legend (an empty box otherwise).
    """

    refresh_ms: int = 150

    def __init__(
        self,
        styles: tuple[CurveStyle, ...],
        x_label: str,
        y_label: str,
        legend_offset: tuple[int, int],
        legend_columns: int,
        parent: QWidget | None = None,
        refresh_ms: int | None = None,
    ):
        super().__init__(parent)
        self.setMinimumHeight(MIN_HEIGHT)
        self.styles = {style.name: style for style in styles}
        self.series: dict[str, GrowingSeries] = {name: GrowingSeries() for name in self.styles}
        self.curves: dict[str, pg.PlotDataItem] = {}
        self.redraw_count = 0
        self._dirty: set[str] = set()

        self.plot_widget = styled_plot(x_label, y_label)
        self.plot_item: pg.PlotItem = self.plot_widget.getPlotItem()
        self.legend: pg.LegendItem = self.plot_item.addLegend(
            offset=legend_offset,
            labelTextColor="#333333",
            labelTextSize="8pt",
            brush=pg.mkBrush(255, 255, 255, 180),
            pen=pg.mkPen("#cccccc"),
            verSpacing=-4,
            colCount=legend_columns,
        )
        self.legend.setVisible(False)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot_widget)

        self.refresh_ms = self.refresh_ms if refresh_ms is None else refresh_ms
        self._timer = QTimer(self)
        self._timer.setInterval(self.refresh_ms)
        self._timer.timeout.connect(self._on_tick)
        self._timer.start()

    # ---- data ---------------------------------------------------------------------------
    def _append(self, name: str, x: float, y: float) -> None:
        self.series[name].append(x, y)
        self._dirty.add(name)

    def _discard_from(self, name: str, x: float) -> None:
        series = self.series[name]
        before = len(series)
        series.discard_from(x)
        if len(series) != before:
            self._dirty.add(name)

    def clear(self) -> None:
        """Forget all points and remove every curve (and its legend entry) at once."""
        for series in self.series.values():
            series.clear()
        for curve in self.curves.values():
            self.plot_item.removeItem(curve)
        self.curves.clear()
        self.legend.setVisible(False)
        self._dirty.clear()
        self.plot_item.enableAutoRange()

    # ---- drawing ------------------------------------------------------------------------
    def redraw(self) -> None:
        """Hand the buffers of the curves that changed since the last redraw to pyqtgraph."""
        self.redraw_count += 1
        for name in self.styles:  # style order, so legend entries keep a stable order
            if name not in self._dirty:
                continue
            x, y = self.series[name].view()
            curve = self.curves.get(name)
            if curve is None:
                if not len(x):
                    continue
                curve = self.curves[name] = self._make_curve(self.styles[name])
                self.legend.setVisible(True)
            curve.setData(x, y)
        self._dirty.clear()

    def is_dirty(self) -> bool:
        return bool(self._dirty)

    def _on_tick(self) -> None:
        if self._dirty:
            self.redraw()

    def _make_curve(self, style: CurveStyle) -> pg.PlotDataItem:
        options: dict[str, Any] = {"name": style.name, "antialias": False}
        options["pen"] = pg.mkPen(style.colour, width=style.width) if style.width else None
        if style.symbol:
            options.update(
                symbol=style.symbol,
                symbolSize=6,
                symbolBrush=pg.mkBrush(style.colour),
                symbolPen=pg.mkPen("w"),
            )
        # PlotItem.addItem applies its downsampling and clip-to-view settings to the new curve.
        return self.plot_item.plot(**options)

    def point_count(self) -> dict[str, int]:
        """Points each curve holds as of the last redraw (0 for a curve not drawn yet)."""
        counts = {}
        for name in self.styles:
            curve = self.curves.get(name)
            x = curve.getOriginalDataset()[0] if curve is not None else None
            counts[name] = 0 if x is None else len(x)
        return counts


LOSS = "loss"
SMOOTHED = "smoothed"
EVAL_LOSS = "eval loss"


class SmoothedLoss:
    """The smoothed loss curve: TensorBoard's debiased exponential moving average, with a
    smoothing window that grows with the run.

    The average starts at 0 and is divided by ``1 - prod(1 - a_i)``, so the first losses are
    not dragged toward the very first one. The weight of the newest loss, ``a_t``, follows a
    window of ``window_fraction`` of the losses so far (``a = 2 / (window + 1)``, at least one
    loss), never below ``alpha``: a 60-step run's curve follows its loss within a few steps, a
    long run is smoothed over about ``2 / alpha - 1`` losses. ``window_fraction=0`` gives the
    plain debiased EMA with weight ``alpha``.
    """

    def __init__(self, alpha: float = 0.1, window_fraction: float = 0.2):
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"ema_alpha must be in (0, 1], got {alpha}")
        if window_fraction < 0.0:
            raise ValueError(f"window_fraction must be at least 0, got {window_fraction}")
        self.alpha = alpha
        self.window_fraction = window_fraction
        self.reset()

    def reset(self) -> None:
        self.count = 0  # finite losses seen
        self._biased = 0.0  # the EMA started at 0
        self._kept = 1.0  # prod(1 - a_i): the weight still on that 0 start
        self.value: float | None = None

    def weight(self, count: int) -> float:
        """The weight of the ``count``-th finite loss."""
        if self.window_fraction <= 0.0:
            return self.alpha
        window = max(1.0, self.window_fraction * count)
        return max(self.alpha, min(1.0, 2.0 / (window + 1.0)))

    def add(self, loss: float) -> float | None:
        """Take one loss (a non-finite one leaves the curve as it is); return the smoothed
        value, None until a finite loss came."""
        if math.isfinite(loss):
            self.count += 1
            a = self.weight(self.count)
            self._biased = a * loss + (1.0 - a) * self._biased
            self._kept *= 1.0 - a
            self.value = self._biased / (1.0 - self._kept)
        return self.value


class LossChart(_LiveChart):
    """Training loss (thin, light), its smoothed trend (bold, :class:`SmoothedLoss`) and eval
    loss (dots) against the optimizer step."""

    def __init__(
        self,
        parent: QWidget | None = None,
        *,
        ema_alpha: float = 0.1,
        window_fraction: float = 0.2,
        refresh_ms: int | None = None,
    ):
        self.smoothed = SmoothedLoss(ema_alpha, window_fraction)  # validates before any widget
        styles = (
            CurveStyle(LOSS, "#a6c8e8", width=1),
            CurveStyle(SMOOTHED, "#1f5fa8", width=2.5),
            CurveStyle(EVAL_LOSS, "#e15759", width=0, symbol="o"),
        )
        super().__init__(styles, "step", "loss", (-6, 6), 1, parent, refresh_ms)

    @property
    def ema_alpha(self) -> float:
        return self.smoothed.alpha

    def add_metrics(self, event: dict) -> None:
        """Append ``loss`` and ``eval_loss`` when present at ``event["step"]``; redraw later.

        A step at or before one already shown (a run resumed from an earlier checkpoint)
        replaces the points from that step on.
        """
        step = event.get("step")
        if step is None:
            return
        loss, eval_loss = event.get("loss"), event.get("eval_loss")
        if loss is not None:
            last = self.series[LOSS].last()
            if last is not None and step <= last[0]:
                for name in self.styles:
                    self._discard_from(name, step)
                self._replay_smoothing()
            loss = float(loss)
            if not math.isfinite(loss):
                loss = math.nan  # a gap in the raw curve; inf would wreck the autorange
            smoothed = self.smoothed.add(loss)
            self._append(LOSS, step, loss)
            self._append(SMOOTHED, step, math.nan if smoothed is None else smoothed)
        if eval_loss is not None:
            last = self.series[EVAL_LOSS].last()
            if last is not None and step <= last[0]:
                self._discard_from(EVAL_LOSS, step)
            eval_loss = float(eval_loss)
            self._append(EVAL_LOSS, step, eval_loss if math.isfinite(eval_loss) else math.nan)

    def _replay_smoothing(self) -> None:
        """After a resume dropped the later points: the smoothing as of the last kept loss."""
        self.smoothed.reset()
        for loss in self.series[LOSS].view()[1]:
            self.smoothed.add(float(loss))

    def clear(self) -> None:
        super().clear()
        self.smoothed.reset()

    def point_count(self) -> dict[str, int]:
        """``{"loss": n, "smoothed": n, "eval": n}`` as drawn at the last redraw."""
        counts = super().point_count()
        return {"loss": counts[LOSS], "smoothed": counts[SMOOTHED], "eval": counts[EVAL_LOSS]}


GPU_USED = "GPU used (NVML)"
TORCH_ALLOCATED = "torch allocated"
TORCH_RESERVED = "torch reserved"
PROCESS_RAM = "process RAM"
# curve name -> memory event field, in legend order
MEMORY_FIELDS = {
    GPU_USED: "nvml_used_bytes",
    TORCH_RESERVED: "torch_reserved_bytes",
    TORCH_ALLOCATED: "torch_allocated_bytes",
    PROCESS_RAM: "rss_bytes",
}
GPU_TOTAL_COLOUR = "#444444"
OOM_COLOUR = "#d62728"


class MemoryChart(_LiveChart):
    """GPU (NVML), torch allocated / reserved and process RAM in GB against seconds since the
    first sample, under a dashed line at the GPU's total memory."""

    def __init__(self, parent: QWidget | None = None, *, refresh_ms: int | None = None):
        styles = (
            CurveStyle(GPU_USED, "#e15759", width=2),
            CurveStyle(TORCH_RESERVED, "#f28e2b", width=1.5),
            CurveStyle(TORCH_ALLOCATED, "#4e79a7", width=1.5),
            CurveStyle(PROCESS_RAM, "#59a14f", width=1.5),
        )
        super().__init__(styles, "seconds", "memory (GB)", (-6, -6), 2, parent, refresh_ms)
        self.gpu_total_line: pg.InfiniteLine | None = None
        self.gpu_total_bytes: int | None = None
        self.oom_lines: list[pg.InfiniteLine] = []
        self._t0: float | None = None
        # Memory reads against zero: a baseline keeps 0 GB inside the autorange.
        self.plot_item.addItem(pg.InfiniteLine(pos=0, angle=0, pen=pg.mkPen("#bbbbbb")))

    def add_memory(self, event: dict) -> None:
        """Append every measured field of a memory event at its time; redraw later."""
        when = event.get("time")
        if when is None:
            return
        if self._t0 is None:
            self._t0 = float(when)
        x = float(when) - self._t0
        for name, field in MEMORY_FIELDS.items():
            value = event.get(field)
            if value is not None:
                self._append(name, x, value / GIB)
        total = event.get("nvml_total_bytes")
        if total and total != self.gpu_total_bytes:
            self.set_gpu_total(total)

    def set_gpu_total(self, total_bytes: int | None) -> None:
        """Draw (or move, or with None remove) the dashed line at the GPU's total memory."""
        if not total_bytes:
            if self.gpu_total_line is not None:
                self.plot_item.removeItem(self.gpu_total_line)
            self.gpu_total_line, self.gpu_total_bytes = None, None
            return
        self.gpu_total_bytes = int(total_bytes)
        gb = total_bytes / GIB
        if self.gpu_total_line is None:
            self.gpu_total_line = pg.InfiniteLine(
                pos=gb,
                angle=0,
                pen=pg.mkPen(GPU_TOTAL_COLOUR, width=1, style=Qt.PenStyle.DashLine),
                label="GPU total {value:.1f} GB",
                # below the line: it often sits at the top of the view
                labelOpts={
                    "position": 0.02,
                    "anchors": [(0, 0), (0, 0)],
                    "color": GPU_TOTAL_COLOUR,
                },
            )
            self.plot_item.addItem(self.gpu_total_line)
        else:
            self.gpu_total_line.setValue(gb)

    def mark_oom(self, when: float | None = None, label: str = "out of memory") -> None:
        """A red vertical line at ``when`` seconds on the chart's axis (default: the last
        sample), labelled ``label``."""
        if when is None:
            lasts = [s.last() for s in self.series.values()]
            when = max((last[0] for last in lasts if last is not None), default=0.0)
        line = pg.InfiniteLine(
            pos=when,
            angle=90,
            pen=pg.mkPen(OOM_COLOUR, width=2),
            label=label,
            labelOpts={"position": 0.9, "anchors": [(1, 0), (1, 0)], "color": OOM_COLOUR},
        )
        self.plot_item.addItem(line)
        self.oom_lines.append(line)

    def clear(self) -> None:
        super().clear()
        for line in self.oom_lines:
            self.plot_item.removeItem(line)
        self.oom_lines.clear()
        self.set_gpu_total(None)
        self._t0 = None
