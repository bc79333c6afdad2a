"""Administration: users and their approval."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from contracts.errors import ErrorCode
from contracts.identity import ApproveUser, UserProfile, UserStatus
from services.gateway.api import errors, gateway, principal
from services.gateway.schemas import UserPage

router = APIRouter(prefix="/v1/admin", tags=["admin"])


@router.get(
    "/users",
    operation_id="list_users",
    summary="List users (admin)",
    description="Users ordered by id, optionally only one status. Administrators only.",
    response_model=UserPage,
    responses=errors(ErrorCode.forbidden, ErrorCode.invalid_cursor),
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
    responses=errors(
        ErrorCode.forbidden, ErrorCode.user_not_found, ErrorCode.user_already_approved
    ),
)
async def approve_user(
    request: Request,
    user_id: Annotated[str, Path(min_length=1, max_length=64, description="Id of the user.")],
) -> UserProfile:
    gw, p = gateway(request), principal(request)
    p.require_admin()
    return await gw.commands.send(
        ApproveUser(user_id=user_id),
        UserProfile,
        command_id=f"approve_user:{user_id}",
        actor=p.actor(),
    )
