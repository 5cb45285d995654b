"""The contract every wizard page follows, and how a page runs its jobs."""

from __future__ import annotations

import html

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from qlora_studio.config import RunConfig

ERROR_COLOUR = "#b00020"


def error_html(message: str, hint: str = "", *, prefix: str = "") -> str:
    """An error as pages show it: the message in bold red, the hint on the next line."""
    text = f"<span style='color:{ERROR_COLOUR}'><b>{html.escape(prefix + message)}</b></span>"
    if hint:
        text += f"<br>{html.escape(hint)}"
    return text


class Page(QWidget):
    """A wizard step. ``load_config`` fills the widgets from the config, ``apply_config``
    writes them back; ``changed`` fires when the slice or the page's completeness changes.

    Long work goes through ``run_job``: the state's registry starts the job in one of this
    page's slots and drops the job that ran there before, so a stale result never arrives."""

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
        state.config_requested.connect(self._apply_to_state)

    def load_config(self, cfg: RunConfig) -> None:
        """Show ``cfg``'s slice in the widgets."""

    def apply_config(self, cfg: RunConfig) -> None:
        """Write the widgets into ``cfg``'s slice."""

    def is_complete(self) -> bool:
        return True

    def _apply_to_state(self) -> None:
        self.apply_config(self.state.cfg)

    # ---- jobs -----------------------------------------------------------------------------
    def run_job(self, job, slot: str = "job"):
        """Start ``job`` in this page's ``slot``, dropping the one running there."""
        return self.state.jobs.start((self, slot), job)

    def job(self, slot: str = "job"):
        """The job running in ``slot``, or None."""
        return self.state.jobs.current((self, slot))

    def is_running(self) -> bool:
        """A job of this page is running."""
        return any(key[0] is self for key in self.state.jobs.busy_slots())

    def shutdown(self) -> None:
        """End what the page holds outside the job registry (the window is closing)."""
