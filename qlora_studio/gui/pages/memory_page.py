"""Memory: full, LoRA and QLoRA side by side as stacked bars of their terms, against the chosen
GPU (NVML, or a card from the catalogue, or a custom size), with the verdict and advice; this
computer's GPUs against the run's ``distributed`` settings and how many GPUs it needs; and
"Verify fit" that runs the probe (two real steps) and shows measured beside estimated."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QTextBrowser,
)

from qlora_studio.config import METHOD_LABELS, METHODS
from qlora_studio.core.events import GB, format_gb
from qlora_studio.core.gpu import list_gpus  # stdlib only at import: NVML loads on use
from qlora_studio.gui.charts import PALETTE
from qlora_studio.gui.pages.base import ERROR_COLOUR, Page, error_html

if TYPE_CHECKING:
    from qlora_studio.core.gpu import GpuInfo
    from qlora_studio.core.gpu_plan import GpuLine, GpuPlan

COLOURS = [*PALETTE, "#1f77b4", "#8c564b", "#17becf"]
VERIFY_TEXT = "Verify fit (2 real steps)"
PROBE_CONFIG = "probe.yaml"  # one file in user_data/configs, overwritten by each probe
PROBE_GRACE_S = 5.0  # the probe exits at once on a stop line; killed if it has not by then
STATUS_COLOUR = {"fits": "#1b7f3b", "tight": "#b8860b", "does not fit": "#b00020"}
UNUSED_COLOUR = "#777"  # a GPU the run leaves alone


class MemoryPage(Page):
    title = "Memory"

    def __init__(self, state, parent=None, read_gpus: Callable[[], list[GpuInfo]] | None = None):
        super().__init__(state, parent)
        self.read_gpus = read_gpus or list_gpus  # NVML's GPUs; a test passes its own
        self.estimates: dict = {}
        self.verdicts: dict = {}
        self.plan: GpuPlan | None = None

        row = QHBoxLayout()
        row.addWidget(QLabel("Judge against:"))
        self.gpu_combo = QComboBox()
        self.gpu_combo.setEditable(True)
        self.gpu_combo.setToolTip(
            "A detected GPU (NVML), a card from the catalogue, or a size such as 24GB"
        )
        self.gpu_combo.setMinimumWidth(280)
        row.addWidget(self.gpu_combo, 1)
        self.verify_button = QPushButton(VERIFY_TEXT)
        self.verify_button.setToolTip(
            "Runs two training steps on the longest batch and measures the peak memory"
        )
        self.verify_button.clicked.connect(self.verify)
        row.addWidget(self.verify_button)
        self.layout_.addLayout(row)
        self.gpu_line = QLabel("")
        self.gpu_line.setWordWrap(True)
        self.layout_.addWidget(self.gpu_line)
        self.fit_line = QLabel("")  # what train.fit: auto would choose for this GPU
        self.fit_line.setWordWrap(True)
        self.layout_.addWidget(self.fit_line)
        self.gpus_view = QLabel("")  # this computer's GPUs against distributed (NVML only)
        self.gpus_view.setObjectName("gpuPlan")
        self.gpus_view.setWordWrap(True)
        self.gpus_view.hide()
        self.layout_.addWidget(self.gpus_view)

        self.plot = pg.PlotWidget(background="w")
        self.plot.setMinimumHeight(300)
        self.plot.setLabel("left", "GPU memory (GB)")
        self.plot.showGrid(y=True, alpha=0.3)
        self.legend = self._legend_beside(self.plot)
        self.layout_.addWidget(self.plot, 1)

        self.probe_bar = QProgressBar()
        self.probe_bar.setRange(0, 0)
        self.probe_bar.hide()
        self.layout_.addWidget(self.probe_bar)
        self.probe_status = QLabel("")
        self.layout_.addWidget(self.probe_status)
        self.details = QTextBrowser()
        self.details.setMinimumHeight(220)
        self.layout_.addWidget(self.details, 1)
        self._fill_gpus()
        self.gpu_combo.currentTextChanged.connect(lambda _: self.refresh())
        state.model_info_changed.connect(lambda _: self.refresh())

    @staticmethod
    def _legend_beside(plot: pg.PlotWidget) -> pg.LegendItem:
        """The terms' legend in its own column right of the bars: inside the plot it covered
        the QLoRA bar whenever the window was narrow or the term names long."""
        legend = pg.LegendItem(offset=None, labelTextColor="#333")
        legend.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        layout = plot.getPlotItem().layout
        layout.addItem(legend, 2, 3)  # row 2 holds the view box (col 1) and its right axis
        layout.setAlignment(legend, Qt.AlignmentFlag.AlignTop)
        return legend

    def _fill_gpus(self) -> None:
        from qlora_studio.core.gpu import load_catalogue

        gpus = self.read_gpus()
        for gpu in gpus:
            self.gpu_combo.addItem(f"cuda:{gpu.index} — {gpu.name}", f"cuda:{gpu.index}")
        for card in load_catalogue():
            self.gpu_combo.addItem(f"{card['name']} ({card['memory_gb']} GB)", card["name"])
        if not gpus:
            self.gpu_combo.setCurrentText("GeForce RTX 4090 (24 GB)")

    def _gpu_spec(self) -> str:
        index = self.gpu_combo.findText(self.gpu_combo.currentText())
        if index >= 0 and self.gpu_combo.itemData(index):
            return str(self.gpu_combo.itemData(index))
        return self.gpu_combo.currentText().strip() or "auto"

    def on_shown(self) -> None:
        self.refresh()

    def is_complete(self) -> bool:
        verdict = self.verdicts.get(self.state.cfg.method)
        return verdict is not None and verdict.status != "does not fit"

    # ---- estimate -----------------------------------------------------------------------
    def refresh(self) -> None:
        from qlora_studio.core.errors import StudioError
        from qlora_studio.core.fit import judge
        from qlora_studio.core.gpu import resolve_gpu
        from qlora_studio.core.memory import estimate_memory
        from qlora_studio.core.memory_settings import Settings

        info = self.state.model_info
        if info is None:
            self.details.setHtml("<p>Inspect a model on the <b>Model</b> page first.</p>")
            return
        gpus = self.read_gpus()
        try:
            gpu = resolve_gpu(self._gpu_spec(), gpus)  # NVML read once per refresh
        except StudioError as exc:
            self.gpu_line.setText(f"<span style='color:#b00020'>{exc.message}</span> {exc.hint}")
            return
        detected = "" if gpus else " — no NVIDIA GPU found on this computer (NVML)"
        self.gpu_line.setText(
            f"<b>{gpu.name}</b>: {gpu.total_bytes / GB:.1f} GB total, "
            f"{gpu.free_bytes / GB:.1f} GB free ({gpu.source}){detected}"
        )
        settings = Settings.from_config(
            self.state.cfg, device="cuda", bf16_supported=gpu.bf16_supported
        )
        self.estimates = {m: estimate_memory(info, settings, m) for m in METHODS}
        self.verdicts = {
            m: judge(e, info, settings, gpu.free_bytes) for m, e in self.estimates.items()
        }
        self._show_auto_fit(info, gpu)
        self._show_gpus(info, settings, gpus, gpu)
        self._draw(gpu)
        self._describe(settings)
        self.changed.emit()

    def _show_auto_fit(self, info, gpu) -> None:
        from qlora_studio.core.fit import auto_fit

        cfg = self.state.cfg
        self.fit_line.setVisible(cfg.train.fit == "auto")
        if cfg.train.fit != "auto":
            return
        choice = auto_fit(info, cfg, gpu.free_bytes, bf16_supported=gpu.bf16_supported)
        text = f"<b>Auto-fit</b> ({METHOD_LABELS[cfg.method]}): {choice.reason}"
        if not choice.fits:
            text = f"<span style='color:#b00020'>{text}</span>. To fit: {choice.hint}"
        self.fit_line.setText(text)

    def _show_gpus(self, info, settings, gpus: list[GpuInfo], judged: GpuInfo) -> None:
        """One line per GPU NVML sees against the run's ``distributed`` settings, and how many
        GPUs like the judged one the chosen method needs; nothing without an NVIDIA GPU."""
        from qlora_studio.core.gpu_plan import plan_gpus, strategy_label

        self.gpus_view.setVisible(bool(gpus))
        if not gpus:
            self.plan = None
            return
        cfg = self.state.cfg
        d = cfg.distributed
        self.plan = plan = plan_gpus(info, settings, cfg.method, d, gpus, kind=judged)
        method = METHOD_LABELS[cfg.method]
        if plan.processes > 1:
            how = f"{method} with {strategy_label(d)} over {plan.processes} GPUs needs"
            how += f" {format_gb(plan.need_bytes)} on each"
        else:
            how = f"{method} on one GPU needs {format_gb(plan.need_bytes)}"
        rows = "".join(self._gpu_row(line) for line in plan.lines)
        verdict = f"<b style='color:{STATUS_COLOUR[plan.status]}'>{html.escape(plan.verdict)}</b>"
        warnings = "".join(
            f"<br><span style='color:{ERROR_COLOUR}'>{html.escape(w)}</span>" for w in plan.warnings
        )
        self.gpus_view.setText(
            f"<b>This computer's GPUs</b>: {how}"
            f"<table cellspacing='0' cellpadding='3'>{rows}</table>{verdict}{warnings}"
        )

    @staticmethod
    def _gpu_row(line: GpuLine) -> str:
        """cuda:N, name, free of total, and fits / tight / does not fit (greyed: not used)."""
        mark = "☑" if line.chosen else "☐"
        if line.used:
            status = f"<span style='color:{STATUS_COLOUR[line.status]}'>{line.status}</span>"
        else:
            status = "chosen, left idle" if line.chosen else "not chosen"
        cells = [
            mark,
            f"cuda:{line.index}",
            html.escape(line.name),
            f"{format_gb(line.free_bytes, 1)} free of {format_gb(line.total_bytes, 1)}",
            status,
        ]
        style = "" if line.used else f" style='color:{UNUSED_COLOUR}'"
        return f"<tr{style}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"

    def _draw(self, gpu) -> None:
        self.plot.clear()
        self.legend.clear()
        names: list[str] = []
        for estimate in self.estimates.values():
            for term in estimate.terms:
                if term.name not in names:
                    names.append(term.name)
        bottoms = [0.0] * len(METHODS)
        for i, name in enumerate(names):
            heights = []
            for method in METHODS:
                term = self.estimates[method].term(name)
                heights.append(term.bytes / GB if term else 0.0)
            bars = pg.BarGraphItem(
                x=list(range(len(METHODS))),
                height=heights,
                width=0.6,
                y0=bottoms,
                brush=COLOURS[i % len(COLOURS)],
            )
            self.plot.addItem(bars)
            self.legend.addItem(bars, name)
            bottoms = [b + h for b, h in zip(bottoms, heights, strict=True)]
        # the free line's label under it, in the gap between the LoRA and QLoRA bars: an NVML
        # GPU's free and total lines lie a few pixels apart, and their labels overwrote each other
        above, below = [(0, 1), (0, 1)], [(0, 0), (0, 0)]
        lines = [(gpu.total_bytes / GB, f"{gpu.name} total", 0.12, above, Qt.PenStyle.DashLine)]
        if gpu.free_bytes < gpu.total_bytes:
            lines.append((gpu.free_bytes / GB, "free", 0.61, below, Qt.PenStyle.DotLine))
        for y, label, position, anchors, style in lines:
            line = pg.InfiniteLine(
                pos=y,
                angle=0,
                pen=pg.mkPen("#333", width=2, style=style),
                label=f"{label} {y:.1f} GB",
                labelOpts={"position": position, "color": "#333", "anchors": anchors},
            )
            self.plot.addItem(line)
        axis = self.plot.getAxis("bottom")
        axis.setTicks(
            [
                [
                    (i, f"{METHOD_LABELS[m]}: {self.estimates[m].total_bytes / GB:.1f} GB")
                    for i, m in enumerate(METHODS)
                ]
            ]
        )
        self.plot.setXRange(-0.5, len(METHODS) - 0.5, padding=0)
        self.plot.setYRange(0, max(max(bottoms), gpu.total_bytes / GB) * 1.1)

    def _describe(self, settings) -> None:
        parts = [
            f"<p>batch {settings.batch_size} × {settings.seq_len} tokens, compute "
            f"{settings.compute_dtype}, optimizer {settings.optimizer}, gradient "
            f"checkpointing {'on' if settings.gradient_checkpointing else 'off'}</p>"
        ]
        for method in METHODS:
            estimate, verdict = self.estimates[method], self.verdicts[method]
            colour = STATUS_COLOUR[verdict.status]
            chosen = " (chosen)" if method == self.state.cfg.method else ""
            parts.append(
                f"<h3>{METHOD_LABELS[method]}{chosen}: "
                f"<span style='color:{colour}'>{verdict.status}"
                f"</span> — {estimate.total_bytes / GB:.2f} GB</h3>"
                f"<p>Largest term: <b>{estimate.dominant}</b>. Largest batch that fits: "
                f"{verdict.max_batch_size}; longest sequence: {verdict.max_seq_len:,}.</p>"
            )
            if verdict.advice:
                parts.append("<ul>" + "".join(f"<li>{a}</li>" for a in verdict.advice) + "</ul>")
            rows = "".join(
                f"<tr><td>{t.name}</td><td align='right'>{t.bytes / GB:.2f} GB</td>"
                f"<td>{t.detail}</td></tr>"
                for t in estimate.terms
            )
            rows += "".join(  # paged optimizer states: CPU RAM, outside the GPU total
                f"<tr><td>{t.name}, in CPU RAM</td><td align='right'>{t.bytes / GB:.2f} GB</td>"
                f"<td>{t.detail}</td></tr>"
                for t in estimate.cpu_terms
            )
            parts.append(f"<table cellspacing='4'>{rows}</table>")
        self.details.setHtml("".join(parts))

    # ---- probe --------------------------------------------------------------------------
    def verify(self) -> None:
        """Run the probe (``qlora-studio probe CONFIG --json``) in a child process: fresh
        memory, measured alone, nothing left behind in the window. Pressed while one runs,
        the button cancels it."""
        from qlora_studio.gui.jobs import ChildJob
        from qlora_studio.resources import user_data_dir

        if self.is_running():
            self.state.jobs.stop((self, "probe"))
            return
        cfg = self.state.collect_config()
        path = cfg.save(user_data_dir() / "configs" / PROBE_CONFIG)
        job = ChildJob(["probe", str(path), "--json"], grace_s=PROBE_GRACE_S)
        job.log.connect(self._on_probe_log)
        job.succeeded.connect(self._on_probe)
        job.failed.connect(self._on_probe_failed)
        job.cancelled.connect(self._on_probe_cancelled)
        job.finished.connect(self._probe_finished)
        self.verify_button.setText("Cancel verify")
        self.probe_status.setText("Probing: two training steps on the longest batch…")
        self.probe_bar.show()
        self.run_job(job, "probe")

    def _on_probe_log(self, line: str) -> None:
        if line.startswith("• "):  # the probe's status lines
            self.probe_status.setText(line[2:])

    def _on_probe_failed(self, message: str, hint: str) -> None:
        self._probe_text(f"<p>{error_html(message, hint, prefix='Probe failed: ')}</p>")

    def _on_probe_cancelled(self, _event: dict) -> None:
        self._probe_text("<p>Verify fit cancelled.</p>")

    def _probe_finished(self) -> None:
        self.verify_button.setText(VERIFY_TEXT)
        self.probe_status.setText("")
        self.probe_bar.hide()

    def _probe_text(self, html: str) -> None:
        self.details.setHtml(html + self.details.toHtml())

    def _on_probe(self, result: dict) -> None:
        self._probe_text(
            f"<p><b>Verify fit</b> ({METHOD_LABELS[result['method']]}, {result['steps']} steps on "
            f"{result['device']}, batch {result['batch_size']} × {result['seq_len']} tokens): "
            f"measured <b>{result['peak_bytes'] / GB:.2f} GB</b>, estimated "
            f"{result['estimate_bytes'] / GB:.2f} GB at the same settings "
            f"({result['error_pct']:+.1f}%).</p>"
        )
