"""Compare: the base and the tuned model answer the same prompt side by side, streamed token by
token with the run's chat template, and the held-out evaluation table.

The run's model is loaded once in this process (one model: the adapter is switched off for the
base's turn); "Unload" gives its memory back. Every job is a FunctionWorker in its own thread.
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QFont, QKeySequence, QShortcut, QTextCharFormat, QTextCursor
from PySide6.QtWidgets import (
    QDoubleSpinBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QTabWidget,
    QTextEdit,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.gui.pages.base import Page
from qlora_studio.gui.pages.evaluation_view import EvaluationView

SIDE_TITLES = {"base": "Base model (adapter off)", "tuned": "Tuned model (adapter on)"}


class ComparePage(Page):
    title = "Compare"

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        self.session = None  # core.evaluate.ComparisonModel once loaded
        self.loaded_run: Path | None = None
        self.worker = None
        self._thread = None
        self._pending_prompt: str | None = None
        self._answers = {"base": "", "tuned": ""}
        self.histories: dict[str, list[dict]] = {"base": [], "tuned": []}
        self.compared = False

        run_row = QHBoxLayout()
        run_row.addWidget(QLabel("Run folder"))
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("a finished or stopped run (filled in after training)")
        run_row.addWidget(self.run_edit, 1)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_run)
        run_row.addWidget(browse)
        self.load_button = QPushButton("Load models")
        self.load_button.setToolTip("Load the base model and the run's adapter: one model")
        self.load_button.clicked.connect(self.load)
        run_row.addWidget(self.load_button)
        self.unload_button = QPushButton("Unload")
        self.unload_button.setToolTip("Free the memory the models take")
        self.unload_button.clicked.connect(self.unload)
        self.unload_button.setEnabled(False)
        run_row.addWidget(self.unload_button)
        self.layout_.addLayout(run_row)

        status_row = QHBoxLayout()
        self.status = QLabel("Load a run to compare its tuned model with the base.")
        self.status.setWordWrap(True)
        status_row.addWidget(self.status, 1)
        self.bar = QProgressBar()
        self.bar.setMaximumWidth(260)
        self.bar.hide()
        status_row.addWidget(self.bar)
        self.stop_button = QPushButton("Stop")
        self.stop_button.clicked.connect(self.stop)
        self.stop_button.setEnabled(False)
        status_row.addWidget(self.stop_button)
        self.layout_.addLayout(status_row)

        self.tabs = QTabWidget()
        self.tabs.addTab(self._chat_tab(), "Side by side")
        self.tabs.addTab(self._eval_tab(), "Held-out evaluation")
        self.layout_.addWidget(self.tabs, 1)
        self._sync_buttons()

    # ---- layout -------------------------------------------------------------------------------
    def _chat_tab(self) -> QWidget:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        settings = QHBoxLayout()
        self.max_tokens = QSpinBox()
        self.max_tokens.setRange(1, 4096)
        self.max_tokens.setValue(128)
        self.max_tokens.setToolTip("The longest answer, in tokens")
        self.temperature = QDoubleSpinBox()
        self.temperature.setRange(0.0, 2.0)
        self.temperature.setSingleStep(0.1)
        self.temperature.setToolTip("0 = greedy: the same answer every time")
        self.top_p = QDoubleSpinBox()
        self.top_p.setRange(0.05, 1.0)
        self.top_p.setSingleStep(0.05)
        self.top_p.setValue(1.0)
        self.top_p.setToolTip("Sample only from the most likely tokens that add up to this")
        for label, widget in (
            ("Max new tokens", self.max_tokens),
            ("Temperature", self.temperature),
            ("Top-p", self.top_p),
        ):
            settings.addWidget(QLabel(label))
            settings.addWidget(widget)
        settings.addStretch(1)
        self.template_label = QLabel("")
        self.template_label.setStyleSheet("color: #666")
        settings.addWidget(self.template_label)
        layout.addLayout(settings)

        panes = QHBoxLayout()
        self.panes: dict[str, QTextEdit] = {}
        for side, title in SIDE_TITLES.items():
            box = QGroupBox(title)
            box_layout = QVBoxLayout(box)
            pane = QTextEdit()
            pane.setReadOnly(True)
            pane.setObjectName(f"{side}Answer")
            box_layout.addWidget(pane)
            panes.addWidget(box, 1)
            self.panes[side] = pane
        layout.addLayout(panes, 1)

        prompt_row = QHBoxLayout()
        self.prompt = QPlainTextEdit()
        self.prompt.setPlaceholderText("Type a prompt, e.g. Convert to ISO date: 7 August 1994")
        self.prompt.setMaximumHeight(70)
        prompt_row.addWidget(self.prompt, 1)
        buttons = QVBoxLayout()
        self.send_button = QPushButton("Send  (Ctrl+Enter)")
        self.send_button.clicked.connect(self.send)
        QShortcut(QKeySequence("Ctrl+Return"), self.prompt, activated=self.send)
        self.new_button = QPushButton("New conversation")
        self.new_button.clicked.connect(self.new_conversation)
        buttons.addWidget(self.send_button)
        buttons.addWidget(self.new_button)
        prompt_row.addLayout(buttons)
        layout.addLayout(prompt_row)
        return tab

    def _eval_tab(self) -> QWidget:
        tab = QWidget()
        layout = QVBoxLayout(tab)
        row = QHBoxLayout()
        row.addWidget(QLabel("Held-out file"))
        self.data_edit = QLineEdit()
        self.data_edit.setPlaceholderText("rows the run did not train on (default: data.eval_path)")
        row.addWidget(self.data_edit, 1)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_data)
        row.addWidget(browse)
        row.addWidget(QLabel("Rows"))
        self.limit = QSpinBox()
        self.limit.setRange(0, 100_000)
        self.limit.setSpecialValueText("all")
        self.limit.setToolTip("Evaluate only the first N rows (all: 0)")
        row.addWidget(self.limit)
        self.eval_button = QPushButton("Evaluate base and tuned")
        self.eval_button.clicked.connect(self.evaluate)
        row.addWidget(self.eval_button)
        layout.addLayout(row)
        self.evaluation = EvaluationView()
        layout.addWidget(self.evaluation, 1)
        return tab

    # ---- page contract ------------------------------------------------------------------------
    def is_complete(self) -> bool:
        return self.compared or self.evaluation.report is not None

    def is_running(self) -> bool:
        return self.worker is not None

    def on_shown(self) -> None:
        if not self.run_edit.text().strip():
            run_dir = self._suggested_run()
            if run_dir is not None:
                self.run_edit.setText(str(run_dir))
        run_dir = self._run_dir()
        if run_dir is not None and self.evaluation.report is None:
            self._show_saved(run_dir)

    def _suggested_run(self) -> Path | None:
        chosen = getattr(self.state, "run_dir", None)
        if chosen:
            return Path(chosen)
        window = self.window()
        if hasattr(window, "page"):
            trained = window.page("Train").run_dir
            if trained:
                return Path(trained)
        root = Path(self.state.cfg.output.dir).expanduser()
        runs = [p.parent for p in root.glob("*/adapter/adapter_config.json")]
        return max(runs, key=lambda p: p.stat().st_mtime) if runs else None

    def _show_saved(self, run_dir: Path) -> None:
        from qlora_studio.core.evaluation.evaluate import load_reports

        reports = load_reports(run_dir)
        if reports:
            self.evaluation.show_report(reports[0])
            self.changed.emit()
        if not self.data_edit.text():
            self.data_edit.setText(_eval_path_of(run_dir))

    def _run_dir(self) -> Path | None:
        text = self.run_edit.text().strip()
        return Path(text).expanduser() if text else None

    def _browse_run(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Run folder", self.run_edit.text())
        if folder:
            self.run_edit.setText(folder)
            self.data_edit.clear()
            self.evaluation.show_report(None)
            self._show_saved(Path(folder))

    def _browse_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Held-out file",
            self.data_edit.text(),
            "Data (*.jsonl *.json *.csv *.tsv *.parquet);;All files (*)",
        )
        if path:
            self.data_edit.setText(path)

    # ---- jobs ---------------------------------------------------------------------------------
    def load(self) -> None:
        run_dir = self._run_dir()
        if run_dir is None:
            self._say_error("Choose a run folder first.", "train a run, or pick one on Runs")
            return
        if self.worker is not None:
            return
        self._drop_session()
        self._start(_load, run_dir, on_success=self._on_loaded, busy="Loading the models…")

    def unload(self) -> None:
        if self.worker is None:
            self._drop_session()
            self.status.setText("Models unloaded; their memory is free.")
            self._sync_buttons()

    def send(self) -> None:
        text = self.prompt.toPlainText().strip()
        if not text or self.worker is not None:
            return
        if self.session is None or self.loaded_run != self._run_dir():
            self._pending_prompt = text
            self.load()
            return
        from qlora_studio.core.evaluation.comparison import GenerationSettings

        settings = GenerationSettings(
            max_new_tokens=self.max_tokens.value(),
            temperature=round(self.temperature.value(), 3),
            top_p=round(self.top_p.value(), 3),
        )
        conversations = {}
        for side, history in self.histories.items():
            history.append({"role": "user", "content": text})
            conversations[side] = list(history)
            self._write(side, "You: ", bold=True, new_block=True)
            self._write(side, text)
            self._write(side, f"{side.title()}: ", bold=True, new_block=True)
        self._answers = {"base": "", "tuned": ""}
        self.prompt.clear()
        self._start(
            _stream,
            self.session,
            conversations,
            settings,
            on_success=self._on_answered,
            busy="Generating…",
            on_event=self._on_token,
        )

    def new_conversation(self) -> None:
        if self.worker is None:
            self.histories = {"base": [], "tuned": []}
            for pane in self.panes.values():
                pane.clear()

    def evaluate(self) -> None:
        run_dir = self._run_dir()
        if run_dir is None or self.worker is not None:
            return
        data = self.data_edit.text().strip() or None
        self._start(
            _evaluate,
            run_dir,
            self.session,
            data,
            self.limit.value() or None,
            on_success=self._on_evaluated,
            busy="Evaluating the base and the tuned model…",
        )

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.request_stop()
            self.status.setText("Stopping…")

    def _start(self, fn, *args, on_success, busy: str, on_event=None) -> None:
        from qlora_studio.gui.workers import FunctionWorker, start_in_thread

        worker = FunctionWorker(fn, *args)
        worker.status.connect(self.status.setText)
        worker.progress.connect(self._on_progress)
        worker.succeeded.connect(on_success)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        if on_event is not None:
            worker.event.connect(on_event)
        self.worker = worker
        self.status.setText(busy)
        self.bar.setRange(0, 0)
        self.bar.show()
        self._sync_buttons()
        self._thread = start_in_thread(worker, self)

    # ---- worker slots (named methods: they run in the GUI thread) -----------------------------
    def _on_loaded(self, session) -> None:
        self._end_thread()
        self.session = session
        self.loaded_run = self._run_dir()
        template = session.tokenizer.chat_template or ""
        stops = ", ".join(session.tokenizer.convert_ids_to_tokens(session.stop_ids))
        self.template_label.setText(f"stop tokens: {stops}")
        self.template_label.setToolTip(f"Chat template the run trained with:\n\n{template}")
        self.status.setText(
            f"Loaded {session.cfg.method} run {self.loaded_run.name} on {session.device}: "
            "one base model, the adapter switched on and off."
        )
        if self.evaluation.report is None:
            self._show_saved(self.loaded_run)

    def _on_token(self, event: dict) -> None:
        if event.get("type") == "token":
            side, text = event["side"], event["text"]
            self._answers[side] = self._answers.get(side, "") + text
            self._write(side, text)

    def _on_answered(self, _result) -> None:
        self._end_thread()
        for side, history in self.histories.items():
            history.append({"role": "assistant", "content": self._answers.get(side, "").strip()})
        self.compared = True
        self.status.setText("Answered. Same prompt, same settings, base vs tuned.")
        self.changed.emit()

    def _on_evaluated(self, report) -> None:
        self._end_thread()
        self.evaluation.show_report(report)
        self.status.setText(
            f"Evaluated {len(report.rows)} rows; saved in {report.run_dir}/evaluation/"
        )
        self.changed.emit()

    def _on_progress(self, event: dict) -> None:
        total = max(1, int(event.get("total", 1)))
        self.bar.setRange(0, total)
        self.bar.setValue(int(event.get("step", 0)))

    def _on_failed(self, message: str, hint: str) -> None:
        self._end_thread()
        self._say_error(message, hint)

    def _on_cancelled(self) -> None:
        self._end_thread()
        self.status.setText("Stopped.")

    def _on_finished(self) -> None:
        self._end_thread()
        self.worker = None
        self.bar.hide()
        self._sync_buttons()
        if self._pending_prompt and self.session is not None:
            text, self._pending_prompt = self._pending_prompt, None
            self.prompt.setPlainText(text)
            self.send()
        else:
            self._pending_prompt = None

    # ---- helpers ------------------------------------------------------------------------------
    def _end_thread(self) -> None:
        from qlora_studio.gui.workers import end_thread

        thread, self._thread = self._thread, None
        end_thread(thread)

    def _drop_session(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None
        self.loaded_run = None
        self.template_label.clear()

    def _sync_buttons(self) -> None:
        busy = self.worker is not None
        self.load_button.setEnabled(not busy)
        self.unload_button.setEnabled(not busy and self.session is not None)
        self.send_button.setEnabled(not busy)
        self.eval_button.setEnabled(not busy)
        self.new_button.setEnabled(not busy)
        self.stop_button.setEnabled(busy)

    def _write(self, side: str, text: str, bold: bool = False, new_block: bool = False) -> None:
        pane = self.panes[side]
        cursor = pane.textCursor()
        cursor.movePosition(QTextCursor.MoveOperation.End)
        if new_block and not pane.document().isEmpty():
            cursor.insertBlock()
        fmt = QTextCharFormat()
        fmt.setFontWeight(QFont.Weight.Bold if bold else QFont.Weight.Normal)
        cursor.insertText(text, fmt)
        pane.setTextCursor(cursor)
        pane.ensureCursorVisible()

    def _say_error(self, message: str, hint: str) -> None:
        self.status.setText(
            f"<span style='color:#b00020'><b>{_escape(message)}</b></span>"
            + (f"<br>{_escape(hint)}" if hint else "")
        )
        self.status.setTextFormat(Qt.TextFormat.RichText)

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self._drop_session()
        super().closeEvent(event)


def _escape(text: str) -> str:
    import html

    return html.escape(text).replace("\n", "<br>")


def _eval_path_of(run_dir: Path) -> str:
    from qlora_studio.config import ConfigError, RunConfig

    try:
        return RunConfig.load(Path(run_dir) / "config.yaml").data.eval_path
    except (ConfigError, OSError):
        return ""


# ---- the jobs (run in a worker thread; plain data and the session cross back) -----------------
def _load(reporter, cancel, run_dir: Path):
    from qlora_studio.core.evaluation.comparison import ComparisonModel

    return ComparisonModel.load(run_dir, reporter=reporter)


def _stream(reporter, cancel, session, conversations: dict, settings) -> None:
    from qlora_studio.core.events import make_event

    for side, piece in session.stream(conversations, settings, cancel=cancel):
        reporter.emit(make_event("token", side=side, text=piece))


def _evaluate(reporter, cancel, run_dir: Path, session, data: str | None, limit: int | None):
    from qlora_studio.core.evaluation.evaluate import evaluate_run

    return evaluate_run(
        run_dir, data=data, limit=limit, model=session, reporter=reporter, cancel=cancel
    )
