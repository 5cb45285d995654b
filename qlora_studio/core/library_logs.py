"""Library warnings during a run: the few that matter become one plain status line, the rest go
to the run's ``debug.log``, and none reach the user's console or the Train page's log.

transformers, peft and bitsandbytes speak through two channels: Python warnings (transformers'
FutureWarnings on renamed API, bitsandbytes' "Paged optimizers are not supported on CPU") and
``logging`` records (bitsandbytes' missing CPU kernel, transformers' own notes, which it prints
through a stderr handler of its own). A :class:`LibraryLogs` takes over both for the libraries
in :data:`LIBRARIES` until it is closed; records at ERROR and above still reach stderr as well.
No Qt here.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from qlora_studio.core.run_folder import DEBUG_LOG  # noqa: F401  (re-exported: in the run folder)

LIBRARIES = (  # logger names whose records go to the debug log
    "transformers",
    "peft",
    "bitsandbytes",
    "accelerate",
    "datasets",
    "huggingface_hub",
    "safetensors",
    "torch",
)


@dataclass(frozen=True)
class Notice:
    """A library message worth one plain line to the user: ``pattern`` (a regular expression
    searched in the warning or record) and the ``line`` shown instead."""

    pattern: str
    line: str


NOTICES = (
    Notice(
        r"Paged optimizers are not supported on CPU",
        "On the CPU the paged optimizer runs unpaged (paging only matters on a GPU)",
    ),
)


class LibraryLogs:
    """Routes library warnings and log records to ``debug_file`` while installed; a message
    matching one of ``notices`` also calls ``notify`` with its plain line, once per line."""

    def __init__(
        self,
        debug_file: str | Path,
        notify: Callable[[str], None] = lambda line: None,
        *,
        notices: tuple[Notice, ...] = NOTICES,
        libraries: tuple[str, ...] = LIBRARIES,
    ):
        self.debug_file = Path(debug_file)
        self.notify = notify
        self.notices = notices
        self.libraries = libraries
        self.noticed: list[str] = []  # the plain lines sent, in order
        self._lock = threading.Lock()
        self._handler = _ToLibraryLogs(self)
        self._saved_loggers: dict[str, tuple[list[logging.Handler], bool]] = {}
        self._saved_showwarning: Any = None
        self._progress_bars_were_on: bool | None = None
        self._installed = False

    # ---- installing -----------------------------------------------------------------------
    def install(self) -> LibraryLogs:
        """Take over the libraries' warnings and log records (idempotent); returns self."""
        if self._installed:
            return self
        _configure_transformers_logger()  # its stderr handler exists before we replace it
        for name in self.libraries:
            logger = logging.getLogger(name)
            self._saved_loggers[name] = (list(logger.handlers), logger.propagate)
            for handler in list(logger.handlers):
                if _prints_to_console(handler):
                    logger.removeHandler(handler)
            logger.addHandler(self._handler)
            logger.propagate = False  # no second copy through the root logger's last resort
        self._saved_showwarning = warnings.showwarning
        warnings.showwarning = self._show_warning
        self._quiet_progress_bars()
        self._installed = True
        return self

    def close(self) -> None:
        """Give the warnings and the libraries' loggers back as they were (idempotent)."""
        if not self._installed:
            return
        self._installed = False
        for name, (handlers, propagate) in self._saved_loggers.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self._handler)
            for handler in handlers:
                if handler not in logger.handlers:
                    logger.addHandler(handler)
            logger.propagate = propagate
        self._saved_loggers.clear()
        if warnings.showwarning == self._show_warning:  # unless someone replaced ours since
            warnings.showwarning = self._saved_showwarning
        if self._progress_bars_were_on:
            from transformers.utils import logging as hf_logging

            hf_logging.enable_progress_bar()

    def __enter__(self) -> LibraryLogs:
        return self.install()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- what arrives ---------------------------------------------------------------------
    def _show_warning(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        text = str(message)
        self._write(f"{category.__name__} {_short_path(filename)}:{lineno}: {text}")
        self._notice(text)

    def _on_record(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a library's malformed format string: keep what we can
            text = f"{record.msg!r} % {record.args!r}"
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self._write(f"{record.levelname} {record.name}: {text}")
        self._notice(text)
        if record.levelno >= logging.ERROR:  # a real failure stays visible
            print(f"{record.name}: {text}", file=sys.stderr, flush=True)

    def _notice(self, text: str) -> None:
        for notice in self.notices:
            if notice.line in self.noticed or not re.search(notice.pattern, text):
                continue
            self.noticed.append(notice.line)
            try:
                self.notify(notice.line)
            except Exception as exc:  # a closed reporter must not break the library's call
                self._write(f"could not report {notice.line!r}: {exc!r}")

    def _write(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with self._lock:
            try:
                with self.debug_file.open("a", encoding="utf-8") as out:
                    out.write(f"{stamp} {text}\n")
            except OSError:
                pass  # a debug log that cannot be written must not fail the run

    def _quiet_progress_bars(self) -> None:
        """transformers' "Loading weights" bar: kept in a terminal, off when stderr is a pipe
        (the window reads it line by line, and carriage returns make one endless line)."""
        if _isatty(sys.stderr):
            return
        try:
            from transformers.utils import logging as hf_logging
        except ImportError:
            return
        self._progress_bars_were_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()


class _ToLibraryLogs(logging.Handler):
    def __init__(self, route: LibraryLogs):
        super().__init__(level=logging.NOTSET)
        self.route = route

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.route._on_record(record)
        except Exception:
            self.handleError(record)


_active: LibraryLogs | None = None


def route_library_logs(
    debug_file: str | Path, notify: Callable[[str], None] = lambda line: None
) -> LibraryLogs:
    """Route library warnings and log records to ``debug_file`` from now on, the notices to
    ``notify``; a route installed earlier in this process (an earlier run) is closed first.
    The returned route stays installed until its ``close()``."""
    global _active
    if _active is not None:
        _active.close()
    _active = LibraryLogs(debug_file, notify).install()
    return _active


def _configure_transformers_logger() -> None:
    """transformers adds its stderr handler the first time it logs; have it added now."""
    if "transformers" not in sys.modules:
        return
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("transformers")


def _prints_to_console(handler: logging.Handler) -> bool:
    """A stream handler (transformers' own prints to stderr); a file handler someone added stays."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _short_path(filename: str) -> str:
    """``.../site-packages/transformers/trainer.py`` -> ``transformers/trainer.py``."""
    parts = Path(filename).parts
    if "site-packages" in parts:
        return "/".join(parts[parts.index("site-packages") + 1 :])
    return filename
