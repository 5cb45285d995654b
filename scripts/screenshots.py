"""Screenshots for the README: drive the real window through a real run and save one PNG per page.

    python scripts/screenshots.py                       # the demo model, into docs/images/
    python scripts/screenshots.py --model tests/tiny --steps 4 --out /tmp/shots

The window is the app's own (offscreen unless a display is set): the Model page inspects, the
Dataset page analyses, Memory estimates, "Start training" runs the CLI child for ``--steps``
steps, Compare asks base and tuned one question, Export writes the adapter and Runs selects the
run. Then every page is saved at each size in the light and the dark palette, as
``PAGE-SCHEME-WxH.png`` (and ``train-running-light-WxH.png``, taken mid-run). Runs, history and
window settings go to a scratch folder, never to the user's own. Re-run it when a page changes.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "docs" / "images"
DEFAULT_SIZES = "1280x800,1920x1080"
PROMPT = "Convert to ISO date: the fourth of July, 1976"


def _parse_sizes(text: str) -> list[tuple[int, int]]:
    sizes = []
    for part in text.split(","):
        width, _, height = part.strip().lower().partition("x")
        sizes.append((int(width), int(height)))
    return sizes


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="demo", help="model source (default: the demo)")
    parser.add_argument("--steps", type=int, default=10, help="training steps of the run")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the PNGs")
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="window sizes, e.g. 1280x800")
    parser.add_argument("--schemes", default="light,dark", help="palettes: light, dark or both")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per waited step")
    args = parser.parse_args(argv)
    args.size_list = _parse_sizes(args.sizes)
    args.scheme_list = [s.strip() for s in args.schemes.split(",") if s.strip()]
    return args


class Driver:
    """The window and the waits between a user's clicks."""

    def __init__(self, window, timeout_s: float):
        self.window = window
        self.timeout_s = timeout_s

    def settle(self, ms: int = 100) -> None:
        """Let the event loop run ``ms`` (charts redraw on timers, layouts settle)."""
        from PySide6.QtCore import QEventLoop, QTimer

        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    def wait(self, done: Callable[[], bool], what: str, failed: Callable[[], str] = str) -> None:
        deadline = time.monotonic() + self.timeout_s
        while not done():
            problem = failed()
            if problem:
                raise RuntimeError(f"{what}: {problem}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            self.settle(50)
        self.settle(300)

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self.window.grab().save(str(path)):
            raise RuntimeError(f"could not write {path}")
        print(f"saved {path}", flush=True)
        return path


def _drive_a_run(driver: Driver, args: argparse.Namespace, shots: list[Path]) -> None:
    """Model → Dataset → Start, as a first run goes; then Compare, Export and Runs get data."""
    window = driver.window
    state = window.state
    first_size = args.size_list[0]
    window.resize(*first_size)
    model, dataset = window.page("Model"), window.page("Dataset")
    driver.wait(
        lambda: state.model_info is not None,
        "the model inspection",
        lambda: "" if not model.error_label.isVisible() else model.error_label.text(),
    )
    window.go_to("Dataset")
    driver.wait(dataset.is_complete, "the dataset analysis")
    window.go_to("Memory")
    memory = window.page("Memory")
    driver.wait(lambda: len(memory.estimates) == 3, "the memory estimates")

    train = window.page("Train")
    window.start_training()
    driver.wait(
        lambda: train.progress.value() >= max(2, args.steps // 2),
        "half the run",
        lambda: "" if train.training or train.finished_ok else train.numbers.text(),
    )
    driver.settle(1200)  # the charts' timed redraw
    scheme = args.scheme_list[0]
    shots.append(
        driver.save(args.out / f"train-running-{scheme}-{first_size[0]}x{first_size[1]}.png")
    )
    driver.wait(
        lambda: train.finished_ok and not train.is_running(),
        "the end of the run",
        lambda: "" if train.training or train.finished_ok else train.numbers.text(),
    )

    window.go_to("Compare")
    compare = window.page("Compare")
    compare.prompt.setPlainText(PROMPT)
    compare.send()
    driver.wait(lambda: compare.compared and compare.worker is None, "the comparison")

    window.go_to("Export")
    export = window.page("Export")
    export.out_edit.setText(str(Path(args.work) / "exported-adapter"))
    export.export_button.click()
    driver.wait(lambda: export.exported is not None and not export.is_running(), "the export")

    window.go_to("Runs")
    runs = window.page("Runs")
    runs.refresh()
    if runs.records:
        runs.select_ids([runs.records[0].id])


def _save_pages(driver: Driver, args: argparse.Namespace, shots: list[Path]) -> None:
    from PySide6.QtWidgets import QApplication

    from qlora_studio.gui import theme

    window = driver.window
    for scheme in args.scheme_list:
        theme.apply_theme(QApplication.instance(), scheme)
        for width, height in args.size_list:
            window.resize(width, height)
            for page in window.pages:
                window.go_to(page.title)
                driver.settle(400)
                name = f"{page.title.lower()}-{scheme}-{width}x{height}.png"
                shots.append(driver.save(args.out / name))


def _no_pointer(window) -> None:
    """No hover highlight where an offscreen pointer happens to be (the sidebar's first row)."""
    from PySide6.QtCore import QEvent, Qt
    from PySide6.QtGui import QCursor
    from PySide6.QtWidgets import QApplication

    QCursor.setPos(10_000, 10_000)
    viewport = window.sidebar.viewport()
    viewport.setAttribute(Qt.WidgetAttribute.WA_Hover, False)
    QApplication.sendEvent(viewport, QEvent(QEvent.Type.Leave))


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    work = args.work or Path(tempfile.mkdtemp(prefix="qlora-studio-screenshots-"))
    args.work = work
    # the run, its history and the window's settings stay in the scratch folder
    os.environ["QLORA_STUDIO_DATA"] = str(work / "user_data")
    os.environ["QLORA_STUDIO_THEME"] = args.scheme_list[0]

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    from qlora_studio.gui.main_window import MainWindow
    from qlora_studio.gui.state import StudioState, demo_config

    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("QLoRA Studio")
    cfg = demo_config()
    if args.model != "demo":
        cfg.model.source = str(Path(args.model).resolve())
        cfg.data.max_length = 160  # a tiny model's tokenizer writes the dates in more tokens
    cfg.train.max_steps = args.steps
    cfg.train.save_steps = max(args.steps, 1)
    settings = QSettings(str(work / "settings.ini"), QSettings.Format.IniFormat)
    window = MainWindow(StudioState(cfg, settings=settings))
    window.confirm_quit_while_training = lambda: True
    window.show()
    _no_pointer(window)
    driver = Driver(window, args.timeout)
    shots: list[Path] = []
    try:
        _drive_a_run(driver, args, shots)
        _save_pages(driver, args, shots)
    finally:
        window.close()
    print(f"{len(shots)} screenshots in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
