"""A client of the Deadline 10 Web Service REST API (the subset the bridge needs).

It speaks to a real Deadline Web Service unchanged: JSON bodies, plain-text ``Success``
replies, errors as an HTTP status with an explanatory text body, optional HTTP Basic auth
and TLS. Field names and status codes follow Thinkbox's REST documentation (rest-jobs,
rest-tasks, rest-task-reports).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import httpx

from services.deadline_bridge.settings import BridgeSettings

JsonDict = dict[str, Any]

#: Ids per ``GET /api/jobs?JobID=`` request: keeps the URL well under common 8 KB limits.
IDS_PER_REQUEST = 200


class JobStat(IntEnum):
    unknown = 0
    active = 1  # queued or rendering
    suspended = 2
    completed = 3
    failed = 4
    pending = 6


class TaskStat(IntEnum):
    unknown = 1
    queued = 2
    suspended = 3
    rendering = 4
    completed = 5
    failed = 6
    pending = 8


class ReportType(IntEnum):
    log = 0
    error = 1
    requeue = 2


class FarmError(Exception):
    """The Web Service answered with an error status, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class FarmTask:
    task_id: int
    frames: list[int]
    stat: TaskStat
    worker: str
    errors: int
    started_at: str  # ISO time the render started; Deadline's zero date when not yet
    completed_at: str
    #: The render's peak memory in bytes (``RamPeak``); None when the farm shows 0 or none.
    ram_peak: int | None = None


def parse_frames(text: str) -> list[int]:
    """Deadline frame text (``1-5``, ``1-9x2``, ``3``, ``1,4,7``) to frame numbers."""
    frames: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        step = 1
        if "x" in part:
            part, step_text = part.split("x", 1)
            step = int(step_text)
        if "-" in part[1:]:
            cut = part.index("-", 1)
            start, end = int(part[:cut]), int(part[cut + 1 :])
            frames.extend(range(start, end + 1, step))
        else:
            frames.append(int(part))
    return frames


def frame_list_text(frames: Sequence[int]) -> str:
    """Frame numbers to Deadline frame text, runs of equal steps written as ``a-bxs``."""
    parts: list[str] = []
    i = 0
    while i < len(frames):
        j = i
        if i + 1 < len(frames):
            step = frames[i + 1] - frames[i]
            while j + 1 < len(frames) and frames[j + 1] - frames[j] == step and step > 0:
                j += 1
        if j == i:
            parts.append(str(frames[i]))
        elif frames[j] - frames[i] == j - i:
            parts.append(f"{frames[i]}-{frames[j]}")
        else:
            parts.append(f"{frames[i]}-{frames[j]}x{frames[i + 1] - frames[i]}")
        i = j + 1
    return ",".join(parts)


class DeadlineClient:
    def __init__(self, settings: BridgeSettings, transport: httpx.AsyncBaseTransport | None = None):
        auth = None
        if settings.farm_username is not None:
            password = settings.farm_password.get_secret_value() if settings.farm_password else ""
            auth = httpx.BasicAuth(settings.farm_username, password)
        verify: bool | str = settings.farm_tls_verify
        if settings.farm_tls_verify and settings.farm_ca_cert:
            verify = settings.farm_ca_cert
        self.http = httpx.AsyncClient(
            base_url=settings.farm_url.rstrip("/"),
            auth=auth,
            verify=verify,
            timeout=settings.farm_timeout_seconds,
            transport=transport,
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
        )
        #: Requests made, for the bench and for logs.
        self.requests = 0

    async def aclose(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        self.requests += 1
        try:
            response = await self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise FarmError(f"{method} {path}: {type(e).__name__}: {e}") from e
        if response.status_code >= 400:
            text = response.text.strip()[:500]
            raise FarmError(f"{method} {path}: {response.status_code} {text}", response.status_code)
        return response

    async def _command(self, method: str, path: str, body: JsonDict) -> None:
        response = await self._call(method, path, json=body)
        if response.text.strip() != "Success":
            raise FarmError(f"{method} {path} {body.get('Command')}: {response.text[:500]}")

    # -- jobs ---------------------------------------------------------------------------

    async def submit_job(
        self, job_info: JsonDict, plugin_info: JsonDict, aux_files: Sequence[str] = ()
    ) -> str:
        """``POST /api/jobs``; returns the new job's id."""
        body = {
            "JobInfo": job_info,
            "PluginInfo": plugin_info,
            "AuxFiles": list(aux_files),
            "IdOnly": True,
        }
        reply = (await self._call("POST", "/api/jobs", json=body)).json()
        return str(reply["_id"])

    async def jobs_in_states(self, states: Iterable[str]) -> list[JsonDict]:
        """``GET /api/jobs?States=...``: every job in those states, in one request."""
        jobs: list[JsonDict] = (
            await self._call("GET", "/api/jobs", params={"States": ",".join(states)})
        ).json()
        return jobs

    async def jobs_by_id(self, job_ids: Sequence[str]) -> list[JsonDict]:
        """``GET /api/jobs?JobID=a,b``; unknown ids are simply absent."""
        found: list[JsonDict] = []
        for i in range(0, len(job_ids), IDS_PER_REQUEST):
            batch = ",".join(job_ids[i : i + IDS_PER_REQUEST])
            found.extend((await self._call("GET", "/api/jobs", params={"JobID": batch})).json())
        return found

    async def job_command(self, job_id: str, command: str) -> None:
        """``PUT /api/jobs`` with a job command (suspend, resume, fail, ...)."""
        await self._command("PUT", "/api/jobs", {"Command": command, "JobID": job_id})

    async def delete_job(self, job_id: str) -> None:
        response = await self._call("DELETE", "/api/jobs", params={"JobID": job_id})
        if response.text.strip() != "Success":
            raise FarmError(f"DELETE job {job_id}: {response.text[:500]}")

    # -- tasks --------------------------------------------------------------------------

    async def tasks(self, job_id: str) -> list[FarmTask]:
        reply = (await self._call("GET", "/api/tasks", params={"JobID": job_id})).json()
        return [
            FarmTask(
                task_id=int(t["TaskID"]),
                frames=parse_frames(str(t["Frames"])),
                stat=TaskStat(int(t["Stat"])),
                worker=str(t.get("Slave") or ""),
                errors=int(t.get("Errs") or 0),
                started_at=str(t.get("StartRen") or t.get("Start") or ""),
                completed_at=str(t.get("Comp") or ""),
                ram_peak=int(t.get("RamPeak") or 0) or None,
            )
            for t in reply.get("Tasks") or []
        ]

    async def requeue_tasks(self, job_id: str, task_ids: Sequence[int]) -> None:
        body = {"Command": "requeue", "JobID": job_id, "TaskList": list(task_ids)}
        await self._command("PUT", "/api/tasks", body)

    async def task_error(self, job_id: str, task_id: int) -> str | None:
        """The newest error report's text of a task, if it has one."""
        reports: list[JsonDict] = (
            await self._call(
                "GET",
                "/api/taskreports",
                params={"JobID": job_id, "TaskID": str(task_id), "Data": "error"},
            )
        ).json()
        errors = [r for r in reports if int(r.get("Type", ReportType.error)) == ReportType.error]
        if not errors:
            return None
        newest = max(errors, key=lambda r: str(r.get("Date") or ""))
        return str(newest.get("Title") or "").strip() or None
