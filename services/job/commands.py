"""Command handlers of the job service."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from contracts.base import Event
from contracts.errors import DomainError, ErrorCode
from contracts.jobs import CancelJob, JobAccepted, JobCancelled, SubmitJob, UpdateJob
from libs.bus.commands import CommandContext, CommandServer
from libs.eventstore.aggregate import Loaded, Repository
from libs.eventstore.store import EventStore
from services.job.domain import Job, OwnerJobs
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

    async def _load_owned(self, job_id: str, owner_id: str | None) -> Loaded[Job]:
        loaded = await self.jobs.load(job_id)
        if not loaded.state.exists or (owner_id is not None and loaded.state.owner_id != owner_id):
            # Someone else's job is indistinguishable from a missing one.
            raise DomainError(ErrorCode.job_not_found, f"no job {job_id}", {"job_id": job_id})
        return loaded

    async def submit(self, cmd: SubmitJob, ctx: CommandContext) -> JobAccepted:
        job = await self.jobs.load(cmd.job_id)
        if job.state.exists:
            raise DomainError(ErrorCode.concurrency_conflict, f"job id {cmd.job_id} is taken")
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
        events = _checked(job, job.state.update(cmd.changes))
        if events:
            await ctx.save((self.jobs, job, events))
        return JobAccepted(job_id=cmd.job_id, version=job.version + len(events))

    async def cancel(self, cmd: CancelJob, ctx: CommandContext) -> JobAccepted:
        job = await self._load_owned(cmd.job_id, cmd.owner_id)
        events = _checked(job, job.state.cancel(cmd.reason, datetime.now(UTC)))
        if not events:
            return JobAccepted(job_id=cmd.job_id, version=job.version)
        changes = [(self.jobs, job, events)]
        if any(isinstance(e, JobCancelled) for e in events):
            owner = await self.owners.load(job.state.owner_id)
            freed = owner.state.free(job.state.owner_id, cmd.job_id)
            if freed:
                changes.append((self.owners, owner, freed))  # type: ignore[arg-type]
        await ctx.save(*changes)
        return JobAccepted(job_id=cmd.job_id, version=job.version + len(events))
