"""Administration: users and their approval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from contracts.errors import Forbidden, InvalidCursor, UserAlreadyApproved, UserNotFound
from contracts.identity import ApproveUser, UserProfile, UserStatus
from contracts.text import ID_PATTERN
from services.gateway.api import errors, gateway, principal
from services.gateway.schemas import UserPage

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
