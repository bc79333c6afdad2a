"""A job's outputs in object storage: list them, mint download URLs.

The gateway never holds storage credentials and never carries file bytes: the upload
service signs each URL, and clients download straight from the store.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response

from contracts.errors import (
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    JobNotFound,
    OutputDeleted,
    OutputNotFound,
    OutputNotReady,
)
from contracts.identity import Scope
from contracts.outputs import (
    CreateOutputDownloadUrl,
    OutputDownloadUrl,
    OutputStatus,
)
from contracts.text import ID_PATTERN
from libs.readmodels.outputs import JobOutput
from services.gateway.access import requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    idempotent,
    principal,
    set_targets,
)
from services.gateway.schemas import (
    DownloadUrlRequest,
    JobArchiveView,
    JobOutputPage,
    JobOutputView,
)

router = APIRouter(tags=["outputs"])

JobId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="Job id returned by create_job.",
    ),
]
OutputId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=128,
        pattern=ID_PATTERN,
        description="Output id from list_job_outputs or list_job_frames.",
    ),
]


def _frame(o: JobOutput) -> JobOutputView:
    assert o.frame is not None and o.size_bytes is not None and o.sha256 is not None
    assert o.stored_at is not None
    return JobOutputView(
        output_id=o.output_id,
        frame=o.frame,
        status=o.status,
        file_name=o.file_name,
        object_key=o.object_key,
        size_bytes=o.size_bytes,
        sha256=o.sha256,
        stored_at=o.stored_at,
        expires_at=o.expires_at,
        deleted_at=o.deleted_at,
    )


@router.get(
    "/v1/jobs/{job_id}/outputs",
    operation_id="list_job_outputs",
    dependencies=[requires(Scope.jobs_read)],
    summary="List a job's outputs",
    description=(
        "The job's rendered frames as stored in the outputs bucket, by output id (render"
        " kind, then frame number), with the job's job_status, progress_percent and"
        " current_step: each frame's output id, file"
        " name, object key, size, SHA-256 and when it is deleted (retention); plus the zip"
        " of every frame once the job completed (archive, null if none). Deleted outputs"
        " stay listed with status deleted. Download any with create_output_download_url."
        " Paginated with next_cursor. Another user's job answers job_not_found."
    ),
    response_model=JobOutputPage,
    responses=errors(JobNotFound, InvalidCursor, InsufficientScope),
)
async def list_job_outputs(
    request: Request,
    job_id: JobId,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 100,
    cursor: Annotated[
        str | None,
        Query(
            max_length=300, description="next_cursor from the previous page; omit for the first."
        ),
    ] = None,
) -> JobOutputPage:
    gw, p = gateway(request), principal(request)
    state = await gw.read.job_state(job_id, None if p.is_admin else p.user_id)
    rows, archive, next_cursor = await gw.read.job_outputs(job_id, cursor, limit)
    return JobOutputPage(
        **dict(state),
        items=[_frame(o) for o in rows],
        archive=None
        if archive is None
        else JobArchiveView(
            output_id=archive.output_id,
            status=archive.status,
            file_name=archive.file_name,
            size_bytes=archive.size_bytes,
            sha256=archive.sha256,
            expires_at=archive.expires_at,
        ),
        next_cursor=next_cursor,
    )


@router.post(
    "/v1/outputs/{output_id}/download-url",
    operation_id="create_output_download_url",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get a download URL for an output",
    description=(
        "A signed URL that downloads one output (a frame, or a job's zip) straight from"
        " object storage, as an attachment under its file name, with its size and SHA-256"
        " to verify it. It lives expires_in_seconds (default 3600, at most 604800 = 7 days:"
        " more is refused with validation_failed) and may be used any number of times until"
        " then; Range requests resume a download, and a fresh URL can be asked for at any"
        " time. Another user's output answers output_not_found; a deleted one"
        " output_deleted (410); an archive still being built output_not_ready."
    ),
    response_model=OutputDownloadUrl,
    responses=errors(
        OutputNotFound,
        OutputDeleted,
        OutputNotReady,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def create_output_download_url(
    request: Request,
    output_id: OutputId,
    body: Annotated[DownloadUrlRequest | None, Body(description="How long the URL lives.")] = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    owner = None if p.is_admin else p.user_id
    output = await gw.read.output(output_id, owner)
    set_targets(request, job_id=output.job_id, output_id=output_id)
    if output.status is OutputStatus.deleted:
        raise OutputDeleted(
            f"output {output_id} was deleted when its retention ended", output_id=output_id
        )
    if output.status is not OutputStatus.ready:
        raise OutputNotReady(
            f"output {output_id} is {output.status.value}",
            output_id=output_id,
            status=output.status,
        )

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = CreateOutputDownloadUrl(
            output_id=output_id,
            job_id=output.job_id,
            owner_id=owner,
            expires_in_seconds=body.expires_in_seconds if body else None,
            thumbnail=body.thumbnail if body else False,
        )
        minted = await gw.commands.send(
            cmd, OutputDownloadUrl, command_id=command_id, actor=p.actor()
        )
        return 200, minted.model_dump_json().encode()

    return await idempotent(
        request, p.idempotency_scope, idempotency_key, "create_output_download_url", run
    )
