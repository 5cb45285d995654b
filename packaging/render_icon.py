"""Render resources/icons/qlora-studio.svg to the 256x256 PNG next to it (uses QtSvg).

    QT_QPA_PLATFORM=offscreen python packaging/render_icon.py [SIZE ...]

Extra sizes (e.g. 16 32 48 512, for a Windows .ico or a macOS .icns) are written as
``qlora-studio-<SIZE>.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def render(svg: Path, png: Path, size: int) -> None:
    """Write ``svg`` as a ``size`` x ``size`` PNG with a transparent background."""
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"not a valid SVG: {svg}")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    if not image.save(str(png)):
        raise SystemExit(f"could not write {png}")


def main(argv: list[str]) -> int:
    from PySide6.QtGui import QGuiApplication

    app = QGuiApplication.instance() or QGuiApplication(sys.argv[:1])  # noqa: F841 (fonts, paint)
    svg = ICONS / "qlora-studio.svg"
    render(svg, ICONS / "qlora-studio.png", 256)
    for size in (int(arg) for arg in argv):
        render(svg, ICONS / f"qlora-studio-{size}.png", size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
