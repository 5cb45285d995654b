"""Compare: the base and the tuned model answer the same prompt side by side, streamed token by
token with the run's chat template, and the held-out evaluation table.

No model lives in this process. "Load" starts a ``qlora-studio chat RUN --serve`` child
(a :class:`ChatClient`) that loads the run once (one model: the adapter is switched off for the
base's turn) and answers each prompt; "Unload" ends it. "Evaluate" runs ``qlora-studio eval``
as a child (a :class:`ChildJob`) and shows the report it saved.
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

from qlora_studio.gui.pages.base import Page, error_html
from qlora_studio.gui.pages.evaluation_view import EvaluationView

SIDE_TITLES = {"base": "Base model (adapter off)", "tuned": "Tuned model (adapter on)"}


class ComparePage(Page):
    title = "Compare"
    follows_run_chosen = True  # a run picked on the Runs page shows here

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        self.chat = None  # a ChatClient while a chat child runs
        self.loaded_run: Path | None = None
        self.worker = None  # the job in progress: the eval TrainWorker, or the chat client
        self._pending_prompt: str | None = None
        self._answers = {"base": "", "tuned": ""}
        self._stopped = False
        self.histories: dict[str, list[dict]] = {"base": [], "tuned": []}
        self.compared = False
        state.run_chosen.connect(self._on_run_chosen)

        run_row = QHBoxLayout()
        run_row.addWidget(QLabel("Run folder"))
        self.run_edit = QLineEdit()
        self.run_edit.setPlaceholderText("a finished or stopped run (filled in after training)")
        run_row.addWidget(self.run_edit, 1)
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse_run)
        run_row.addWidget(browse)
        self.load_button = QPushButton("Load models")
        self.load_button.setToolTip(
            "Start a chat process that loads the base model and the run's adapter: one model"
        )
        self.load_button.clicked.connect(self.load)
        run_row.addWidget(self.load_button)
        self.unload_button = QPushButton("Unload")
        self.unload_button.setToolTip("End the chat process: the models' memory is free")
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
        if self.state.last_run_dir is not None:  # the latest run trained in this window
            return self.state.last_run_dir
        root = Path(self.state.cfg.output.dir).expanduser()
        runs = [p.parent for p in root.glob("*/adapter/adapter_config.json")]
        return max(runs, key=lambda p: p.stat().st_mtime) if runs else None

    def _show_saved(self, run_dir: Path) -> None:
        from qlora_studio.core.evaluation.report import load_reports

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
            self._on_run_chosen(folder)

    def _on_run_chosen(self, run_dir) -> None:
        self.run_edit.setText(str(run_dir))
        self.data_edit.clear()
        self.evaluation.show_report(None)
        self._show_saved(Path(run_dir))

    def _browse_data(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Held-out file",
            self.data_edit.text(),
            "Data (*.jsonl *.json *.csv *.tsv *.parquet);;All files (*)",
        )
        if path:
            self.data_edit.setText(path)

    # ---- the chat child -----------------------------------------------------------------------
    def load(self) -> None:
        run_dir = self._run_dir()
        if run_dir is None:
            self._say_error("Choose a run folder first.", "train a run, or pick one on Runs")
            return
        if self.worker is not None:
            return
        from qlora_studio.gui.chat_client import ChatClient

        self._drop_chat()
        chat = self.chat = ChatClient(self)
        chat.status.connect(self._on_status)
        chat.ready.connect(self._on_loaded)
        chat.token.connect(self._on_token)
        chat.answer.connect(self._on_answer)
        chat.failed.connect(self._on_chat_failed)
        chat.closed.connect(self._on_chat_closed)
        self._busy(chat, "Loading the models…")
        chat.start(run_dir)

    def unload(self) -> None:
        if self.worker is None:
            self._drop_chat()
            self.status.setText("Models unloaded; their memory is free.")
            self._sync_buttons()

    def send(self) -> None:
        text = self.prompt.toPlainText().strip()
        if not text or self.worker is not None:
            return
        if self.chat is None or not self.chat.is_ready or self.loaded_run != self._run_dir():
            self._pending_prompt = text
            self.load()
            return
        settings = {
            "max_new_tokens": self.max_tokens.value(),
            "temperature": round(self.temperature.value(), 3),
            "top_p": round(self.top_p.value(), 3),
        }
        message = {"role": "user", "content": text}
        for side, history in self.histories.items():
            history.append(message)
            self._write(side, "You: ", bold=True, new_block=True)
            self._write(side, text)
            self._write(side, f"{side.title()}: ", bold=True, new_block=True)
        self._answers = {"base": "", "tuned": ""}
        self._stopped = False
        self.prompt.clear()
        self._busy(self.chat, "Generating…")
        self.chat.generate([message], list(self.histories), settings)

    def new_conversation(self) -> None:
        if self.worker is None:
            self.histories = {"base": [], "tuned": []}
            for pane in self.panes.values():
                pane.clear()
            if self.chat is not None:
                self.chat.reset()

    def _on_status(self, message: str) -> None:
        self.status.setText(message)

    def _on_loaded(self, event: dict) -> None:
        self.loaded_run = Path(event["run_dir"])
        self.histories = {"base": [], "tuned": []}  # a new child starts a new conversation
        stops = ", ".join(event.get("stop_tokens", []))
        self.template_label.setText(f"stop tokens: {stops}")
        self.template_label.setToolTip(
            f"Chat template the run trained with:\n\n{event.get('chat_template', '')}"
        )
        self.status.setText(
            f"Loaded {event['method']} run {self.loaded_run.name} on {event['device']} in a "
            "chat process: one base model, the adapter switched on and off."
        )
        self._idle()
        if self.evaluation.report is None:
            self._show_saved(self.loaded_run)
        if self._pending_prompt:
            text, self._pending_prompt = self._pending_prompt, None
            self.prompt.setPlainText(text)
            self.send()

    def _on_token(self, side: str, text: str) -> None:
        self._answers[side] = self._answers.get(side, "") + text
        self._write(side, text)

    def _on_answer(self, event: dict) -> None:
        self.histories[event["side"]].append({"role": "assistant", "content": event["text"]})
        self._stopped = self._stopped or bool(event.get("stopped"))
        if self.chat is not None and not self.chat.generating and self.worker is self.chat:
            self.compared = True
            self._idle()
            self.status.setText(
                "Stopped; the answers so far are kept."
                if self._stopped
                else "Answered. Same prompt, same settings, base vs tuned."
            )
            self.changed.emit()

    def _on_chat_failed(self, message: str, hint: str) -> None:
        self._pending_prompt = None
        if self.worker is self.chat and not (self.chat and self.chat.generating):
            self._idle()
        self._say_error(message, hint)

    def _on_chat_closed(self, _code: int) -> None:
        chat = self.sender()
        if chat is not None and chat is not self.chat:
            return  # an earlier session, already dropped
        self.chat = None
        self.loaded_run = None
        self.template_label.clear()
        if chat is not None:
            chat.deleteLater()
        if self.worker is chat:
            self._idle()
        self._sync_buttons()

    def _drop_chat(self, wait_ms: int = 0) -> None:
        chat, self.chat = self.chat, None
        self.loaded_run = None
        self.template_label.clear()
        if chat is not None:
            if self.worker is chat:
                self.worker = None
            chat.closed.connect(chat.deleteLater)
            chat.close(wait_ms=wait_ms)
            if not chat.running:
                chat.deleteLater()

    # ---- the evaluation child -----------------------------------------------------------------
    def evaluate(self) -> None:
        run_dir = self._run_dir()
        if run_dir is None or self.worker is not None:
            return
        from qlora_studio.gui.jobs import ChildJob

        note = ""
        if self.chat is not None:  # one copy of the models at a time: a GPU may hold only one
            self._drop_chat()
            self.histories = {"base": [], "tuned": []}
            note = " The chat models were unloaded to make room; Send loads them again."
        args = ["eval", str(run_dir), "--events", "jsonl"]
        if self.data_edit.text().strip():
            args += ["--data", self.data_edit.text().strip()]
        if self.limit.value():
            args += ["--limit", str(self.limit.value())]
        worker = ChildJob(args, grace_s=15.0)
        worker.status.connect(self._on_status)
        worker.progress.connect(self._on_progress)
        worker.succeeded.connect(self._on_evaluated)
        worker.failed.connect(self._on_failed)
        worker.cancelled.connect(self._on_cancelled)
        worker.finished.connect(self._on_finished)
        self._busy(worker, "Evaluating the base and the tuned model…" + note)
        self.run_job(worker, "eval")

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.request_stop()
            self.status.setText("Stopping…")

    # ---- worker slots (named methods: they run in the GUI thread) -----------------------------
    def _on_evaluated(self, event: dict) -> None:
        from qlora_studio.core.evaluation.report import read_report

        try:
            report = read_report(Path(event["report_path"]))
        except (KeyError, OSError, ValueError) as exc:
            self._say_error(
                f"The evaluation finished but its report cannot be read: {exc}",
                "run it again; the report is saved in the run's evaluation/ folder",
            )
            return
        self.evaluation.show_report(report)
        self.status.setText(f"Evaluated {len(report.rows)} rows; saved in {event['report_path']}")
        self.changed.emit()

    def _on_progress(self, event: dict) -> None:
        total = max(1, int(event.get("total", 1)))
        self.bar.setRange(0, total)
        self.bar.setValue(int(event.get("step", 0)))

    def _on_failed(self, message: str, hint: str) -> None:
        self._say_error(message, hint)

    def _on_cancelled(self, _event) -> None:
        self.status.setText("Stopped; nothing was saved.")

    def _on_finished(self) -> None:
        self._idle()

    # ---- helpers ------------------------------------------------------------------------------
    def _busy(self, worker, message: str) -> None:
        self.worker = worker
        self.status.setTextFormat(Qt.TextFormat.AutoText)
        self.status.setText(message)
        self.bar.setRange(0, 0)
        self.bar.show()
        self._sync_buttons()

    def _idle(self) -> None:
        self.worker = None
        self.bar.hide()
        self._sync_buttons()

    def _sync_buttons(self) -> None:
        busy = self.worker is not None
        self.load_button.setEnabled(not busy)
        self.unload_button.setEnabled(not busy and self.chat is not None)
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
        self.status.setText(error_html(message, hint))
        self.status.setTextFormat(Qt.TextFormat.RichText)

    def shutdown(self, wait_ms: int = 3_000) -> None:
        """End the chat child and any evaluation: for a closing page or window."""
        self._drop_chat(wait_ms=wait_ms)
        if self.worker is not None and hasattr(self.worker, "kill"):
            self.worker.kill()

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.shutdown()
        super().closeEvent(event)


def _eval_path_of(run_dir: Path) -> str:
    from qlora_studio.config import ConfigError, RunConfig

    try:
        return RunConfig.load(Path(run_dir) / "config.yaml").data.eval_path
    except (ConfigError, OSError):
        return ""
