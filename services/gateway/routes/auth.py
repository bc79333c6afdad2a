"""Registration, login, token refresh, and the caller's own profile."""

from __future__ import annotations

from fastapi import APIRouter, Request

from contracts.errors import (
    EmailTaken,
    IdempotencyKeyReused,
    InvalidCredentials,
    RefreshTokenInvalid,
    RefreshTokenReused,
    UserNotApproved,
    UserNotFound,
)
from contracts.identity import Login, RefreshSession, RegisterUser, Role, TokenPair, UserProfile
from services.gateway.access import Access, requires
from services.gateway.api import IdempotencyKey, errors, gateway, idempotent, principal, set_targets
from services.gateway.schemas import LoginRequest, RefreshRequest, RegisterRequest

router = APIRouter(prefix="/v1", tags=["auth"])


@router.post(
    "/auth/register",
    operation_id="register_user",
    dependencies=[requires(Access.public)],
    summary="Register a user",
    description=(
        "Create an account. It stays pending_approval until an administrator approves it;"
        " only then can it log in. Returns the user profile."
    ),
    status_code=201,
    response_model=UserProfile,
    responses=errors(EmailTaken, IdempotencyKeyReused, auth=False),
)
async def register_user(
    request: Request, body: RegisterRequest, idempotency_key: IdempotencyKey = None
) -> object:
    gw = gateway(request)
    actor = gw.anonymous_actor(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = RegisterUser(
            email=body.email, password=body.password, display_name=body.display_name, role=Role.user
        )
        profile = await gw.commands.send(cmd, UserProfile, command_id=command_id, actor=actor)
        set_targets(request, user_id=profile.user_id)
        return 201, profile.model_dump_json().encode()

    # Anonymous callers are told apart by the e-mail they register.
    return await idempotent(
        request, f"register:{body.email.lower()}", idempotency_key, "register_user", run
    )


@router.post(
    "/auth/login",
    operation_id="login_user",
    dependencies=[requires(Access.public)],
    summary="Log in",
    description=(
        "Exchange e-mail and password for a short-lived access token (JWT, 15 minutes) and"
        " a refresh token. Fails with user_not_approved until an admin approves the account."
    ),
    response_model=TokenPair,
    responses=errors(InvalidCredentials, UserNotApproved, auth=False),
)
async def login_user(request: Request, body: LoginRequest) -> TokenPair:
    gw = gateway(request)
    pair = await gw.commands.send(
        Login(email=body.email, password=body.password),
        TokenPair,
        command_id=f"login:{request.state.request_id}",
        actor=gw.anonymous_actor(request),
    )
    return pair


@router.post(
    "/auth/refresh",
    operation_id="refresh_session",
    dependencies=[requires(Access.public)],
    summary="Refresh a session",
    description=(
        "Exchange a refresh token for a new access token and a new refresh token. Each"
        " refresh token works once: presenting a used one revokes the whole session"
        " (refresh_token_reused) and the user must log in again."
    ),
    response_model=TokenPair,
    responses=errors(RefreshTokenInvalid, RefreshTokenReused, auth=False),
)
async def refresh_session(request: Request, body: RefreshRequest) -> TokenPair:
    gw = gateway(request)
    return await gw.commands.send(
        RefreshSession(refresh_token=body.refresh_token),
        TokenPair,
        command_id=f"refresh:{request.state.request_id}",
        actor=gw.anonymous_actor(request),
    )


@router.get(
    "/me",
    operation_id="get_current_user",
    dependencies=[requires(Access.authenticated)],
    summary="Get the current user",
    description="The profile of the user the token or API key belongs to.",
    response_model=UserProfile,
    responses=errors(UserNotFound),
)
async def get_current_user(request: Request) -> UserProfile:
    gw, p = gateway(request), principal(request)
    user = await gw.read.user(p.user_id)
    if user is None:
        raise UserNotFound(f"no user {p.user_id}")
    return user
