"""The main window: a step sidebar (Model → Dataset → Settings → Memory → Train → Compare →
Export, plus Runs) with a live run indicator, the current step's page, Back / Next, and
"Start training" so a first run is Model → Dataset → Start."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QEvent, QSize, Qt, Signal
from PySide6.QtGui import QCloseEvent, QMouseEvent
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.config import RunConfig
from qlora_studio.gui import theme
from qlora_studio.gui.state import StudioState

# each step's icon (qtawesome's Material Design Icons); a done step shows DONE_ICON instead
STEP_ICONS = {
    "Model": "mdi6.cube-outline",
    "Dataset": "mdi6.table-large",
    "Settings": "mdi6.tune-variant",
    "Memory": "mdi6.memory",
    "Train": "mdi6.play-circle-outline",
    "Compare": "mdi6.compare-horizontal",
    "Export": "mdi6.export-variant",
    "Runs": "mdi6.history",
}
DONE_ICON = "mdi6.check-circle"
TRAIN = "Train"
# the steps a first run needs before Start; Settings and Memory are optional on the way
FIRST_RUN_STEPS = ("Model", "Dataset")
# content-heavy pages scroll in a small window instead of squeezing their charts to slivers
MIN_PAGE_HEIGHT = {"Dataset": 720, "Memory": 660}


def _pages(state: StudioState) -> list:
    """The wizard pages in order (imported here: each page module loads only with the window)."""
    from qlora_studio.gui.pages.compare_page import ComparePage
    from qlora_studio.gui.pages.dataset_page import DatasetPage
    from qlora_studio.gui.pages.export_page import ExportPage
    from qlora_studio.gui.pages.memory_page import MemoryPage
    from qlora_studio.gui.pages.model_page import ModelPage
    from qlora_studio.gui.pages.runs_page import RunsPage
    from qlora_studio.gui.pages.settings_page import SettingsPage
    from qlora_studio.gui.pages.train_page import TrainPage

    classes = [
        ModelPage,
        DatasetPage,
        SettingsPage,
        MemoryPage,
        TrainPage,
        ComparePage,
        ExportPage,
        RunsPage,
    ]
    return [cls(state) for cls in classes]


class RunIndicator(QFrame):
    """The sidebar's live run: its step and a thin bar, shown while a run trains (the run
    folder in the tooltip), so other pages can be browsed meanwhile; a click shows Train."""

    clicked = Signal()

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setObjectName("runIndicator")
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setToolTip("A run is training: click to show the Train page")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 6, 8, 8)
        layout.setSpacing(4)
        top = QHBoxLayout()
        self.icon = QLabel()
        top.addWidget(self.icon)
        self.title = QLabel("<b>Training</b>")
        top.addWidget(self.title, 1)
        layout.addLayout(top)
        self.step_label = QLabel("")  # "step N of M" once the Train page reports a step
        self.step_label.hide()
        layout.addWidget(self.step_label)
        self.bar = QProgressBar()
        self.bar.setObjectName("runIndicatorBar")
        self.bar.setTextVisible(False)
        self.bar.setRange(0, 0)  # busy until the first step is reported
        layout.addWidget(self.bar)
        self.refresh_icon()
        self.hide()

    def refresh_icon(self) -> None:
        self.icon.setPixmap(theme.icon("mdi6.run-fast", theme.ACCENT).pixmap(QSize(16, 16)))

    def on_started(self, run_dir: Path) -> None:
        self.setToolTip(f"Training {run_dir}: click to show the Train page")
        if self.isHidden():
            self.step_label.hide()
            self.bar.setRange(0, 0)
        self.show()

    def on_progress(self, step: int, total: int) -> None:
        self.bar.setRange(0, max(total, 1))
        self.bar.setValue(min(step, max(total, 1)))
        self.step_label.setText(f"step {step:,} of {total:,}")
        self.step_label.show()
        self.show()

    def on_finished(self, _run_dir: Path) -> None:
        self.hide()

    def mousePressEvent(self, event: QMouseEvent) -> None:  # noqa: N802 (Qt's name)
        if event.button() == Qt.MouseButton.LeftButton:
            self.clicked.emit()
        super().mousePressEvent(event)


class MainWindow(QMainWindow):
    def __init__(self, state: StudioState | None = None):
        super().__init__()
        theme.apply_theme()  # before any widget: icons take the palette's colours
        self.state = state or StudioState()
        self.setWindowTitle("QLoRA Studio")
        self.setMinimumSize(760, 520)
        self._seen: set[int] = set()  # pages shown in this window: only those can be done

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("stepSidebar")
        self.sidebar.setIconSize(QSize(20, 20))
        self.stack = QStackedWidget()
        self.pages = _pages(self.state)
        for page in self.pages:
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QScrollArea.Shape.NoFrame)
            page.setMinimumHeight(MIN_PAGE_HEIGHT.get(page.title, 0))
            scroll.setWidget(page)
            self.stack.addWidget(scroll)
            self.sidebar.addItem(QListWidgetItem(page.title))
            page.changed.connect(self._on_page_changed)
            page.load_config(self.state.cfg)

        self.run_indicator = RunIndicator()
        self.run_indicator.clicked.connect(lambda: self.go_to(TRAIN))
        self.state.run_started.connect(self.run_indicator.on_started)
        self.state.run_progress.connect(self.run_indicator.on_progress)
        self.state.run_finished.connect(self.run_indicator.on_finished)
        sidebar_panel = QWidget()
        sidebar_panel.setObjectName("sidebarPanel")
        sidebar_panel.setFixedWidth(190)
        side = QVBoxLayout(sidebar_panel)
        side.setContentsMargins(0, 0, 0, 0)
        side.addWidget(self.sidebar, 1)
        indicator_box = QHBoxLayout()  # inset like the sidebar's items
        indicator_box.setContentsMargins(8, 0, 8, 8)
        indicator_box.addWidget(self.run_indicator)
        side.addLayout(indicator_box)
        self.sidebar.setFrameShape(QFrame.Shape.NoFrame)

        self.back_button = QPushButton("Back")
        self.next_button = QPushButton("Next")
        self.next_button.setLayoutDirection(Qt.LayoutDirection.RightToLeft)  # the arrow after
        self.start_button = QPushButton("Start training")
        self.start_button.setObjectName("primaryButton")
        self.start_button.setToolTip(
            "Train now with the current settings (Settings and Memory are optional)"
        )
        self.back_button.clicked.connect(lambda: self.go(self.stack.currentIndex() - 1))
        self.next_button.clicked.connect(lambda: self.go(self.stack.currentIndex() + 1))
        self.start_button.clicked.connect(self.start_training)
        self.path_hint = QLabel("")
        self.path_hint.setObjectName("firstRunPath")
        buttons = QHBoxLayout()
        buttons.addWidget(self.path_hint)
        buttons.addStretch(1)
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.next_button)
        buttons.addWidget(self.start_button)

        right = QVBoxLayout()
        right.addWidget(self.stack, 1)
        right.addLayout(buttons)
        body = QHBoxLayout()
        body.setContentsMargins(0, 0, 8, 8)
        body.addWidget(sidebar_panel)
        body.addLayout(right, 1)
        central = QWidget()
        central.setLayout(body)
        self.setCentralWidget(central)

        self.sidebar.currentRowChanged.connect(self._show)
        self.state.navigate.connect(self.go_to)
        self.state.run_started.connect(lambda _: self._refresh_buttons())
        self.state.run_finished.connect(lambda _: self._refresh_buttons())
        self._restore_geometry()
        self._set_icons()
        self.go(0)
        self._refresh_marks()

    # ---- navigation -----------------------------------------------------------------------
    def page(self, title: str):
        return next(p for p in self.pages if p.title == title)

    def go(self, index: int) -> None:
        if 0 <= index < len(self.pages):
            self.sidebar.setCurrentRow(index)

    def go_to(self, title: str) -> None:
        self.go([p.title for p in self.pages].index(title))

    def _show(self, index: int) -> None:
        if index < 0:
            return
        previous = self.stack.currentIndex()
        if previous != index and 0 <= previous < len(self.pages):
            self.pages[previous].apply_config(self.state.cfg)  # hand the slice on
        self.stack.setCurrentIndex(index)
        self._seen.add(index)
        page = self.pages[index]
        page.load_config(self.state.cfg)
        if hasattr(page, "on_shown"):
            page.on_shown()
        self.state.remember_config()
        self._refresh_buttons()
        self._refresh_marks()

    def _on_page_changed(self) -> None:
        page = self.sender()
        if page is not None:
            page.apply_config(self.state.cfg)
        self._refresh_marks()
        self._refresh_buttons()

    # ---- marks and buttons ----------------------------------------------------------------
    def is_step_done(self, title: str) -> bool:
        """The sidebar marks ``title`` done: the user has seen the page and it is complete."""
        index = [p.title for p in self.pages].index(title)
        return index in self._seen and self.pages[index].is_complete()

    def _refresh_marks(self) -> None:
        for row, page in enumerate(self.pages):
            done = self.is_step_done(page.title)
            item = self.sidebar.item(row)
            item.setText(page.title)
            item.setData(Qt.ItemDataRole.UserRole, done)
            item.setIcon(theme.icon(DONE_ICON, theme.DONE_GREEN) if done else self._step_icons[row])
            item.setToolTip(f"{page.title}: " + ("done" if done else "not done yet"))

    def _set_icons(self) -> None:
        """Icons drawn in the palette's colours (again when the system switches light/dark)."""
        self._step_icons = [
            theme.icon(STEP_ICONS.get(p.title, "mdi6.circle-outline")) for p in self.pages
        ]
        theme.set_icon(self.back_button, "mdi6.arrow-left")
        theme.set_icon(self.next_button, "mdi6.arrow-right")
        theme.set_icon(self.start_button, "mdi6.play", "#ffffff")
        self.run_indicator.refresh_icon()

    def _refresh_buttons(self) -> None:
        index = self.stack.currentIndex()
        self.back_button.setEnabled(index > 0)
        has_next = index < len(self.pages) - 1
        self.next_button.setEnabled(has_next)
        self.next_button.setText(f"Next: {self.pages[index + 1].title}" if has_next else "Next")
        before_train = index < [p.title for p in self.pages].index(TRAIN)
        self.start_button.setVisible(before_train)
        ready = all(self.page(t).is_complete() for t in FIRST_RUN_STEPS)
        self.start_button.setEnabled(ready and not self.state.running)
        if self.state.running:
            self.start_button.setToolTip("A run is training: its progress is in the sidebar")
        elif not ready:
            self.start_button.setToolTip("Choose a model and a dataset first")
        else:
            self.start_button.setToolTip(
                "Train now with the current settings (Settings and Memory are optional)"
            )
        self.path_hint.setVisible(before_train)
        self.path_hint.setText(self._path_text(index))

    def _path_text(self, index: int) -> str:
        """The first run's three clicks, the current one in bold."""
        current = self.pages[index].title
        steps = []
        for title in (*FIRST_RUN_STEPS, "Start"):
            text = f"<b>{title}</b>" if title == current else title
            if title in FIRST_RUN_STEPS and self.page(title).is_complete():
                text += " ✓"
            steps.append(text)
        return "First run: " + " → ".join(steps)

    def start_training(self) -> None:
        """Show the Train page and start a run with the current settings."""
        self.go_to(TRAIN)
        train = self.page(TRAIN)
        if train.start_button.isEnabled():
            train.start()

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.PaletteChange and hasattr(self, "_step_icons"):
            self._set_icons()
            self._refresh_marks()
        super().changeEvent(event)

    def open_config(self, cfg: RunConfig) -> None:
        """Show a saved run's config on every page."""
        self.state.cfg = self.state.with_runs_dir(cfg)
        for page in self.pages:
            page.load_config(cfg)
        self._refresh_marks()

    # ---- window state ---------------------------------------------------------------------
    def _restore_geometry(self) -> None:
        geometry = self.state.settings.value("window/geometry", QByteArray())
        if isinstance(geometry, QByteArray) and not geometry.isEmpty():
            self.restoreGeometry(geometry)
        else:
            self.resize(1280, 800)

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 (Qt's name)
        if self.state.running and not self.confirm_quit_while_training():
            event.ignore()
            return
        for page in self.pages:
            page.apply_config(self.state.cfg)
        self.state.remember_config()
        self.state.settings.setValue("window/geometry", self.saveGeometry())
        if self.state.jobs.running():
            self.hide()
            # a training run stops after its step and saves a checkpoint; the others end
            self.state.jobs.stop_all()
        for page in self.pages:
            page.shutdown()
        event.accept()

    def confirm_quit_while_training(self) -> bool:
        """Ask before quitting during a run. Tests replace it with an answer: nothing answers a
        modal question under pytest-qt, and a teardown that opened one would hang the suite."""
        answer = QMessageBox.question(
            self,
            "Training is running",
            "A training run is in progress. Stop it (a checkpoint is saved) and quit?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes
