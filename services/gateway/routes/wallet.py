"""The caller's credit wallet, its transactions, and admins' grants of credits.

Balances and transfers come from the wallet service's read models
(``libs/readmodels/wallet.py``); a grant is a ``wallet.DepositCredits`` with cause ``grant``.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from contracts.errors import (
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    ServiceUnavailable,
    TransferIdReused,
)
from contracts.identity import Scope
from contracts.text import ID_PATTERN, Line
from contracts.wallet import CauseKind, DepositCredits, PositiveCredits, WalletBalance
from libs.readmodels.wallet import WalletTransaction, WalletView
from services.gateway.access import Access, requires
from services.gateway.api import errors, gateway, idempotent, json_response, principal
from services.gateway.readmodels import encode_cursor, int_cursor

if TYPE_CHECKING:
    from services.gateway.service import Gateway

router = APIRouter(tags=["wallet"])

#: How long a grant's answer waits for the balances view to show it.
_CATCH_UP_SECONDS = 5.0


class WalletTransactionPage(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    items: list[WalletTransaction] = Field(description="Transfers, newest first.")
    next_cursor: str | None = Field(description="Cursor of the next page; null on the last.")


class GrantCreditsRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    amount_credits: PositiveCredits = Field(
        description="Credits to grant: above zero, at most 1,000,000,000, exact to 0.01, as a"
        ' string ("25.00").'
    )
    note: Line | None = Field(
        default=None, max_length=500, description="Why (kept in the admin's action log)."
    )


RequiredIdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description=(
            "Required: a client-chosen unique key (e.g. a UUID). The grant's transfer id is"
            " derived from it, so every retry of one grant credits once."
        ),
    ),
]


def grant_transfer_id(admin_id: str, user_id: str, key: str) -> str:
    """The transfer id of one grant request: the same on every retry with its key."""
    digest = hashlib.sha256(f"{admin_id}\x00{user_id}\x00{key}".encode()).hexdigest()
    return f"grant:{digest[:32]}"


async def _wallet(gw: Gateway, user_id: str, min_version: int = 0) -> WalletView:
    """The user's wallet; with ``min_version``, once its view shows that version."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _CATCH_UP_SECONDS
    while True:
        view, version = await gw.wallet.wallet(user_id)
        if version >= min_version:
            return view
        if loop.time() >= deadline:
            raise ServiceUnavailable(
                "the credits were granted but the wallet's view is still catching up; retry"
                " the same request (with the same Idempotency-Key)"
            )
        await asyncio.sleep(0.05)


@router.get(
    "/v1/wallet",
    operation_id="get_wallet",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get your wallet",
    description=(
        "Your credits: balance_credits (credits in minus credits out), held_credits"
        " (reserved by running jobs), available_credits (what new jobs may reserve), the"
        " currency and when it last changed. Amounts are decimal strings. A user who never"
        " had credits gets zeros."
    ),
    response_model=WalletView,
    responses=errors(InsufficientScope),
)
async def get_wallet(request: Request) -> Response:
    gw, p = gateway(request), principal(request)
    view, _ = await gw.wallet.wallet(p.user_id)
    return json_response(view.model_dump_json())


@router.get(
    "/v1/wallet/transactions",
    operation_id="list_wallet_transactions",
    dependencies=[requires(Scope.jobs_read)],
    summary="List your wallet's transactions",
    description=(
        "Every transfer on your wallet, newest first: its kind (deposit, hold, hold_increase,"
        " capture, void, expiry, debit), amount_credits, the balance, held and available"
        " credits right after it, its cause (job, payment, refund, dispute, grant or"
        " adjustment, with the cause's id) and, for holds, job_id and hold_id. Returns a"
        " page and next_cursor (null on the last page)."
    ),
    response_model=WalletTransactionPage,
    responses=errors(InvalidCursor, InsufficientScope),
)
async def list_wallet_transactions(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=300, description="next_cursor of the previous page; omit for the first."),
    ] = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    rows = await gw.wallet.transactions(p.user_id, int_cursor(cursor), limit + 1)
    items = rows[:limit]
    more = len(rows) > limit
    page = WalletTransactionPage(
        items=items, next_cursor=encode_cursor(str(items[-1].sequence)) if more else None
    )
    return json_response(page.model_dump_json())


@router.post(
    "/v1/admin/users/{user_id}/credits",
    operation_id="grant_credits",
    dependencies=[requires(Access.admin)],
    summary="Grant credits to a user (admin)",
    description=(
        "Deposit amount_credits into the user's wallet with cause grant (a trial, goodwill)."
        " The Idempotency-Key header is required: the transfer's id is derived from it, so"
        " retries of one grant credit once. Returns the user's wallet after the grant."
        " Administrators only."
    ),
    response_model=WalletView,
    responses=errors(
        Forbidden,
        TransferIdReused,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        ServiceUnavailable,
    ),
)
async def grant_credits(
    request: Request,
    body: GrantCreditsRequest,
    idempotency_key: RequiredIdempotencyKey,
    user_id: Annotated[
        str,
        Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="Id of the user."),
    ],
) -> Response:
    gw, p = gateway(request), principal(request)
    transfer_id = grant_transfer_id(p.user_id, user_id, idempotency_key)

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = DepositCredits(
            user_id=user_id,
            transfer_id=transfer_id,
            amount=body.amount_credits,
            cause=CauseKind.grant,
            cause_id=transfer_id.removeprefix("grant:"),
        )
        done = await gw.commands.send(cmd, WalletBalance, command_id=command_id, actor=p.actor())
        view = await _wallet(gw, user_id, done.version)
        return 200, view.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "grant_credits", run)
