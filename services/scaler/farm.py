"""The farm as the scaler sees it, through the Deadline Web Service API: the queue per pool,
the workers, and draining (a worker disabled in its settings finishes its task, takes no other).

These are the farm's view; the scaler's policy has its own snapshot types.
"""

from __future__ import annotations

from dataclasses import dataclass
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


class UnknownWorker(LookupError):
    """The farm has no worker of that name."""


class FarmQueue:
    """Reads and drains the farm over ``client`` (base URL and auth set; the caller closes it)."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def snapshot(self) -> FarmSnapshot:
        """Tasks waiting and rendering per pool, and every worker."""
        jobs = await self._get("/api/jobs", States="Active")
        waiting: dict[str, int] = {}
        running: dict[str, int] = {}
        for job in jobs:
            pool = (job["Props"]["Pool"] or "none").lower()
            waiting[pool] = waiting.get(pool, 0) + job["QueuedChunks"]
            running[pool] = running.get(pool, 0) + job["RenderingChunks"]
        pools = {p: PoolQueue(p, waiting[p], running[p]) for p in sorted(waiting)}
        workers = [_worker(w) for w in await self._get("/api/slaves", Data="infosettings")]
        return FarmSnapshot(pools=pools, workers={w.name: w for w in workers})

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
