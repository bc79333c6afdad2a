"""Administration: users and their approval, the action log, the render fleet and its usage."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from contracts.errors import (
    FieldProblem,
    Forbidden,
    InvalidCursor,
    UserAlreadyApproved,
    UserNotFound,
    ValidationFailed,
)
from contracts.fleet import FleetView, UsageView
from contracts.identity import ApproveUser, UserProfile, UserStatus
from contracts.text import ID_PATTERN
from services.gateway.access import Access, requires
from services.gateway.api import errors, gateway, principal
from services.gateway.readmodels import decode_cursor, encode_cursor
from services.gateway.schemas import ApiCallPage, UserPage

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
    responses=errors(Forbidden, UserNotFound, UserAlreadyApproved),
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
