"""scripts/screenshots.py drives the real window through a real run on a tiny model and saves one
picture per page, in the light and the dark palette."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import subprocess  # noqa: E402
import sys  # noqa: E402

from PySide6.QtGui import QImage  # noqa: E402
from test_main_window import STEPS  # noqa: E402


def _lightness_and_colours(image: QImage) -> tuple[float, int]:
    """The mean lightness and the number of distinct colours on a 40-pixel grid."""
    colours = [
        image.pixelColor(x, y)
        for x in range(0, image.width(), 40)
        for y in range(0, image.height(), 40)
    ]
    return sum(c.lightness() for c in colours) / len(colours), len({c.rgb() for c in colours})


def test_screenshots_of_every_page_after_a_real_run(tiny_models, tmp_path, repo_root):
    out = tmp_path / "images"
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    env.pop("QLORA_STUDIO_THEME", None)
    command = [
        sys.executable,
        str(repo_root / "scripts" / "screenshots.py"),
        "--model",
        str(tiny_models["llama"]),
        "--steps",
        "2",
        "--sizes",
        "1280x800",
        "--out",
        str(out),
        "--work",
        str(tmp_path / "work"),
        "--timeout",
        "240",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    expected = {
        f"{page.lower()}-{scheme}-1280x800.png" for page in STEPS for scheme in ("light", "dark")
    }
    expected.add("train-running-light-1280x800.png")
    assert {p.name for p in out.iterdir()} == expected
    for name in expected:
        image = QImage(str(out / name))
        assert (image.width(), image.height()) == (1280, 800), name
        _, colours = _lightness_and_colours(image)
        assert colours >= 8, f"{name} looks blank"
    for page in STEPS:
        light, _ = _lightness_and_colours(QImage(str(out / f"{page.lower()}-light-1280x800.png")))
        dark, _ = _lightness_and_colours(QImage(str(out / f"{page.lower()}-dark-1280x800.png")))
        assert dark < light - 40, page
    # the run's folder went to the scratch folder's runs, not the user's
    runs = list((tmp_path / "work" / "user_data" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "adapter" / "adapter_config.json").exists()
