"""Command handlers of the job service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from contracts.base import Event
from contracts.errors import JobIdTaken, JobNotFound
from contracts.jobs import (
    CancelJob,
    CompleteJob,
    ConfirmJobCancelled,
    FailJob,
    JobAccepted,
    LogJobStep,
    QueueJob,
    RecordFramesRendered,
    RenderOrder,
    StartJobRender,
    SubmitJob,
    UpdateJob,
)
from libs.bus.commands import CommandContext, CommandServer
from libs.eventstore.aggregate import Loaded, Repository
from libs.eventstore.store import EventStore
from services.job.domain import TERMINAL_EVENTS, Job, OwnerJobs
from services.job.settings import JobSettings


def _checked(loaded: Loaded[Job], events: Sequence[Event]) -> Sequence[Event]:
    """Apply to a copy first, so an event the state machine refuses is never stored."""
    probe = loaded.state.model_copy(deep=True)
    for e in events:
        probe.apply(e)
    return events


class JobCommands:
    def __init__(self, settings: JobSettings, store: EventStore) -> None:
        self.settings = settings
        self.jobs = Repository(store, Job, "job")
        self.owners = Repository(store, OwnerJobs, "owner")

    def register(self, server: CommandServer) -> None:
        server.register(SubmitJob, self.submit)
        server.register(UpdateJob, self.update)
        server.register(CancelJob, self.cancel)
        # From the scheduler: internal, so no owner check (they carry no owner id).
        server.register(QueueJob, self.queue)
        server.register(StartJobRender, self.start_render)
        server.register(RecordFramesRendered, self.record_frames)
        server.register(LogJobStep, self.log_step)
        server.register(CompleteJob, self.complete)
        server.register(FailJob, self.fail)
        server.register(ConfirmJobCancelled, self.confirm_cancelled)

    async def _load_owned(self, job_id: str, owner_id: str | None) -> Loaded[Job]:
        loaded = await self.jobs.load(job_id)
        if not loaded.state.exists or (owner_id is not None and loaded.state.owner_id != owner_id):
            # Someone else's job is indistinguishable from a missing one.
            raise JobNotFound(f"no job {job_id}", job_id=job_id)
        return loaded

    async def _save(self, ctx: CommandContext, job: Loaded[Job], events: Sequence[Event]) -> int:
        """Append the job's events (checked first) and return the job's new version.

        An event that ends the job (completed, failed, cancelled) frees the owner's
        active-job slot in the same append, so the limit never counts a finished job."""
        events = _checked(job, events)
        if not events:
            return job.version
        changes: list[tuple[Repository[Any], Loaded[Any], Sequence[Event]]] = [
            (self.jobs, job, events)
        ]
        if any(isinstance(e, TERMINAL_EVENTS) for e in events):
            owner = await self.owners.load(job.state.owner_id)
            freed = owner.state.free(job.state.owner_id, job.state.job_id)
            if freed:
                changes.append((self.owners, owner, freed))
        await ctx.save(*changes)
        return job.version + len(events)

    async def _accepted(
        self, ctx: CommandContext, job: Loaded[Job], events: Sequence[Event]
    ) -> JobAccepted:
        return JobAccepted(job_id=job.state.job_id, version=await self._save(ctx, job, events))

    async def submit(self, cmd: SubmitJob, ctx: CommandContext) -> JobAccepted:
        job = await self.jobs.load(cmd.job_id)
        if job.state.exists:
            raise JobIdTaken(f"job id {cmd.job_id} is taken", job_id=cmd.job_id)
        owner = await self.owners.load(cmd.owner_id)
        now = datetime.now(UTC)
        await ctx.save(
            (
                self.jobs,
                job,
                _checked(job, job.state.submit(cmd.job_id, cmd.owner_id, cmd.spec, now)),
            ),
            (
                self.owners,
                owner,
                owner.state.take(cmd.owner_id, cmd.job_id, self.settings.active_job_limit),
            ),
        )
        return JobAccepted(job_id=cmd.job_id, version=1)

    async def update(self, cmd: UpdateJob, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, cmd.owner_id)
        return await self._accepted(ctx, job, job.state.update(cmd.changes))

    async def cancel(self, cmd: CancelJob, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, cmd.owner_id)
        return await self._accepted(ctx, job, job.state.cancel(cmd.reason, datetime.now(UTC)))

    # -- from the scheduler -------------------------------------------------------------

    async def queue(self, cmd: QueueJob, ctx: CommandContext) -> RenderOrder:
        job = await self._load_owned(cmd.job_id, None)
        events = job.state.queue(cmd.skip_reason, datetime.now(UTC))
        version = await self._save(ctx, job, events)
        after = job.state.model_copy(deep=True)
        for e in events:
            after.apply(e)
        # Frames and render settings cannot change once queued: this is the frozen spec.
        assert after.frame_range is not None and after.resolution is not None
        assert after.status is not None
        return RenderOrder(
            job_id=after.job_id,
            owner_id=after.owner_id,
            status=after.status,
            name=after.name,
            scene_key=after.scene_key,
            renderer=after.renderer,
            frame_range=after.frame_range,
            chunk_size=after.chunk_size,
            resolution=after.resolution,
            render_settings=after.render_settings,
            priority=after.priority,
            version=version,
        )

    async def start_render(self, cmd: StartJobRender, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, None)
        return await self._accepted(ctx, job, job.state.start_render(cmd.at))

    async def record_frames(self, cmd: RecordFramesRendered, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, None)
        events = job.state.record_frames(
            cmd.render_id, cmd.task_id, cmd.frames, cmd.worker, cmd.render_seconds, cmd.at
        )
        return await self._accepted(ctx, job, events)

    async def log_step(self, cmd: LogJobStep, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, None)
        return await self._accepted(
            ctx, job, job.state.log_step(cmd.step, cmd.level, cmd.message, cmd.at)
        )

    async def complete(self, cmd: CompleteJob, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, None)
        return await self._accepted(ctx, job, job.state.complete(cmd.at))

    async def fail(self, cmd: FailJob, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, None)
        return await self._accepted(ctx, job, job.state.fail(cmd.reason, cmd.at))

    async def confirm_cancelled(self, cmd: ConfirmJobCancelled, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, None)
        return await self._accepted(ctx, job, job.state.confirm_cancelled(cmd.at))
