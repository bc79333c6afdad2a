"""Render jobs: create, read, list, update, cancel, history."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from contracts.envelope import JobEnvelope
from contracts.errors import (
    ConcurrencyConflict,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    InvalidFrameRange,
    JobCancelling,
    JobFinished,
    JobLimitReached,
    JobNotEditable,
    JobNotFound,
    JobViewCatchingUp,
    SceneNotFound,
    SceneNotReady,
    SceneUploadEnded,
    ServiceUnavailable,
    TestRenderInProgress,
    TestRenderNotAllowed,
    UploadNotAScene,
    ValidationFailed,
)
from contracts.identity import Scope
from contracts.jobs import (
    MAX_TEST_FRAMES,
    CancelJob,
    CostCredits,
    JobAccepted,
    JobChanges,
    JobSpec,
    JobStatus,
    RequestTestRender,
    StartFullRender,
    SubmitJob,
    TestRenderQuality,
    UpdateJob,
)
from contracts.text import ID_PATTERN, Reason
from libs.ids import new_id
from services.gateway.access import requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    idempotent,
    json_response,
    principal,
    set_targets,
)
from services.gateway.readmodels import encode_cursor, int_cursor
from services.gateway.schemas import (
    JobEventPage,
    JobEventView,
    JobFramePage,
    JobFrameView,
    JobPage,
)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="Job id returned by create_job.",
    ),
]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")]
Cursor = Annotated[
    str | None,
    Query(max_length=300, description="next_cursor from the previous page; omit for the first."),
]


@router.post(
    "",
    operation_id="create_job",
    dependencies=[requires(Scope.jobs_write)],
    summary="Create a render job",
    description=(
        "Submit a render job for your completed scene upload or your manifest (scene_id),"
        " complete or still waiting for files: the staging then waits for each file's"
        " upload, a test render runs once the files its frames need are there, and the"
        " full render once every file is. Answers at once (201) with the job envelope: id,"
        " status, steps, progress, ETA, cost and allowed next actions. The scene is first"
        " staged to the farm (step stage_scene, status preparing), then the render is"
        " queued. Fails with scene_not_found (not yours, or no such id), scene_not_ready"
        " (an upload not completed yet), scene_upload_ended (a manifest file's upload"
        " session ended without it), upload_not_a_scene (a manifest's file) or"
        " job_limit_reached (too many active jobs)."
    ),
    status_code=201,
    response_model=JobEnvelope,
    responses=errors(
        InvalidFrameRange,
        SceneNotFound,
        SceneNotReady,
        SceneUploadEnded,
        UploadNotAScene,
        JobLimitReached,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        ServiceUnavailable,
        JobViewCatchingUp,
    ),
)
async def create_job(
    request: Request, spec: JobSpec, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        scene = await gw.read.scene(spec.scene_id, p.user_id)
        cmd = SubmitJob(
            job_id=new_id("job"),
            owner_id=p.user_id,
            spec=spec,
            scene=scene,
            api_key_id=p.api_key_id,
        )
        accepted = await gw.commands.send(cmd, JobAccepted, command_id=command_id, actor=p.actor())
        set_targets(request, job_id=accepted.job_id)
        envelope = await gw.read.job_envelope(accepted.job_id, p.user_id, accepted.version)
        return 201, envelope.encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "create_job", run)


@router.get(
    "",
    operation_id="list_jobs",
    dependencies=[requires(Scope.jobs_read)],
    summary="List jobs",
    description=(
        "The caller's jobs, newest first, optionally only those in one status. Returns a"
        " page of job envelopes and next_cursor (null on the last page)."
    ),
    response_model=JobPage,
    responses=errors(InvalidCursor, InsufficientScope),
)
async def list_jobs(
    request: Request,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    body = await gw.read.list_jobs(p.user_id, status.value if status else None, cursor, limit)
    return json_response(body)


@router.get(
    "/{job_id}",
    operation_id="get_job",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get a job",
    description=(
        "The job envelope: status, current step, progress, ETA, cost and allowed actions."
        " Another user's job answers job_not_found."
    ),
    response_model=JobEnvelope,
    responses=errors(JobNotFound, InsufficientScope),
)
async def get_job(request: Request, job_id: JobId) -> Response:
    gw, p = gateway(request), principal(request)
    return json_response(await gw.read.job_envelope(job_id, None if p.is_admin else p.user_id))


@router.patch(
    "/{job_id}",
    operation_id="update_job",
    dependencies=[requires(Scope.jobs_write)],
    summary="Update a job",
    description=(
        "Change name, priority or cost cap at any time before the job ends; frame range,"
        " chunk size, resolution and render settings only before rendering starts"
        " (else job_not_editable); a job being cancelled answers job_cancelling."
        " Returns the updated job envelope."
    ),
    response_model=JobEnvelope,
    responses=errors(
        JobNotFound,
        JobNotEditable,
        JobFinished,
        JobCancelling,
        InvalidFrameRange,
        InsufficientScope,
        ConcurrencyConflict,
        JobViewCatchingUp,
    ),
)
async def update_job(request: Request, job_id: JobId, changes: JobChanges) -> Response:
    gw, p = gateway(request), principal(request)
    owner = None if p.is_admin else p.user_id
    accepted = await gw.commands.send(
        UpdateJob(job_id=job_id, owner_id=owner, changes=changes),
        JobAccepted,
        command_id=f"update_job:{request.state.request_id}",
        actor=p.actor(),
    )
    return json_response(await gw.read.job_envelope(job_id, owner, accepted.version))


@router.post(
    "/{job_id}/cancel",
    operation_id="cancel_job",
    dependencies=[requires(Scope.jobs_write)],
    summary="Cancel a job",
    description=(
        "Stop a job. If nothing runs on the farm it is cancelled at once (status"
        " cancelled); otherwise it goes to cancelling until the farm has stopped. Cancelling"
        " a cancelled job changes nothing; a completed or failed one answers job_finished."
        " Returns the job envelope."
    ),
    response_model=JobEnvelope,
    responses=errors(
        JobNotFound,
        JobFinished,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        JobViewCatchingUp,
    ),
)
async def cancel_job(
    request: Request,
    job_id: JobId,
    reason: Annotated[
        Reason | None,
        Body(embed=True, description="Why (at most 500 characters); kept in the job's history."),
    ] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    owner = None if p.is_admin else p.user_id

    async def run(command_id: str) -> tuple[int, bytes]:
        accepted = await gw.commands.send(
            CancelJob(job_id=job_id, owner_id=owner, reason=reason),
            JobAccepted,
            command_id=command_id,
            actor=p.actor(),
        )
        return 200, (await gw.read.job_envelope(job_id, owner, accepted.version)).encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "cancel_job", run)


class TestRenderRequest(BaseModel):
    """What a test render renders, by when, and when the full render follows by itself."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")

    frames: list[StrictInt] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TEST_FRAMES,
        description="Frames to render (each a frame of the job's range); null: the first,"
        " middle and last.",
    )
    deadline_seconds: StrictInt = Field(
        default=600,
        ge=60,
        le=24 * 3600,
        description="Seconds from now it is due; a miss is an event and an alert.",
    )
    start_full_render_if_within: CostCredits | None = Field(
        default=None,
        description="A budget in credits (a decimal string): once the test render is priced,"
        " the full render starts by itself if the re-estimate's high end is within it.",
    )
    quality: TestRenderQuality = Field(
        default_factory=TestRenderQuality,
        description="Render the test frames smaller or with fewer samples than the job (a"
        " faster preview); the re-estimate scales the measured seconds to the job's settings."
        " Default: the job's own settings.",
    )


