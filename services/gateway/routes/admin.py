"""Administration: users (approval, suspension), every user's jobs (lists, stuck jobs, kill),
the action log, the render fleet and its usage, and operations (queues, quarantine, dead
letters)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from contracts.envelope import JobEnvelope
from contracts.errors import (
    AccountSuspended,
    CannotSuspendSelf,
    FieldProblem,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InvalidCursor,
    JobFinished,
    JobNotFound,
    JobViewCatchingUp,
    QuarantinedStreamNotFound,
    ServiceUnavailable,
    UserAlreadyApproved,
    UserNotFound,
    ValidationFailed,
)
from contracts.fleet import FleetView, UsageView
from contracts.identity import (
    ApproveUser,
    ReactivateUser,
    SuspendUser,
    UserProfile,
    UserStatus,
)
from contracts.jobs import JobAccepted, JobStatus, KillJob
from contracts.operations import DeadLetterPage, QuarantineRetried, QuarantineView, QueuesView
from contracts.text import ID_PATTERN
from libs.operations import retry_quarantined
from services.gateway.access import Access, requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    idempotent,
    json_response,
    principal,
    send_idempotent,
    set_targets,
)
from services.gateway.readmodels import decode_cursor, encode_cursor
from services.gateway.schemas import (
    ApiCallPage,
    JobPage,
    ReasonRequest,
    StuckJobsView,
    UserPage,
)

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get(
    "/users",
    operation_id="list_users",
    dependencies=[requires(Access.admin)],
    summary="List users (admin)",
    description="Users ordered by id, optionally only one status. Administrators only.",
    response_model=UserPage,
    responses=errors(Forbidden, InvalidCursor),
)
async def list_users(
    request: Request,
    status: Annotated[UserStatus | None, Query(description="Only users in this status.")] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=300, description="next_cursor of the previous page.")
    ] = None,
) -> UserPage:
    gw = gateway(request)
    rows, next_cursor = await gw.read.users(status.value if status else None, cursor, limit)
    return UserPage(items=rows, next_cursor=next_cursor)


@router.post(
    "/users/{user_id}/approve",
    operation_id="approve_user",
    dependencies=[requires(Access.admin)],
    summary="Approve a user (admin)",
    description=(
        "Let a pending user log in. Returns the updated profile. Approving twice is"
        " harmless. Administrators only."
    ),
    response_model=UserProfile,
    responses=errors(Forbidden, UserNotFound, UserAlreadyApproved, AccountSuspended),
)
async def approve_user(
    request: Request,
    user_id: Annotated[
        str,
        Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Id of the user."),
    ],
) -> UserProfile:
    gw, p = gateway(request), principal(request)
    return await gw.commands.send(
        ApproveUser(user_id=user_id),
        UserProfile,
        command_id=f"approve_user:{user_id}",
        actor=p.actor(),
    )


@router.get(
    "/api-calls",
    operation_id="list_api_calls",
    dependencies=[requires(Access.admin)],
    summary="Read the action log (admin)",
    description=(
        "API calls, newest first, optionally one user's: who called what, when, with which"
        " credential, and how it ended. Recorded within a fraction of a second of the answer."
        " Administrators only."
    ),
    response_model=ApiCallPage,
    responses=errors(Forbidden, InvalidCursor),
)
async def list_api_calls(
    request: Request,
    user_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="Only this user's."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=300, description="next_cursor of the previous page.")
    ] = None,
) -> ApiCallPage:
    gw = gateway(request)
    before = None
    value = decode_cursor(cursor)
    if value is not None:
        at, _, request_id = value.partition("|")
        try:
            before = (datetime.fromisoformat(at), request_id)
        except ValueError:
            raise InvalidCursor("the cursor is not one we issued") from None
        if before[0].tzinfo is None or not request_id:
            raise InvalidCursor("the cursor is not one we issued")
    rows = await gw.action_log.calls(user_id, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return ApiCallPage(
        items=rows,
        next_cursor=encode_cursor(f"{last.at.isoformat()}|{last.request_id}") if last else None,
    )


PoolName = Annotated[
    str | None,
    Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="Only this pool."),
]
#: The longest usage report, in days.
MAX_USAGE_DAYS = 366


@router.get(
    "/vms",
    operation_id="list_fleet_vms",
    dependencies=[requires(Access.admin)],
    summary="The live render fleet (admin)",
    description=(
        "Every machine not ended (booting, idle, busy or draining), per pool: instance type,"
        " price per hour, phase and since when, and its boot, idle and busy time and cost up"
        " to now; each pool's and the fleet's cost per hour. Money in US dollars, as decimal"
        " strings. Administrators only."
    ),
    response_model=FleetView,
    responses=errors(Forbidden),
)
async def list_fleet_vms(request: Request, pool: PoolName = None) -> FleetView:
    gw = gateway(request)
    return await gw.fleet.fleet(pool, datetime.now(UTC))


@router.get(
    "/usage",
    operation_id="get_fleet_usage",
    dependencies=[requires(Access.admin)],
    summary="VM hours and cost per day, pool and user (admin)",
    description=(
        "Per UTC day from `from` to `to` (inclusive, default the last 7 days, at most 366):"
        " each pool's hours booting, idle and busy and their cost, with the boot and idle"
        " part as the farm's overhead (charged to no job); and each user's machine hours,"
        " the task time their jobs were charged for, with the credits charged. Time is"
        " counted once a machine's phase ends. Administrators only."
    ),
    response_model=UsageView,
    responses=errors(Forbidden, ValidationFailed),
)
async def get_fleet_usage(
    request: Request,
    from_day: Annotated[date | None, Query(alias="from", description="First UTC day.")] = None,
    to_day: Annotated[date | None, Query(alias="to", description="Last UTC day.")] = None,
    pool: PoolName = None,
) -> UsageView:
    gw = gateway(request)
    last = to_day or datetime.now(UTC).date()
    first = from_day or last - timedelta(days=6)
    if first > last or (last - first).days >= MAX_USAGE_DAYS:
        problem = FieldProblem(
            loc=["query", "from"],
            message=f"from must be on or before to, at most {MAX_USAGE_DAYS} days before it",
            type="out_of_range",
        )
        raise ValidationFailed(problem.message, errors=[problem])
    pools = await gw.fleet.usage(first, last, pool)
    users = await gw.billing.task_usage(first, last)
    return UsageView(
        from_day=first,
        to_day=last,
        pools=pools,
        users=users,
        total_cost_usd=sum((d.cost_usd for d in pools), Decimal(0)),
        total_farm_overhead_usd=sum((d.farm_overhead_usd for d in pools), Decimal(0)),
    )


# -- jobs across users ----------------------------------------------------------------

#: The longest age filter, and the longest stuck-job threshold: a year, in seconds.
MAX_AGE_SECONDS = 366 * 24 * 3600
JobId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Id of the job.")
]
UserId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Id of the user.")
]


@router.get(
    "/jobs",
    operation_id="admin_list_jobs",
    dependencies=[requires(Access.admin)],
    summary="Every user's jobs (admin)",
    description=(
        "Job envelopes across users, newest first: optionally one user's, one status, the"
        " ones the farm may be busy with on one pool (the full-render pool while queued or"
        " rendering, the test pool while test rendering), and only those created more than"
        " `older_than_seconds` ago. Administrators only."
    ),
    response_model=JobPage,
    responses=errors(Forbidden, InvalidCursor),
)
async def admin_list_jobs(
    request: Request,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    user_id: Annotated[
        str | None,
        Query(min_length=1, max_length=64, pattern=ID_PATTERN, description="Only this user's."),
    ] = None,
    pool: PoolName = None,
    older_than_seconds: Annotated[
        int | None,
        Query(ge=0, le=MAX_AGE_SECONDS, description="Only jobs created longer ago than this."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=300, description="next_cursor of the previous page.")
    ] = None,
) -> Response:
    gw = gateway(request)
    s = gw.settings
    kinds = (
        None
        if pool is None
        else [k for name, k in ((s.farm_pool, "full"), (s.test_pool, "test")) if name == pool]
    )
    now = datetime.now(UTC)
    body = await gw.read.admin_jobs(
        owner_id=user_id,
        status=status.value if status else None,
        render_kinds=kinds,
        created_before=(
            None if older_than_seconds is None else now - timedelta(seconds=older_than_seconds)
        ),
        cursor=cursor,
        limit=limit,
    )
    return json_response(body)


@router.get(
    "/jobs/stuck",
    operation_id="admin_list_stuck_jobs",
    dependencies=[requires(Access.admin)],
    summary="Jobs that stopped moving (admin)",
    description=(
        "Jobs not completed, failed or cancelled that have had no progress event (a step,"
        " frames, a status change; not cost records or edits) for `minutes`, the longest"
        " first. Administrators only."
    ),
    response_model=StuckJobsView,
    responses=errors(Forbidden),
)
async def admin_list_stuck_jobs(
    request: Request,
    minutes: Annotated[
        int, Query(ge=1, le=MAX_AGE_SECONDS // 60, description="No progress for this long.")
    ] = 30,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many, 1-200.")] = 100,
) -> Response:
    gw = gateway(request)
    return json_response(await gw.read.stuck_jobs(datetime.now(UTC), minutes, limit))


@router.post(
    "/jobs/{job_id}/kill",
    operation_id="admin_kill_job",
    dependencies=[requires(Access.admin)],
    summary="Kill a job (admin)",
    description=(
        "Stop any user's job through the cancel path: the farm job is stopped and billing"
        " settles the cost. The job's history records `job.JobKilled` with the reason and"
        " the administrator. Killing a cancelled job changes nothing; a completed or failed"
        " one answers job_finished. Returns the job envelope. Administrators only."
    ),
    response_model=JobEnvelope,
    responses=errors(
        Forbidden,
        JobNotFound,
        JobFinished,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        JobViewCatchingUp,
    ),
)
async def admin_kill_job(
    request: Request,
    job_id: JobId,
    body: ReasonRequest,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        accepted = await gw.commands.send(
            KillJob(job_id=job_id, reason=body.reason),
            JobAccepted,
            command_id=command_id,
            actor=p.actor(),
        )
        return 200, (await gw.read.job_envelope(job_id, None, accepted.version)).encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "kill_job", run)


# -- suspending users -----------------------------------------------------------------


@router.post(
    "/users/{user_id}/suspend",
    operation_id="suspend_user",
    dependencies=[requires(Access.admin)],
    summary="Suspend a user (admin)",
    description=(
        "The user's sessions (access and refresh tokens) and API keys are refused with"
        " user_suspended on every gateway process within a second, and login is refused;"
        " their active jobs are killed (unless the job service keeps them,"
        " RF_JOB_SUSPENDED_USER_JOBS=keep). Suspending a suspended user changes nothing;"
        " suspending yourself answers cannot_suspend_self. Returns the profile."
        " Administrators only."
    ),
    response_model=UserProfile,
    responses=errors(Forbidden, UserNotFound, CannotSuspendSelf),
)
async def suspend_user(
    request: Request,
    user_id: UserId,
    body: ReasonRequest,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    cmd = SuspendUser(user_id=user_id, reason=body.reason)
    return await send_idempotent(request, idempotency_key, "suspend_user", cmd, UserProfile)


@router.post(
    "/users/{user_id}/reactivate",
    operation_id="reactivate_user",
    dependencies=[requires(Access.admin)],
    summary="Lift a user's suspension (admin)",
    description=(
        "The user may log in and use their keys again (their killed jobs stay cancelled)."
        " A user not suspended: nothing changes. Returns the profile. Administrators only."
    ),
    response_model=UserProfile,
    responses=errors(Forbidden, UserNotFound),
)
async def reactivate_user(
    request: Request, user_id: UserId, idempotency_key: IdempotencyKey = None
) -> Response:
    cmd = ReactivateUser(user_id=user_id)
    return await send_idempotent(request, idempotency_key, "reactivate_user", cmd, UserProfile)


# -- operations ---------------------------------------------------------------------


@router.get(
    "/queues",
    operation_id="admin_queues",
    dependencies=[requires(Access.admin)],
    summary="Work queues and bus consumers (admin)",
    description=(
        "The scene work queue's depth per priority (waiting, in flight, retrying, dead),"
        " each durable JetStream consumer's lag (events not yet delivered, not yet"
        " acknowledged) and the bus's dead letters. Administrators only."
    ),
    response_model=QueuesView,
    responses=errors(Forbidden),
)
async def admin_queues(request: Request) -> QueuesView:
    gw = gateway(request)
    return await gw.ops.queues(datetime.now(UTC))


@router.get(
    "/dead-letters",
    operation_id="admin_dead_letters",
    dependencies=[requires(Access.admin)],
    summary="The scene queue's dead letters (admin)",
    description=(
        "Scene preparations the workers gave up on, oldest first, with their last error and"
        " deliveries. Administrators only."
    ),
    response_model=DeadLetterPage,
    responses=errors(Forbidden),
)
async def admin_dead_letters(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many, 1-1000.")] = 100,
) -> DeadLetterPage:
    gw = gateway(request)
    return DeadLetterPage(items=await gw.ops.dead_letters(limit))


SchemaName = Annotated[
    str,
    Path(min_length=1, max_length=63, pattern=r"^[a-z_][a-z0-9_]*$", description="Schema."),
]
ProjectionName = Annotated[
    str,
    Path(min_length=1, max_length=63, pattern=r"^[a-z_][a-z0-9_]*$", description="Projection."),
]
StreamId = Annotated[
    str,
    Path(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9_.:-]+$", description="Stream."),
]


@router.get(
    "/quarantine",
    operation_id="admin_quarantine",
    dependencies=[requires(Access.admin)],
    summary="Quarantined streams (admin)",
    description=(
        "Streams a service's projection could not apply, per schema and projection, with"
        " the failing event's type, version and error and how many events are held."
        " Administrators only."
    ),
    response_model=QuarantineView,
    responses=errors(Forbidden),
)
async def admin_quarantine(request: Request) -> QuarantineView:
    gw = gateway(request)
    return QuarantineView(items=await gw.quarantine.streams())


@router.post(
    "/quarantine/{schema}/{projection}/{stream_id}/retry",
    operation_id="admin_retry_quarantine",
    dependencies=[requires(Access.admin)],
    summary="Retry a quarantined stream (admin)",
    description=(
        "The owning service applies the stream's held events again, in order (as"
        " `renderctl quarantine --retry`): those up to a failing one leave the quarantine,"
        " and `error` says why one failed again. Administrators only."
    ),
    response_model=QuarantineRetried,
    responses=errors(Forbidden, QuarantinedStreamNotFound),
)
async def admin_retry_quarantine(
    request: Request, schema: SchemaName, projection: ProjectionName, stream_id: StreamId
) -> QuarantineRetried:
    gw = gateway(request)
    set_targets(request, schema=schema, projection=projection, stream_id=stream_id)
    held = [
        q
        for q in await gw.quarantine.streams(schema)
        if (q.projection, q.stream_id) == (projection, stream_id)
    ]
    if not held:
        raise QuarantinedStreamNotFound(
            f"no quarantined stream {stream_id} of {schema}.{projection}",
            schema_name=schema,
            projection=projection,
            stream_id=stream_id,
        )
    reply = await retry_quarantined(
        gw.rt.nc,
        gw.settings,
        schema,
        projection,
        stream_id,
        gw.settings.quarantine_retry_timeout_seconds,
    )
    if reply is None:
        raise ServiceUnavailable(f"no service of schema {schema} answered")
    if not reply.found:
        raise QuarantinedStreamNotFound(
            f"{schema} declares no projection {projection}",
            schema_name=schema,
            projection=projection,
            stream_id=stream_id,
        )
    return QuarantineRetried(
        schema_name=schema,
        projection=projection,
        stream_id=stream_id,
        applied=reply.applied,
        error=reply.error,
    )
