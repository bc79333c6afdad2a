"""API keys for the MCP server and other programs acting for a user."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Path, Request

from contracts.errors import ApiKeyNotFound, Forbidden, IdempotencyKeyReused
from contracts.identity import ApiKeyInfo, ApiKeySecret, CreateApiKey, RevokeApiKey
from contracts.text import ID_PATTERN
from services.gateway.access import Access, requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    json_response,
    principal,
    set_targets,
)
from services.gateway.schemas import ApiKeyList, CreateApiKeyRequest

router = APIRouter(prefix="/v1/api-keys", tags=["api keys"])

KeyId = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="key_id of the API key."),
]


@router.post(
    "",
    operation_id="create_api_key",
    dependencies=[requires(Access.session)],
    summary="Create an API key",
    description=(
        "Create a scoped API key for a program acting for you (e.g. an MCP server). The"
        " full key is in `secret` and is shown only in this answer. Needs a user session."
    ),
    status_code=201,
    response_model=ApiKeySecret,
    responses=errors(Forbidden, IdempotencyKeyReused),
)
async def create_api_key(
    request: Request, body: CreateApiKeyRequest, idempotency_key: IdempotencyKey = None
) -> object:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = CreateApiKey(user_id=p.user_id, **body.model_dump())
        created = await gw.commands.send(cmd, ApiKeySecret, command_id=command_id, actor=p.actor())
        set_targets(request, key_id=created.key_id)
        return 201, created.model_dump_json().encode()

    # The answer holds the secret, so it is not kept for replay here: the identity service
    # refuses a repeated key (idempotency_key_reused) instead of creating a second key.
    status, body_bytes = await run(
        f"create_api_key:{p.idempotency_scope}:{idempotency_key or uuid.uuid4()}"
    )
    return json_response(body_bytes, status)


@router.get(
    "",
    operation_id="list_api_keys",
    dependencies=[requires(Access.session)],
    summary="List API keys",
    description="The caller's API keys (never their secrets), ordered by key id.",
    response_model=ApiKeyList,
    responses=errors(Forbidden),
)
async def list_api_keys(request: Request) -> ApiKeyList:
    gw, p = gateway(request), principal(request)
    return ApiKeyList(items=await gw.read.api_keys(p.user_id))


@router.post(
    "/{key_id}/revoke",
    operation_id="revoke_api_key",
    dependencies=[requires(Access.session)],
    summary="Revoke an API key",
    description="Revoke a key at once; later requests with it get api_key_revoked. Idempotent.",
    response_model=ApiKeyInfo,
    responses=errors(ApiKeyNotFound, Forbidden),
)
async def revoke_api_key(request: Request, key_id: KeyId) -> ApiKeyInfo:
    gw, p = gateway(request), principal(request)
    return await gw.commands.send(
        RevokeApiKey(key_id=key_id, user_id=None if p.is_admin else p.user_id),
        ApiKeyInfo,
        command_id=f"revoke_api_key:{p.user_id}:{key_id}",
        actor=p.actor(),
    )
