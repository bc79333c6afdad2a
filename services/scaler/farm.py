"""The farm as the scaler sees it, through the Deadline Web Service API: the queue per pool,
the workers, and draining (a worker disabled in its settings finishes its task, takes no other).

These are the farm's view; the scaler's policy has its own snapshot types.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx

# Deadline worker Stat codes.
_RENDERING, _IDLE = 1, 2


class WorkerStatus(StrEnum):
    """What a farm worker does, its settings' ``Enable`` included."""

    idle = "idle"
    rendering = "rendering"
    draining = "draining"  # disabled, still rendering its last task
    disabled = "disabled"  # disabled and idle: drained
    offline = "offline"  # offline, stalled, or not started yet


@dataclass(frozen=True)
class PoolQueue:
    """One pool's tasks: waiting (queued, in active jobs) and rendering."""

    pool: str
    waiting: int
    running: int


@dataclass(frozen=True)
class JobQueue:
    """One active farm job's tasks, and when it was submitted (seconds since the epoch)."""

    job_id: str
    pool: str
    waiting: int
    running: int
    submitted_at: float
    #: Its completed tasks' mean render time; None before one completed.
    task_seconds: float | None = None
    #: The JobInfo ``BatchName``: the deadline-bridge puts our job's id there.
    batch: str = ""


@dataclass(frozen=True)
class FarmWorker:
    """One farm worker: its status, pools (in order) and the task it renders."""

    name: str
    status: WorkerStatus
    pools: tuple[str, ...]
    job_id: str | None
    task_id: int | None


@dataclass(frozen=True)
class FarmSnapshot:
    """The farm at one moment: pools by name (a job's primary pool; no pool is ``none``)
    and workers by name."""

    pools: dict[str, PoolQueue]
    workers: dict[str, FarmWorker]
    #: The active jobs with tasks waiting or rendering, oldest first.
    jobs: tuple[JobQueue, ...] = ()


class UnknownWorker(LookupError):
    """The farm has no worker of that name."""


class FarmQueue:
    """Reads and drains the farm over ``client`` (base URL and auth set; the caller closes it)."""

    def __init__(self, client: httpx.AsyncClient, statistics_seconds: float = 30.0) -> None:
        self.client = client
        #: A job's measured task time is asked again after this long (one request a round
        #: for every job due).
        self.statistics_seconds = statistics_seconds
        self._measured: dict[str, tuple[float, float | None]] = {}

    async def snapshot(self) -> FarmSnapshot:
        """Tasks waiting and rendering per pool and per job, and every worker."""
        jobs = await self._get("/api/jobs", States="Active")
        active = [j for j in jobs if j["QueuedChunks"] or j["RenderingChunks"]]
        measured = await self._task_seconds(active)
        waiting: dict[str, int] = {}
        running: dict[str, int] = {}
        queued: list[JobQueue] = []
        for job in jobs:
            pool = (job["Props"]["Pool"] or "none").lower()
            waiting[pool] = waiting.get(pool, 0) + job["QueuedChunks"]
            running[pool] = running.get(pool, 0) + job["RenderingChunks"]
            if job["QueuedChunks"] or job["RenderingChunks"]:
                queued.append(
                    JobQueue(
                        job_id=job["_id"],
                        pool=pool,
                        waiting=job["QueuedChunks"],
                        running=job["RenderingChunks"],
                        submitted_at=_epoch(job["Date"]),
                        batch=str(job["Props"].get("Batch") or ""),
                        task_seconds=measured.get(job["_id"]),
                    )
                )
        self._measured = {
            k: v for k, v in self._measured.items() if k in {j.job_id for j in queued}
        }
        pools = {p: PoolQueue(p, waiting[p], running[p]) for p in sorted(waiting)}
        workers = [_worker(w) for w in await self._get("/api/slaves", Data="infosettings")]
        ordered = tuple(sorted(queued, key=lambda j: (j.submitted_at, j.job_id)))
        return FarmSnapshot(pools=pools, workers={w.name: w for w in workers}, jobs=ordered)

    async def _task_seconds(self, jobs: list[dict[str, Any]]) -> dict[str, float | None]:
        """Each job's completed tasks' mean render time, once a task has completed: asked
        again at most every ``statistics_seconds``, the jobs due in one request
        (``Details=true`` over their ids, each with its ``Statistics``)."""
        now = time.monotonic()
        done = [j["_id"] for j in jobs if j["CompletedChunks"]]
        due = [
            job_id
            for job_id in done
            if job_id not in self._measured
            or now - self._measured[job_id][0] >= self.statistics_seconds
        ]
        if due:
            response = await self.client.get(
                "/api/jobs", params={"JobID": ",".join(due), "Details": "true"}
            )
            response.raise_for_status()
            details: dict[str, Any] = response.json()
            for job_id in due:
                stats: dict[str, Any] = details.get(job_id, {}).get("Statistics", {})
                total = float(stats.get("TotalTaskRenderTimeSeconds", 0.0))
                count = int(stats.get("CompletedTasks", 0))
                self._measured[job_id] = (now, total / count if count and total > 0 else None)
        return {job_id: self._measured[job_id][1] for job_id in done}

    async def drain(self, worker: str) -> None:
        """Disable the worker: it finishes the task it renders and takes no other."""
        await self._enable(worker, False)

    async def undrain(self, worker: str) -> None:
        """Enable the worker again: it takes tasks."""
        await self._enable(worker, True)

    async def is_idle(self, worker: str) -> bool:
        """Whether the worker holds no task (a drained one stays so: safe to stop)."""
        infos = await self._get("/api/slaves", Name=worker, Data="info")
        if not infos:
            raise UnknownWorker(worker)
        info: dict[str, Any] = infos[0]
        return info["Stat"] != _RENDERING and not info["JobId"]

    async def _enable(self, worker: str, enabled: bool) -> None:
        """``Slaves.SaveSlaveSettings``: the worker's settings object, with ``Enable`` set."""
        found = await self._get("/api/slaves", Name=worker, Data="settings")
        if not found:
            raise UnknownWorker(worker)
        body = {"Command": "savesettings", "SlaveSettings": {**found[0], "Enable": enabled}}
        response = await self.client.put("/api/slaves", json=body)
        response.raise_for_status()

    async def _get(self, path: str, **params: str) -> list[dict[str, Any]]:
        response = await self.client.get(path, params=params)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()
        return result


def _epoch(deadline_date: str) -> float:
    """Seconds since the epoch of a Deadline date (``2026-12-04T03:04:52.895Z``)."""
    return datetime.fromisoformat(deadline_date.replace("Z", "+00:00")).timestamp()


def _worker(entry: dict[str, Any]) -> FarmWorker:
    """One ``Data=infosettings`` entry as a :class:`FarmWorker`."""
    info, settings = entry["Info"], entry["Settings"]
    enabled = settings["Enable"]
    if info["Stat"] == _RENDERING:
        status = WorkerStatus.rendering if enabled else WorkerStatus.draining
    elif info["Stat"] == _IDLE:
        status = WorkerStatus.idle if enabled else WorkerStatus.disabled
    else:
        status = WorkerStatus.offline
    return FarmWorker(
        name=info["Name"],
        status=status,
        pools=tuple(settings["Pools"]),
        job_id=info["JobId"] or None,
        task_id=int(info["TskId"]) if info["TskId"] else None,
    )
