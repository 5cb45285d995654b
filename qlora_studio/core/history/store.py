"""Run history: every training run, from the GUI or the CLI, as one row of a SQLite database in
the user data folder.

The database is opened in WAL mode, so the app (or a second one, or ``qlora-studio runs``) reads
while a training process writes; every write is one short transaction. A row still marked
``running`` whose process is gone (or whose PID now belongs to another process) is marked
``crashed`` whenever the history is opened. The training recipe records through
:class:`qlora_studio.core.run_recorder.RunRecorder`.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlora_studio.core.errors import StudioError
from qlora_studio.core.events import format_gb, parse_event_line
from qlora_studio.core.run_folder import (
    EVENTS_FILE,
    RunFolderError,
    delete_run_folder,
    last_checkpoint,
)

DB_FILE = "runs.sqlite3"
SCHEMA_VERSION = 1
STATUSES = ("running", "done", "failed", "cancelled", "crashed")
_START_TIME_SLACK_S = 1.0  # a live PID whose start time differs more is another process

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused, so `runs delete ID` stays safe
    name TEXT NOT NULL,
    run_dir TEXT NOT NULL UNIQUE,
    config TEXT NOT NULL,                  -- the config as it was when the run started
    method TEXT NOT NULL DEFAULT '',
    model_source TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL CHECK (status IN ({", ".join(repr(s) for s in STATUSES)})),
    pid INTEGER,
    host TEXT,
    process_started REAL,                  -- psutil create_time: tells a reused PID apart
    started REAL NOT NULL,
    updated REAL NOT NULL,
    ended REAL,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    final_loss REAL,
    best_loss REAL,
    peak_memory_bytes INTEGER,
    peak_memory_kind TEXT,                 -- 'GPU' (torch / NVML) or 'RAM' (process RSS)
    checkpoint_dir TEXT,
    adapter_dir TEXT,
    error TEXT,
    resumes INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status);
"""
_PROGRESS_COLUMNS = ("step", "total_steps", "final_loss", "checkpoint_dir", "peak_memory_kind")


class RunHistoryError(StudioError):
    """The run history could not be read or changed as asked."""


def default_db_path() -> Path:
    """``<user data dir>/runs.sqlite3`` (``$QLORA_STUDIO_DATA`` moves the folder)."""
    from qlora_studio.resources import user_data_dir

    return user_data_dir() / DB_FILE


@dataclass
class RunRecord:
    """One row of the history."""

    id: int
    name: str
    run_dir: str
    config: str
    method: str
    model_source: str
    status: str
    pid: int | None
    host: str | None
    process_started: float | None
    started: float
    updated: float
    ended: float | None
    step: int
    total_steps: int
    final_loss: float | None
    best_loss: float | None
    peak_memory_bytes: int | None
    peak_memory_kind: str | None
    checkpoint_dir: str | None
    adapter_dir: str | None
    error: str | None
    resumes: int

    def to_dict(self, *, with_config: bool = True) -> dict[str, Any]:
        data = asdict(self)
        if not with_config:
            data.pop("config")
        return data


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (psutil ``create_time``), or None if it cannot be read."""
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except (psutil.Error, OSError):
        return None


def _process_is_gone(pid: int, started: float | None) -> bool:
    """True when ``pid`` is not running, is a zombie, or is a newer process with that PID."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return True
        now_started = proc.create_time()
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False  # alive but unreadable (another user's): assume it is ours
    return started is not None and abs(now_started - started) > _START_TIME_SLACK_S


def read_loss_curve(run_dir: str | os.PathLike[str]) -> list[tuple[int, float]]:
    """(step, training loss) from a run folder's events.jsonl, steps ascending. A resumed run
    replays the steps after its checkpoint: the later points replace the earlier ones."""
    points: list[tuple[int, float]] = []
    try:
        stream = open(Path(run_dir) / EVENTS_FILE, encoding="utf-8", errors="replace")  # noqa: SIM115
    except OSError:
        return points
    with stream:
        for line in stream:
            if '"metrics"' not in line:
                continue
            event = parse_event_line(line)
            if event is None or event["type"] != "metrics" or event.get("loss") is None:
                continue
            step = event["step"]
            while points and points[-1][0] >= step:
                points.pop()
            points.append((step, float(event["loss"])))
    return points


