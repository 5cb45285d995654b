"""What a newcomer meets first: the window either opens or says what to install, the smoothed
loss follows the loss, empty charts show no legend box, and the Train log arrives in batches."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PySide6.QtCore import QSettings

from qlora_studio.gui.charts import (
    LOSS,
    SMOOTHED,
    LossChart,
    MemoryChart,
    SmoothedLoss,
)
from qlora_studio.gui.qt_platform import (
    EXIT_NO_PLATFORM,
    check_platform,
    install_advice,
    missing_libraries,
    packages_for,
    platform_candidates,
    plugin_path,
    unloadable,
)
from qlora_studio.gui.run_curves import RunLossChart

REPO = Path(__file__).resolve().parents[2]

# `ldd libqxcb.so` on a Debian 12 machine with libxcb-cursor0 installed, abridged
LDD_OUTPUT = """\
\tlinux-vdso.so.1 (0x00007fb08e338000)
\tlibQt6XcbQpa.so.6 => /site-packages/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007fb08e26a000)
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007fb08e180000)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-util.so.1 => /lib/x86_64-linux-gnu/libxcb-util.so.1 (0x00007fb08e178000)
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\t/lib64/ld-linux-x86-64.so.2 (0x00007fb08e33a000)
"""


# ---- the platform plugin check ----------------------------------------------------------
def test_ldd_output_maps_to_each_distributions_packages():
    missing = missing_libraries(LDD_OUTPUT)
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1"]
    assert packages_for(missing) == [
        ("Debian/Ubuntu", ["libxcb-icccm4", "libxcb-keysyms1"]),
        ("Fedora", ["xcb-util-wm", "xcb-util-keysyms"]),
        ("Arch", ["xcb-util-wm", "xcb-util-keysyms"]),
    ]
    advice = install_advice(["libxcb-cursor.so.0", "libunknown.so.7"])
    assert "sudo apt install libxcb-cursor0 libunknown.so.7" in advice
    assert "sudo dnf install xcb-util-cursor" in advice
    assert "sudo pacman -S xcb-util-cursor" in advice
    assert missing_libraries("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n") == []


def test_the_platform_qt_will_try_follows_its_environment():
    assert platform_candidates({}) == ["xcb"]
    assert platform_candidates({"QT_QPA_PLATFORM": "offscreen"}) == ["offscreen"]
    assert platform_candidates({"QT_QPA_PLATFORM": "wayland;xcb"}) == ["wayland", "xcb"]
    assert platform_candidates({"QT_QPA_PLATFORM": "xcb:nograb"}) == ["xcb"]
    wayland_session = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    assert platform_candidates(wayland_session) == ["wayland", "xcb"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin is Linux's")
def test_the_check_on_this_machine_agrees_with_the_dynamic_loader():
    plugin = plugin_path("xcb")
    assert plugin is not None and plugin.name == "libqxcb.so"
    missing = unloadable(plugin)
    problem = check_platform({"QT_QPA_PLATFORM": "xcb", "DISPLAY": ":0"})
    if missing:
        assert problem is not None and problem.missing == tuple(missing)
        assert "sudo apt install" in problem.text and "sudo dnf install" in problem.text
    else:
        assert problem is None
    # another platform chosen: nothing to check, whatever xcb lacks
    assert check_platform({"QT_QPA_PLATFORM": "offscreen"}) is None
    assert check_platform({"QT_QPA_PLATFORM": "minimal;xcb"}) is None
    assert check_platform({}, system="darwin") is None
    # xcb can load but there is no display: say so rather than let Qt abort
    no_display = check_platform({"QT_QPA_PLATFORM": "xcb"})
    assert no_display is not None
    assert ("DISPLAY is not set" in no_display.text) == (not missing)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Qt's xcb plugin is Linux's")
def test_qlora_studio_prints_what_to_install_instead_of_qts_abort(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(QT_QPA_PLATFORM="xcb", PYTHONPATH=str(REPO), XDG_CONFIG_HOME=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-m", "qlora_studio"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=tmp_path,
    )
    # with libraries missing, the packages; with none missing, the display: never Qt's abort
    assert result.returncode == EXIT_NO_PLATFORM, result.stderr[-2000:]
    missing = unloadable(plugin_path("xcb"))
    for package in packages_for(missing)[0][1]:
        assert package in result.stderr
    assert "cannot open its window" in result.stderr
    assert "Aborted" not in result.stderr and "could not be initialized" not in result.stderr


# ---- the smoothed loss ------------------------------------------------------------------
# the demo's first 20 losses (Gemma 3 270M, QLoRA, batch 8, lr 5e-4, on a CPU)
DEMO_LOSSES = [
    4.045, 4.065, 2.923, 1.971, 1.076, 0.815, 0.855, 0.466, 0.841, 0.832,
    0.343, 0.359, 0.401, 0.246, 0.153, 0.094, 0.164, 0.052, 0.044, 0.347,
]  # fmt: skip


def test_the_smoothed_loss_follows_a_falling_loss_by_step_20(qtbot):
    straight = [0.9 - 0.8 * i / 19 for i in range(20)]  # 0.9 down to 0.1 over 20 steps
    smoothing = SmoothedLoss()
    last = [smoothing.add(loss) for loss in straight][-1]
    assert last is not None and abs(last - 0.1) < 0.1
    # what the issue saw: an average that started at the first loss still near 0.9 by step 20
    lagging = straight[0]
    for loss in straight[1:]:
        lagging = 0.1 * loss + 0.9 * lagging
    assert lagging > 0.3

    chart = LossChart()
    qtbot.addWidget(chart)
    for step, loss in enumerate(DEMO_LOSSES, start=1):
        chart.add_metrics({"step": step, "loss": loss})
    chart.redraw()
    raw = chart.curves[LOSS].getOriginalDataset()[1]
    smoothed = chart.curves[SMOOTHED].getOriginalDataset()[1]
    recent = sorted(raw[-6:])
    assert recent[0] <= smoothed[-1] <= recent[-1] + 1e-9  # among the losses around it
    assert smoothed[-1] < 0.25 and smoothed[0] == pytest.approx(DEMO_LOSSES[0])


def test_the_smoothed_loss_skips_gaps_and_rejects_bad_weights():
    smoothing = SmoothedLoss(alpha=0.5, window_fraction=0)
    assert smoothing.add(float("nan")) is None
    assert smoothing.add(2.0) == 2.0 and smoothing.add(float("inf")) == 2.0
    with pytest.raises(ValueError, match="ema_alpha"):
        SmoothedLoss(alpha=0.0)
    with pytest.raises(ValueError, match="window_fraction"):
        SmoothedLoss(window_fraction=-1)


# ---- empty charts -------------------------------------------------------------------------
def test_empty_charts_show_no_legend_box(qtbot):
    loss, memory, runs = LossChart(), MemoryChart(), RunLossChart()
    for widget in (loss, memory, runs):
        qtbot.addWidget(widget)
        widget.show()
    assert not loss.legend.isVisible() and not memory.legend.isVisible()
    assert not runs.legend.isVisible()

    loss.add_metrics({"step": 1, "loss": 2.0})
    memory.add_memory({"time": 1.0, "step": 1, "device": "cpu", "rss_bytes": 2**30})
    runs.set_curves({"run a": [(1, 2.0), (2, 1.5)]})
    loss.redraw()
    memory.redraw()
    assert loss.legend.isVisible() and memory.legend.isVisible() and runs.legend.isVisible()

    loss.clear()
    memory.clear()
    runs.set_curves({"run b": []})  # a run without losses yet draws nothing
    assert not loss.legend.isVisible() and not memory.legend.isVisible()
    assert not runs.legend.isVisible()


# ---- the Train page's log ----------------------------------------------------------------
@pytest.fixture
def train_page(qtbot, tmp_path):
    from qlora_studio.gui.pages.train_page import TrainPage
    from qlora_studio.gui.state import StudioState, demo_config

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
    page = TrainPage(StudioState(demo_config(), settings=settings))
    qtbot.addWidget(page)
    return page


def test_the_train_log_appends_a_burst_of_lines_in_one_go(qtbot, train_page):
    lines = [f"line {i}" for i in range(500)]
    for line in lines:
        train_page._append(line)  # what the job's log and status signals reach
    assert train_page.log.toPlainText() == ""  # nothing laid out per line
    qtbot.waitUntil(lambda: train_page.log.blockCount() == 500, timeout=3000)
    assert train_page.log.toPlainText().splitlines() == lines

    train_page._append("done")
    train_page.flush_log()  # the run ended: the last lines at once
    assert train_page.log.toPlainText().splitlines()[-1] == "done"


def test_child_jobs_of_a_run_start_in_the_background(tmp_path):
    from qlora_studio.gui.jobs import ChildJob

    assert ChildJob.train(tmp_path / "run.yaml").process.background
    assert ChildJob.resume(tmp_path / "runs" / "a").process.background
    assert not ChildJob(["eval", str(tmp_path)]).process.background
