"""The app's look: Qt's Fusion style with a light or a dark palette of our own that follows the
system's colour scheme, one style sheet, and the icons (qtawesome's Material Design Icons:
MIT code, Apache-2.0 icons).

``QLORA_STUDIO_THEME=light|dark`` forces a scheme (screenshots, or a desktop that reports none).
"""

from __future__ import annotations

import os
from typing import Literal

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QGuiApplication, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QWidget

Scheme = Literal["auto", "light", "dark"]
SCHEMES: tuple[Scheme, ...] = ("auto", "light", "dark")
ENV = "QLORA_STUDIO_THEME"

ACCENT = "#3d7bd9"
# the red and green that read on both palettes (errors, failed runs; done steps)
ERROR_RED = "#d0334a"
DONE_GREEN = "#2e9d57"

# role -> (light, dark); the rest of each palette is derived by Qt from these
_COLOURS: dict[QPalette.ColorRole, tuple[str, str]] = {
    # dark: fields lighter than the window, as Fusion outlines a field only on the light side
    QPalette.ColorRole.Window: ("#f3f4f6", "#202225"),
    QPalette.ColorRole.WindowText: ("#1c1d1f", "#e6e7e9"),
    QPalette.ColorRole.Base: ("#ffffff", "#2c2f34"),
    QPalette.ColorRole.AlternateBase: ("#e9ebef", "#292c31"),
    QPalette.ColorRole.ToolTipBase: ("#ffffff", "#2b2e33"),
    QPalette.ColorRole.ToolTipText: ("#1c1d1f", "#e6e7e9"),
    QPalette.ColorRole.PlaceholderText: ("#7a7e85", "#8a8e95"),
    QPalette.ColorRole.Text: ("#1c1d1f", "#e6e7e9"),
    QPalette.ColorRole.Button: ("#fbfbfc", "#363a40"),
    QPalette.ColorRole.ButtonText: ("#1c1d1f", "#e6e7e9"),
    QPalette.ColorRole.BrightText: ("#ffffff", "#ffffff"),
    QPalette.ColorRole.Highlight: (ACCENT, ACCENT),
    QPalette.ColorRole.HighlightedText: ("#ffffff", "#ffffff"),
    QPalette.ColorRole.Link: ("#2a62c0", "#7fb0ff"),
    QPalette.ColorRole.LinkVisited: ("#6a3fb5", "#b79cff"),
    QPalette.ColorRole.Light: ("#ffffff", "#3a3e44"),
    QPalette.ColorRole.Midlight: ("#e3e5e9", "#33363b"),
    QPalette.ColorRole.Mid: ("#c4c7cc", "#45494f"),
    QPalette.ColorRole.Dark: ("#a0a4aa", "#111214"),
    QPalette.ColorRole.Shadow: ("#6b6f75", "#000000"),
}
_DISABLED_TEXT = ("#9a9ea5", "#6c7077")

STYLE_SHEET = """
QListWidget#stepSidebar {{ font-size: 14px; padding: 6px; border: none; outline: 0;
                          show-decoration-selected: 1; background: palette(alternate-base); }}
QListWidget#stepSidebar::item:hover:!selected {{ background: palette(midlight); }}
QListWidget#stepSidebar::item {{ padding: 8px 6px; border-radius: 6px; }}
QListWidget#stepSidebar::item:selected {{ background: palette(highlight);
                                          color: palette(highlighted-text); }}
QWidget#sidebarPanel {{ background: palette(alternate-base); }}
QFrame#runIndicator {{ border: 1px solid palette(mid); border-radius: 6px;
                      background: palette(base); }}
QProgressBar#runIndicatorBar {{ max-height: 6px; border: none; border-radius: 3px;
                               background: palette(midlight); }}
QProgressBar#runIndicatorBar::chunk {{ border-radius: 3px; background: {accent}; }}
QGroupBox {{ font-weight: 600; border: 1px solid palette(mid); border-radius: 6px;
             margin-top: 14px; padding-top: 6px; }}
QGroupBox::title {{ subcontrol-origin: margin; subcontrol-position: top left; left: 8px;
                    padding: 0 4px; }}
QPushButton#primaryButton {{ background: {accent}; color: white; border: 1px solid {accent};
                            border-radius: 4px; padding: 5px 14px; font-weight: 600; }}
QPushButton#primaryButton:disabled {{ background: palette(midlight); color: palette(mid);
                                     border-color: palette(mid); }}
QToolButton#advancedToggle {{ border: none; background: transparent; font-weight: 600; }}
QLabel.error {{ color: {error}; }}
"""


