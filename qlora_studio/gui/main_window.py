"""The main window: a step sidebar (Model → Dataset → Settings → Memory → Train → Compare →
Export, plus Runs), the current step's page, Back / Next."""

from __future__ import annotations

from PySide6.QtCore import QByteArray
from PySide6.QtGui import QCloseEvent
from PySide6.QtWidgets import (
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QScrollArea,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from qlora_studio.config import RunConfig
from qlora_studio.gui.state import StudioState

DONE_MARK, TODO_MARK = "✓", "•"
# content-heavy pages scroll in a small window instead of squeezing their charts to slivers
MIN_PAGE_HEIGHT = {"Dataset": 720, "Memory": 660, "Settings": 640}


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


class MainWindow(QMainWindow):
    def __init__(self, state: StudioState | None = None):
        super().__init__()
        self.state = state or StudioState()
        self.setWindowTitle("QLoRA Studio")
        self.setMinimumSize(760, 520)

        self.sidebar = QListWidget()
        self.sidebar.setObjectName("stepSidebar")
        self.sidebar.setFixedWidth(170)
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

        self.back_button = QPushButton("← Back")
        self.next_button = QPushButton("Next →")
        self.back_button.clicked.connect(lambda: self.go(self.stack.currentIndex() - 1))
        self.next_button.clicked.connect(lambda: self.go(self.stack.currentIndex() + 1))
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.back_button)
        buttons.addWidget(self.next_button)

        right = QVBoxLayout()
        right.addWidget(self.stack, 1)
        right.addLayout(buttons)
        body = QHBoxLayout()
        body.addWidget(self.sidebar)
        body.addLayout(right, 1)
        central = QWidget()
        central.setLayout(body)
        self.setCentralWidget(central)

        self.sidebar.currentRowChanged.connect(self._show)
        self.state.navigate.connect(self.go_to)
        self._restore_geometry()
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
        page = self.pages[index]
        page.load_config(self.state.cfg)
        if hasattr(page, "on_shown"):
            page.on_shown()
        self.back_button.setEnabled(index > 0)
        self.next_button.setEnabled(index < len(self.pages) - 1)
        self.state.remember_config()

    def _on_page_changed(self) -> None:
        page = self.sender()
        if page is not None:
            page.apply_config(self.state.cfg)
        self._refresh_marks()

    def _refresh_marks(self) -> None:
        for row, page in enumerate(self.pages):
            mark = DONE_MARK if page.is_complete() else TODO_MARK
            item = self.sidebar.item(row)
            item.setText(f"{mark}  {page.title}")
            item.setToolTip("complete" if mark == DONE_MARK else "not done yet")

    def open_config(self, cfg: RunConfig) -> None:
        """Show a saved run's config on every page."""
        self.state.cfg = cfg
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
