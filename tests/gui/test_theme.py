"""The look: our light and dark palettes, chosen by the system or $QLORA_STUDIO_THEME, and icons
redrawn in the palette's colours when it switches."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import pytest  # noqa: E402
from PySide6.QtGui import QPalette  # noqa: E402
from PySide6.QtWidgets import QApplication, QPushButton  # noqa: E402

from qlora_studio.gui import theme  # noqa: E402


def _icon_lightness(button: QPushButton) -> int:
    """The lightness of the icon's most opaque pixel."""
    image = button.icon().pixmap(32, 32).toImage()
    pixels = [image.pixelColor(x, y) for x in range(image.width()) for y in range(image.height())]
    return max(pixels, key=lambda c: c.alpha()).lightness()


@pytest.fixture
def app(qapp, monkeypatch):
    monkeypatch.delenv(theme.ENV, raising=False)
    yield qapp
    theme.apply_theme(qapp, "light")  # the other tests' palette


def test_dark_and_light_palettes_and_icons_that_follow_them(app, qtbot):
    assert theme.apply_theme(app, "dark") and theme.is_dark()
    window = QApplication.palette().color(QPalette.ColorRole.Window)
    assert window.lightness() < 60
    button = QPushButton("Start")
    qtbot.addWidget(button)
    theme.set_icon(button, "mdi6.play")
    assert _icon_lightness(button) > 180  # a light icon on the dark palette

    assert not theme.apply_theme(app, "light") and not theme.is_dark()
    assert QApplication.palette().color(QPalette.ColorRole.Window).lightness() > 200
    assert _icon_lightness(button) < 80  # the same button's icon, redrawn dark


def test_the_environment_or_the_system_chooses_the_scheme(app, monkeypatch):
    monkeypatch.setenv(theme.ENV, "dark")
    assert theme.apply_theme(app) and theme.is_dark()
    monkeypatch.setenv(theme.ENV, "auto")
    # offscreen reports no scheme: light, unless the platform says dark
    assert theme.apply_theme(app) == theme.system_is_dark()
