"""Command handlers of the job service."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.errors import JobIdTaken, JobNotFound
from contracts.jobs import (
    CancelJob,
    CompleteJob,
    CompleteTestRender,
    ConfirmJobCancelled,
    FailJob,
    FailTestRender,
    JobAccepted,
    JobCostRecorded,
    KillCause,
    KillJob,
    KillOwnerJobs,
    LogJobStep,
    OwnerJobsChanged,
    OwnerJobsKilled,
    PauseJob,
    PauseOwnerJobs,
    QueueJob,
    RecordFramesRendered,
    RecordJobCost,
    RecordJobStepProgress,
    RecordSceneChecked,
    RecordSceneNeededFilesStaged,
    RecordScenePrepared,
    RecordSceneRepathed,
    RecordSceneStaged,
    RecordSceneStagingProgress,
    RecordTestRenderDeadlineMissed,
    RecordTestRenderFrames,
    RecordTestRenderStarted,
    RenderOrder,
    RequestTestRender,
    ResumeJob,
    ResumeOwnerJobs,
    StartFullRender,
    StartJobRender,
    StartJobStep,
    StartSceneStaging,
    StopJob,
    SubmitJob,
    UpdateJob,
)
from libs.bus.commands import CommandServer
from libs.eventstore.uow import UnitOfWork
from services.job.domain import TERMINAL_EVENTS, Job, OwnerJobs
from services.job.settings import JobSettings


class JobCommands:
    def __init__(self, settings: JobSettings) -> None:
        self.settings = settings

    def register(self, server: CommandServer) -> None:
        server.register(SubmitJob, self.submit)
        server.register(UpdateJob, self.update)
        server.register(CancelJob, self.cancel)
        # From the gateway (an administrator), and from the suspension manager.
        server.register(KillJob, self.kill)
        server.register(KillOwnerJobs, self.kill_owner_jobs)
        server.register(PauseOwnerJobs, self.pause_owner_jobs)
        server.register(ResumeOwnerJobs, self.resume_owner_jobs)
        # From the scheduler: internal, so no owner check (they carry no owner id).
        server.register(StartSceneStaging, self.start_staging)
        server.register(RecordSceneStagingProgress, self.record_staging_progress)
        server.register(RecordSceneStaged, self.record_staged)
        server.register(RecordSceneNeededFilesStaged, self.record_needed_staged)
        # From the scene workers.
        server.register(StartJobStep, self.start_step)
        server.register(RecordJobStepProgress, self.record_step_progress)
        server.register(RecordSceneChecked, self.record_scene_checked)
        server.register(RecordSceneRepathed, self.record_repathed)
        server.register(RecordScenePrepared, self.record_prepared)
        server.register(RequestTestRender, self.request_test_render)
        server.register(StartFullRender, self.start_full_render)
        server.register(RecordTestRenderStarted, self.start_test_render)
        server.register(RecordTestRenderFrames, self.record_test_frames)
        server.register(CompleteTestRender, self.complete_test_render)
        server.register(FailTestRender, self.fail_test_render)
        server.register(RecordTestRenderDeadlineMissed, self.miss_test_render_deadline)
        server.register(QueueJob, self.queue)
        server.register(StartJobRender, self.start_render)
        server.register(RecordFramesRendered, self.record_frames)
        server.register(LogJobStep, self.log_step)
        server.register(CompleteJob, self.complete)
        server.register(FailJob, self.fail)
        server.register(ConfirmJobCancelled, self.confirm_cancelled)
        server.register(PauseJob, self.pause)
        server.register(ResumeJob, self.resume)
        server.register(StopJob, self.stop)
        # From billing's process manager.
        server.register(RecordJobCost, self.record_cost)

    async def _owned(self, uow: UnitOfWork, job_id: str, owner_id: str | None) -> Job:
        job = await uow.get(Job, job_id)
        if not job.exists or (owner_id is not None and job.owner_id != owner_id):
            # Someone else's job is indistinguishable from a missing one.
            raise JobNotFound(f"no job {job_id}", job_id=job_id)
        return job

    async def _accepted(self, uow: UnitOfWork, job: Job) -> JobAccepted:
        """The job's new version. An event that ends the job (completed, failed, cancelled)
        frees the owner's active-job slot in the same append, so the limit never counts a
        finished job."""
        if any(isinstance(e, TERMINAL_EVENTS) for e in job.pending):
            owner = await uow.get(OwnerJobs, job.owner_id)
            owner.free(job.owner_id, job.job_id)
        return JobAccepted(job_id=job.job_id, version=job.version)

    async def submit(self, cmd: SubmitJob, uow: UnitOfWork) -> JobAccepted:
        # Both streams (and the stored-reply check) in one query.
        await uow.prefetch((Job, cmd.job_id), (OwnerJobs, cmd.owner_id))
        job = await uow.get(Job, cmd.job_id)
        if job.exists:
            raise JobIdTaken(f"job id {cmd.job_id} is taken", job_id=cmd.job_id)
        owner = await uow.get(OwnerJobs, cmd.owner_id)
        owner.take(cmd.owner_id, cmd.job_id, self.settings.active_job_limit)
        job.submit(cmd.job_id, cmd.owner_id, cmd.spec, cmd.scene, datetime.now(UTC), cmd.api_key_id)
        return JobAccepted(job_id=cmd.job_id, version=job.version)

    async def update(self, cmd: UpdateJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, cmd.owner_id)
        job.update(cmd.changes)
        return await self._accepted(uow, job)

    async def cancel(self, cmd: CancelJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, cmd.owner_id)
        job.cancel(cmd.reason, datetime.now(UTC))
        return await self._accepted(uow, job)

    async def kill(self, cmd: KillJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.kill(KillCause.admin_kill, cmd.reason, uow.actor_id, datetime.now(UTC))
        return await self._accepted(uow, job)

    async def kill_owner_jobs(self, cmd: KillOwnerJobs, uow: UnitOfWork) -> OwnerJobsKilled:
        """Every active job of the owner, in one append (the slots freed with them)."""
        killed: list[str] = []
        for job in await self._active_jobs(uow, cmd.owner_id):
            if job.kill(KillCause.user_suspended, cmd.reason, cmd.killed_by, cmd.at):
                killed.append(job.job_id)
            await self._accepted(uow, job)
        return OwnerJobsKilled(owner_id=cmd.owner_id, job_ids=killed)

    async def pause_owner_jobs(self, cmd: PauseOwnerJobs, uow: UnitOfWork) -> OwnerJobsChanged:
        """Every active job of the owner that can be paused, in one append."""
        paused: list[str] = []
        for job in await self._active_jobs(uow, cmd.owner_id):
            if job.pause_for_suspension(cmd.at):
                paused.append(job.job_id)
        return OwnerJobsChanged(owner_id=cmd.owner_id, job_ids=paused)

    async def resume_owner_jobs(self, cmd: ResumeOwnerJobs, uow: UnitOfWork) -> OwnerJobsChanged:
        """Every job of the owner paused for its suspension, in one append."""
        resumed: list[str] = []
        for job in await self._active_jobs(uow, cmd.owner_id):
            if job.resume(cmd.at, reactivated=True):
                resumed.append(job.job_id)
        return OwnerJobsChanged(owner_id=cmd.owner_id, job_ids=resumed)

    async def _active_jobs(self, uow: UnitOfWork, owner_id: str) -> list[Job]:
        active = list((await uow.get(OwnerJobs, owner_id)).active)
        await uow.prefetch(*((Job, job_id) for job_id in active))
        return [await uow.get(Job, job_id) for job_id in active]

    async def request_test_render(self, cmd: RequestTestRender, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, cmd.owner_id)
        job.request_test_render(
            cmd.frames,
            cmd.deadline_seconds,
            cmd.start_full_render_if_within,
            datetime.now(UTC),
            cmd.quality,
        )
        return await self._accepted(uow, job)

    async def start_full_render(self, cmd: StartFullRender, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, cmd.owner_id)
        job.release_full_render(cmd.by, datetime.now(UTC))
        return await self._accepted(uow, job)

    # -- from the scheduler -------------------------------------------------------------

    async def start_test_render(self, cmd: RecordTestRenderStarted, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.start_test_render(cmd.render_id, cmd.at)
        return await self._accepted(uow, job)

    async def record_test_frames(self, cmd: RecordTestRenderFrames, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_test_frames(cmd.render_id, cmd.frames, cmd.at)
        return await self._accepted(uow, job)

    async def complete_test_render(self, cmd: CompleteTestRender, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.complete_test_render(cmd.render_id, cmd.at)
        return await self._accepted(uow, job)

    async def fail_test_render(self, cmd: FailTestRender, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.fail_test_render(cmd.render_id, cmd.reason, cmd.at)
        return await self._accepted(uow, job)

    async def miss_test_render_deadline(
        self, cmd: RecordTestRenderDeadlineMissed, uow: UnitOfWork
    ) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.miss_test_render_deadline(cmd.render_id, cmd.at)
        return await self._accepted(uow, job)

    async def start_staging(self, cmd: StartSceneStaging, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.start_staging(cmd.at)
        return await self._accepted(uow, job)

    async def record_staging_progress(
        self, cmd: RecordSceneStagingProgress, uow: UnitOfWork
    ) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_staging_progress(cmd.bytes_done, cmd.bytes_total, cmd.at)
        return await self._accepted(uow, job)

    async def record_staged(self, cmd: RecordSceneStaged, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_staged(cmd.scene_key, cmd.reused, cmd.at)
        return await self._accepted(uow, job)

    async def record_needed_staged(
        self, cmd: RecordSceneNeededFilesStaged, uow: UnitOfWork
    ) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_needed_staged(cmd.scene_key, cmd.files, cmd.bytes_staged, cmd.at)
        return await self._accepted(uow, job)

    async def start_step(self, cmd: StartJobStep, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.start_step(cmd.step, cmd.at)
        return await self._accepted(uow, job)

    async def record_step_progress(
        self, cmd: RecordJobStepProgress, uow: UnitOfWork
    ) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_step_progress(cmd.step, cmd.progress_percent, cmd.at)
        return await self._accepted(uow, job)

    async def record_scene_checked(self, cmd: RecordSceneChecked, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_scene_checked(cmd.findings, cmd.assets_total, cmd.assets_missing, cmd.at)
        return await self._accepted(uow, job)

    async def record_repathed(self, cmd: RecordSceneRepathed, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_repathed(cmd.at)
        return await self._accepted(uow, job)

    async def record_prepared(self, cmd: RecordScenePrepared, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_prepared(cmd.scene_key, cmd.skip_reason, cmd.at)
        return await self._accepted(uow, job)

    async def queue(self, cmd: QueueJob, uow: UnitOfWork) -> RenderOrder:
        after = await self._owned(uow, cmd.job_id, None)
        after.queue(cmd.skip_reason, datetime.now(UTC))
        # Frames and render settings cannot change once queued: this is the frozen spec.
        assert after.frame_range is not None and after.resolution is not None
        assert after.status is not None and after.scene_key is not None
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
            version=after.version,
        )

    async def start_render(self, cmd: StartJobRender, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.start_render(cmd.at)
        return await self._accepted(uow, job)

    async def record_frames(self, cmd: RecordFramesRendered, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_frames(
            cmd.render_id,
            cmd.task_id,
            cmd.frames,
            cmd.worker,
            cmd.render_seconds,
            cmd.peak_memory_bytes,
            cmd.at,
        )
        return await self._accepted(uow, job)

    async def log_step(self, cmd: LogJobStep, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.log_step(cmd.step, cmd.level, cmd.message, cmd.at)
        return await self._accepted(uow, job)

    async def complete(self, cmd: CompleteJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.complete(cmd.at)
        return await self._accepted(uow, job)

    async def fail(self, cmd: FailJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.fail(cmd.reason, cmd.at, cmd.code)
        return await self._accepted(uow, job)

    async def confirm_cancelled(self, cmd: ConfirmJobCancelled, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.confirm_cancelled(cmd.at)
        return await self._accepted(uow, job)

    async def pause(self, cmd: PauseJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.pause(cmd.reason, cmd.at)
        return await self._accepted(uow, job)

    async def resume(self, cmd: ResumeJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.resume(cmd.at)
        return await self._accepted(uow, job)

    async def stop(self, cmd: StopJob, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.stop(cmd.code, cmd.reason, cmd.at)
        return await self._accepted(uow, job)

    async def record_cost(self, cmd: RecordJobCost, uow: UnitOfWork) -> JobAccepted:
        job = await self._owned(uow, cmd.job_id, None)
        job.record_cost(JobCostRecorded.model_validate(cmd.model_dump()))
        return await self._accepted(uow, job)
