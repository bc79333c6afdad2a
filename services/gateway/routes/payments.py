"""Top-ups paid through Razorpay: orders, the checkout's answer, and Razorpay's webhooks.

The gateway holds no Razorpay secret: it sends commands to the payments service and reads
its orders read model (``libs/readmodels/payments.py``). The webhook route is public (Razorpay
signs it; the payments service checks the signature) and passes the raw body on unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response

from contracts.errors import (
    BadRequest,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    OrderNotFound,
    PayloadTooLarge,
    PaymentMismatch,
    PaymentNotCaptured,
    PaymentProviderUnavailable,
    PaymentSignatureInvalid,
    WebhookSignatureInvalid,
)
from contracts.identity import Scope
from contracts.payments import (
    CreateTopUpOrder,
    ReceiveWebhook,
    TopUpOrder,
    VerifyCheckout,
    WebhookAccepted,
)
from contracts.text import ID_PATTERN
from libs.ids import new_id
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
from services.gateway.schemas import CreatePaymentOrderRequest, TopUpOrderPage, VerifyPaymentRequest

router = APIRouter(tags=["payments"])

#: The webhook path: public (no token, no per-user rate limit), body size bounded.
WEBHOOK_PATH = "/v1/payments/webhook"
#: Razorpay's webhook bodies are a few kB; anything this big is not one.
MAX_WEBHOOK_BYTES = 256 * 1024

OrderId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="Razorpay's order id (order_...), from create_payment_order.",
    ),
]


@router.post(
    "/v1/payments/orders",
    operation_id="create_payment_order",
    dependencies=[requires(Scope.jobs_write)],
    summary="Create a top-up order",
    description=(
        "Create a Razorpay order to top up your wallet with amount_paise. Answers 201 with"
        " the order: open Razorpay Checkout with its order_id, key_id, amount_paise and"
        " currency; then send what Checkout hands back to verify_payment. The wallet gets"
        " the credits shown once the payment is captured (whether verify_payment or"
        " Razorpay's webhook tells us first), once. With the same Idempotency-Key a retry"
        " answers the same order."
    ),
    status_code=201,
    response_model=TopUpOrder,
    responses=errors(
        InsufficientScope, IdempotencyKeyReused, IdempotencyInProgress, PaymentProviderUnavailable
    ),
)
async def create_payment_order(
    request: Request, body: CreatePaymentOrderRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    p = principal(request)
    cmd = CreateTopUpOrder(
        user_id=p.user_id, topup_id=new_id("top"), amount_paise=body.amount_paise
    )
    return await send_idempotent(
        request,
        idempotency_key,
        "create_payment_order",
        cmd,
        TopUpOrder,
        status=201,
        targets=lambda order: {"order_id": order.order_id},
    )


@router.get(
    "/v1/payments/orders",
    operation_id="list_payment_orders",
    dependencies=[requires(Scope.jobs_read)],
    summary="List top-up orders",
    description=(
        "Your top-up orders, newest first: each with its status (created, failed, paid,"
        " credited, mismatched, refunded) and the payment that paid it. Returns a page and"
        " next_cursor (null on the last page)."
    ),
    response_model=TopUpOrderPage,
    responses=errors(InvalidCursor, InsufficientScope),
)
async def list_payment_orders(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 50,
    cursor: Annotated[
        str | None,
        Query(
            max_length=300, description="next_cursor from the previous page; omit for the first."
        ),
    ] = None,
) -> TopUpOrderPage:
    gw, p = gateway(request), principal(request)
    rows = await gw.payments.orders(p.user_id, _after(cursor), limit + 1)
    items, more = rows[:limit], len(rows) > limit
    key_id = gw.settings.razorpay_key_id
    last = items[-1] if items else None
    next_cursor = (
        encode_cursor(f"{last.created_at.isoformat()}|{last.order_id}") if more and last else None
    )
    return TopUpOrderPage(items=[r.view(key_id) for r in items], next_cursor=next_cursor)


def _after(cursor: str | None) -> tuple[datetime, str] | None:
    value = decode_cursor(cursor)
    if value is None:
        return None
    at, _, order_id = value.partition("|")
    try:
        return datetime.fromisoformat(at), order_id
    except ValueError as e:
        raise InvalidCursor("the cursor is not one we issued") from e


@router.get(
    "/v1/payments/orders/{order_id}",
    operation_id="get_payment_order",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get a top-up order",
    description=(
        "One of your top-up orders: its status (credited once the wallet holds its credits)"
        " and payment. Another user's order answers order_not_found."
    ),
    response_model=TopUpOrder,
    responses=errors(OrderNotFound, InsufficientScope),
)
async def get_payment_order(request: Request, order_id: OrderId) -> TopUpOrder:
    gw, p = gateway(request), principal(request)
    row = await gw.payments.order(order_id, p.user_id)
    if row is None:
        raise OrderNotFound(f"no top-up order {order_id}", order_id=order_id)
    return row.view(gw.settings.razorpay_key_id)


@router.post(
    "/v1/payments/verify",
    operation_id="verify_payment",
    dependencies=[requires(Scope.jobs_write)],
    summary="Verify a checkout payment",
    description=(
        "Send what Razorpay Checkout handed the browser after paying (razorpay_order_id,"
        " razorpay_payment_id, razorpay_signature). The signature is checked, the payment"
        " confirmed with Razorpay (amount, currency, order) and the order answered with"
        " status paid (the credit follows at once) or credited. Repeating it is harmless:"
        " a payment is credited once, whether this call or Razorpay's webhook came first."
    ),
    response_model=TopUpOrder,
    responses=errors(
        PaymentSignatureInvalid,
        OrderNotFound,
        PaymentNotCaptured,
        PaymentMismatch,
        PaymentProviderUnavailable,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def verify_payment(
    request: Request, body: VerifyPaymentRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)
    set_targets(request, order_id=body.razorpay_order_id)

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = VerifyCheckout(
            user_id=p.user_id,
            order_id=body.razorpay_order_id,
            payment_id=body.razorpay_payment_id,
            signature=body.razorpay_signature,
        )
        order = await gw.commands.send(cmd, TopUpOrder, command_id=command_id, actor=p.actor())
        row = await gw.payments.order(order.order_id, p.user_id)
        if row is not None and row.version and row.payment_id == order.payment_id:
            order = row.view(gw.settings.razorpay_key_id)  # credited already, perhaps
        return 200, order.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "verify_payment", run)


@router.post(
    WEBHOOK_PATH,
    operation_id="receive_payment_webhook",
    dependencies=[requires(Access.signed)],
    summary="Razorpay's webhooks",
    description=(
        "For Razorpay only (no authentication: the body is signed). The raw body is checked"
        " against X-Razorpay-Signature (HMAC-SHA256 with the webhook secret, or the previous"
        " one during a rotation) and kept once per X-Razorpay-Event-Id; answers 200 with"
        " the event id and whether it was a repeat, at once (it is applied afterwards)."
    ),
    response_model=WebhookAccepted,
    responses=errors(WebhookSignatureInvalid, BadRequest, PayloadTooLarge, auth=False),
)
async def receive_payment_webhook(
    request: Request,
    signature: Annotated[
        str | None,
        Header(alias="X-Razorpay-Signature", description="HMAC-SHA256 hex of the raw body."),
    ] = None,
    event_id: Annotated[
        str | None,
        Header(alias="X-Razorpay-Event-Id", description="Razorpay's id of the event."),
    ] = None,
) -> Response:
    gw = gateway(request)
    if not signature or not event_id:
        raise BadRequest("X-Razorpay-Signature and X-Razorpay-Event-Id are required")
    if len(signature) > 200 or len(event_id) > 100:
        raise BadRequest("X-Razorpay-Signature or X-Razorpay-Event-Id is too long")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge(f"a webhook body is at most {MAX_WEBHOOK_BYTES} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_WEBHOOK_BYTES:
            raise PayloadTooLarge(f"a webhook body is at most {MAX_WEBHOOK_BYTES} bytes")
    try:
        body = raw.decode()
    except UnicodeDecodeError as e:
        raise BadRequest("the webhook body is not UTF-8") from e
    accepted = await gw.commands.send(
        ReceiveWebhook(body=body, signature=signature, event_id=event_id),
        WebhookAccepted,
        command_id=f"receive_payment_webhook:{request.state.request_id}",
        actor=gw.anonymous_actor(request),
    )
    return json_response(accepted.model_dump_json())