def _what_a_dead_run_left(run_dir: Path) -> tuple[list[tuple[int, float]], Path | None]:
    """The loss curve logged and the last complete checkpoint of a run whose process died."""
    try:
        return read_loss_curve(run_dir), last_checkpoint(run_dir)
    except OSError:
        return [], None


class RunHistory:
    """The run history database. Thread-safe; every write is one short transaction.

    ``RunHistory.open()`` is the usual way in: it creates the file and the schema when needed
    and marks the runs whose process died as crashed.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, *, timeout_s: float = 5.0):
        self.path = Path(path) if path is not None else default_db_path()
        self.timeout_s = timeout_s
        self._lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # autocommit: each statement is its own transaction unless we BEGIN one
            self._db = sqlite3.connect(
                str(self.path), timeout=timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._create_schema()
        except (sqlite3.Error, OSError) as exc:
            raise RunHistoryError(
                f"Cannot open the run history {self.path}: {exc}",
                "check that the folder is writable (QLORA_STUDIO_DATA moves it)",
            ) from exc

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        timeout_s: float = 5.0,
        mark_crashed: bool = True,
    ) -> RunHistory:
        """Open (creating if needed) the history and, unless told not to, mark dead runs."""
        history = cls(path, timeout_s=timeout_s)
        if mark_crashed:
            history.mark_crashed_runs()
        return history

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> RunHistory:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def journal_mode(self) -> str:
        return str(self._db.execute("PRAGMA journal_mode").fetchone()[0]).lower()

    # ---- writes ---------------------------------------------------------------------------
    def start_run(
        self,
        run_dir: str | os.PathLike[str],
        config_text: str,
        *,
        name: str | None = None,
        method: str = "",
        model_source: str = "",
        total_steps: int = 0,
        resume: bool = False,
        pid: int | None = None,
    ) -> int:
        """Record that a run is starting in ``run_dir`` (by this process unless ``pid``) and
        return its id. A run folder has one row: resuming sets that row back to running and
        keeps its config, losses and peak; a fresh start in a known folder resets the row."""
        folder = str(Path(run_dir).resolve())
        pid = os.getpid() if pid is None else pid
        now = time.time()
        process = {
            "pid": pid,
            "host": socket.gethostname(),
            "process_started": process_start_time(pid),
            "now": now,
        }
        with self._write() as db:
            row = db.execute("SELECT id FROM runs WHERE run_dir = ?", (folder,)).fetchone()
            if row is not None and resume:
                db.execute(
                    "UPDATE runs SET status = 'running', pid = :pid, host = :host, "
                    "process_started = :process_started, updated = :now, ended = NULL, "
                    "error = NULL, resumes = resumes + 1 WHERE id = :id",
                    {**process, "id": row["id"]},
                )
                return int(row["id"])
            if row is not None:
                db.execute("DELETE FROM runs WHERE id = ?", (row["id"],))
            cursor = db.execute(
                "INSERT INTO runs (name, run_dir, config, method, model_source, status, pid, "
                "host, process_started, started, updated, total_steps) VALUES (:name, :run_dir, "
                ":config, :method, :model_source, 'running', :pid, :host, :process_started, "
                ":now, :now, :total_steps)",
                {
                    **process,
                    "name": name or Path(folder).name,
                    "run_dir": folder,
                    "config": config_text,
                    "method": method,
                    "model_source": model_source,
                    "total_steps": int(total_steps),
                },
            )
            assert cursor.lastrowid is not None  # every INSERT sets it
            return int(cursor.lastrowid)

    def update_progress(
        self,
        run_id: int,
        *,
        step: int | None = None,
        total_steps: int | None = None,
        final_loss: float | None = None,
        best_loss: float | None = None,
        peak_memory_bytes: int | None = None,
        peak_memory_kind: str | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """Store the given figures (None leaves a column as it is). ``best_loss`` and
        ``peak_memory_bytes`` only ever improve on what the row holds."""
        values: dict[str, Any] = {
            "step": step,
            "total_steps": total_steps,
            "final_loss": final_loss,
            "checkpoint_dir": str(checkpoint_dir) if checkpoint_dir is not None else None,
            "peak_memory_kind": peak_memory_kind,
        }
        sets = [f"{col} = :{col}" for col in _PROGRESS_COLUMNS if values[col] is not None]
        # min()/max() of two NULLs is NULL: a missing figure never replaces a known one
        sets.append("best_loss = min(coalesce(best_loss, :best), coalesce(:best, best_loss))")
        sets.append(
            "peak_memory_bytes = max(coalesce(peak_memory_bytes, :peak), "
            "coalesce(:peak, peak_memory_bytes))"
        )
        sets.append("updated = :now")
        values.update(id=run_id, best=best_loss, peak=peak_memory_bytes, now=time.time())
        with self._write() as db:
            db.execute(f"UPDATE runs SET {', '.join(sets)} WHERE id = :id", values)

    def finish_run(
        self,
        run_id: int,
        status: str,
        *,
        step: int | None = None,
        final_loss: float | None = None,
        adapter_dir: str | os.PathLike[str] | None = None,
        checkpoint_dir: str | os.PathLike[str] | None = None,
        error: str | None = None,
    ) -> None:
        """Record the outcome: done, failed, cancelled or crashed."""
        if status not in STATUSES or status == "running":
            raise ValueError(f"a finished run's status is one of {STATUSES[1:]}, not {status!r}")
        now = time.time()
        with self._write() as db:
            db.execute(
                "UPDATE runs SET status = :status, ended = :now, updated = :now, "
                "step = coalesce(:step, step), final_loss = coalesce(:loss, final_loss), "
                "adapter_dir = coalesce(:adapter, adapter_dir), "
                "checkpoint_dir = coalesce(:checkpoint, checkpoint_dir), error = :error "
                "WHERE id = :id",
                {
                    "status": status,
                    "now": now,
                    "step": step,
                    "loss": final_loss,
                    "adapter": str(adapter_dir) if adapter_dir else None,
                    "checkpoint": str(checkpoint_dir) if checkpoint_dir else None,
                    "error": error,
                    "id": run_id,
                },
            )

    def mark_crashed_runs(self) -> list[int]:
        """Mark as crashed the runs of this host still 'running' whose process has died (or
        whose PID was reused); return their ids. Runs of other hosts are left alone."""
        host = socket.gethostname()
        with self._lock:
            rows = self._db.execute(
                "SELECT id, pid, process_started, run_dir FROM runs "
                "WHERE status = 'running' AND host = ?",
                (host,),
            ).fetchall()
        dead = [
            row
            for row in rows
            if row["pid"] is not None and _process_is_gone(row["pid"], row["process_started"])
        ]
        if not dead:
            return []
        # the row lags the run by up to a write interval; its folder tells where it really got
        found = {row["id"]: _what_a_dead_run_left(Path(row["run_dir"])) for row in dead}
        with self._write() as db:
            for row in dead:
                curve, checkpoint = found[row["id"]]
                db.execute(
                    "UPDATE runs SET status = 'crashed', ended = updated, error = :error, "
                    "step = max(step, :step), final_loss = coalesce(:loss, final_loss), "
                    "best_loss = min(coalesce(best_loss, :best), coalesce(:best, best_loss)), "
                    "checkpoint_dir = coalesce(:checkpoint, checkpoint_dir) "
                    "WHERE id = :id AND status = 'running'",  # it may have finished meanwhile
                    {
                        "id": row["id"],
                        "error": f"the training process (pid {row['pid']}) ended without "
                        "recording an outcome (killed, out of memory, or the computer stopped)",
                        "step": curve[-1][0] if curve else 0,
                        "loss": curve[-1][1] if curve else None,
                        "best": min(loss for _, loss in curve) if curve else None,
                        "checkpoint": str(checkpoint) if checkpoint else None,
                    },
                )
        return [int(row["id"]) for row in dead]

    def delete(self, run_id: int) -> Path:
        """Remove the run's folder and its row, nothing else; return the folder. Refuses a
        running run, a folder that is not a run folder we made, and one holding files we did
        not write (:func:`qlora_studio.core.run_folder.delete_run_folder`)."""
        self.mark_crashed_runs()
        record = self.get(run_id)
        if record is None:
            raise RunHistoryError(f"There is no run {run_id}", "`qlora-studio runs` lists them")
        if record.status == "running":
            raise RunHistoryError(
                f"Run {run_id} is still running (pid {record.pid} on {record.host})",
                "stop it first, then delete it",
            )
        folder = Path(record.run_dir)
        if folder.exists() or folder.is_symlink():
            try:
                delete_run_folder(folder)  # only a run folder we made, holding only our files
            except RunFolderError as exc:
                raise RunHistoryError(exc.message, exc.hint) from exc
        with self._write() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
        return folder

    # ---- reads ----------------------------------------------------------------------------
    def list_runs(self, status: str | None = None) -> list[RunRecord]:
        """Every run, newest first; only those with ``status`` when given."""
        if status is not None and status not in STATUSES:
            raise RunHistoryError(
                f"Unknown run status {status!r}", "one of: " + ", ".join(STATUSES)
            )
        query = "SELECT * FROM runs"
        args: tuple[Any, ...] = ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY started DESC, id DESC", args).fetchall()
        return [RunRecord(**dict(row)) for row in rows]

    def get(self, run_id: int) -> RunRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return RunRecord(**dict(row)) if row is not None else None

    def find(self, run_dir: str | os.PathLike[str]) -> RunRecord | None:
        """The row of the run in ``run_dir``, if any."""
        folder = str(Path(run_dir).resolve())
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE run_dir = ?", (folder,)).fetchone()
        return RunRecord(**dict(row)) if row is not None else None

    def loss_curve(self, run_id: int) -> list[tuple[int, float]]:
        """(step, training loss) of a run, read from its events.jsonl ([] when gone)."""
        record = self.get(run_id)
        return read_loss_curve(record.run_dir) if record is not None else []

    # ---- plumbing -------------------------------------------------------------------------
    def _create_schema(self) -> None:
        # read first: opening a history that exists must not wait for a writer's lock
        if self._schema_version() == SCHEMA_VERSION:
            return
        with self._write() as db:
            version = self._schema_version()
            if version == 0:  # executescript() would COMMIT our transaction: one by one
                for statement in _SCHEMA.split(";\n"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _schema_version(self) -> int:
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise RunHistoryError(
                f"{self.path} was written by a newer QLoRA Studio (schema {version})",
                "update QLoRA Studio, or point QLORA_STUDIO_DATA at another folder",
            )
        return version

    def _write(self) -> _Transaction:
        return _Transaction(self)


class _Transaction:
    """``with history._write() as db:`` one IMMEDIATE transaction under the history's lock."""

    def __init__(self, history: RunHistory):
        self.history = history

    def __enter__(self) -> sqlite3.Connection:
        self.history._lock.acquire()
        try:
            self.history._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self.history._lock.release()
            raise
        return self.history._db

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.history._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.history._lock.release()


def describe_memory(record: RunRecord) -> str:
    """'1.23 GB GPU' / '0.80 GB RAM' / '' for a run's measured peak."""
    if not record.peak_memory_bytes:
        return ""
    return f"{format_gb(record.peak_memory_bytes)} {record.peak_memory_kind or ''}".strip()


def format_time(timestamp: float | None) -> str:
    """Local 'YYYY-MM-DD HH:MM' (or '' for None)."""
    if timestamp is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def config_changes(recorded: str, current: str) -> list[str]:
    """'section.field: old -> new' for each field that differs between two config texts
    (YAML or JSON); a text that does not parse counts as one change."""
    import yaml

    try:
        old, new = yaml.safe_load(recorded) or {}, yaml.safe_load(current) or {}
    except yaml.YAMLError:
        return ["the config file could not be read"]
    changes: list[str] = []

    def walk(a: Any, b: Any, prefix: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in list(a) + [k for k in b if k not in a]:
                walk(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        elif a != b:
            changes.append(f"{prefix}: {json.dumps(a)} -> {json.dumps(b)}")

    walk(old, new, "")
    return changes