@router.post(
    "/{job_id}/test-render",
    operation_id="start_test_render",
    dependencies=[requires(Scope.jobs_write)],
    summary="Render a few frames first",
    description=(
        "Render a few frames (first, middle and last by default) ahead of every full render,"
        " on the farm's test pool at its test priority, interrupting full-render tasks when"
        " the farm is full. Allowed before the full render is queued, one at a time: submit"
        " the job with start_full_render=false to keep the full render waiting for it. The"
        " envelope's test_render shows the deadline, seconds left, and then each frame's"
        " output, seconds and peak memory; cost then holds the re-estimate from the measured"
        " frames. Returns 202 with the job envelope."
    ),
    status_code=202,
    response_model=JobEnvelope,
    responses=errors(
        JobNotFound,
        JobFinished,
        JobCancelling,
        TestRenderInProgress,
        TestRenderNotAllowed,
        ValidationFailed,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        JobViewCatchingUp,
    ),
)
async def start_test_render(
    request: Request,
    job_id: JobId,
    body: Annotated[TestRenderRequest | None, Body()] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    owner = None if p.is_admin else p.user_id
    asked = body or TestRenderRequest()

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = RequestTestRender(
            job_id=job_id,
            owner_id=owner,
            frames=asked.frames,
            deadline_seconds=asked.deadline_seconds,
            start_full_render_if_within=asked.start_full_render_if_within,
            quality=asked.quality,
        )
        accepted = await gw.commands.send(cmd, JobAccepted, command_id=command_id, actor=p.actor())
        return 202, (await gw.read.job_envelope(job_id, owner, accepted.version)).encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "start_test_render", run)


