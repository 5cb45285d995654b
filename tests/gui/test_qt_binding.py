"""Guards against the Qt binding bug that aborted the app: PySide6 6.12.0 loses a reference to
True on every Signal.emit, and Python 3.11 aborts ("bool_dealloc") after ~600 emits."""

import os
import sys

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from PySide6.QtCore import QObject, Signal  # noqa: E402


class _Emitter(QObject):
    fired = Signal(int)


def test_signal_emit_keeps_refcounts_of_true_and_none(qapp):
    emitter, got = _Emitter(), []
    emitter.fired.connect(got.append)
    before = sys.getrefcount(True), sys.getrefcount(None)
    for i in range(300):
        emitter.fired.emit(i)
    after = sys.getrefcount(True), sys.getrefcount(None)
    assert len(got) == 300
    if sys.version_info < (3, 12):  # 3.12+ makes these immortal: their counts mean nothing
        assert after[0] >= before[0] - 5, "PySide6 drops a reference to True on emit"
        assert after[1] >= before[1] - 50, "PySide6 drops references to None"
