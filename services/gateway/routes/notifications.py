"""Notifications: the in-app list, preferences, the live feed (Server-Sent Events), and
webhook endpoints with their deliveries.

Commands go to the notifier; lists come from its read models
(``libs/readmodels/notifications.py``). Answers holding an endpoint's secret are never kept
for replay: a repeated Idempotency-Key is refused (``idempotency_key_reused``) instead.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from contracts.errors import (
    ApiKeyNotFound,
    Forbidden,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InvalidCursor,
    NotificationNotFound,
    StreamLimitReached,
    WebhookDeliveryNotFound,
    WebhookEndpointNotFound,
    WebhookLimitReached,
    WebhookUrlInvalid,
    WebhookUrlNotAllowed,
)
from contracts.identity import Scope
from contracts.notifications import (
    MAX_MARKED_AT_ONCE,
    DeleteWebhookEndpoint,
    MarkNotificationsRead,
    NotificationPreferences,
    NotificationsMarked,
    RegisterWebhookEndpoint,
    ReplayWebhookDelivery,
    RotateWebhookSecret,
    SetNotificationPreferences,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEndpointSecret,
)
from contracts.text import ID_PATTERN
from libs.ids import new_id
from services.gateway.access import requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    json_response,
    principal,
    send_idempotent,
    set_targets,
)
from services.gateway.feed import stream
from services.gateway.readmodels import decode_cursor, encode_cursor
from services.gateway.schemas import (
    DeliveryAttempt,
    NotificationPage,
    NotificationPreferencesRequest,
    NotificationView,
    RegisterWebhookRequest,
    WebhookDeliveryPage,
    WebhookDeliveryView,
    WebhookEndpointList,
)

router = APIRouter(tags=["notifications"])

#: ``read-all`` marks at most this many rounds of MAX_MARKED_AT_ONCE per call.
READ_ALL_ROUNDS = 20


def _id(what: str) -> object:
    return Path(min_length=1, max_length=64, pattern=ID_PATTERN, description=what)


EndpointId = Annotated[str, _id("The webhook endpoint's id (whk_...).")]
DeliveryId = Annotated[str, _id("The delivery's id (dlv_...).")]
NotificationId = Annotated[str, _id("The notification's id (ntf_...).")]
Limit = Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")]
Cursor = Annotated[
    str | None,
    Query(max_length=300, description="next_cursor from the previous page; omit for the first."),
]


def _before(cursor: str | None, prefix: str) -> str | None:
    value = decode_cursor(cursor)
    if value is not None and not value.startswith(f"{prefix}_"):
        raise InvalidCursor("the cursor is not one we issued")
    return value


async def _secret_answer(
    request: Request, operation: str, key: str | None, cmd: object
) -> Response:
    gw, p = gateway(request), principal(request)
    assert isinstance(cmd, RegisterWebhookEndpoint | RotateWebhookSecret)
    command_id = f"{operation}:{p.idempotency_scope}:{key or uuid.uuid4()}"
    answer = await gw.commands.send(
        cmd, WebhookEndpointSecret, command_id=command_id, actor=p.actor()
    )
    set_targets(request, endpoint_id=answer.endpoint_id)
    return json_response(answer.model_dump_json(), 201 if operation == "create_webhook" else 200)


@router.post(
    "/v1/webhooks",
    operation_id="create_webhook",
    dependencies=[requires(Scope.jobs_write)],
    summary="Register a webhook endpoint",
    description=(
        "Register a URL to receive your notifications as signed POSTs (Standard Webhooks:"
        " webhook-id, webhook-timestamp, webhook-signature). The answer holds the signing"
        " secret (whsec_...) once only: store it. Failed deliveries are retried with back-off"
        " for a day, then dead-lettered. Called with an API key, the endpoint is bound to that"
        " key unless api_key_id says otherwise."
    ),
    status_code=201,
    response_model=WebhookEndpointSecret,
    responses=errors(
        InsufficientScope,
        Forbidden,
        WebhookUrlInvalid,
        WebhookUrlNotAllowed,
        WebhookLimitReached,
        ApiKeyNotFound,
        IdempotencyKeyReused,
    ),
)
async def create_webhook(
    request: Request, body: RegisterWebhookRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)
    key_id = body.api_key_id or p.api_key_id
    if p.api_key_id is not None and key_id != p.api_key_id:
        raise Forbidden("an API key may bind an endpoint to itself only")
    if key_id is not None:
        mine = {k.key_id: k for k in await gw.read.identity.api_keys(p.user_id)}
        known = mine.get(key_id)
        if known is None or known.revoked_at is not None:
            raise ApiKeyNotFound(f"no active API key {key_id}")
    cmd = RegisterWebhookEndpoint(
        user_id=p.user_id,
        endpoint_id=new_id("whk"),
        url=body.url,
        kinds=body.kinds,
        api_key_id=key_id,
    )
    return await _secret_answer(request, "create_webhook", idempotency_key, cmd)


@router.get(
    "/v1/webhooks",
    operation_id="list_webhooks",
    dependencies=[requires(Scope.jobs_read)],
    summary="List webhook endpoints",
    description="Your webhook endpoints (never their secrets), by id.",
    response_model=WebhookEndpointList,
    responses=errors(InsufficientScope),
)
async def list_webhooks(request: Request) -> WebhookEndpointList:
    gw, p = gateway(request), principal(request)
    return WebhookEndpointList(items=await gw.notifications.endpoints(p.user_id))


@router.delete(
    "/v1/webhooks/{endpoint_id}",
    operation_id="delete_webhook",
    dependencies=[requires(Scope.jobs_write)],
    summary="Delete a webhook endpoint",
    description=(
        "Stop sending to this endpoint. Deliveries still waiting for a retry are"
        " dead-lettered at their next attempt."
    ),
    response_model=WebhookEndpoint,
    responses=errors(InsufficientScope, WebhookEndpointNotFound),
)
async def delete_webhook(request: Request, endpoint_id: EndpointId) -> Response:
    gw, p = gateway(request), principal(request)
    set_targets(request, endpoint_id=endpoint_id)
    gone = await gw.commands.send(
        DeleteWebhookEndpoint(user_id=p.user_id, endpoint_id=endpoint_id),
        WebhookEndpoint,
        command_id=f"delete_webhook:{p.user_id}:{endpoint_id}",
        actor=p.actor(),
    )
    return json_response(gone.model_dump_json())


@router.post(
    "/v1/webhooks/{endpoint_id}/rotate-secret",
    operation_id="rotate_webhook_secret",
    dependencies=[requires(Scope.jobs_write)],
    summary="Rotate a webhook endpoint's secret",
    description=(
        "A new signing secret, answered once. For the next 24 hours every message is signed"
        " with both the new and the previous secret, so receivers can switch at their pace."
    ),
    response_model=WebhookEndpointSecret,
    responses=errors(InsufficientScope, WebhookEndpointNotFound, IdempotencyKeyReused),
)
async def rotate_webhook_secret(
    request: Request, endpoint_id: EndpointId, idempotency_key: IdempotencyKey = None
) -> Response:
    p = principal(request)
    cmd = RotateWebhookSecret(user_id=p.user_id, endpoint_id=endpoint_id)
    return await _secret_answer(request, "rotate_webhook_secret", idempotency_key, cmd)


@router.get(
    "/v1/webhooks/{endpoint_id}/deliveries",
    operation_id="list_webhook_deliveries",
    dependencies=[requires(Scope.jobs_read)],
    summary="List an endpoint's deliveries",
    description=(
        "The endpoint's deliveries, newest first, each with its status (pending, succeeded,"
        " dead_lettered), next attempt and every attempt made (status code or error)."
    ),
    response_model=WebhookDeliveryPage,
    responses=errors(InsufficientScope, WebhookEndpointNotFound, InvalidCursor),
)
async def list_webhook_deliveries(
    request: Request, endpoint_id: EndpointId, limit: Limit = 50, cursor: Cursor = None
) -> WebhookDeliveryPage:
    gw, p = gateway(request), principal(request)
    before = _before(cursor, "dlv")
    if await gw.notifications.endpoint(p.user_id, endpoint_id) is None:
        raise WebhookEndpointNotFound(f"no webhook endpoint {endpoint_id}", endpoint_id=endpoint_id)
    rows = await gw.notifications.deliveries(p.user_id, endpoint_id, before, limit + 1)
    items = [
        WebhookDeliveryView(
            delivery_id=d.delivery_id,
            endpoint_id=d.endpoint_id,
            notification_id=d.notification_id,
            kind=d.kind,
            status=d.status,
            attempts=d.attempts,
            next_attempt_at=d.next_attempt_at,
            created_at=d.created_at,
            updated_at=d.updated_at,
            attempt_log=[DeliveryAttempt(**asdict(a)) for a in attempts],
        )
        for d, attempts in rows[:limit]
    ]
    more = len(rows) > limit
    next_cursor = encode_cursor(items[-1].delivery_id) if more and items else None
    return WebhookDeliveryPage(items=items, next_cursor=next_cursor)


@router.post(
    "/v1/webhooks/deliveries/{delivery_id}/replay",
    operation_id="replay_webhook_delivery",
    dependencies=[requires(Scope.jobs_write)],
    summary="Send a delivery again",
    description=(
        "Send the delivery again now (a dead-lettered one too), with the same webhook-id and"
        " a fresh timestamp and signature; failures are retried for another day."
    ),
    response_model=WebhookDelivery,
    responses=errors(
        InsufficientScope, WebhookDeliveryNotFound, IdempotencyKeyReused, IdempotencyInProgress
    ),
)
async def replay_webhook_delivery(
    request: Request, delivery_id: DeliveryId, idempotency_key: IdempotencyKey = None
) -> Response:
    p = principal(request)
    set_targets(request, delivery_id=delivery_id)
    cmd = ReplayWebhookDelivery(user_id=p.user_id, delivery_id=delivery_id)
    return await send_idempotent(
        request, idempotency_key, "replay_webhook_delivery", cmd, WebhookDelivery
    )


@router.get(
    "/v1/notifications",
    operation_id="list_notifications",
    dependencies=[requires(Scope.jobs_read)],
    summary="List notifications",
    description=(
        "Your notifications, newest first (unread=true: only unread ones), with"
        " unread_count. Kinds and payloads: docs/notifications.md."
    ),
    response_model=NotificationPage,
    responses=errors(InsufficientScope, InvalidCursor),
)
async def list_notifications(
    request: Request,
    limit: Limit = 50,
    cursor: Cursor = None,
    unread: Annotated[bool, Query(description="Only unread notifications.")] = False,
) -> NotificationPage:
    gw, p = gateway(request), principal(request)
    before = _before(cursor, "ntf")
    rows = await gw.notifications.notifications(p.user_id, before, unread, limit + 1)
    items = [
        NotificationView(
            notification_id=r.notification_id,
            kind=r.kind,
            payload=r.payload,
            created_at=r.created_at,
            read_at=r.read_at,
        )
        for r in rows[:limit]
    ]
    more = len(rows) > limit
    next_cursor = encode_cursor(items[-1].notification_id) if more and items else None
    unread_count = await gw.notifications.unread_count(p.user_id)
    return NotificationPage(items=items, next_cursor=next_cursor, unread_count=unread_count)


@router.post(
    "/v1/notifications/{notification_id}/read",
    operation_id="mark_notification_read",
    dependencies=[requires(Scope.jobs_read)],
    summary="Mark a notification read",
    description="Marking a read notification again changes nothing (marked: 0).",
    response_model=NotificationsMarked,
    responses=errors(
        InsufficientScope, NotificationNotFound, IdempotencyKeyReused, IdempotencyInProgress
    ),
)
async def mark_notification_read(
    request: Request, notification_id: NotificationId, idempotency_key: IdempotencyKey = None
) -> Response:
    p = principal(request)
    set_targets(request, notification_id=notification_id)
    cmd = MarkNotificationsRead(user_id=p.user_id, notification_ids=[notification_id])
    return await send_idempotent(
        request, idempotency_key, "mark_notification_read", cmd, NotificationsMarked
    )


@router.post(
    "/v1/notifications/read-all",
    operation_id="mark_all_notifications_read",
    dependencies=[requires(Scope.jobs_read)],
    summary="Mark every notification read",
    description=(
        f"Marks your unread notifications read, up to {READ_ALL_ROUNDS * MAX_MARKED_AT_ONCE}"
        " per call (call again while unread_count is above zero)."
    ),
    response_model=NotificationsMarked,
    responses=errors(InsufficientScope),
)
async def mark_all_notifications_read(request: Request) -> NotificationsMarked:
    gw, p = gateway(request), principal(request)
    call, marked = uuid.uuid4(), 0
    for n in range(READ_ALL_ROUNDS):
        ids = await gw.notifications.unread_ids(p.user_id, MAX_MARKED_AT_ONCE)
        if not ids:
            break
        done = await gw.commands.send(
            MarkNotificationsRead(user_id=p.user_id, notification_ids=ids),
            NotificationsMarked,
            command_id=f"mark_all_notifications_read:{call}:{n}",
            actor=p.actor(),
        )
        marked += done.marked
        if len(ids) < MAX_MARKED_AT_ONCE:
            break
    return NotificationsMarked(marked=marked)


@router.get(
    "/v1/notification-preferences",
    operation_id="get_notification_preferences",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get notification preferences",
    description="Every notification kind with its channels: in_app, webhook, email.",
    response_model=NotificationPreferences,
    responses=errors(InsufficientScope),
)
async def get_notification_preferences(request: Request) -> NotificationPreferences:
    gw, p = gateway(request), principal(request)
    return NotificationPreferences(kinds=await gw.notifications.preferences(p.user_id))


@router.put(
    "/v1/notification-preferences",
    operation_id="set_notification_preferences",
    dependencies=[requires(Scope.jobs_write)],
    summary="Set notification preferences",
    description=(
        "Turn channels of some kinds on or off (the others are kept); answers every kind."
        " A kind off in_app is neither listed nor in the live feed; off by webhook or email"
        " it is not sent there. Applies to notifications made from then on."
    ),
    response_model=NotificationPreferences,
    responses=errors(InsufficientScope),
)
async def set_notification_preferences(
    request: Request, body: NotificationPreferencesRequest
) -> Response:
    gw, p = gateway(request), principal(request)
    answer = await gw.commands.send(
        SetNotificationPreferences(user_id=p.user_id, changes=body.kinds),
        NotificationPreferences,
        command_id=f"set_notification_preferences:{uuid.uuid4()}",
        actor=p.actor(),
    )
    return json_response(answer.model_dump_json())


#: A live feed cursor: the ``seq`` of the last item received (what each event's id holds).
MAX_CURSOR_DIGITS = 18


def _feed_cursor(value: str | None) -> int | None:
    if value is None:
        return None
    if not value.isascii() or not value.isdigit() or len(value) > MAX_CURSOR_DIGITS:
        raise InvalidCursor("Last-Event-ID is not an event id we sent")
    return int(value)


@router.get(
    "/v1/events/stream",
    operation_id="stream_events",
    dependencies=[requires(Scope.jobs_read)],
    openapi_extra={"x-rf-stream": True},
    summary="Live feed of your events (Server-Sent Events)",
    description=(
        "text/event-stream of your jobs' and wallet's events and your notifications"
        " (event: the type, e.g. job.JobCompleted, wallet.CreditsHeld,"
        " notification.created; data: {seq, type, at, data}; id: seq). Reconnect with"
        " Last-Event-ID (or last_event_id=) set to the last id received to get everything"
        " after it, once; without it the stream starts with what comes next. A comment line"
        " comes after every quiet heartbeat interval. At most a few connections per user"
        " (429 stream_limit_reached beyond). Needs jobs:read."
    ),
    response_class=Response,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The event stream."},
        **errors(InsufficientScope, InvalidCursor, StreamLimitReached),
    },
)
async def stream_events(
    request: Request,
    last_event_id_header: Annotated[
        str | None, Header(alias="Last-Event-ID", max_length=40, include_in_schema=False)
    ] = None,
    last_event_id: Annotated[
        str | None,
        Query(max_length=40, description="The last id received, for clients without headers."),
    ] = None,
) -> Response:
    gw, p = gateway(request), principal(request)
    cursor = _feed_cursor(last_event_id_header or last_event_id)
    head = await gw.notifications.feed_head(p.user_id)
    if cursor is not None and cursor > head:
        raise InvalidCursor("Last-Event-ID is past the latest event: not an id we sent")
    conn_id = await gw.streams.acquire(p.user_id)
    if conn_id is None:
        limit = gw.streams.limit
        raise StreamLimitReached(f"at most {limit} live feed connections at once", limit=limit)
    events = stream(
        gw.feed,
        gw.streams,
        p.user_id,
        conn_id,
        head if cursor is None else cursor,
        gw.settings.sse_heartbeat_seconds,
    )
    return EventSourceResponse(
        events, headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    )
