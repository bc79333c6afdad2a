"""What rendering costs: estimates, a job's cost with its lines, prices, API keys' spend caps.

Estimates, price versions and spend caps are commands to the billing service
(``billing.EstimateCost``, ``billing.PublishPrices``, ``billing.SetKeySpendCaps``); a job's
cost, the prices and a key's spend are read from billing's read models
(``libs/readmodels/billing.py``), the job itself from the job service's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Self

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from contracts.billing import (
    CostEstimate,
    CostLine,
    EstimateCost,
    EstimateParameters,
    KeySpend,
    PriceList,
    PriceVersion,
    PublishPrices,
    SetKeySpendCaps,
)
from contracts.envelope import AwaitingReason, CostStatus, Currency, EstimateUnknownReason
from contracts.errors import (
    ApiKeyNotFound,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    InvalidFrameRange,
    JobCostNotFound,
    JobNotFound,
    NoPrices,
)
from contracts.identity import Scope
from contracts.jobs import (
    FrameRange,
    JobPriority,
    Renderer,
    RenderSettings,
    Resolution,
)
from contracts.text import ID_PATTERN, IdText
from contracts.wallet import Credits
from libs.readmodels.billing import ZERO
from services.gateway.access import Access, requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    idempotent,
    json_response,
    principal,
    send_idempotent,
)
from services.gateway.readmodels import decode_cursor, encode_cursor
from services.gateway.schemas import JobState

if TYPE_CHECKING:
    from services.gateway.service import Gateway

router = APIRouter(tags=["costs"])

#: Cost lines are placed by ``seq`` (a bigint): the largest a cursor may hold.
_INT8_MAX = 2**63 - 1

JobId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="Job id returned by create_job.",
    ),
]
KeyId = Annotated[
    str,
    Path(min_length=1, max_length=64, pattern=ID_PATTERN, description="key_id of the API key."),
]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EstimateCostRequest(_Model):
    """Either a job's parameters (frame_range and resolution at least) or an existing job."""

    job_id: IdText | None = Field(
        default=None,
        description="Estimate an existing job of yours (its parameters and the task times"
        " measured so far). Give either job_id or the parameters below, not both.",
    )
    frame_range: FrameRange | None = Field(
        default=None, description="Frames to render (required without job_id)."
    )
    resolution: Resolution | None = Field(
        default=None, description="Output resolution (required without job_id)."
    )
    render_settings: RenderSettings | None = Field(
        default=None, description="Samples (null: the scene's, assumed 128)."
    )
    renderer: Renderer | None = Field(default=None, description="Render engine (blender_cycles).")
    priority: JobPriority | None = Field(default=None, description="Priority tier (normal).")
    chunk_size: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="Frames per farm task (1)."
    )
    scene_size_bytes: StrictInt | None = Field(
        default=None, ge=0, le=2**53, description="Bytes of the scene: loading time per task (0)."
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        given = self.model_fields_set - {"job_id"}
        if self.job_id is not None and given:
            raise ValueError(f"give either job_id or parameters, not both ({', '.join(given)})")
        if self.job_id is None and (self.frame_range is None or self.resolution is None):
            raise ValueError("give job_id, or the parameters with frame_range and resolution")
        return self

    def parameters(self) -> EstimateParameters:
        fields = {
            name: getattr(self, name)
            for name in EstimateParameters.model_fields
            if getattr(self, name) is not None
        }
        return EstimateParameters(**fields)


class JobCostView(JobState):
    """A job's money and the lines it is made of (a page of them), with where the job
    stands."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    cost_status: CostStatus = Field(
        description="Where the job's money stands: pending (billing has not taken the job"
        " yet), holding, held, awaiting_credits, cap_reached or settled."
    )
    estimate: CostEstimate | None = Field(
        description="The estimate's range with its assumptions; null with"
        " estimate_unknown_reason saying why."
    )
    estimate_unknown_reason: EstimateUnknownReason | None = Field(
        description="Why there is no estimate; null when there is one."
    )
    so_far_credits: Decimal = Field(description="Cost incurred so far: the sum of the lines.")
    held_credits: Decimal = Field(description="Credits reserved in your wallet for the job now.")
    captured_credits: Decimal = Field(description="Credits charged when the job ended; 0 before.")
    released_credits: Decimal = Field(
        description="Credits of the hold given back when the job ended; 0 before."
    )
    cap_credits: Decimal | None = Field(description="The job's spending cap; null means none.")
    awaiting_reason: AwaitingReason | None = Field(
        description="Why the job waits for credits (cost_status awaiting_credits); null otherwise."
    )
    currency: Currency = Field(description="Unit of every amount here.")
    lines: list[CostLine] = Field(description="This page of cost lines, in the order recorded.")
    lines_total: int = Field(description="How many cost lines the job has, on all pages.")
    amount_total_credits: Credits = Field(
        description="The sum of amount_credits over all the job's lines, on all pages."
    )
    next_cursor: str | None = Field(
        description="Cursor of the next page of lines; null on the last."
    )


class PricesView(_Model):
    in_force: PriceVersion = Field(description="The price version charged now.")
    next: PriceVersion | None = Field(
        description="The next version, scheduled to take over at its effective_from; null if"
        " none is scheduled."
    )


class PublishPricesRequest(_Model):
    prices: PriceList = Field(description="The machines, their rates and the storage prices.")
    effective_from: datetime | None = Field(
        default=None,
        description="UTC time the version takes over (not in the past); null or omitted: now.",
    )


class SpendCapsRequest(_Model):
    daily_cap_credits: Credits | None = Field(
        default=None,
        ge=0,
        description='Most credits jobs through the key may commit per UTC day ("25.00"); null:'
        " no daily cap.",
    )
    total_cap_credits: Credits | None = Field(
        default=None,
        ge=0,
        description="Most credits committed through the key and not released; null: no total cap.",
    )


def _seq_cursor(cursor: str | None) -> int:
    value = decode_cursor(cursor)
    if value is None:
        return -1
    if not (value.isdigit() and len(value) <= 19 and int(value) <= _INT8_MAX):
        raise InvalidCursor("the cursor is not one we issued")
    return int(value)


async def _job(gw: Gateway, job_id: str, owner_id: str | None) -> dict[str, Any]:
    """The job's envelope as a dict; another user's job is a 404 like a missing one."""
    envelope: dict[str, Any] = orjson.loads(await gw.read.job_envelope(job_id, owner_id))
    return envelope


def _job_parameters(envelope: dict[str, Any]) -> EstimateParameters:
    """What the job asks to render, from its envelope (scene size unknown here: 0)."""
    return EstimateParameters.model_validate(
        {k: envelope[k] for k in ("frame_range", "resolution", "render_settings", "renderer",
                                  "priority", "chunk_size")}
    )  # fmt: skip


@router.post(
    "/v1/cost/estimate",
    operation_id="estimate_cost",
    dependencies=[requires(Scope.jobs_read)],
    summary="Estimate what a render costs",
    description=(
        "A cost range for a render: low_credits, expected_credits and high_credits, the"
        " currency, the expected wall-clock duration_seconds, and the assumptions it rests on"
        " (seconds per frame and where they came from, frames, farm tasks, machines, the"
        " machine type and its price per hour, the price version). Give the job's parameters"
        " (frame_range and resolution at least) or job_id of one of your jobs: its own"
        " measured task times are used once it has some. Amounts are decimal strings."
        " Changes nothing."
    ),
    response_model=CostEstimate,
    responses=errors(
        InvalidFrameRange,
        JobNotFound,
        NoPrices,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def estimate_cost(
    request: Request, body: EstimateCostRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        if body.job_id is None:
            cmd = EstimateCost(owner_id=p.user_id, parameters=body.parameters())
            found = await gw.commands.send(
                cmd, CostEstimate, command_id=command_id, actor=p.actor()
            )
            return 200, found.model_dump_json().encode()
        job = await _job(gw, body.job_id, None if p.is_admin else p.user_id)
        cmd = EstimateCost(owner_id=job["owner_id"], job_id=body.job_id)
        try:
            found = await gw.commands.send(
                cmd, CostEstimate, command_id=command_id, actor=p.actor()
            )
        except JobCostNotFound:  # billing has not taken the job yet: from its parameters
            cmd = EstimateCost(owner_id=job["owner_id"], parameters=_job_parameters(job))
            found = await gw.commands.send(
                cmd, CostEstimate, command_id=f"{command_id}:parameters", actor=p.actor()
            )
        return 200, found.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "estimate_cost", run)


@router.get(
    "/v1/jobs/{job_id}/cost",
    operation_id="get_job_cost",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get a job's cost and its lines",
    description=(
        "The job's id, status, progress and current step, and its money: cost_status, the"
        " estimate (range and assumptions, or null with estimate_unknown_reason),"
        " so_far_credits, held_credits, captured_credits, released_credits, cap_credits,"
        " awaiting_reason and currency; then a page of its cost lines (each farm task: render,"
        " task, frames, worker, machine type, seconds, price, amount; and adjustments at the"
        " cap or the hold) with next_cursor, and lines_total and amount_total_credits over"
        " ALL lines, so the pages can be checked to add up. A job billing has not taken yet"
        " is pending with zeros and no lines. Another user's job answers job_not_found."
    ),
    response_model=JobCostView,
    responses=errors(JobNotFound, InvalidCursor, InsufficientScope),
)
async def get_job_cost(
    request: Request,
    job_id: JobId,
    limit: Annotated[int, Query(ge=1, le=500, description="Lines per page, 1-500.")] = 100,
    cursor: Annotated[
        str | None,
        Query(max_length=300, description="next_cursor of the previous page; omit for the first."),
    ] = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    after = _seq_cursor(cursor)
    job = await _job(gw, job_id, None if p.is_admin else p.user_id)
    cost = await gw.billing.job_cost(job_id)
    placed = await gw.billing.lines(job_id, after, limit + 1) if cost else []
    totals = await gw.billing.line_totals(job_id) if cost else None
    items = placed[:limit]
    more = len(placed) > limit
    money: dict[str, Any]
    if cost is None:
        in_force, _ = await gw.billing.prices(datetime.now(UTC))
        reason = (
            EstimateUnknownReason.not_estimated_yet if in_force else EstimateUnknownReason.no_prices
        )
        cap = (job.get("cost") or {}).get("cap_credits")
        money = {
            "cost_status": CostStatus.pending,
            "estimate": None,
            "estimate_unknown_reason": reason,
            "so_far_credits": ZERO,
            "held_credits": ZERO,
            "captured_credits": ZERO,
            "released_credits": ZERO,
            "cap_credits": None if cap is None else Decimal(cap),
            "awaiting_reason": None,
        }
    else:
        money = {
            "cost_status": cost.status,
            "estimate": cost.estimate,
            "estimate_unknown_reason": (
                None if cost.estimate else EstimateUnknownReason.not_estimated_yet
            ),
            "so_far_credits": cost.so_far_credits,
            "held_credits": cost.held_credits,
            "captured_credits": cost.captured_credits,
            "released_credits": cost.released_credits,
            "cap_credits": cost.cap_credits,
            "awaiting_reason": cost.awaiting_reason,
        }
    view = JobCostView(
        **dict(JobState.of(job)),
        currency=Currency.credits,
        lines=[p.line for p in items],
        lines_total=totals.count if totals else 0,
        amount_total_credits=totals.amount_credits if totals else ZERO,
        next_cursor=encode_cursor(str(items[-1].seq)) if more else None,
        **money,
    )
    return json_response(view.model_dump_json())


@router.get(
    "/v1/prices",
    operation_id="get_prices",
    dependencies=[requires(Access.authenticated)],
    summary="Get the prices",
    description=(
        "The price version in force now (its number, effective_from, who published it, and"
        " the price list: each machine type with its cores, GHz, unit and credits per unit"
        " for every priority tier, the default machine type, storage and egress prices),"
        " and the next version if one is scheduled. Rates are decimal strings. Answers"
        " no_prices while no version is in force."
    ),
    response_model=PricesView,
    responses=errors(NoPrices),
)
async def get_prices(request: Request) -> Response:
    gw = gateway(request)
    in_force, scheduled = await gw.billing.prices(datetime.now(UTC))
    if in_force is None:
        raise NoPrices("no price version is in force")
    return json_response(PricesView(in_force=in_force, next=scheduled).model_dump_json())


@router.post(
    "/v1/admin/prices",
    operation_id="publish_prices",
    dependencies=[requires(Access.admin)],
    summary="Publish a price version (admin)",
    description=(
        "Publish the next price version, in force from effective_from (now if omitted; never"
        " in the past, so no charge already made changes price). Returns the PriceVersion"
        " (201): its number, effective_from, the price list and the publishing admin. Every"
        " priority tier of every machine type must be priced and the default machine type"
        " listed, else validation_failed. Administrators only."
    ),
    status_code=201,
    response_model=PriceVersion,
    responses=errors(Forbidden, IdempotencyKeyReused, IdempotencyInProgress),
)
async def publish_prices(
    request: Request, body: PublishPricesRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    cmd = PublishPrices(prices=body.prices, effective_from=body.effective_from)
    return await send_idempotent(
        request, idempotency_key, "publish_prices", cmd, PriceVersion, status=201
    )


async def _own_key(gw: Gateway, user_id: str, key_id: str) -> None:
    """Only the caller's own key: another user's (or no such key) is a 404."""
    if not any(k.key_id == key_id for k in await gw.read.api_keys(user_id)):
        raise ApiKeyNotFound(f"no API key {key_id}")


@router.put(
    "/v1/api-keys/{key_id}/spend-caps",
    operation_id="set_api_key_spend_caps",
    dependencies=[requires(Access.session)],
    summary="Set an API key's spend caps",
    description=(
        "Set how much jobs created through the key may commit: daily_cap_credits per UTC day"
        " and total_cap_credits until released (null: no cap). A job whose hold would pass a"
        " cap waits with awaiting_reason spend_cap_reached. Returns the key's KeySpend: its"
        " caps, what it committed today and in all, the currency. Your own keys only; needs"
        " a user session."
    ),
    response_model=KeySpend,
    responses=errors(ApiKeyNotFound, Forbidden, IdempotencyKeyReused, IdempotencyInProgress),
)
async def set_api_key_spend_caps(
    request: Request, key_id: KeyId, body: SpendCapsRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)
    await _own_key(gw, p.user_id, key_id)

    cmd = SetKeySpendCaps(
        api_key_id=key_id,
        owner_id=p.user_id,
        daily_cap_credits=body.daily_cap_credits,
        total_cap_credits=body.total_cap_credits,
    )
    return await send_idempotent(request, idempotency_key, "set_api_key_spend_caps", cmd, KeySpend)


@router.get(
    "/v1/api-keys/{key_id}/spend",
    operation_id="get_api_key_spend",
    dependencies=[requires(Access.session)],
    summary="Get an API key's spend",
    description=(
        "The key's spend caps (daily_cap_credits, total_cap_credits; null: none), the credits"
        " its jobs committed today (UTC) and in all (not yet released), and the currency."
        " Your own keys only; needs a user session."
    ),
    response_model=KeySpend,
    responses=errors(ApiKeyNotFound, Forbidden),
)
async def get_api_key_spend(request: Request, key_id: KeyId) -> Response:
    gw, p = gateway(request), principal(request)
    await _own_key(gw, p.user_id, key_id)
    spend = await gw.billing.key_spend(key_id, datetime.now(UTC).date())
    return json_response(spend.model_dump_json())
