"""Administration: users and their approval, the action log."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from contracts.errors import Forbidden, InvalidCursor, UserAlreadyApproved, UserNotFound
from contracts.identity import ApproveUser, UserProfile, UserStatus
from contracts.text import ID_PATTERN
from services.gateway.api import errors, gateway, principal
from services.gateway.readmodels import decode_cursor, encode_cursor
from services.gateway.schemas import ApiCallPage, UserPage

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get(
    "/users",
    operation_id="list_users",
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
    gw, p = gateway(request), principal(request)
    p.require_admin()
    rows, next_cursor = await gw.read.users(status.value if status else None, cursor, limit)
    return UserPage(items=rows, next_cursor=next_cursor)


@router.post(
    "/users/{user_id}/approve",
    operation_id="approve_user",
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
    p.require_admin()
    return await gw.commands.send(
        ApproveUser(user_id=user_id),
        UserProfile,
        command_id=f"approve_user:{user_id}",
        actor=p.actor(),
    )


@router.get(
    "/api-calls",
    operation_id="list_api_calls",
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
    gw, p = gateway(request), principal(request)
    p.require_admin()
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
