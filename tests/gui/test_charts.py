"""Live loss and memory charts: buffers, EMA, legends, lines, and redraws throttled to a timer."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from qlora_studio.gui.charts import (  # noqa: E402
    EVAL_LOSS,
    GIB,
    GPU_USED,
    LOSS,
    PROCESS_RAM,
    SMOOTHED,
    TORCH_ALLOCATED,
    TORCH_RESERVED,
    GrowingSeries,
    LossChart,
    MemoryChart,
    SmoothedLoss,
)

T0 = 1_700_000_000.0


def metrics(step: int, **fields) -> dict:
    return {"type": "metrics", "time": T0 + step, "step": step, **fields}


def cpu_memory(step: int, seconds: float, rss: int) -> dict:
    return {"type": "memory", "time": T0 + seconds, "step": step, "device": "cpu", "rss_bytes": rss}


def cuda_memory(step: int, seconds: float, used_gib: float, total_gib: float = 24.0) -> dict:
    return {
        "type": "memory",
        "time": T0 + seconds,
        "step": step,
        "device": "cuda:0",
        "rss_bytes": 3 * GIB,
        "torch_allocated_bytes": int((used_gib - 2) * GIB),
        "torch_reserved_bytes": int((used_gib - 1) * GIB),
        "torch_peak_bytes": int(used_gib * GIB),
        "nvml_used_bytes": int(used_gib * GIB),
        "nvml_total_bytes": int(total_gib * GIB),
    }


@pytest.fixture
def loss_chart(qtbot) -> LossChart:
    chart = LossChart()
    qtbot.addWidget(chart)
    return chart


@pytest.fixture
def memory_chart(qtbot) -> MemoryChart:
    chart = MemoryChart()
    qtbot.addWidget(chart)
    return chart


# ---- GrowingSeries ----------------------------------------------------------------------
def test_growing_series_keeps_every_value_in_order_across_doublings():
    series = GrowingSeries(capacity=4)
    for i in range(100):
        series.append(i, 10.0 * i)
    assert len(series) == 100
    assert series.capacity == 128  # 4 -> 8 -> 16 -> 32 -> 64 -> 128
    x, y = series.view()
    np.testing.assert_array_equal(x, np.arange(100.0))
    np.testing.assert_array_equal(y, 10.0 * np.arange(100.0))
    assert x.dtype == np.float64 and series.last() == (99.0, 990.0)

    series.discard_from(40)
    assert len(series) == 40 and series.last() == (39.0, 390.0)
    series.clear()
    assert len(series) == 0 and series.last() is None and series.view()[0].size == 0


# ---- LossChart --------------------------------------------------------------------------
def test_loss_chart_gives_raw_and_smoothed_a_point_per_loss_and_eval_only_eval_losses(
    loss_chart,
):
    for step in range(1, 21):
        loss_chart.add_metrics(metrics(step, loss=3.0 - step * 0.1, lr=1e-4))
        if step % 5 == 0:
            loss_chart.add_metrics(metrics(step, eval_loss=2.5 - step * 0.05))
    loss_chart.add_metrics(metrics(21, lr=1e-4, grad_norm=0.3))  # neither loss: no point
    loss_chart.redraw()

    assert loss_chart.point_count() == {"loss": 20, "smoothed": 20, "eval": 4}
    eval_x, eval_y = loss_chart.curves[EVAL_LOSS].getOriginalDataset()
    np.testing.assert_array_equal(eval_x, [5, 10, 15, 20])
    np.testing.assert_allclose(eval_y, [2.25, 2.0, 1.75, 1.5])
    raw_x, _ = loss_chart.curves[LOSS].getOriginalDataset()
    np.testing.assert_array_equal(raw_x, np.arange(1, 21))
    assert len(loss_chart.legend.items) == 3


def test_loss_chart_smoothed_curve_is_the_debiased_ema_of_the_losses(qtbot):
    chart = LossChart(ema_alpha=0.5, window_fraction=0)  # a fixed weight: TensorBoard's EMA
    qtbot.addWidget(chart)
    for step, loss in enumerate([2.0, 1.0, 3.0, 3.0], start=1):
        chart.add_metrics(metrics(step, loss=loss))
    chart.redraw()
    _, smoothed = chart.curves[SMOOTHED].getOriginalDataset()
    # m_0 = 0; m_t = a * x_t + (1 - a) * m_{t-1}; s_t = m_t / (1 - (1 - a)^t)
    np.testing.assert_allclose(smoothed, [2.0, 1.0 / 0.75, 2.0 / 0.875, 2.5 / 0.9375])

    default = LossChart()
    qtbot.addWidget(default)
    assert default.ema_alpha == 0.1
    # the window grows with the run (a fifth of the losses so far) up to the weight 0.1
    assert default.smoothed.weight(1) == 1.0 and default.smoothed.weight(20) == 0.4
    assert default.smoothed.weight(10_000) == 0.1


def test_loss_chart_redraws_on_its_timer_not_once_per_event(qtbot, loss_chart):
    for step in range(1, 10_001):
        loss_chart.add_metrics(metrics(step, loss=1.0 + 1.0 / step))
    # No event loop ran: nothing was drawn yet, however many events came in.
    assert loss_chart.redraw_count == 0
    assert loss_chart.point_count()["loss"] == 0

    qtbot.waitUntil(lambda: loss_chart.point_count()["loss"] == 10_000, timeout=3000)
    assert 1 <= loss_chart.redraw_count <= 2
    curve = loss_chart.curves[LOSS]
    assert len(curve.getOriginalDataset()[0]) == 10_000
    assert loss_chart.point_count() == {"loss": 10_000, "smoothed": 10_000, "eval": 0}
    assert curve.opts["autoDownsample"] and curve.opts["downsampleMethod"] == "peak"
    assert curve.opts["clipToView"] and not curve.opts["antialias"]

    # An idle chart does not redraw.
    count = loss_chart.redraw_count
    qtbot.wait(3 * loss_chart.refresh_ms)
    assert loss_chart.redraw_count == count


def test_loss_chart_resumed_run_replaces_the_steps_it_repeats(loss_chart):
    for step in range(1, 11):
        loss_chart.add_metrics(metrics(step, loss=float(step)))
    loss_chart.add_metrics(metrics(8, eval_loss=5.0))
    # Resumed from a checkpoint at step 6: steps 7.. come again.
    for step in range(7, 13):
        loss_chart.add_metrics(metrics(step, loss=100.0))
    loss_chart.redraw()

    x, y = loss_chart.curves[LOSS].getOriginalDataset()
    np.testing.assert_array_equal(x, np.arange(1, 13))
    np.testing.assert_array_equal(y[6:], 100.0)
    assert loss_chart.point_count()["eval"] == 0
    smoothed = loss_chart.curves[SMOOTHED].getOriginalDataset()[1]
    # the smoothing carries on from step 6, as if steps 7.. had come only once
    once = SmoothedLoss()
    expected = [once.add(loss) for loss in [*map(float, range(1, 7)), *[100.0] * 6]]
    np.testing.assert_allclose(smoothed, expected)


def test_loss_chart_clear_removes_points_and_legend(loss_chart):
    loss_chart.add_metrics(metrics(1, loss=2.0, eval_loss=2.1))
    loss_chart.redraw()
    loss_chart.clear()
    loss_chart.redraw()
    assert loss_chart.point_count() == {"loss": 0, "smoothed": 0, "eval": 0}
    assert loss_chart.legend.items == []
    loss_chart.add_metrics(metrics(1, loss=4.0))
    loss_chart.redraw()
    assert loss_chart.curves[SMOOTHED].getOriginalDataset()[1][0] == 4.0  # EMA restarted


# ---- MemoryChart ------------------------------------------------------------------------
def test_memory_chart_on_cpu_shows_only_process_ram(memory_chart):
    for step in range(5):
        memory_chart.add_memory(cpu_memory(step, seconds=2.0 * step, rss=(1 + step) * GIB))
    memory_chart.redraw()

    assert list(memory_chart.curves) == [PROCESS_RAM]
    assert len(memory_chart.legend.items) == 1
    assert memory_chart.gpu_total_line is None
    x, y = memory_chart.curves[PROCESS_RAM].getOriginalDataset()
    np.testing.assert_allclose(x, [0, 2, 4, 6, 8])  # seconds since the first sample
    np.testing.assert_allclose(y, [1, 2, 3, 4, 5])  # GB of 2**30 bytes
    assert memory_chart.point_count() == {
        GPU_USED: 0,
        TORCH_RESERVED: 0,
        TORCH_ALLOCATED: 0,
        PROCESS_RAM: 5,
    }


def test_memory_chart_on_cuda_shows_gpu_curves_and_the_total_line(memory_chart):
    for step in range(4):
        memory_chart.add_memory(cuda_memory(step, seconds=1.5 * step, used_gib=10.0 + step))
    assert memory_chart.curves == {}  # nothing is drawn before the timer or redraw()
    memory_chart.redraw()

    assert set(memory_chart.curves) == {GPU_USED, TORCH_ALLOCATED, TORCH_RESERVED, PROCESS_RAM}
    assert len(memory_chart.legend.items) == 4
    x, used = memory_chart.curves[GPU_USED].getOriginalDataset()
    np.testing.assert_allclose(x, [0, 1.5, 3.0, 4.5])
    np.testing.assert_allclose(used, [10, 11, 12, 13])
    np.testing.assert_allclose(
        memory_chart.curves[TORCH_ALLOCATED].getOriginalDataset()[1], [8, 9, 10, 11]
    )
    line = memory_chart.gpu_total_line
    assert line is not None and line.angle == 0
    assert line.value() == pytest.approx(24.0)  # nvml_total_bytes / 2**30
    assert "24.0 GB" in line.label.toPlainText()

    memory_chart.set_gpu_total(80 * GIB)
    assert memory_chart.gpu_total_line is line and line.value() == pytest.approx(80.0)
    memory_chart.set_gpu_total(None)
    assert memory_chart.gpu_total_line is None and line not in memory_chart.plot_item.items


def test_memory_chart_marks_out_of_memory_with_a_vertical_line(memory_chart):
    for step in range(3):
        memory_chart.add_memory(cuda_memory(step, seconds=5.0 * step, used_gib=20.0))
    memory_chart.mark_oom(12.5)
    line = memory_chart.oom_lines[-1]
    assert line.angle == 90 and line.value() == pytest.approx(12.5)
    assert line.label.toPlainText() == "out of memory"
    assert line in memory_chart.plot_item.items

    memory_chart.mark_oom(label="CUDA out of memory")  # default: at the last sample
    assert memory_chart.oom_lines[-1].value() == pytest.approx(10.0)

    memory_chart.redraw()
    memory_chart.clear()
    memory_chart.redraw()
    assert memory_chart.oom_lines == [] and memory_chart.gpu_total_line is None
    assert memory_chart.legend.items == [] and memory_chart.curves == {}


# ---- offscreen rendering ----------------------------------------------------------------
def test_each_chart_renders_to_a_non_empty_image(qtbot, loss_chart, memory_chart, tmp_path):
    for step in range(1, 200):
        loss_chart.add_metrics(metrics(step, loss=2.0 / step**0.3))
        if step % 50 == 0:
            loss_chart.add_metrics(metrics(step, eval_loss=2.2 / step**0.3))
        memory_chart.add_memory(cuda_memory(step, seconds=0.5 * step, used_gib=12 + step / 100))
    memory_chart.mark_oom()

    for name, chart in (("loss", loss_chart), ("memory", memory_chart)):
        chart.resize(420, 240)
        chart.show()
        qtbot.waitExposed(chart)
        qtbot.waitUntil(lambda c=chart: not c.is_dirty(), timeout=3000)
        assert chart.minimumHeight() >= 180
        path = tmp_path / f"{name}.png"
        assert chart.grab().save(str(path))
        assert path.stat().st_size > 0
        image = chart.grab().toImage()
        assert not image.isNull() and image.width() > 0
        colours = {
            image.pixel(x, y)
            for x in range(0, image.width(), 7)
            for y in range(0, image.height(), 7)
        }
        assert len(colours) > 2  # more than a blank background
