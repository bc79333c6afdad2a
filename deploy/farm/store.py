"""The farm's state in one SQLite database (WAL): jobs, tasks, reports, workers and faults.

The web service and every worker process open the same file. Each change is one short
``BEGIN IMMEDIATE`` transaction, so a task is claimed by exactly one worker and the job's
status always agrees with its tasks' statuses.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import platform
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deploy.farm.frames import chunk_frames, format_task_frames, parse_frames

#: Deadline's "unset" date.
NO_DATE = "0001-01-01T00:00:00Z"

# Job Stat codes.
JOB_ACTIVE, JOB_SUSPENDED, JOB_COMPLETED, JOB_FAILED, JOB_PENDING = 1, 2, 3, 4, 6
JOB_STATES = {
    "active": JOB_ACTIVE,
    "suspended": JOB_SUSPENDED,
    "completed": JOB_COMPLETED,
    "failed": JOB_FAILED,
    "pending": JOB_PENDING,
}
# Task Stat codes.
TASK_QUEUED, TASK_SUSPENDED, TASK_RENDERING, TASK_COMPLETED, TASK_FAILED, TASK_PENDING = (
    2,
    3,
    4,
    5,
    6,
    8,
)
# Worker Stat codes.
WORKER_RENDERING, WORKER_IDLE, WORKER_OFFLINE, WORKER_STALLED = 1, 2, 3, 4
# Report Type codes.
REPORT_LOG, REPORT_ERROR, REPORT_REQUEUE = 0, 1, 2
REPORT_DATA = {
    "all": (REPORT_LOG, REPORT_ERROR, REPORT_REQUEUE),
    "log": (REPORT_LOG,),
    "error": (REPORT_ERROR,),
    "requeue": (REPORT_REQUEUE,),
}
#: The pool (and group) every job without one is in and every worker serves.
NONE = "none"
#: ``/api/pools`` and ``/api/groups``: the table of names and the worker_settings column.
LISTS = {"pool": ("farm_pools", "pools"), "group": ("farm_groups", "grps")}
# jobs.deleted values.
LIVE, DELETED, ARCHIVED = 0, 1, 2
ON_COMPLETE = {"archive": 0, "delete": 1, "nothing": 2}

_JOB_STATUS_NAMES = {stat: name.capitalize() for name, stat in JOB_STATES.items()}
#: Highest job priority (Deadline's default maximum).
MAX_PRIORITY = 100
#: Job object ``Props`` the ``save`` command writes back, with the JobInfo key each is kept as.
_SAVED_PROPS = {
    "Name": "Name",
    "Batch": "BatchName",
    "Cmmt": "Comment",
    "Dept": "Department",
    "Pri": "Priority",
    "Pool": "Pool",
    "SecPool": "SecondaryPool",
    "Grp": "Group",
    "MachLmt": "MachineLimit",
    "Limits": "LimitGroups",
    "Seq": "Sequential",
    "Int": "Interruptible",
    "IntPer": "InterruptiblePercentage",
    "TskFailOvr": "OverrideTaskFailureDetection",
    "TskFailErr": "FailureDetectionTaskErrors",
    "JobFailOvr": "OverrideJobFailureDetection",
    "JobFailErr": "FailureDetectionJobErrors",
}

#: Task errors after which a task fails when the job does not override it (Deadline's default).
DEFAULT_TASK_ERROR_LIMIT = 5
#: Job errors after which a job fails when the job does not override it (Deadline's default).
DEFAULT_JOB_ERROR_LIMIT = 100

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    name TEXT NOT NULL,
    plugin TEXT NOT NULL,
    stat INTEGER NOT NULL,
    pri INTEGER NOT NULL,
    mach_lmt INTEGER NOT NULL,
    task_err_limit INTEGER NOT NULL,
    job_err_limit INTEGER NOT NULL,
    timeout_seconds REAL NOT NULL,
    on_comp INTEGER NOT NULL,
    deps TEXT NOT NULL,
    errs INTEGER NOT NULL DEFAULT 0,
    date TEXT NOT NULL,
    date_start TEXT NOT NULL,
    date_comp TEXT NOT NULL,
    job_info TEXT NOT NULL,
    plugin_info TEXT NOT NULL,
    aux TEXT NOT NULL,
    submit_host TEXT NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    frames TEXT NOT NULL,
    stat INTEGER NOT NULL,
    slave TEXT NOT NULL DEFAULT '',
    errs INTEGER NOT NULL DEFAULT 0,
    claim INTEGER NOT NULL DEFAULT 0,
    start TEXT NOT NULL,
    start_ren TEXT NOT NULL,
    comp TEXT NOT NULL,
    prog INTEGER NOT NULL DEFAULT 0,
    ram_peak INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, task_id)
);
CREATE INDEX IF NOT EXISTS tasks_by_stat ON tasks (stat, job_id);
CREATE TABLE IF NOT EXISTS reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    type INTEGER NOT NULL,
    date TEXT NOT NULL,
    slave TEXT NOT NULL,
    title TEXT NOT NULL,
    frames TEXT NOT NULL,
    task_start TEXT NOT NULL,
    task_seconds REAL NOT NULL,
    peak_ram INTEGER NOT NULL DEFAULT 0,
    contents TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_by_job ON reports (job_id, task_id);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    stat INTEGER NOT NULL,
    job_id TEXT NOT NULL DEFAULT '',
    task_id INTEGER NOT NULL DEFAULT -1,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    heartbeat REAL NOT NULL,
    started REAL NOT NULL,
    completed_tasks INTEGER NOT NULL DEFAULT 0,
    standby INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS history (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    job_id TEXT NOT NULL,
    date TEXT NOT NULL,
    title TEXT NOT NULL,
    mach TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_by_job ON history (job_id);
CREATE TABLE IF NOT EXISTS farm_pools (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS farm_groups (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS worker_settings (
    name TEXT PRIMARY KEY,
    pools TEXT NOT NULL DEFAULT '[]',
    grps TEXT NOT NULL DEFAULT '[]',
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS faults (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    match TEXT NOT NULL,
    frames TEXT,
    times_left INTEGER,
    message TEXT NOT NULL
);
"""
#: Columns added after the first release: a ``farm.db`` from before gets them at start.
_ADDED_COLUMNS = (
    ("tasks", "prog", "INTEGER NOT NULL DEFAULT 0"),
    ("tasks", "ram_peak", "INTEGER NOT NULL DEFAULT 0"),
    ("reports", "peak_ram", "INTEGER NOT NULL DEFAULT 0"),
    ("workers", "standby", "INTEGER NOT NULL DEFAULT 0"),
    ("worker_settings", "enabled", "INTEGER NOT NULL DEFAULT 1"),
)


