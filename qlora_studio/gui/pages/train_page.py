"""Train: Start / Stop / Resume, live loss and memory charts, progress, speed, ETA and a log.

Training runs as the CLI child process (``qlora-studio train CONFIG --events jsonl``) behind a
ChildJob: the window never holds the model, and a crash cannot take it down.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt, QTimer
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui.pages.base import Page

LOG_LINES = 2000
LOG_FLUSH_MS = 100  # log lines arrive in bursts: one append (one layout pass) per interval
RUN_CONFIG = "gui-run.yaml"  # in user_data/configs: the config of the latest Start
SLOT = "training"


def _duration(seconds) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class TrainPage(Page):
    title = "Train"

    def __init__(self, state, parent=None):
        from qlora_studio.gui.charts import LossChart, MemoryChart

        super().__init__(state, parent)
        self.run_dir: Path | None = None
        self._run_announced = False  # the running child has named its run folder
        self.finished_ok = False

        buttons = QHBoxLayout()
        self.start_button = QPushButton("▶ Start")
        self.stop_button = QPushButton("■ Stop")
        self.resume_button = QPushButton("⟳ Resume")
        self.stop_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.start_button.setToolTip("Start a new run with the current settings")
        self.stop_button.setToolTip("Stop after the current step; a checkpoint is saved")
        self.resume_button.setToolTip("Continue the stopped run from its last checkpoint")
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resume_button.clicked.connect(self.resume)
        for button in (self.start_button, self.stop_button, self.resume_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        self.layout_.addLayout(buttons)

        self.progress = QProgressBar()
        self.progress.setFormat("not started")
        self.progress.setValue(0)
        self.layout_.addWidget(self.progress)
        self.numbers = QLabel("Not started. The command that runs is shown below.")
        self.layout_.addWidget(self.numbers)
        self.command = QLabel("")
        self.command.setWordWrap(True)
        self.command.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.layout_.addWidget(self.command)

        self.loss_chart = LossChart()
        self.memory_chart = MemoryChart()
        for chart in (self.loss_chart, self.memory_chart):
            chart.plot_item.setLimits(xMin=0, yMin=0)  # an empty chart shows no negative axes
        charts = QSplitter()
        charts.addWidget(self._titled("Loss", self.loss_chart))
        charts.addWidget(self._titled("Memory", self.memory_chart))
        self.log = QPlainTextEdit()
        self.log.setReadOnly(True)
        self.log.setMaximumBlockCount(LOG_LINES)
        self.log.setPlaceholderText("The training log appears here.")
        self._pending_log: list[str] = []
        self._log_timer = QTimer(self)
        self._log_timer.setSingleShot(True)
        self._log_timer.setInterval(LOG_FLUSH_MS)
        self._log_timer.timeout.connect(self.flush_log)
        vertical = QSplitter(Qt.Orientation.Vertical)
        vertical.addWidget(charts)
        vertical.addWidget(self.log)
        vertical.setSizes([420, 160])
        self.layout_.addWidget(vertical, 1)
        state.resume_requested.connect(self.resume_run)

    @staticmethod
    def _titled(title: str, widget: QWidget) -> QWidget:
        box = QWidget()
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(QLabel(f"<b>{title}</b>"))
        layout.addWidget(widget, 1)
        return box

    # ---- Page contract ------------------------------------------------------------------
    def is_complete(self) -> bool:
        return self.finished_ok

    @property
    def training(self):
        """The running training job (a ChildJob), or None."""
        return self.job(SLOT)

    # ---- actions ------------------------------------------------------------------------
    def _config_path(self) -> Path:
        """The config the child trains from: one file, overwritten at each Start (the run
        folder keeps its own copy, so older ones are never needed)."""
        from qlora_studio.resources import user_data_dir

        return self.state.cfg.save(user_data_dir() / "configs" / RUN_CONFIG)

    def start(self) -> None:
        from qlora_studio.config import ConfigError
        from qlora_studio.gui.jobs import ChildJob

        if self.training is not None:
            return
        self.state.collect_config()
        try:
            self.state.cfg.validate()
        except ConfigError as exc:
            self._say_error(f"{exc.field}: {exc.message}", exc.hint)
            return
        self.loss_chart.clear()
        self.memory_chart.clear()
        self._clear_log()
        self._launch(ChildJob.train(self._config_path()))

    def resume(self) -> None:
        from qlora_studio.gui.jobs import ChildJob

        if self.run_dir is not None and self.training is None:
            self._launch(ChildJob.resume(self.run_dir))

    def resume_run(self, run_dir: Path, losses=()) -> None:
        """Resume the run in ``run_dir`` (chosen on the Runs page); ``losses`` are its
        (step, loss) points so far, shown until the resumed steps replace them."""
        run_dir = Path(run_dir)
        if run_dir != self.run_dir:
            self.loss_chart.clear()
            self.memory_chart.clear()
            self._clear_log()
            for step, loss in losses:
                self.loss_chart.add_metrics({"step": step, "loss": loss})
        self.run_dir = run_dir
        self.finished_ok = False
        self.resume()

    def stop(self) -> None:
        job = self.training
        if job is not None:
            job.request_stop()
            self.stop_button.setEnabled(False)
            self.numbers.setText(self.numbers.text() + "  — stopping after this step…")

    def _launch(self, job) -> None:
        self.finished_ok = False
        self._run_announced = False
        self.command.setText(f"<code>{job.display_command()}</code>")
        job.status.connect(self._on_status)
        job.event.connect(self._on_event)
        job.log.connect(self._append)
        job.progress.connect(self._on_progress)
        job.metrics.connect(self.loss_chart.add_metrics)
        job.memory.connect(self._on_memory)
        job.checkpoint.connect(self._on_checkpoint)
        job.succeeded.connect(self._on_done)
        job.failed.connect(self._on_failed)
        job.cancelled.connect(self._on_cancelled)
        job.finished.connect(self._on_finished)
        self.start_button.setEnabled(False)
        self.resume_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        self.state.running = True
        self.run_job(job, SLOT)

    # ---- job signals --------------------------------------------------------------------
    def _append(self, text: str) -> None:
        self._pending_log.append(text)
        if not self._log_timer.isActive():
            self._log_timer.start()

    def flush_log(self) -> None:
        """Append the lines that arrived since the last flush, in one go."""
        self._log_timer.stop()
        if self._pending_log:
            lines, self._pending_log = self._pending_log[-LOG_LINES:], []
            self.log.appendPlainText("\n".join(lines))

    def _clear_log(self) -> None:
        self._pending_log.clear()
        self.log.clear()

    def _on_status(self, message: str) -> None:
        self._append(f"• {message}")

    def _on_event(self, event: dict) -> None:
        run_dir = event.get("run_dir") if event.get("type") == "status" else None
        if isinstance(run_dir, str) and run_dir:  # the child made (or reopened) the run folder
            self.run_dir = Path(run_dir)
            self._run_announced = True
            self.state.set_run_started(self.run_dir)

    def _on_checkpoint(self, event: dict) -> None:
        self._append(f"checkpoint at step {event['step']}: {event['path']}")

    def _on_progress(self, event: dict) -> None:
        self.state.set_run_progress(event["step"], event["total"])  # the sidebar's indicator
        self.progress.setFormat("step %v of %m")
        self.progress.setMaximum(max(event["total"], 1))
        self.progress.setValue(event["step"])
        self.numbers.setText(
            f"step {event['step']} / {event['total']}   epoch {event['epoch']:.2f}   "
            f"{event['tokens_per_s']:.0f} tokens/s   ETA {_duration(event.get('eta_s'))}"
        )

    def _on_memory(self, event: dict) -> None:
        self.memory_chart.add_memory(event)
        if event.get("nvml_total_bytes"):
            self.memory_chart.set_gpu_total(event["nvml_total_bytes"])

    def _on_done(self, event: dict) -> None:
        self.finished_ok = True
        self.run_dir = Path(event["run_dir"])
        loss = event.get("final_loss")
        self.numbers.setText(
            f"Done at step {event['step']}"
            + (f", final loss {loss:.4f}" if isinstance(loss, (int, float)) else "")
            + f". Adapter: {event['adapter_dir']}"
        )
        self.changed.emit()

    def _on_failed(self, message: str, hint: str) -> None:
        if "out of memory" in message.lower():
            self.memory_chart.mark_oom()
        self._say_error(message, hint)

    def _say_error(self, message: str, hint: str) -> None:
        text = f"<span style='color:#b00020'><b>{message}</b></span>"
        if hint:
            text += f"<br>Hint: {hint}"
        self.numbers.setText(text)
        self._append(f"✗ {message}" + (f"\n  hint: {hint}" if hint else ""))

    def _on_cancelled(self, event: dict) -> None:
        checkpoint = event.get("checkpoint") or ""
        if checkpoint:
            self.run_dir = Path(checkpoint).parent.parent
        self.numbers.setText(
            f"Stopped at step {event['step']}. Checkpoint: {checkpoint or 'none'}"
            " — Resume continues from there."
        )

    def _on_finished(self) -> None:
        self.flush_log()
        self.state.running = False
        if self._run_announced and self.run_dir is not None:
            self.state.set_run_finished(self.run_dir)
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        self.resume_button.setEnabled(self.run_dir is not None and not self.finished_ok)
        self.changed.emit()