def _env_scheme() -> Scheme:
    value = os.environ.get(ENV, "auto").strip().lower()
    return value if value in SCHEMES else "auto"


def system_is_dark() -> bool:
    """The desktop asks for a dark scheme (Qt 6.5+ reads it from the platform; a platform
    that reports none, such as offscreen, counts as light)."""
    hints = QGuiApplication.styleHints()
    return hints.colorScheme() == Qt.ColorScheme.Dark


def make_palette(dark: bool) -> QPalette:
    """The whole palette for ``dark`` or light, disabled text greyed."""
    palette = QPalette()
    column = 1 if dark else 0
    for role, colours in _COLOURS.items():
        palette.setColor(role, QColor(colours[column]))
    disabled = QColor(_DISABLED_TEXT[column])
    for role in (
        QPalette.ColorRole.WindowText,
        QPalette.ColorRole.Text,
        QPalette.ColorRole.ButtonText,
    ):
        palette.setColor(QPalette.ColorGroup.Disabled, role, disabled)
    mid = QColor(_COLOURS[QPalette.ColorRole.Mid][column])
    palette.setColor(QPalette.ColorGroup.Disabled, QPalette.ColorRole.Highlight, mid)
    return palette


def is_dark(palette: QPalette | None = None) -> bool:
    """The palette in use is a dark one (its window darker than its text)."""
    palette = palette or QApplication.palette()
    return (
        palette.color(QPalette.ColorRole.Window).lightness()
        < palette.color(QPalette.ColorRole.WindowText).lightness()
    )


def apply_theme(app: QApplication | None = None, scheme: Scheme | None = None) -> bool:
    """Give ``app`` the Fusion style, our palette for ``scheme`` (default: $QLORA_STUDIO_THEME,
    else the system's) and the style sheet; follow the system when it switches. Returns
    whether the palette is dark."""
    app = app or QApplication.instance()  # type: ignore[assignment]
    if app is None:
        return False
    scheme = scheme or _env_scheme()
    dark = system_is_dark() if scheme == "auto" else scheme == "dark"
    app.setStyle("Fusion")  # the one style that draws every palette role the same everywhere
    app.setPalette(make_palette(dark))
    app.setStyleSheet(STYLE_SHEET.format(accent=ACCENT, error=ERROR_RED))
    app.setProperty("qloraStudioScheme", scheme)
    _recolour_icons()
    if not app.property("qloraStudioFollows"):
        app.setProperty("qloraStudioFollows", True)
        app.styleHints().colorSchemeChanged.connect(lambda _: _follow_system(app))
    return dark


def _follow_system(app: QApplication) -> None:
    if app.property("qloraStudioScheme") == "auto":
        apply_theme(app, "auto")


ICON_PROPERTY = "qloraStudioIcon"  # "name|colour" on a widget whose icon follows the palette


def set_icon(widget: QWidget, name: str, colour: str | None = None) -> None:
    """Give ``widget`` (a button) the icon ``name``, redrawn in the new palette's colours when
    the scheme switches."""
    widget.setProperty(ICON_PROPERTY, f"{name}|{colour or ''}")
    widget.setIcon(icon(name, colour))  # type: ignore[attr-defined]


def _recolour_icons() -> None:
    for widget in QApplication.allWidgets():
        spec = widget.property(ICON_PROPERTY)
        if isinstance(spec, str) and spec:
            name, _, colour = spec.partition("|")
            widget.setIcon(icon(name, colour or None))  # type: ignore[attr-defined]


def icon(name: str, colour: str | None = None) -> QIcon:
    """A qtawesome icon (e.g. ``"mdi6.play"``) in ``colour``, else the palette's text colour;
    greyed when disabled, in the highlighted text's colour when selected. Icons are drawn when
    painted, so they stay sharp at any scale."""
    import qtawesome

    palette = QApplication.palette()
    text = colour or palette.color(QPalette.ColorRole.ButtonText).name()
    return qtawesome.icon(
        name,
        color=text,
        color_active=text,
        color_disabled=palette.color(
            QPalette.ColorGroup.Disabled, QPalette.ColorRole.ButtonText
        ).name(),
        color_selected=palette.color(QPalette.ColorRole.HighlightedText).name(),
    )
