"""What the wizard pages share: the run config being edited, what was learned about the model
and the data, the jobs they run, the settings that persist across launches (QSettings), and the
signals through which pages talk to each other without reaching into one another."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, QSettings, Signal

from qlora_studio.config import ConfigError, RunConfig
from qlora_studio.resources import resources_dir

RECENT_LIMIT = 8
RUNS_DIR_KEY = "output/runs_dir"  # the runs folder the user chose on the Settings page
CLI_RUNS_DIR = "runs"  # output.dir's default: the CLI's runs/ in the working folder


def default_runs_dir() -> Path:
    """Where the app keeps runs until the user picks another folder: ``~/QLoRA Studio/runs``.

    A visible folder in the home folder, because a desktop user looks for their runs in a file
    manager: the platform data folders (~/.local/share, ~/Library/Application Support,
    %APPDATA%) are hidden there, and Documents is often synced to a cloud drive, a poor home for
    checkpoints of several GB. With ``$QLORA_STUDIO_DATA`` set (a portable install, the tests)
    runs go to its ``runs/`` instead."""
    override = os.environ.get("QLORA_STUDIO_DATA")
    if override:
        return Path(override) / "runs"
    return Path.home() / "QLoRA Studio" / "runs"


def demo_config() -> RunConfig:
    """The shipped demo run: the app opens on it so a first run needs only Start."""
    return RunConfig.load(resources_dir() / "configs" / "demo-qlora.yaml")


class StudioState(QObject):
    """One RunConfig (each page owns a slice) plus results other pages need."""

    model_info_changed = Signal(object)  # ModelInfo | None
    data_report_changed = Signal(object)  # inspect_data() dict | None
    config_changed = Signal()
    config_requested = Signal()  # every page writes its slice into cfg now (collect_config)
    navigate = Signal(str)  # show the page with this title (the main window listens)
    run_chosen = Signal(object)  # Path: a run picked on the Runs page, for Export and Compare
    resume_requested = Signal(object, object)  # Path, [(step, loss)]: continue it on Train
    run_started = Signal(object)  # Path: the training child created this run folder
    run_finished = Signal(object)  # Path: the run ended (done, stopped or failed)
    run_progress = Signal(int, int)  # step, total steps of the running run (the sidebar shows it)

    def __init__(self, cfg: RunConfig | None = None, settings: QSettings | None = None):
        from qlora_studio.gui.jobs import JobRegistry

        super().__init__()
        self.settings = settings or QSettings("QLoRA Studio", "QLoRA Studio")
        self.cfg = self.with_runs_dir(cfg or self._last_config() or demo_config())
        self.model_info: Any = None
        self.data_report: dict | None = None
        self.running = False  # a training run is in progress
        self.run_dir: Path | None = None  # the run chosen on the Runs page (Compare, Export)
        self.last_run_dir: Path | None = None  # the latest run trained in this window
        self.jobs = JobRegistry(self)  # every page's jobs; the window stops them on close

    # ---- pages talking to each other ----------------------------------------------------------
    def collect_config(self) -> RunConfig:
        """Have every page write its slice into ``cfg`` (before a run or a probe) and return it."""
        self.config_requested.emit()
        return self.cfg

    def choose_run(self, run_dir: str | Path, page: str = "") -> None:
        """A run was picked (on the Runs page): tell Export and Compare, then show ``page``."""
        self.run_dir = Path(run_dir)
        self.run_chosen.emit(self.run_dir)
        if page:
            self.navigate.emit(page)

    def set_run_started(self, run_dir: str | Path) -> None:
        self.last_run_dir = Path(run_dir)
        self.run_started.emit(self.last_run_dir)

    def set_run_finished(self, run_dir: str | Path) -> None:
        self.last_run_dir = Path(run_dir)
        self.run_finished.emit(self.last_run_dir)

    def set_run_progress(self, step: int, total: int) -> None:
        """The running run reached ``step`` of ``total`` (the Train page reports each step)."""
        self.run_progress.emit(int(step), int(total))

    # ---- where runs go ----------------------------------------------------------------------
    def runs_dir(self) -> Path:
        """The GUI's runs folder: the one chosen on the Settings page, else the default."""
        chosen = str(self.settings.value(RUNS_DIR_KEY, "", type=str) or "")
        return Path(chosen) if chosen else default_runs_dir()

    def set_runs_dir(self, folder: str | Path) -> None:
        """Remember ``folder`` as the runs folder of configs that leave output.dir at the
        default, and point the current config at it."""
        folder = Path(folder).expanduser()
        self.settings.setValue(RUNS_DIR_KEY, str(folder))
        self.cfg.output.dir = str(folder)

    def with_runs_dir(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with the default output.dir (``runs``, which the CLI reads beside the working
        folder) pointed at the GUI's runs folder: a window started from a desktop menu has the
        home folder as its working folder. Any other folder is the user's choice and kept."""
        if cfg.output.dir.strip() in (CLI_RUNS_DIR, f"{CLI_RUNS_DIR}/", f"./{CLI_RUNS_DIR}"):
            cfg.output.dir = str(self.runs_dir())
        return cfg

    # ---- results shared between pages -----------------------------------------------------
    def set_model_info(self, info: Any) -> None:
        self.model_info = info
        self.model_info_changed.emit(info)

    def set_data_report(self, report: dict | None) -> None:
        self.data_report = report
        self.data_report_changed.emit(report)

    # ---- persistence ----------------------------------------------------------------------
    def _last_config(self) -> RunConfig | None:
        text = self.settings.value("last_config", "", type=str)
        if not text:
            return None
        try:
            return RunConfig.from_yaml(text)
        except ConfigError:
            return None  # a config from an older version: start from the demo

    def remember_config(self) -> None:
        self.settings.setValue("last_config", self.cfg.to_yaml())

    def recent(self, kind: str) -> list[str]:
        value = self.settings.value(f"recent/{kind}", [], type=list)
        return [str(v) for v in value or []]

    def add_recent(self, kind: str, item: str) -> None:
        items = [item] + [i for i in self.recent(kind) if i != item]
        self.settings.setValue(f"recent/{kind}", items[:RECENT_LIMIT])
