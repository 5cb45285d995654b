"""The contract every wizard page follows."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from qlora_studio.config import RunConfig


class Page(QWidget):
    """A wizard step. ``load_config`` fills the widgets from the config, ``apply_config``
    writes them back; ``changed`` fires when the slice or the page's completeness changes."""

    title = "Page"
    changed = Signal()

    def __init__(self, state, parent: QWidget | None = None):
        super().__init__(parent)
        self.state = state
        self.layout_ = QVBoxLayout(self)
        self.layout_.setContentsMargins(16, 12, 16, 12)
        heading = QLabel(f"<h2>{self.title}</h2>")
        heading.setObjectName("pageHeading")
        self.layout_.addWidget(heading)

    def load_config(self, cfg: RunConfig) -> None:
        """Show ``cfg``'s slice in the widgets."""

    def apply_config(self, cfg: RunConfig) -> None:
        """Write the widgets into ``cfg``'s slice."""

    def is_complete(self) -> bool:
        return True
