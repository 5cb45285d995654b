"""The run folder: its layout, how it is created, the one trainer allowed in it, and deleting it.

What a run folder guarantees:
- it is a new folder created by ``mkdir`` strictly inside ``output.dir``, whatever the run name
  says; two processes asking for the same name at once get two folders;
- it carries a marker file, so it is recognised as ours later;
- one training process at a time holds its lock (``resume`` of a running run is refused);
- deleting it removes it only when it is a run folder that holds nothing we did not write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from datetime import datetime
from pathlib import Path

from qlora_studio.config import RunConfig, check_run_name
from qlora_studio.core.errors import StudioError, TrainingError

CONFIG_FILE = "config.yaml"
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "run.json"
CHECKPOINTS = "checkpoints"
ADAPTER = "adapter"
FULL_MODEL = "model"
EXPORTS = "exports"
EVALUATION = "evaluation"
MARKER = ".qlora-studio-run"
LOCK_FILE = ".trainer.lock"
PID_FILE = ".trainer.pid"
DEBUG_LOG = "debug.log"  # the libraries' warnings and logs (core/library_logs.py)

# every top-level entry a run folder may hold that we wrote; anything else is the user's
_OURS = {
    CONFIG_FILE,
    EVENTS_FILE,
    SUMMARY_FILE,
    CHECKPOINTS,
    ADAPTER,
    FULL_MODEL,
    EXPORTS,
    EVALUATION,
    MARKER,
    LOCK_FILE,
    PID_FILE,
    DEBUG_LOG,
}
_OUR_LEFTOVERS = re.compile(r"^(.+\.tmp|\..+\.old)$")  # atomic writes interrupted midway
_TEMP_WITH_PID = re.compile(r"^\..+\.pid(\d+)\.tmp$")
_STALE_AGE_S = 6 * 3600  # a temporary folder without a pid this old was left by a killed write
_MAX_SUFFIX = 10_000


class RunFolderError(StudioError):
    """A run folder cannot be created, locked or deleted as asked."""


# ---- creating -------------------------------------------------------------------------------
def create_run_folder(output_dir: str | os.PathLike[str], name: str, method: str) -> Path:
    """A new, empty folder strictly inside ``output_dir`` named ``name`` (or method + time);
    ``name-2``, ``name-3``... when it is taken. Created with one ``mkdir`` (no exist_ok), so
    it is never a folder that existed before, nor one another process is creating."""
    # '..' resolved on the text, as a user reads the path: runs/x/.. never creates runs/x
    root = Path(os.path.abspath(Path(output_dir).expanduser()))
    base = name or f"{method}-{datetime.now():%Y%m%d-%H%M%S}"
    check_run_name(base)  # the config validated it already; this holds for every caller
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(
            f"Cannot create the runs folder {root}: {exc.strerror or exc}",
            "point output.dir at a folder you can write to",
        ) from exc
    if not root.is_dir():
        raise RunFolderError(f"output.dir {root} is not a folder", "point it at a folder")
    real_root = root.resolve()
    for suffix in range(1, _MAX_SUFFIX):
        candidate = root / (base if suffix == 1 else f"{base}-{suffix}")
        try:
            candidate.mkdir()
        except FileExistsError:  # also a name that differs only in case on such filesystems
            continue
        except OSError as exc:
            raise RunFolderError(
                f"Cannot create the run folder {candidate}: {exc.strerror or exc}",
                "point output.dir at a folder you can write to, or free some disk space",
            ) from exc
        if candidate.resolve().parent != real_root:  # cannot happen with a checked name
            candidate.rmdir()
            raise RunFolderError(f"The run folder {candidate} is not inside {root}", "")
        (candidate / MARKER).write_text(
            f"created by QLoRA Studio (pid {os.getpid()}) at {datetime.now().isoformat()}\n",
            encoding="utf-8",
        )
        return candidate
    raise RunFolderError(f"{root} has too many runs named {base}", "choose another output.name")


def is_run_folder(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is a run folder we created: our marker, or (runs made before the
    marker existed) a config plus an event log."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / MARKER).is_file():
        return True
    return (folder / CONFIG_FILE).is_file() and (folder / EVENTS_FILE).is_file()


def foreign_entries(folder: Path) -> list[str]:
    """Top-level entries of a run folder that we did not write, sorted."""
    return sorted(
        entry.name
        for entry in folder.iterdir()
        if entry.name not in _OURS and not _OUR_LEFTOVERS.match(entry.name)
    )


def delete_run_folder(folder: str | os.PathLike[str]) -> None:
    """Delete a run folder, and only one: refuses anything that is not a run folder we made,
    a folder a trainer holds, and a folder holding files we did not write (nothing is removed
    then)."""
    folder = Path(folder)
    if not is_run_folder(folder):
        raise RunFolderError(
            f"{folder} is not a QLoRA Studio run folder: not deleted",
            "remove the folder by hand if you are sure",
        )
    pid = trainer_pid(folder)
    if pid is not None:
        raise RunFolderError(
            f"{folder} is being trained right now (pid {pid}): not deleted",
            "stop the run first, then delete it",
        )
    foreign = foreign_entries(folder)
    if foreign:
        shown = ", ".join(foreign[:5]) + (
            f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        )
        raise RunFolderError(
            f"{folder} holds files QLoRA Studio did not write ({shown}): not deleted",
            "move those files out of the run folder, or remove the folder by hand",
        )
    try:
        shutil.rmtree(folder)
    except OSError as exc:
        raise RunFolderError(
            f"Could not delete {folder}: {exc.strerror or exc}",
            "close programs using files in it and try again",
        ) from exc


# ---- one trainer at a time ------------------------------------------------------------------
class RunFolderLock:
    """The lock a training process holds on its run folder for the run's lifetime (an OS file
    lock through ``filelock``: flock on Linux/macOS, msvcrt on Windows; the OS drops it when
    the process dies, so a killed run never leaves a stale lock)."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.run_dir = Path(run_dir)
        self._lock = None

    def acquire(self) -> RunFolderLock:
        import filelock

        lock = filelock.FileLock(str(self.run_dir / LOCK_FILE), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            pid = _read_pid(self.run_dir)
            who = f"pid {pid}" if pid else "another process"
            raise TrainingError(
                f"{self.run_dir.name} is already running ({who})",
                "one trainer per run folder: wait for it to finish or stop it (Stop in the app, "
                "Ctrl-C in its terminal), then resume",
            ) from None
        self._lock = lock
        (self.run_dir / PID_FILE).write_text(str(os.getpid()), encoding="utf-8")
        return self

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            (self.run_dir / PID_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        self._lock.release()
        self._lock = None

    def __enter__(self) -> RunFolderLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def trainer_pid(run_dir: str | os.PathLike[str]) -> int | None:
    """The pid of the process training in ``run_dir`` (0 when unknown), or None when none is."""
    import filelock

    run_dir = Path(run_dir)
    if not (run_dir / LOCK_FILE).exists():
        return None
    probe = filelock.FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        probe.acquire()
    except filelock.Timeout:
        return _read_pid(run_dir) or 0
    probe.release()
    return None


def _read_pid(run_dir: Path) -> int | None:
    try:
        return int((run_dir / PID_FILE).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


# ---- checkpoints ----------------------------------------------------------------------------
def last_checkpoint(run_dir: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint folder with the highest step in ``run_dir/checkpoints``."""
    found = _complete_checkpoints(Path(run_dir))
    return found[-1][1] if found else None


def tidy_checkpoints(run_dir: str | os.PathLike[str], keep: int) -> list[Path]:
    """Remove checkpoint folders a save interrupted midway (no trainer_state.json) and the
    oldest complete ones beyond ``keep``; return what was removed."""
    folder = Path(run_dir) / CHECKPOINTS
    if not folder.is_dir():
        return []
    removed = []
    for child in folder.iterdir():
        if child.is_dir() and child.name.startswith("checkpoint-"):
            if not (child / "trainer_state.json").is_file():
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    complete = _complete_checkpoints(Path(run_dir))
    for _, child in complete[: max(0, len(complete) - keep)]:
        shutil.rmtree(child, ignore_errors=True)
        removed.append(child)
    return removed


def _complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        step = child.name.removeprefix("checkpoint-")
        if child.is_dir() and step.isdigit() and (child / "trainer_state.json").is_file():
            found.append((int(step), child))
    return sorted(found)


# ---- temporary folders and permissions ------------------------------------------------------
def temp_folder_suffix() -> str:
    """The suffix of our temporary folders: it names the writing process, so a later write can
    tell a folder whose writer died from one still being written."""
    return f".pid{os.getpid()}.tmp"


def sweep_stale_temp_folders(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove hidden ``.*.tmp`` folders in ``folder`` left by writes that were killed: those
    whose writing process is gone, and (older versions named no pid) those older than 6 h."""
    import psutil

    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(folder.glob(".*.tmp"))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        try:
            if entry.is_symlink() or not entry.is_dir():
                continue
            match = _TEMP_WITH_PID.match(entry.name)
            if match:
                pid = int(match.group(1))
                stale = pid != os.getpid() and not psutil.pid_exists(pid)
            else:
                stale = now - entry.stat().st_mtime > _STALE_AGE_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (always 0700) the permissions a plain
    ``mkdir`` would have under the user's umask."""
    os.chmod(path, 0o777 & ~_current_umask())


def _current_umask() -> int:
    try:  # Linux says it without changing it (os.umask would, for every thread, for a moment)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_run_dir(cfg: RunConfig) -> Path:
    """A new, empty run folder strictly inside ``output.dir`` (name or method + timestamp)."""
    return create_run_folder(cfg.output.dir, cfg.output.name, cfg.method)


def trained_output(
    run_dir: Path, error: type[StudioError] = TrainingError
) -> tuple[RunConfig, Path]:
    """A run folder's config and its trained adapter (or full model) folder; raises ``error``
    with a hint when ``run_dir`` is not a run folder or has nothing trained yet."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise error(
            f"{run_dir} is not a run folder (no {CONFIG_FILE})",
            "pass the folder that `qlora-studio train` printed as 'Run folder'",
        )
    cfg = RunConfig.load(run_dir / CONFIG_FILE)
    output = run_dir / (FULL_MODEL if cfg.method == "full" else ADAPTER)
    if not output.is_dir():
        raise error(
            f"{run_dir} has no trained {'model' if cfg.method == 'full' else 'adapter'} yet",
            "finish or stop the run first: a stopped run saves what it learned so far "
            "(`qlora-studio resume` continues a crashed run)",
        )
    return cfg, output


def write_json_atomic(path: Path, data: dict) -> None:
    """Write ``data`` as JSON through a temporary file renamed into place."""
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file renamed into place."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
