"""The farm poller: turns what the farm shows into render events.

One cycle costs one request for every unfinished farm job (``GET /api/jobs?States=...``),
plus one ``GET /api/jobs?JobID=`` batch for ours that left those states, plus a task list
(and error reports, and requeues) only for the jobs whose counters changed since the last
cycle. Only one bridge replica polls at a time (a PostgreSQL advisory lock); the others
stand by. A restarted poller looks at every render once, and the aggregate says each
change once, so a crash anywhere repeats no event.

A completed task's frames are stored in the outputs bucket (:mod:`.outputs`) before the task
is recorded as completed, so every ``RenderTaskCompleted`` names objects that exist, with the
size and SHA-256 of the files the farm wrote. When the store is away the render is looked at
again next cycle (the task is not failed: the farm did its part).
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from typing import Any

from contracts.jobs import FrameOutput, FrameThumbnail
from contracts.outputs import frame_key, frame_output_id
from contracts.render import RenderStatus
from libs.eventstore.processor import Projector
from libs.eventstore.store import ConcurrencyError, EventStore
from libs.eventstore.uow import UnitOfWork
from libs.leader import leadership, lock_key, sleep_or_stop
from libs.logging import get_logger
from services.deadline_bridge.client import DeadlineClient, FarmError, FarmTask, JobStat, TaskStat
from services.deadline_bridge.domain import FarmRender, Observed, TaskState
from services.deadline_bridge.outputs import FrameStore, FrameStoreFailed, StoredFile
from services.deadline_bridge.projections import active_renders
from services.deadline_bridge.settings import BridgeSettings

log = get_logger(__name__)

#: Farm states in which a job may still change.
UNFINISHED_STATES = ("Active", "Suspended", "Pending")
_COUNTERS = (
    "Stat",
    "Errs",
    "CompletedChunks",
    "QueuedChunks",
    "RenderingChunks",
    "FailedChunks",
    "SuspendedChunks",
    "PendingChunks",
)
_TASK_STATES = {
    TaskStat.rendering: TaskState.rendering,
    TaskStat.completed: TaskState.completed,
    TaskStat.failed: TaskState.failed,
}
_ZERO_DATE = "0001-01-01"


def farm_time(text: str) -> datetime | None:
    """A Deadline timestamp; None for its zero date or an empty field."""
    if not text or text.startswith(_ZERO_DATE):
        return None
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def fingerprint(job: dict[str, Any]) -> tuple[object, ...]:
    return tuple(job.get(k) for k in _COUNTERS)


class FarmPoller:
    def __init__(
        self,
        settings: BridgeSettings,
        store: EventStore,
        farm: DeadlineClient,
        renders_view: Projector,
        frames: FrameStore,
    ) -> None:
        self.settings = settings
        self.store = store
        self.farm = farm
        self.view = renders_view
        self.frames = frames
        #: Why frames could not be stored in the last cycle (None if they could).
        self.store_error: FrameStoreFailed | None = None
        self.seen: dict[str, tuple[object, ...]] = {}
        self.cycles = 0
        self.is_leader = False
        self.last_error: BaseException | None = None
        self._metadata = {"actor": {"kind": "service", "id": settings.service_name}}

    # -- running ------------------------------------------------------------------------

    @property
    def lock_key(self) -> int:
        return lock_key(self.store.schema, "farm-poller")

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self._lead(stopping)
            except Exception as e:
                self.last_error = e
                log.error("poller_failed", error=repr(e), exc_info=True)
                await sleep_or_stop(stopping, 1.0)

    async def _lead(self, stopping: asyncio.Event) -> None:
        async with leadership(self.store.pool, self.lock_key, stopping) as leading:
            if not leading:
                return
            self.is_leader = True
            self.seen.clear()  # look at everything once after taking over
            try:
                while not stopping.is_set():
                    try:
                        await self.cycle()
                        self.last_error = None
                    except FarmError as e:  # the farm is away: say so, keep trying
                        self.last_error = e
                        log.warning("farm_unreachable", error=str(e))
                    await sleep_or_stop(stopping, self.settings.poll_interval_seconds)
            finally:
                self.is_leader = False

    # -- one cycle ----------------------------------------------------------------------

    async def cycle(self) -> int:
        """Poll once; returns how many renders had changes looked at."""
        self.cycles += 1
        await self.view.catch_up()
        async with self.store.pool.acquire() as conn:
            active = await active_renders(conn)
        if not active:
            self.seen.clear()
            self.store_error = None
            return 0
        by_id = {str(j["_id"]): j for j in await self.farm.jobs_in_states(UNFINISHED_STATES)}
        gone = [farm_id for _, farm_id in active if farm_id not in by_id]
        if gone:
            by_id.update({str(j["_id"]): j for j in await self.farm.jobs_by_id(gone)})
        live = {render_id for render_id, _ in active}
        for render_id in list(self.seen):
            if render_id not in live:
                del self.seen[render_id]
        changed = []
        for render_id, farm_id in active:
            job = by_id.get(farm_id)
            mark = fingerprint(job) if job is not None else ("gone",)
            if self.seen.get(render_id) != mark:
                changed.append((render_id, farm_id, job, mark))
        if not changed:  # a render whose frames could not be stored is never left unchanged
            self.store_error = None
            return 0
        slots = asyncio.Semaphore(self.settings.poll_concurrency)
        store_failures: list[FrameStoreFailed] = []

        async def look(render_id: str, farm_id: str, job: dict[str, Any] | None, mark: Any) -> None:
            async with slots:
                try:
                    if await self.reconcile(render_id, farm_id, job):
                        self.seen[render_id] = mark
                except ConcurrencyError:
                    pass  # a cancel wrote meanwhile: look again next cycle
                except FarmError as e:
                    log.warning("farm_job_poll_failed", render_id=render_id, error=str(e))
                except FrameStoreFailed as e:  # the outputs bucket is away: next cycle
                    store_failures.append(e)
                    log.warning("frames_not_stored", render_id=render_id, error=str(e))

        await asyncio.gather(*(look(*c) for c in changed))
        self.store_error = store_failures[0] if store_failures else None
        return len(changed)

    async def reconcile(self, render_id: str, farm_id: str, job: dict[str, Any] | None) -> bool:
        """Bring one render up to date with its farm job. True when fully handled."""
        uow = UnitOfWork(self.store, metadata=dict(self._metadata))
        render = await uow.get(FarmRender, render_id)
        uow.metadata["correlation_id"] = f"job:{render.job_id}"
        now = datetime.now(UTC)
        if render.finished:
            return True
        if job is None:
            render.vanished(now)
            await self._commit(uow)
            return True
        tasks = await self.farm.tasks(farm_id)
        observed = [await self._observe(render, farm_id, t) for t in tasks]
        decision = render.observe(observed, self.settings.max_task_retries, now)
        await self._commit(uow)
        if render.status is RenderStatus.failed and int(job.get("Stat", 0)) not in (
            JobStat.failed,
            JobStat.completed,
        ):
            # The render is over: stop the farm spending time on the rest of its tasks.
            await self.farm.job_command(farm_id, "fail")
            return True
        if decision.requeue:
            if int(job.get("Stat", 0)) == JobStat.failed:
                # A failed farm job takes no requeue of single tasks: resume its failed ones
                # (every failed task is one we retry, or the render would have failed).
                await self.farm.job_command(farm_id, "resumefailed")
            else:
                await self.farm.requeue_tasks(farm_id, decision.requeue)
            for task_id in decision.requeue:
                render.requeued(task_id, now)
            await self._commit(uow)
            return False  # the requeue changes the job's counters: look again next cycle
        return True

    async def _observe(self, render: FarmRender, farm_id: str, t: FarmTask) -> Observed:
        state = _TASK_STATES.get(t.stat, TaskState.queued)
        known = render.tasks.get(t.task_id)
        outputs: list[FrameOutput] | None = None
        output_error = error = None
        new = known is not None and known.state is not state
        if state is TaskState.completed and new and known is not None:
            outputs, output_error = await self._outputs(render, known.frames)
        elif state is TaskState.failed and new:
            error = await self.farm.task_error(farm_id, t.task_id)
        return Observed(
            task_id=t.task_id,
            state=state,
            worker=t.worker,
            started_at=farm_time(t.started_at),
            completed_at=farm_time(t.completed_at),
            outputs=outputs,
            output_error=output_error,
            error=error,
            peak_memory_bytes=t.ram_peak,
        )

    async def _outputs(
        self, render: FarmRender, frames: list[int]
    ) -> tuple[list[FrameOutput] | None, str | None]:
        """The frames' files, stored in the outputs bucket with the size and SHA-256 read;
        or why the task's files are not usable (missing or empty: the task is re-rendered).
        Raises :class:`FrameStoreFailed` when the store is the problem."""
        farm_root = self.settings.farm_outputs_root.rstrip("/")
        local_root = self.settings.local_outputs_root.rstrip("/")
        files = []
        for frame in frames:
            path = render.output_path(frame)
            local = local_root + path.removeprefix(farm_root)
            try:
                size = os.stat(local).st_size
            except OSError as e:
                return None, f"frame {frame}: output {path} is missing ({e.strerror})"
            if size == 0:
                return None, f"frame {frame}: output {path} is empty"
            name = render.output_file_name(frame)
            files.append(
                (frame, local, frame_key(render.owner_id, render.job_id, render.kind, name))
            )
        results = await asyncio.gather(
            *(self._store(local, key) for _, local, key in files), return_exceptions=True
        )
        stored: list[tuple[StoredFile, FrameThumbnail | None]] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            stored.append(result)
        return [
            FrameOutput(
                frame=frame,
                output_id=frame_output_id(render.job_id, render.kind, frame),
                object_key=key,
                size_bytes=s.size_bytes,
                sha256=s.sha256,
                thumbnail=thumbnail,
            )
            for (frame, _, key), (s, thumbnail) in zip(files, stored, strict=True)
        ], None

    async def _store(self, local: str, key: str) -> tuple[StoredFile, FrameThumbnail | None]:
        """Store a frame, then its thumbnail next to it."""
        stored = await self.frames.store(local, key)
        return stored, await self.frames.store_thumbnail(local, key)

    async def _commit(self, uow: UnitOfWork) -> None:
        """Each save appends in its own transaction (the poller holds none open)."""
        if await uow.commit():
            self.store.notify_appended()