class FarmError(Exception):
    """A request the farm refuses; ``status`` is the HTTP status Deadline would answer."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Claim:
    """A task a worker has claimed: everything it needs to render it."""

    job_id: str
    task_id: int
    claim: int
    frames: list[int]
    plugin: str
    job_name: str
    job_info: dict[str, str]
    plugin_info: dict[str, str]
    aux: list[str]
    timeout_seconds: float
    start: str


def now_iso() -> str:
    """The current UTC time as Deadline writes dates (millisecond precision, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def new_id() -> str:
    """A 24-hex-character id shaped like a MongoDB ObjectId (time prefix, random rest)."""
    return f"{int(time.time()):08x}{secrets.token_hex(8)}"


def as_text(value: Any) -> str:
    """A JobInfo/PluginInfo value as the text Deadline stores (``True``/``False`` for bools)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return ""
    return str(value)


def as_bool(value: str | None) -> bool:
    """Deadline's loose booleans: ``true``, ``True``, ``1``, ``yes``."""
    return (value or "").strip().lower() in ("true", "1", "yes", "on")


def _int(info: dict[str, str], key: str, default: int) -> int:
    raw = info.get(key, "").strip()
    if not raw:
        return default
    try:
        return int(float(raw))
    except ValueError as exc:
        raise FarmError(f"JobInfo {key} must be a number, got {raw!r}", 400) from exc


def _numbered(info: dict[str, str], prefix: str) -> list[str]:
    """Values of ``<prefix>0``, ``<prefix>1``, ... in index order."""
    found: list[tuple[int, str]] = []
    for key, value in info.items():
        suffix = key[len(prefix) :]
        if key.startswith(prefix) and suffix.isdigit():
            found.append((int(suffix), value))
    return [value for _, value in sorted(found)]


def _listed_workers(info: dict[str, str]) -> tuple[list[str], bool]:
    """The job's listed workers and whether they are a whitelist (else a blacklist)."""
    white = info.get("Whitelist", "")
    names = white or info.get("Blacklist", "")
    listed = [n.strip() for n in names.split(",") if n.strip()]
    flag = info.get("WhitelistFlag")
    return listed, as_bool(flag) if flag is not None else bool(white)


def _set_listed_workers(info: dict[str, str], names: list[str], white: bool) -> None:
    """Keep ``names`` as the job's whitelist (``white``) or blacklist."""
    info.pop("Whitelist", None)
    info.pop("Blacklist", None)
    if names:
        info["Whitelist" if white else "Blacklist"] = ",".join(names)
    info["WhitelistFlag"] = as_text(white)


def _key_values(info: dict[str, str], prefix: str) -> dict[str, str]:
    """``<prefix>N = "k=v"`` entries as a dict."""
    result: dict[str, str] = {}
    for entry in _numbered(info, prefix):
        key, sep, value = entry.partition("=")
        if sep:
            result[key] = value
    return result


class Store:
    """Access to the farm database; one SQLite connection per thread."""

    def __init__(self, path: Path, busy_timeout_ms: int = 10_000) -> None:
        self.path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)
        _add_columns(conn)

    # -- plumbing ------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- jobs ----------------------------------------------------------------------------

    def submit_job(
        self,
        job_info: dict[str, Any],
        plugin_info: dict[str, Any],
        aux: list[str],
        depends_on: list[str],
        *,
        task_error_limit: int = DEFAULT_TASK_ERROR_LIMIT,
        job_error_limit: int = DEFAULT_JOB_ERROR_LIMIT,
    ) -> str:
        """Create a job and its tasks; returns the new job id."""
        info = {str(k): as_text(v) for k, v in job_info.items()}
        plug = {str(k): as_text(v) for k, v in plugin_info.items()}
        plugin = info.get("Plugin", "").strip()
        if not plugin:
            raise FarmError("JobInfo must contain a Plugin", 400)
        try:
            frames = parse_frames(info.get("Frames", "0") or "0")
        except ValueError as exc:
            raise FarmError(f"JobInfo Frames is not a valid frame list: {exc}", 400) from exc
        chunk = _int(info, "ChunkSize", 1)
        if chunk < 1:
            raise FarmError("JobInfo ChunkSize must be at least 1", 400)
        deps = [d.strip() for d in info.get("JobDependencies", "").split(",") if d.strip()]
        deps += [d for d in _numbered(info, "JobDependency") if d.strip()]
        deps += depends_on
        task_limit = task_error_limit
        if as_bool(info.get("OverrideTaskFailureDetection")):
            task_limit = _int(info, "FailureDetectionTaskErrors", task_error_limit)
        job_limit = job_error_limit
        if as_bool(info.get("OverrideJobFailureDetection")):
            job_limit = _int(info, "FailureDetectionJobErrors", job_error_limit)
        timeout = 60.0 * _int(info, "TaskTimeoutMinutes", 0) + _int(info, "TaskTimeoutSeconds", 0)
        on_comp = ON_COMPLETE.get(info.get("OnJobComplete", "Nothing").strip().lower(), 2)
        initial = info.get("InitialStatus", "Active").strip().lower()
        job_id = new_id()
        date = now_iso()
        with self._tx() as conn:
            pending = any(
                (row := conn.execute("SELECT stat, deleted FROM jobs WHERE id=?", (d,)).fetchone())
                is not None
                and row["stat"] != JOB_COMPLETED
                and row["deleted"] == LIVE
                for d in deps
            )
            if initial == "suspended":
                stat, task_stat = JOB_SUSPENDED, TASK_SUSPENDED
            elif pending or initial == "pending":
                stat, task_stat = JOB_PENDING, TASK_PENDING
            else:
                stat, task_stat = JOB_ACTIVE, TASK_QUEUED
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs").fetchone()[0]
            conn.execute(
                "INSERT INTO jobs (id, seq, name, plugin, stat, pri, mach_lmt, task_err_limit,"
                " job_err_limit, timeout_seconds, on_comp, deps, date, date_start, date_comp,"
                " job_info, plugin_info, aux, submit_host)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    seq,
                    info.get("Name", "Untitled"),
                    plugin,
                    stat,
                    _int(info, "Priority", 50),
                    _int(info, "MachineLimit", 0),
                    task_limit,
                    job_limit,
                    float(timeout),
                    on_comp,
                    json.dumps(deps),
                    date,
                    NO_DATE,
                    NO_DATE,
                    json.dumps(info),
                    json.dumps(plug),
                    json.dumps(aux),
                    socket.gethostname(),
                ),
            )
            conn.executemany(
                "INSERT INTO tasks (job_id, task_id, frames, stat, start, start_ren, comp)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (job_id, i, json.dumps(part), task_stat, NO_DATE, NO_DATE, NO_DATE)
                    for i, part in enumerate(chunk_frames(frames, chunk))
                ],
            )
            _add_history(conn, job_id, "Submitted")
        return job_id

    def jobs(
        self,
        ids: list[str] | None = None,
        states: set[int] | None = None,
        deleted: bool = False,
    ) -> list[dict[str, Any]]:
        """Job objects as ``GET /api/jobs`` returns them, in submission order."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            sql = "SELECT * FROM jobs WHERE deleted=?"
            args: list[Any] = [DELETED if deleted else LIVE]
            if ids is not None:
                sql += f" AND id IN ({','.join('?' * len(ids))})"
                args += ids
            rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
            counts = self._task_counts(conn, [r["id"] for r in rows] if ids is not None else None)
        finally:
            conn.execute("COMMIT")
        jobs = [_job_json(r, counts.get(r["id"], {})) for r in rows]
        if states is not None:
            jobs = [j for j in jobs if j["Stat"] in states]
        return jobs

    @staticmethod
    def _task_counts(conn: sqlite3.Connection, ids: list[str] | None) -> dict[str, dict[int, int]]:
        sql = "SELECT job_id, stat, COUNT(*) AS n FROM tasks"
        args: list[Any] = []
        if ids is not None:
            sql += f" WHERE job_id IN ({','.join('?' * len(ids))})"
            args = list(ids)
        counts: dict[str, dict[int, int]] = {}
        for row in conn.execute(sql + " GROUP BY job_id, stat", args):
            counts.setdefault(row["job_id"], {})[row["stat"]] = row["n"]
        return counts

    def _live_job(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row: sqlite3.Row | None = conn.execute(
            "SELECT * FROM jobs WHERE id=? AND deleted=?", (job_id, LIVE)
        ).fetchone()
        if row is None:
            raise FarmError(f"Error: Job with ID {job_id!r} does not exist.", 500)
        return row

    def job_command(self, job_id: str, command: str) -> None:
        """Apply a ``PUT /api/jobs`` command to one job."""
        with self._tx() as conn:
            self._live_job(conn, job_id)
            _add_history(conn, job_id, f"Job command: {command}")
            if command == "archive":
                conn.execute("UPDATE jobs SET deleted=? WHERE id=?", (ARCHIVED, job_id))
                return
            set_job, moves = _JOB_COMMANDS[command]
            for from_stats, to_stat in moves:
                _move_tasks(conn, job_id, None, from_stats, to_stat)
            if set_job is not None:
                conn.execute("UPDATE jobs SET stat=? WHERE id=?", (set_job, job_id))
            if command == "resumefailed":
                conn.execute("UPDATE jobs SET errs=0 WHERE id=?", (job_id,))
            _refresh_job(conn, job_id)

    def statistics(self, job_id: str) -> dict[str, Any]:
        """``Statistics=true``: the job's task counts, render times and peak memory (from the
        completed tasks' ``RamPeak``; CPU figures are 0)."""
        found = self.jobs([job_id])
        if not found:
            raise FarmError(f"Error: Job with ID {job_id!r} does not exist.", 500)
        job = found[0]
        tasks = self.tasks(job_id)
        done = [t for t in tasks if t["Stat"] == TASK_COMPLETED]
        times = sorted(t["UsedClock"] for t in done)
        peaks = [t["RamPeak"] for t in done if t["RamPeak"]]
        frames = sum(len(parse_frames(t["Frames"])) for t in done)
        start, end = _parse_date(job["DateStart"]), _parse_date(job["DateComp"])
        running = ((end or time.time()) - start) if start else 0.0
        total = sum(times)
        props = job["Props"]
        return {
            "JobID": job_id,
            "Name": props["Name"],
            "User": props["User"],
            "Plugin": job["Plug"],
            "Pool": props["Pool"],
            "Group": props["Grp"],
            "Priority": props["Pri"],
            "Status": _JOB_STATUS_NAMES.get(job["Stat"], "Unknown"),
            "Frames": props["Frames"],
            "Tasks": len(tasks),
            "CompletedTasks": job["CompletedChunks"],
            "QueuedTasks": job["QueuedChunks"],
            "RenderingTasks": job["RenderingChunks"],
            "SuspendedTasks": job["SuspendedChunks"],
            "FailedTasks": job["FailedChunks"],
            "PendingTasks": job["PendingChunks"],
            "Errors": job["Errs"],
            "SubmitDate": job["Date"],
            "StartDate": job["DateStart"],
            "CompletedDate": job["DateComp"],
            "RunningTime": _clock(running),
            "RunningTimeSeconds": int(running),
            "TotalTaskRenderTime": _clock(total),
            "TotalTaskRenderTimeSeconds": total,
            "AverageTaskRenderTime": _clock(total / len(times)) if times else _clock(0),
            "MedianTaskRenderTime": _clock(times[len(times) // 2]) if times else _clock(0),
            "AverageFrameRenderTime": _clock(total / frames) if frames else _clock(0),
            "PeakRamUsage": max(peaks, default=0),
            "AverageRamUsage": sum(peaks) // len(peaks) if peaks else 0,
            "PeakCpuUsage": 0,
            "AverageCpuUsage": 0,
        }

    def set_machine_limit(
        self,
        job_id: str,
        limit: int | None = None,
        listed: list[str] | None = None,
        whitelist: bool | None = None,
        add: list[str] | None = None,
        remove: list[str] | None = None,
    ) -> None:
        """The ``setjobmachinelimit*`` and ``...slavestojobmachinelimitlist`` commands.

        ``limit`` caps the workers rendering the job at once (0 = no cap); the listed workers
        are the only ones allowed (``whitelist``) or the ones excluded from the job.
        """
        with self._tx() as conn:
            row = self._live_job(conn, job_id)
            info: dict[str, str] = json.loads(row["job_info"])
            names, white = _listed_workers(info)
            if listed is not None:
                names = list(dict.fromkeys(listed))
            names += [n for n in add or [] if n not in names]
            names = [n for n in names if n not in (remove or [])]
            if whitelist is not None:
                white = whitelist
            _set_listed_workers(info, names, white)
            info["MachineLimit"] = str(row["mach_lmt"] if limit is None else limit)
            conn.execute(
                "UPDATE jobs SET mach_lmt=?, job_info=? WHERE id=?",
                (int(info["MachineLimit"]), json.dumps(info), job_id),
            )
            kind = "whitelist" if white else "blacklist"
            _add_history(
                conn, job_id, f"Machine limit set to {info['MachineLimit']}, {kind} {names}"
            )

    def save_job(self, job: dict[str, Any]) -> None:
        """The ``save`` command: write a job object's changed ``Props`` back (priority, limits,
        pool, group, name, comment, extra info, failure detection, listed workers)."""
        job_id = job.get("_id")
        props = job.get("Props")
        if not isinstance(job_id, str) or not isinstance(props, dict):
            raise FarmError("Error: Job must be a job object with _id and Props.", 400)
        with self._tx() as conn:
            row = self._live_job(conn, job_id)
            info: dict[str, str] = json.loads(row["job_info"])
            for prop, key in _SAVED_PROPS.items():
                if prop in props:
                    value = props[prop]
                    info[key] = (
                        ",".join(map(str, value)) if isinstance(value, list) else as_text(value)
                    )
            for n in range(10):
                if f"Ex{n}" in props:
                    info[f"ExtraInfo{n}"] = as_text(props[f"Ex{n}"])
            extra = props.get("ExDic")
            if isinstance(extra, dict):
                for key in [k for k in info if k.startswith("ExtraInfoKeyValue")]:
                    del info[key]
                for n, (key, value) in enumerate(extra.items()):
                    info[f"ExtraInfoKeyValue{n}"] = f"{key}={as_text(value)}"
            if "ListedSlaves" in props or "White" in props:
                names, white = _listed_workers(info)
                listed = props.get("ListedSlaves", names)
                if not isinstance(listed, list):
                    raise FarmError("Error: Props.ListedSlaves must be a list of names.", 400)
                _set_listed_workers(info, [str(n) for n in listed], bool(props.get("White", white)))
            priority = _int(info, "Priority", row["pri"])
            limit = _int(info, "MachineLimit", row["mach_lmt"])
            task_limit = _int(info, "FailureDetectionTaskErrors", row["task_err_limit"])
            job_limit = _int(info, "FailureDetectionJobErrors", row["job_err_limit"])
            if not 0 <= priority <= MAX_PRIORITY:
                raise FarmError(f"Error: Pri must be from 0 to {MAX_PRIORITY}.", 400)
            if limit < 0:
                raise FarmError("Error: MachLmt must not be negative.", 400)
            conn.execute(
                "UPDATE jobs SET name=?, pri=?, mach_lmt=?, task_err_limit=?, job_err_limit=?,"
                " job_info=? WHERE id=?",
                (
                    info.get("Name", row["name"]),
                    priority,
                    limit,
                    task_limit,
                    job_limit,
                    json.dumps(info),
                    job_id,
                ),
            )
            _add_history(conn, job_id, f"Job saved (priority {priority}, machine limit {limit})")

    def delete_jobs(self, ids: list[str]) -> None:
        """Delete jobs (``DELETE /api/jobs``); workers rendering them drop their results."""
        with self._tx() as conn:
            for job_id in ids:
                self._live_job(conn, job_id)
            for job_id in ids:
                conn.execute("UPDATE jobs SET deleted=? WHERE id=?", (DELETED, job_id))

    # -- tasks ---------------------------------------------------------------------------

    def tasks(self, job_id: str) -> list[dict[str, Any]]:
        """Task objects of a live job, by task id."""
        conn = self._conn()
        self._live_job(conn, job_id)
        rows = conn.execute(
            "SELECT * FROM tasks WHERE job_id=? ORDER BY task_id", (job_id,)
        ).fetchall()
        return [_task_json(r) for r in rows]

    def task_command(self, job_id: str, command: str, task_ids: list[int] | None) -> None:
        """Apply a ``PUT /api/tasks`` command to some (or all) tasks of a job."""
        with self._tx() as conn:
            self._live_job(conn, job_id)
            if task_ids is not None:
                count = conn.execute(
                    "SELECT COUNT(*) FROM tasks WHERE job_id=?", (job_id,)
                ).fetchone()[0]
                bad = [t for t in task_ids if not 0 <= t < count]
                if bad:
                    raise FarmError(f"Error: Job {job_id} has no task {bad[0]}.", 500)
            which = "all tasks" if task_ids is None else f"tasks {task_ids}"
            _add_history(conn, job_id, f"Task command: {command} {which}")
            for from_stats, to_stat in _TASK_COMMANDS[command]:
                _move_tasks(conn, job_id, task_ids, from_stats, to_stat)
            if command == "resume":
                # Resuming a task of a suspended job makes the job Active again, as in Deadline.
                conn.execute(
                    "UPDATE jobs SET stat=? WHERE id=? AND stat=?",
                    (JOB_ACTIVE, job_id, JOB_SUSPENDED),
                )
            _refresh_job(conn, job_id)

    def rendering_workers(self, job_id: str) -> list[str]:
        """Names of the workers rendering a task of the job."""
        rows = self._conn().execute(
            "SELECT DISTINCT slave FROM tasks WHERE job_id=? AND stat=? ORDER BY slave",
            (job_id, TASK_RENDERING),
        )
        return [r["slave"] for r in rows]

    # -- reports -------------------------------------------------------------------------

    def reports(
        self, job_id: str, task_id: int | None, types: tuple[int, ...]
    ) -> list[dict[str, Any]]:
        """Report objects of a job (or one of its tasks) of the given types, oldest first."""
        conn = self._conn()
        job = self._live_job(conn, job_id)
        sql = f"SELECT * FROM reports WHERE job_id=? AND type IN ({','.join('?' * len(types))})"
        args: list[Any] = [job_id, *types]
        if task_id is not None:
            sql += " AND task_id=?"
            args.append(task_id)
        rows = conn.execute(sql + " ORDER BY seq", args).fetchall()
        info = json.loads(job["job_info"])
        return [_report_json(r, job["name"], job["plugin"], info) for r in rows]

    def report_contents(
        self, job_id: str, task_id: int | None, types: tuple[int, ...], report_id: str | None = None
    ) -> list[str]:
        """The texts of a job's (or task's, or one report's) reports (``Data=all*contents``)."""
        conn = self._conn()
        self._live_job(conn, job_id)
        marks = ",".join("?" * len(types))
        sql = f"SELECT contents FROM reports WHERE job_id=? AND type IN ({marks})"
        args: list[Any] = [job_id, *types]
        if task_id is not None:
            sql += " AND task_id=?"
            args.append(task_id)
        if report_id is not None:
            sql += " AND id=?"
            args.append(report_id)
        return [r["contents"] for r in conn.execute(sql + " ORDER BY seq", args)]

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's history entries (``Data=history``): what was done to it, oldest first."""
        conn = self._conn()
        job = self._live_job(conn, job_id)
        rows = conn.execute("SELECT * FROM history WHERE job_id=? ORDER BY seq", (job_id,))
        return [
            {
                "_id": r["id"],
                "Job": job_id,
                "JobName": job["name"],
                "Date": r["date"],
                "Title": r["title"],
                "Mach": r["mach"],
            }
            for r in rows
        ]

    # -- workers -------------------------------------------------------------------------

    def workers(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Worker ``Info`` objects (``GET /api/slaves?Data=info``), by name."""
        conn = self._conn()
        sql = "SELECT w.*, j.name AS job_name, j.plugin, j.job_info, s.pools, s.grps"
        sql += " FROM workers w LEFT JOIN jobs j ON j.id = w.job_id"
        sql += " LEFT JOIN worker_settings s ON s.name = w.name"
        args: list[Any] = []
        if names is not None:
            sql += f" WHERE w.name IN ({','.join('?' * len(names))})"
            args = list(names)
        return [_worker_json(r) for r in conn.execute(sql + " ORDER BY w.name", args)]

    def worker_names(self) -> list[str]:
        """Names of every worker the farm has seen."""
        return [r["name"] for r in self._conn().execute("SELECT name FROM workers ORDER BY name")]

    def register_worker(self, name: str, pid: int, standby_pools: list[str] | None = None) -> None:
        """A worker process starts: mark it idle and requeue tasks it held before it died.

        With ``standby_pools`` it is a standby worker: those become its pools (replacing any
        it had) and it serves only them (:func:`_pool_rank`).
        """
        now = time.time()
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO workers (name, stat, host, pid, heartbeat, started, standby)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET"
                " stat=excluded.stat, host=excluded.host, pid=excluded.pid,"
                " heartbeat=excluded.heartbeat, started=excluded.started,"
                " standby=excluded.standby, job_id='', task_id=-1",
                (name, WORKER_IDLE, socket.gethostname(), pid, now, now, int(bool(standby_pools))),
            )
            if standby_pools:
                _add_names(conn, "pool", standby_pools)
                conn.execute(
                    "INSERT INTO worker_settings (name, pools) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET pools=excluded.pools",
                    (name, json.dumps(standby_pools)),
                )
            _requeue_worker_tasks(conn, name, f"Worker {name} restarted; its task was requeued.")

    def heartbeat(self, name: str, claim: Claim | None, progress: int = 0) -> bool:
        """Record that the worker lives (and its task's progress, in percent); False when
        its claimed task was taken from it."""
        with self._tx() as conn:
            conn.execute("UPDATE workers SET heartbeat=? WHERE name=?", (time.time(), name))
            if claim is None:
                return True
            if not _claim_valid(conn, claim, name):
                return False
            conn.execute(
                "UPDATE tasks SET prog=? WHERE job_id=? AND task_id=?",
                (progress, claim.job_id, claim.task_id),
            )
            return True

    def interrupt_for_higher_priority(self, name: str, claim: Claim, progress: int) -> str | None:
        """Deadline's interruptible jobs: give the claimed task back (requeued, with a requeue
        report) when the worker should render a higher-priority task instead; the reason, or
        None when the task goes on.

        The task is interrupted when its job is ``Interruptible``, its progress is below the
        job's ``InterruptiblePercentage``, and the task this worker would take next
        (:func:`_best_task`) has a higher priority and comes no later in the worker's pool
        order, unless an idle worker would take that task itself. The first checks are a
        read; the write lock is taken only when a higher-priority task is queued at all.
        """
        conn = self._conn()
        job = conn.execute("SELECT pri, job_info FROM jobs WHERE id=?", (claim.job_id,)).fetchone()
        if job is None:
            return None
        info: dict[str, str] = json.loads(job["job_info"])
        if not as_bool(info.get("Interruptible")) or progress >= _interruptible_percentage(info):
            return None
        higher = conn.execute(
            "SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id"
            " WHERE t.stat=? AND j.stat=? AND j.deleted=? AND j.pri > ? LIMIT 1",
            (TASK_QUEUED, JOB_ACTIVE, LIVE, job["pri"]),
        ).fetchone()
        if higher is None:
            return None
        with self._tx() as conn:
            if not _claim_valid(conn, claim, name):
                return None
            best = _best_task(conn, name)
            if best is None:
                return None
            pools, _, standby = _worker_setup(conn, name)
            rank, rank_args = _pool_rank(pools, standby)
            current = conn.execute(
                f"SELECT j.pri, {rank} AS pool_rank FROM jobs j WHERE j.id=?",
                (*rank_args, claim.job_id),
            ).fetchone()
            later = current["pool_rank"] is not None and best["pool_rank"] > current["pool_rank"]
            if best["pri"] <= current["pri"] or later:
                return None
            idle = conn.execute(
                "SELECT name FROM workers WHERE stat=? AND name<>?", (WORKER_IDLE, name)
            ).fetchall()
            for other in idle:
                theirs = _best_task(conn, other["name"])
                if theirs is not None and (theirs["job_id"], theirs["task_id"]) == (
                    best["job_id"],
                    best["task_id"],
                ):
                    return None  # an idle worker takes it at its next poll
            reason = (
                f"Worker {name} interrupted this task of interruptible job {claim.job_name}"
                f" (priority {current['pri']}, {progress} % done) for task {best['task_id']}"
                f" of {best['name']} (priority {best['pri']}); task requeued."
            )
            _requeue_task(conn, claim.job_id, claim.task_id, name, reason)
            _add_history(conn, claim.job_id, f"Task {claim.task_id} interrupted on {name}")
            # Idle from now on (its render stops in a moment), so another busy worker sees
            # that this one takes the task and is not interrupted for it too.
            _set_worker_idle(conn, name)
            return reason

    def worker_offline(self, name: str) -> None:
        """A worker stops: it is Offline and holds no task."""
        with self._tx() as conn:
            _requeue_worker_tasks(conn, name, f"Worker {name} stopped; its task was requeued.")
            conn.execute(
                "UPDATE workers SET stat=?, job_id='', task_id=-1 WHERE name=?",
                (WORKER_OFFLINE, name),
            )

    def mark_stalled(self, older_than_seconds: float) -> list[str]:
        """Workers silent for too long become Stalled and their tasks are requeued."""
        limit = time.time() - older_than_seconds
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT name FROM workers WHERE stat IN (?, ?) AND heartbeat < ?",
                (WORKER_RENDERING, WORKER_IDLE, limit),
            ).fetchall()
            names = [r["name"] for r in rows]
            for name in names:
                _requeue_worker_tasks(
                    conn, name, f"Worker {name} stalled (no heartbeat); its task was requeued."
                )
                conn.execute(
                    "UPDATE workers SET stat=?, job_id='', task_id=-1 WHERE name=?",
                    (WORKER_STALLED, name),
                )
        return names

    # -- pools and groups (``/api/pools``, ``/api/groups``) ------------------------------

    @staticmethod
    def _worker_lists(conn: sqlite3.Connection, name: str) -> tuple[list[str], list[str]]:
        row = conn.execute("SELECT pools, grps FROM worker_settings WHERE name=?", (name,))
        found = row.fetchone()
        if found is None:
            return [], []
        return json.loads(found["pools"]), json.loads(found["grps"])

    def list_names(self, kind: str) -> list[str]:
        """Every pool (or group): ``none`` first, then the others by name."""
        table, _ = LISTS[kind]
        rows = self._conn().execute(f"SELECT name FROM {table} ORDER BY name")
        return [NONE, *(r["name"] for r in rows if r["name"] != NONE)]

    def add_names(self, kind: str, names: list[str]) -> None:
        """Add pools (or groups) to the farm; existing ones are kept."""
        with self._tx() as conn:
            _add_names(conn, kind, names)

    def set_names(self, kind: str, names: list[str], overwrite: bool) -> None:
        """``PUT`` without workers: with ``overwrite`` the farm has exactly these pools (the
        others are taken off every worker), else they are added."""
        with self._tx() as conn:
            if overwrite:
                kept = {*names, NONE}
                conn.execute(f"DELETE FROM {LISTS[kind][0]}")
                _edit_worker_lists(conn, kind, None, lambda mine: [n for n in mine if n in kept])
            _add_names(conn, kind, names)

    def assign(self, kind: str, workers: list[str], names: list[str], overwrite: bool) -> None:
        """Give workers pools (or groups): appended in order, or replacing their list."""
        with self._tx() as conn:
            _add_names(conn, kind, names)
            conn.executemany(
                "INSERT OR IGNORE INTO worker_settings (name) VALUES (?)", [(w,) for w in workers]
            )

            def give(mine: list[str]) -> list[str]:
                kept = [] if overwrite else mine
                return kept + [n for n in names if n not in kept]

            _edit_worker_lists(conn, kind, workers, give)

    def unassign(self, kind: str, workers: list[str], names: list[str]) -> None:
        """Take pools (or groups) off workers."""
        with self._tx() as conn:
            _edit_worker_lists(conn, kind, workers, _without(names))

    def delete_names(self, kind: str, names: list[str]) -> None:
        """Remove pools (or groups) from the farm and from every worker (``none`` stays)."""
        with self._tx() as conn:
            conn.executemany(f"DELETE FROM {LISTS[kind][0]} WHERE name=?", [(n,) for n in names])
            _edit_worker_lists(conn, kind, None, _without(names))

    def workers_in(self, kind: str, names: list[str]) -> list[str]:
        """Names of the workers in any of these pools (or groups); every worker is in
        ``none``."""
        _, column = LISTS[kind]
        conn = self._conn()
        settings = {
            r["name"]: json.loads(r[column])
            for r in conn.execute(f"SELECT name, {column} FROM worker_settings")
        }
        everyone = [r["name"] for r in conn.execute("SELECT name FROM workers ORDER BY name")]
        return [
            w
            for w in sorted({*everyone, *settings})
            if NONE in names or any(n in settings.get(w, []) for n in names)
        ]

    def worker_settings(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """Worker ``Settings`` objects (``GET /api/slaves?Data=settings``)."""
        conn = self._conn()
        settings = {
            r["name"]: (json.loads(r["pools"]), json.loads(r["grps"]), bool(r["enabled"]))
            for r in conn.execute("SELECT * FROM worker_settings")
        }
        known = [r["name"] for r in conn.execute("SELECT name FROM workers ORDER BY name")]
        wanted = known if names is None else [n for n in names if n in known]
        return [
            {
                "Name": name,
                "Enable": settings.get(name, ([], [], True))[2],
                "Pools": settings.get(name, ([], [], True))[0],
                "Grps": settings.get(name, ([], [], True))[1],
                "Desc": "local farm worker",
                "Conc": 1,
            }
            for name in wanted
        ]

    def save_worker_settings(
        self, name: str, enabled: bool, pools: list[str], groups: list[str]
    ) -> None:
        """``savesettings``: a known worker's ``Enable``, ``Pools`` and ``Grps``. A disabled
        worker finishes the task it renders and claims no other (:func:`_best_task`)."""
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM workers WHERE name=?", (name,)).fetchone() is None:
                raise FarmError(f"Error: Worker {name!r} does not exist.", 404)
            _add_names(conn, "pool", pools)
            _add_names(conn, "group", groups)
            conn.execute(
                "INSERT INTO worker_settings (name, pools, grps, enabled) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (name) DO UPDATE SET pools=excluded.pools, grps=excluded.grps,"
                " enabled=excluded.enabled",
                (name, json.dumps(pools), json.dumps(groups), int(enabled)),
            )

    def prepare_worker(self, name: str, pools: list[str] | None) -> None:
        """Settings of a machine about to start: enabled, and with ``pools`` (in order,
        replacing its list) when given."""
        with self._tx() as conn:
            conn.execute("INSERT OR IGNORE INTO worker_settings (name) VALUES (?)", (name,))
            conn.execute("UPDATE worker_settings SET enabled=1 WHERE name=?", (name,))
            if pools is not None:
                _add_names(conn, "pool", pools)
                conn.execute(
                    "UPDATE worker_settings SET pools=? WHERE name=?", (json.dumps(pools), name)
                )

    def worker_reports(self, name: str, contents: bool) -> list[Any]:
        """Reports a worker wrote (``Data=reports``), or their texts (``reportcontents``)."""
        conn = self._conn()
        rows = conn.execute(
            "SELECT r.*, j.name AS job_name, j.plugin AS job_plugin, j.job_info AS info"
            " FROM reports r JOIN jobs j ON j.id = r.job_id WHERE r.slave=? ORDER BY r.seq",
            (name,),
        ).fetchall()
        if contents:
            return [r["contents"] for r in rows]
        return [
            _report_json(r, r["job_name"], r["job_plugin"], json.loads(r["info"])) for r in rows
        ]

    # -- claiming and finishing tasks (worker side) --------------------------------------

    def has_work(self) -> bool:
        """Cheap read: is any task claimable right now?"""
        row = (
            self._conn()
            .execute(
                "SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id"
                " WHERE t.stat=? AND j.stat=? AND j.deleted=? LIMIT 1",
                (TASK_QUEUED, JOB_ACTIVE, LIVE),
            )
            .fetchone()
        )
        return row is not None

    def claim(self, name: str) -> Claim | None:
        """Claim the next task this worker may render, as Deadline's scheduler picks it
        (:func:`_best_task`)."""
        with self._tx() as conn:
            row = _best_task(conn, name)
            if row is None:
                return None
            start = now_iso()
            conn.execute(
                "UPDATE tasks SET stat=?, slave=?, claim=claim+1, start=?, start_ren=?, comp=?,"
                " prog=0, ram_peak=0 WHERE job_id=? AND task_id=?",
                (TASK_RENDERING, name, start, start, NO_DATE, row["job_id"], row["task_id"]),
            )
            conn.execute(
                "UPDATE jobs SET date_start=? WHERE id=? AND date_start=?",
                (start, row["job_id"], NO_DATE),
            )
            conn.execute(
                "UPDATE workers SET stat=?, job_id=?, task_id=?, heartbeat=? WHERE name=?",
                (WORKER_RENDERING, row["job_id"], row["task_id"], time.time(), name),
            )
            return Claim(
                job_id=row["job_id"],
                task_id=row["task_id"],
                claim=row["claim"] + 1,
                frames=json.loads(row["frames"]),
                plugin=row["plugin"],
                job_name=row["name"],
                job_info=json.loads(row["job_info"]),
                plugin_info=json.loads(row["plugin_info"]),
                aux=json.loads(row["aux"]),
                timeout_seconds=row["timeout_seconds"],
                start=start,
            )

    def finish_ok(self, name: str, claim: Claim, log: str, ram_peak: int = 0) -> bool:
        """Complete a claimed task with a log report and its peak memory (bytes); False (and
        no effect) if it was lost."""
        with self._tx() as conn:
            _set_worker_idle(conn, name)
            if not _claim_valid(conn, claim, name):
                return False
            conn.execute(
                "UPDATE tasks SET stat=?, comp=?, prog=100, ram_peak=?"
                " WHERE job_id=? AND task_id=?",
                (TASK_COMPLETED, now_iso(), ram_peak, claim.job_id, claim.task_id),
            )
            conn.execute(
                "UPDATE workers SET completed_tasks=completed_tasks+1 WHERE name=?", (name,)
            )
            _add_report(
                conn,
                claim.job_id,
                claim.task_id,
                REPORT_LOG,
                name,
                "",
                log,
                claim.start,
                peak_ram=ram_peak,
            )
            _refresh_job(conn, claim.job_id)
            return True

    def finish_error(
        self, name: str, claim: Claim, message: str, log: str, ram_peak: int = 0
    ) -> bool:
        """Record a render error: error report, Errs++, requeue or fail the task (and job)."""
        with self._tx() as conn:
            _set_worker_idle(conn, name)
            if not _claim_valid(conn, claim, name):
                return False
            job = conn.execute("SELECT * FROM jobs WHERE id=?", (claim.job_id,)).fetchone()
            errs = (
                conn.execute(
                    "SELECT errs FROM tasks WHERE job_id=? AND task_id=?",
                    (claim.job_id, claim.task_id),
                ).fetchone()[0]
                + 1
            )
            limit = job["task_err_limit"]
            stat = TASK_FAILED if limit > 0 and errs >= limit else TASK_QUEUED
            conn.execute(
                "UPDATE tasks SET stat=?, errs=?, slave=?, comp=? WHERE job_id=? AND task_id=?",
                (
                    stat,
                    errs,
                    name if stat == TASK_FAILED else "",
                    NO_DATE,
                    claim.job_id,
                    claim.task_id,
                ),
            )
            conn.execute("UPDATE jobs SET errs=errs+1 WHERE id=?", (claim.job_id,))
            contents = f"{message}\n\n{log}".strip()
            _add_report(
                conn,
                claim.job_id,
                claim.task_id,
                REPORT_ERROR,
                name,
                message,
                contents,
                claim.start,
                peak_ram=ram_peak,
            )
            if job["job_err_limit"] > 0 and job["errs"] + 1 >= job["job_err_limit"]:
                _move_tasks(
                    conn,
                    claim.job_id,
                    None,
                    (TASK_QUEUED, TASK_SUSPENDED, TASK_PENDING),
                    TASK_FAILED,
                )
            _refresh_job(conn, claim.job_id)
            return True

    def discard(self, name: str) -> None:
        """The worker dropped a task that was taken from it: it is idle again."""
        with self._tx() as conn:
            _set_worker_idle(conn, name)

    def requeue_claim(self, name: str, claim: Claim, reason: str) -> None:
        """Give a claimed task back (worker stopping) with a requeue report."""
        with self._tx() as conn:
            _set_worker_idle(conn, name)
            if _claim_valid(conn, claim, name):
                _requeue_task(conn, claim.job_id, claim.task_id, name, reason)

    # -- faults (``/_farm/faults``) ------------------------------------------------------

    def add_fault(
        self, match: str, frames: list[int] | None, times: int | None, message: str
    ) -> int:
        """Inject a render failure rule; returns its id."""
        with self._tx() as conn:
            cur = conn.execute(
                "INSERT INTO faults (match, frames, times_left, message) VALUES (?, ?, ?, ?)",
                (match, None if frames is None else json.dumps(frames), times, message),
            )
            return int(cur.lastrowid or 0)

    def faults(self) -> list[dict[str, Any]]:
        """The fault rules in force."""
        rows = self._conn().execute("SELECT * FROM faults ORDER BY id")
        return [
            {
                "id": r["id"],
                "match": r["match"],
                "frames": None if r["frames"] is None else json.loads(r["frames"]),
                "times": r["times_left"],
                "message": r["message"],
            }
            for r in rows
        ]

    def clear_faults(self) -> None:
        """Remove every fault rule."""
        with self._tx() as conn:
            conn.execute("DELETE FROM faults")

    def take_fault(self, texts: list[str], frame: int) -> str | None:
        """Consume the first fault rule matching one of ``texts`` and ``frame``; its message."""
        with self._tx() as conn:
            for row in conn.execute("SELECT * FROM faults ORDER BY id").fetchall():
                if not any(row["match"] in text for text in texts):
                    continue
                if row["frames"] is not None and frame not in json.loads(row["frames"]):
                    continue
                if row["times_left"] is not None:
                    if row["times_left"] <= 0:
                        continue
                    conn.execute(
                        "UPDATE faults SET times_left=times_left-1 WHERE id=?", (row["id"],)
                    )
                return str(row["message"])
        return None


# -- transitions -------------------------------------------------------------------------

_ANY_INCOMPLETE = (TASK_QUEUED, TASK_SUSPENDED, TASK_RENDERING, TASK_PENDING)

#: PUT /api/jobs command → (job Stat to set or None, [(task Stats moved, to Stat)]).
_JOB_COMMANDS: dict[str, tuple[int | None, list[tuple[tuple[int, ...], int]]]] = {
    "suspend": (JOB_SUSPENDED, [((TASK_QUEUED, TASK_RENDERING, TASK_PENDING), TASK_SUSPENDED)]),
    "suspendnonrendering": (JOB_SUSPENDED, [((TASK_QUEUED, TASK_PENDING), TASK_SUSPENDED)]),
    "resume": (JOB_ACTIVE, [((TASK_SUSPENDED, TASK_PENDING), TASK_QUEUED)]),
    "requeue": (
        JOB_ACTIVE,
        [((TASK_RENDERING, TASK_COMPLETED, TASK_SUSPENDED, TASK_PENDING), TASK_QUEUED)],
    ),
    "resumefailed": (JOB_ACTIVE, [((TASK_FAILED,), TASK_QUEUED)]),
    "fail": (JOB_FAILED, [((*_ANY_INCOMPLETE,), TASK_FAILED)]),
    "complete": (None, [((*_ANY_INCOMPLETE, TASK_FAILED), TASK_COMPLETED)]),
    "pend": (JOB_PENDING, [((TASK_QUEUED, TASK_RENDERING, TASK_SUSPENDED), TASK_PENDING)]),
    "releasepending": (JOB_ACTIVE, [((TASK_PENDING,), TASK_QUEUED)]),
    "archive": (None, []),
}
JOB_COMMANDS = frozenset(_JOB_COMMANDS)

#: PUT /api/tasks command → [(task Stats moved, to Stat)].
_TASK_COMMANDS: dict[str, list[tuple[tuple[int, ...], int]]] = {
    "requeue": [
        ((TASK_RENDERING, TASK_COMPLETED, TASK_SUSPENDED, TASK_FAILED, TASK_PENDING), TASK_QUEUED)
    ],
    "complete": [((*_ANY_INCOMPLETE, TASK_FAILED), TASK_COMPLETED)],
    "suspend": [((TASK_QUEUED, TASK_RENDERING, TASK_PENDING), TASK_SUSPENDED)],
    "resume": [((TASK_SUSPENDED,), TASK_QUEUED)],
    "fail": [((*_ANY_INCOMPLETE,), TASK_FAILED)],
    "resumefailed": [((TASK_FAILED,), TASK_QUEUED)],
    "pend": [((TASK_QUEUED, TASK_SUSPENDED), TASK_PENDING)],
    "releasepending": [((TASK_PENDING,), TASK_QUEUED)],
}
TASK_COMMANDS = frozenset(_TASK_COMMANDS)


def _move_tasks(
    conn: sqlite3.Connection,
    job_id: str,
    task_ids: list[int] | None,
    from_stats: tuple[int, ...],
    to_stat: int,
) -> None:
    """Move a job's tasks in ``from_stats`` to ``to_stat`` (a new claim voids any render)."""
    sql = (
        f"UPDATE tasks SET stat=?, claim=claim+1, prog=0,"
        f" ram_peak=CASE WHEN ?=? THEN ram_peak ELSE 0 END,"
        f" slave=CASE WHEN ?=? THEN slave ELSE '' END,"
        f" comp=CASE WHEN ?=? THEN ? ELSE ? END,"
        f" start=CASE WHEN ? IN (?, ?) THEN start ELSE ? END,"
        f" start_ren=CASE WHEN ? IN (?, ?) THEN start_ren ELSE ? END,"
        f" errs=CASE WHEN ?=? AND stat=? THEN 0 ELSE errs END"
        f" WHERE job_id=? AND stat IN ({','.join('?' * len(from_stats))})"
    )
    done = now_iso()
    args: list[Any] = [
        to_stat,
        *(to_stat, TASK_COMPLETED),
        *(to_stat, TASK_COMPLETED),
        *(to_stat, TASK_COMPLETED, done, NO_DATE),
        *(to_stat, TASK_COMPLETED, TASK_FAILED, NO_DATE),
        *(to_stat, TASK_COMPLETED, TASK_FAILED, NO_DATE),
        *(to_stat, TASK_QUEUED, TASK_FAILED),
        job_id,
        *from_stats,
    ]
    if task_ids is not None:
        sql += f" AND task_id IN ({','.join('?' * len(task_ids))})"
        args += task_ids
    conn.execute(sql, args)


def _refresh_job(conn: sqlite3.Connection, job_id: str) -> None:
    """Bring the job's Stat and DateComp in line with its tasks; release dependent jobs."""
    job = conn.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
    counts = Store._task_counts(conn, [job_id]).get(job_id, {})
    total = sum(counts.values())
    stat = job["stat"]
    if counts.get(TASK_COMPLETED, 0) == total:
        new = JOB_COMPLETED
    elif counts.get(TASK_FAILED, 0) and stat in (JOB_ACTIVE, JOB_COMPLETED):
        new = JOB_FAILED
    elif stat == JOB_COMPLETED or (stat == JOB_FAILED and not counts.get(TASK_FAILED)):
        new = JOB_ACTIVE
    else:
        new = stat
    date_comp = job["date_comp"]
    if new == JOB_COMPLETED and stat != JOB_COMPLETED:
        date_comp = now_iso()
    elif new != JOB_COMPLETED:
        date_comp = NO_DATE
    conn.execute("UPDATE jobs SET stat=?, date_comp=? WHERE id=?", (new, date_comp, job_id))
    if new == JOB_COMPLETED and stat != JOB_COMPLETED:
        _add_history(conn, job_id, "Completed")
        if job["on_comp"] in (ON_COMPLETE["archive"], ON_COMPLETE["delete"]):
            gone = ARCHIVED if job["on_comp"] == ON_COMPLETE["archive"] else DELETED
            conn.execute("UPDATE jobs SET deleted=? WHERE id=?", (gone, job_id))
        _release_dependents(conn, job_id)


def _release_dependents(conn: sqlite3.Connection, job_id: str) -> None:
    """Pending jobs whose dependencies are all complete (or gone) become Active."""
    rows = conn.execute(
        "SELECT id, deps FROM jobs WHERE stat=? AND deleted=? AND deps LIKE ?",
        (JOB_PENDING, LIVE, f'%"{job_id}"%'),
    ).fetchall()
    for row in rows:
        waiting = False
        for dep in json.loads(row["deps"]):
            dep_row = conn.execute("SELECT stat, deleted FROM jobs WHERE id=?", (dep,)).fetchone()
            if dep_row is not None and dep_row["stat"] != JOB_COMPLETED and not dep_row["deleted"]:
                waiting = True
        if not waiting:
            _move_tasks(conn, row["id"], None, (TASK_PENDING,), TASK_QUEUED)
            conn.execute("UPDATE jobs SET stat=? WHERE id=?", (JOB_ACTIVE, row["id"]))


#: A job's pool, secondary pool and group as the claim queries compare them (lower case).
_POOL = f"lower(COALESCE(NULLIF(json_extract(j.job_info, '$.Pool'), ''), '{NONE}'))"
_SECOND = "lower(COALESCE(json_extract(j.job_info, '$.SecondaryPool'), ''))"
_GROUP = f"lower(COALESCE(NULLIF(json_extract(j.job_info, '$.Group'), ''), '{NONE}'))"


def _worker_setup(conn: sqlite3.Connection, name: str) -> tuple[list[str], list[str], bool]:
    """A worker's pools (in its order), its groups, and whether it is a standby worker."""
    pools, groups = Store._worker_lists(conn, name)
    row = conn.execute("SELECT standby FROM workers WHERE name=?", (name,)).fetchone()
    return pools, groups, bool(row is not None and row["standby"])


def _worker_enabled(conn: sqlite3.Connection, name: str) -> bool:
    """False once the worker's settings disable it (``savesettings`` with ``Enable: false``)."""
    row = conn.execute("SELECT enabled FROM worker_settings WHERE name=?", (name,)).fetchone()
    return row is None or bool(row["enabled"])


def _pool_rank(pools: list[str], standby: bool) -> tuple[str, list[str]]:
    """SQL giving a job's place in a worker's pool order (NULL: a job it does not serve), and
    its arguments: the worker's pools in order, then pool ``none`` and jobs whose secondary
    pool is ``none`` (every worker is in ``none``), then jobs there by a secondary pool the
    worker lists. A standby worker serves only the pools it lists."""
    n = len(pools)
    ranks = [f"WHEN {_POOL}=? THEN {i}" for i in range(n)]
    if not standby:
        ranks.append(f"WHEN {_POOL}='{NONE}' THEN {n}")
        ranks.append(f"WHEN {_SECOND}='{NONE}' THEN {n}")
    ranks += [f"WHEN {_SECOND}=? THEN {n + 1 + i}" for i in range(n)]
    return (f"CASE {' '.join(ranks)} END" if ranks else "NULL"), [*pools, *pools]


def _best_task(conn: sqlite3.Connection, name: str) -> sqlite3.Row | None:
    """The queued task the worker takes next, as Deadline's scheduler picks it.

    Only jobs in a pool the worker serves (:func:`_pool_rank`), whose group the worker is in
    (every worker is in group ``none``), that are under their machine limit and whose
    white/black list lets the worker in. Among those: the worker's pool order, then highest
    priority, then oldest job, then lowest task id. The row has the task, its job and
    ``pool_rank``. A disabled worker takes nothing.
    """
    if not _worker_enabled(conn, name):
        return None
    pools, groups, standby = _worker_setup(conn, name)
    rank, rank_args = _pool_rank(pools, standby)
    white = "json_extract(j.job_info, '$.Whitelist')"
    black = "json_extract(j.job_info, '$.Blacklist')"
    listed = "instr(',' || replace({0}, ' ', '') || ',', ',' || ? || ',')"
    row: sqlite3.Row | None = conn.execute(
        "SELECT * FROM (SELECT t.job_id, t.task_id, t.claim, t.frames, j.*,"
        f" {rank} AS pool_rank FROM tasks t"
        " JOIN jobs j ON j.id = t.job_id"
        " WHERE t.stat=? AND j.stat=? AND j.deleted=? AND (j.mach_lmt <= 0 OR"
        "  (SELECT COUNT(*) FROM tasks r WHERE r.job_id = t.job_id AND r.stat=?)"
        "  < j.mach_lmt)"
        f" AND {_GROUP} IN ('{NONE}'{', ?' * len(groups)})"
        f" AND (COALESCE({white}, '') = '' OR {listed.format(white)} > 0)"
        f" AND (COALESCE({black}, '') = '' OR {listed.format(black)} = 0))"
        " WHERE pool_rank IS NOT NULL"
        " ORDER BY pool_rank, pri DESC, seq, task_id LIMIT 1",
        (
            *rank_args,
            TASK_QUEUED,
            JOB_ACTIVE,
            LIVE,
            TASK_RENDERING,
            *groups,
            name,
            name,
        ),
    ).fetchone()
    return row


def _claim_valid(conn: sqlite3.Connection, claim: Claim, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.job_id=? AND t.task_id=?"
        " AND t.claim=? AND t.stat=? AND t.slave=? AND j.deleted=?",
        (claim.job_id, claim.task_id, claim.claim, TASK_RENDERING, name, LIVE),
    ).fetchone()
    return row is not None


def _set_worker_idle(conn: sqlite3.Connection, name: str) -> None:
    conn.execute(
        "UPDATE workers SET stat=?, job_id='', task_id=-1, heartbeat=? WHERE name=? AND stat=?",
        (WORKER_IDLE, time.time(), name, WORKER_RENDERING),
    )


def _requeue_task(
    conn: sqlite3.Connection, job_id: str, task_id: int, name: str, reason: str
) -> None:
    row = conn.execute(
        "SELECT start FROM tasks WHERE job_id=? AND task_id=?", (job_id, task_id)
    ).fetchone()
    _move_tasks(conn, job_id, [task_id], (TASK_RENDERING,), TASK_QUEUED)
    _add_report(conn, job_id, task_id, REPORT_REQUEUE, name, reason, reason, row["start"])


def _requeue_worker_tasks(conn: sqlite3.Connection, name: str, reason: str) -> None:
    rows = conn.execute(
        "SELECT job_id, task_id FROM tasks WHERE slave=? AND stat=?", (name, TASK_RENDERING)
    ).fetchall()
    for row in rows:
        _requeue_task(conn, row["job_id"], row["task_id"], name, reason)


def _add_report(
    conn: sqlite3.Connection,
    job_id: str,
    task_id: int,
    kind: int,
    slave: str,
    title: str,
    contents: str,
    task_start: str,
    peak_ram: int = 0,
) -> None:
    frames = conn.execute(
        "SELECT frames FROM tasks WHERE job_id=? AND task_id=?", (job_id, task_id)
    ).fetchone()["frames"]
    started = _parse_date(task_start)
    seconds = max(0.0, time.time() - started) if started else 0.0
    conn.execute(
        "INSERT INTO reports (id, job_id, task_id, type, date, slave, title, frames, task_start,"
        " task_seconds, peak_ram, contents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new_id(),
            job_id,
            task_id,
            kind,
            now_iso(),
            slave,
            title,
            format_task_frames(json.loads(frames)),
            task_start,
            seconds,
            peak_ram,
            contents,
        ),
    )


def _add_columns(conn: sqlite3.Connection) -> None:
    """Add the columns of :data:`_ADDED_COLUMNS` that an older database lacks."""
    for table, column, declaration in _ADDED_COLUMNS:
        have = {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            with contextlib.suppress(sqlite3.OperationalError):  # another process added it
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def _add_names(conn: sqlite3.Connection, kind: str, names: list[str]) -> None:
    """Add pools (or groups) to the farm's list; existing ones are kept."""
    conn.executemany(
        f"INSERT OR IGNORE INTO {LISTS[kind][0]} (name) VALUES (?)", [(n,) for n in names]
    )


def _without(names: list[str]) -> Callable[[list[str]], list[str]]:
    """An edit of a worker's pools (or groups) that takes ``names`` off."""
    return lambda mine: [n for n in mine if n not in names]


def _edit_worker_lists(
    conn: sqlite3.Connection,
    kind: str,
    workers: list[str] | None,
    edit: Callable[[list[str]], list[str]],
) -> None:
    """Replace the pools (or groups) of ``workers`` (None: of every worker with settings) by
    ``edit`` of them."""
    column = LISTS[kind][1]
    sql = f"SELECT name, {column} FROM worker_settings"
    args: list[str] = []
    if workers is not None:
        sql += f" WHERE name IN ({','.join('?' * len(workers))})"
        args = workers
    conn.executemany(
        f"UPDATE worker_settings SET {column}=? WHERE name=?",
        [
            (json.dumps(edit(json.loads(row[column]))), row["name"])
            for row in conn.execute(sql, args).fetchall()
        ],
    )


def _add_history(conn: sqlite3.Connection, job_id: str, title: str) -> None:
    conn.execute(
        "INSERT INTO history (id, job_id, date, title, mach) VALUES (?, ?, ?, ?, ?)",
        (new_id(), job_id, now_iso(), title, socket.gethostname()),
    )


def _parse_date(text: str) -> float:
    """Seconds since the epoch of a Deadline date; 0 for the unset date."""
    if text == NO_DATE:
        return 0.0
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def _clock(seconds: float) -> str:
    """A duration as Deadline's ``HH:MM:SS`` text."""
    whole = int(seconds)
    return f"{whole // 3600:02d}:{whole // 60 % 60:02d}:{whole % 60:02d}"


# -- JSON shapes -------------------------------------------------------------------------


def _interruptible_percentage(info: dict[str, str]) -> int:
    """JobInfo ``InterruptiblePercentage``: a task of an interruptible job is interrupted
    only while its progress is below it (default 100: any time before it completes)."""
    raw = info.get("InterruptiblePercentage", "").strip()
    try:
        return max(0, min(100, int(float(raw)))) if raw else 100
    except ValueError:
        return 100


#: The machine's memory in bytes (``RamPeakPer`` is a task's peak as a share of it).
_MACHINE_RAM = (
    os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 0
)


def _job_json(row: sqlite3.Row, counts: dict[int, int]) -> dict[str, Any]:
    """A job object with Deadline's field names (``GET /api/jobs``)."""
    info: dict[str, str] = json.loads(row["job_info"])
    plug: dict[str, str] = json.loads(row["plugin_info"])
    total = sum(counts.values())
    chunk = max(1, int(float(info.get("ChunkSize", "1") or "1")))
    completed = counts.get(TASK_COMPLETED, 0)
    listed, white = _listed_workers(info)
    props: dict[str, Any] = {
        "Name": row["name"],
        "Batch": info.get("BatchName", ""),
        "User": info.get("UserName") or getpass.getuser(),
        "Region": info.get("Region", ""),
        "Cmmt": info.get("Comment", ""),
        "Dept": info.get("Department", ""),
        "Frames": info.get("Frames", "0") or "0",
        "Chunk": chunk,
        "Tasks": total,
        "Grp": info.get("Group") or "none",
        "Pool": info.get("Pool") or "none",
        "SecPool": info.get("SecondaryPool", ""),
        "Pri": row["pri"],
        "Conc": int(float(info.get("ConcurrentTasks", "1") or "1")),
        "ConcLimt": as_bool(info.get("LimitConcurrentTasksToNumberOfCpus", "True")),
        "Seq": as_bool(info.get("Sequential")),
        "Int": as_bool(info.get("Interruptible")),
        "IntPer": _interruptible_percentage(info),
        "OnComp": row["on_comp"],
        "Timeout": {"both": 0, "error": 1, "notify": 2}.get(
            info.get("OnTaskTimeout", "Error").strip().lower(), 1
        ),
        "MinTime": 0,
        "MaxTime": int(row["timeout_seconds"]),
        "StartTime": 0,
        "Dep": [{"JobID": d} for d in json.loads(row["deps"])],
        "DepComp": True,
        "DepFail": False,
        "DepPer": -1,
        "JobFailOvr": as_bool(info.get("OverrideJobFailureDetection")),
        "JobFailErr": row["job_err_limit"],
        "TskFailOvr": as_bool(info.get("OverrideTaskFailureDetection")),
        "TskFailErr": row["task_err_limit"],
        "SndWarn": True,
        "NotUser": [],
        "NotEmail": [e.strip() for e in info.get("NotificationEmails", "").split(",") if e.strip()],
        "Limits": [g.strip() for g in info.get("LimitGroups", "").split(",") if g.strip()],
        "ListedSlaves": listed,
        "White": white,
        "MachLmt": row["mach_lmt"],
        "MachLmtProg": -1.0,
        "Schd": 0,
        "SchdDate": NO_DATE,
        "PlugInfo": plug,
        "Env": _key_values(info, "EnvironmentKeyValue"),
        "EnvOnly": as_bool(info.get("UseJobEnvironmentOnly")),
        "ExDic": _key_values(info, "ExtraInfoKeyValue"),
    }
    for n in range(10):
        props[f"Ex{n}"] = info.get(f"ExtraInfo{n}", "")
    single = "100 %" if total == 1 and completed == 1 else "0 %"
    return {
        "_id": row["id"],
        "Props": props,
        "Plug": row["plugin"],
        "Stat": row["stat"],
        "Mach": row["submit_host"],
        "Date": row["date"],
        "DateStart": row["date_start"],
        "DateComp": row["date_comp"],
        "OutDir": _numbered(info, "OutputDirectory"),
        "OutFile": _numbered(info, "OutputFilename"),
        "TileFile": [],
        "Tile": False,
        "ComFra": 0,
        "IsSub": True,
        "Purged": False,
        "Aux": json.loads(row["aux"]),
        "Bad": [],
        "Errs": row["errs"],
        "DataSize": -1,
        "SnglTskPrg": single,
        "CompletedChunks": completed,
        "QueuedChunks": counts.get(TASK_QUEUED, 0),
        "SuspendedChunks": counts.get(TASK_SUSPENDED, 0),
        "RenderingChunks": counts.get(TASK_RENDERING, 0),
        "FailedChunks": counts.get(TASK_FAILED, 0),
        "PendingChunks": counts.get(TASK_PENDING, 0),
    }


def _task_json(row: sqlite3.Row) -> dict[str, Any]:
    """A task object with Deadline's field names (``GET /api/tasks``)."""
    stat = row["stat"]
    start, comp = _parse_date(row["start_ren"]), _parse_date(row["comp"])
    used = (comp if comp else time.time()) - start if start else 0.0
    return {
        "_id": f"{row['job_id']}_{row['task_id']}",
        "JobID": row["job_id"],
        "TaskID": row["task_id"],
        "Frames": format_task_frames(json.loads(row["frames"])),
        "Slave": row["slave"],
        "Stat": stat,
        "Prog": f"{100 if stat == TASK_COMPLETED else row['prog']} %",
        "RndStat": "Rendering" if stat == TASK_RENDERING else "",
        "Errs": row["errs"],
        "Start": row["start"],
        "StartRen": row["start_ren"],
        "Comp": row["comp"],
        "WtgStrt": False,
        "NormMult": 0.0,
        "Size": 0,
        "RamPeak": row["ram_peak"],
        "RamPeakPer": round(100 * row["ram_peak"] / _MACHINE_RAM) if _MACHINE_RAM else 0,
        "RamAvg": 0,
        "Cpu": 0,
        "CpuPer": 0,
        "UsedClock": math.floor(max(0.0, used)),
        "TotalClock": math.floor(max(0.0, used)),
        "Props": {},
    }


def _report_json(
    row: sqlite3.Row, job_name: str, plugin: str, info: dict[str, str]
) -> dict[str, Any]:
    """A job/task report object (``GET /api/jobreports``, ``/api/taskreports``)."""
    return {
        "_id": row["id"],
        "Job": row["job_id"],
        "Task": row["task_id"],
        "Type": row["type"],
        "Date": row["date"],
        "Slave": row["slave"],
        "Title": row["title"],
        "JobName": job_name,
        "JobUser": info.get("UserName") or getpass.getuser(),
        "Plugin": plugin,
        "Frames": row["frames"],
        "TaskStartTime": row["task_start"],
        "TaskTime": _clock(row["task_seconds"]),
        "AverageCpu": 0,
        "PeakCpu": 0,
        "AverageRam": 0,
        "PeakRam": row["peak_ram"],
        "UsedClock": int(row["task_seconds"]),
        "TotalClock": int(row["task_seconds"]),
    }


def _worker_json(row: sqlite3.Row) -> dict[str, Any]:
    """A worker ``Info`` object (``GET /api/slaves?Data=info``)."""
    info: dict[str, str] = json.loads(row["job_info"]) if row["job_info"] else {}
    return {
        "Name": row["name"],
        "Stat": row["stat"],
        "StatDate": datetime.fromtimestamp(row["heartbeat"], UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[
            :-3
        ]
        + "Z",
        "JobId": row["job_id"],
        "JobName": row["job_name"] or "",
        "JobUser": info.get("UserName", ""),
        "JobPlug": row["plugin"] or "",
        "JobPool": info.get("Pool", ""),
        "JobGrp": info.get("Group", ""),
        "TskId": str(row["task_id"]) if row["task_id"] >= 0 else "",
        "Host": row["host"],
        "IP": "127.0.0.1",
        "MAC": "",
        "RAM": 0,
        "RAMFree": 0,
        "Procs": os.cpu_count() or 1,
        "OS": f"{platform.system()} {platform.release()}",
        "Arch": platform.machine(),
        "Vid": "",
        "Grps": ",".join(json.loads(row["grps"] or "[]")),
        "Pools": ",".join(json.loads(row["pools"] or "[]")),
        "CompletedTasks": row["completed_tasks"],
        "UpTime": int(max(0.0, time.time() - row["started"])),
        "PID": row["pid"],
    }