@router.post(
    "/{job_id}/start",
    operation_id="start_full_render",
    dependencies=[requires(Scope.jobs_write)],
    summary="Start the full render",
    description=(
        "Let a job submitted with start_full_render=false start its full render: it is queued"
        " once its scene is prepared and no test render runs. Asking again, or for a job that"
        " starts by itself, changes nothing. Returns the job envelope."
    ),
    response_model=JobEnvelope,
    responses=errors(
        JobNotFound,
        JobFinished,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        JobViewCatchingUp,
    ),
)
async def start_full_render(
    request: Request, job_id: JobId, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)
    owner = None if p.is_admin else p.user_id

    async def run(command_id: str) -> tuple[int, bytes]:
        accepted = await gw.commands.send(
            StartFullRender(job_id=job_id, owner_id=owner),
            JobAccepted,
            command_id=command_id,
            actor=p.actor(),
        )
        return 200, (await gw.read.job_envelope(job_id, owner, accepted.version)).encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "start_full_render", run)


@router.get(
    "/{job_id}/events",
    operation_id="list_job_events",
    dependencies=[requires(Scope.jobs_read)],
    summary="List a job's events",
    description=(
        "The job's full history as recorded events, oldest first: submission, changes,"
        " steps, progress, logs, completion. Each event's data is in the current schema of"
        " its type (older stored versions are upcast), with secrets masked as 'redacted'."
        " Each page also carries the job's job_id, job_status, progress_percent and"
        " current_step. Paginated with next_cursor."
    ),
    response_model=JobEventPage,
    responses=errors(JobNotFound, InvalidCursor, InsufficientScope),
)
async def list_job_events(
    request: Request, job_id: JobId, limit: Limit = 100, cursor: Cursor = None
) -> JobEventPage:
    gw, p = gateway(request), principal(request)
    state = await gw.read.job_state(job_id, None if p.is_admin else p.user_id)  # and owner
    after = int_cursor(cursor)
    rows = await gw.read.job_events(job_id, 0 if after is None else after, limit + 1)
    items = [
        JobEventView(
            version=e.version,
            type=e.type,
            schema_version=e.schema_version,
            recorded_at=e.recorded_at,
            actor_id=e.actor_id,
            data=e.data,
        )
        for e in rows[:limit]
    ]
    more = len(rows) > limit
    return JobEventPage(
        **dict(state),
        items=items,
        next_cursor=encode_cursor(str(items[-1].version)) if more else None,
    )


@router.get(
    "/{job_id}/frames",
    operation_id="list_job_frames",
    dependencies=[requires(Scope.jobs_read)],
    summary="List a job's rendered frames",
    description=(
        "The frames the farm has rendered for the job so far, by frame number ascending,"
        " with the job's job_status, progress_percent and current_step: for each, its"
        " output id and object key in the outputs bucket, size and SHA-256, the worker"
        " that rendered it and when. Download one with"
        " create_output_download_url. Paginated with next_cursor. Another user's job"
        " answers job_not_found."
    ),
    response_model=JobFramePage,
    responses=errors(JobNotFound, InvalidCursor, InsufficientScope),
)
async def list_job_frames(
    request: Request, job_id: JobId, limit: Limit = 100, cursor: Cursor = None
) -> JobFramePage:
    gw, p = gateway(request), principal(request)
    state = await gw.read.job_state(job_id, None if p.is_admin else p.user_id)  # and owner
    after = int_cursor(cursor)
    rows = await gw.read.job_frames(job_id, -1 if after is None else after, limit + 1)
    items = [JobFrameView(**asdict(r)) for r in rows[:limit]]
    more = len(rows) > limit
    return JobFramePage(
        **dict(state),
        items=items,
        next_cursor=encode_cursor(str(items[-1].frame)) if more else None,
    )
