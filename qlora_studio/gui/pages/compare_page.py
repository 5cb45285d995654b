"""Compare: base and tuned side by side. The evaluation and chat engine is its own issue; until
it lands this page says how to try the adapter."""

from __future__ import annotations

from PySide6.QtWidgets import QLabel

from qlora_studio.gui.pages.base import Page


class ComparePage(Page):
    title = "Compare"

    def __init__(self, state, parent=None):
        super().__init__(state, parent)
        text = QLabel(
            "<p>Side-by-side base vs tuned answers and the held-out evaluation table arrive "
            "with the evaluation feature.</p>"
            "<p>Meanwhile the exported adapter loads with <code>peft.PeftModel.from_pretrained"
            "</code>; its folder's README shows the code and the chat template it was trained "
            "with.</p>"
        )
        text.setWordWrap(True)
        self.layout_.addWidget(text)
        self.layout_.addStretch(1)

    def is_complete(self) -> bool:
        return False  # nothing to compare until the evaluation feature lands
