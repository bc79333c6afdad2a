"""The stand-in's web service: Razorpay's REST subset (``/v1/...``, HTTP Basic auth with the
key id and secret) and test controls (``/_test/...``, same auth) that pay orders as Checkout
would, refund, lose disputes and send the signed webhooks."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from deploy.razorpay.store import Store, now, razorpay_id

log = logging.getLogger("deploy.razorpay")

MIN_AMOUNT = 100
MAX_RECEIPT = 40
MAX_NOTES = 15
MAX_NOTE_CHARS = 256
MAX_COUNT = 100
ACCOUNT_ID = "acc_StandIn000001"
OUTCOMES = ("captured", "failed", "failed_then_captured", "authorized")


@dataclass(frozen=True)
class RazorpayConfig:
    key_id: str
    key_secret: str
    webhook_secret: str
    db: Path
    webhook_url: str | None = None


class ApiError(Exception):
    """An error in Razorpay's shape: ``{"error": {"code", "description", ...}}``."""

    def __init__(self, status: int, description: str, field: str | None = None) -> None:
        super().__init__(description)
        self.status = status
        self.description = description
        self.field = field

    def response(self) -> JSONResponse:
        code = "BAD_REQUEST_ERROR" if self.status < 500 else "SERVER_ERROR"
        error: dict[str, Any] = {
            "code": code,
            "description": self.description,
            "source": "NA",
            "step": "NA",
            "reason": "input_validation_failed" if self.status == 400 else "NA",
            "metadata": {},
        }
        if self.field:
            error["field"] = self.field
        return JSONResponse({"error": error}, self.status)


def sign(secret: str, message: str) -> str:
    """HMAC-SHA256 hex, as Razorpay signs Checkout answers and webhooks."""
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def _int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.isdigit():
            return int(value)
        raise ApiError(400, f"The {name} must be an integer.", name)
    return value


def _query_int(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise ApiError(400, f"The {name} must be an integer.", name)
    return int(raw)


def _collection(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"entity": "collection", "count": len(items), "items": items}


class RazorpayStandIn:
    """The endpoints; state in :class:`Store`, webhooks sent with one HTTP client."""

    def __init__(self, config: RazorpayConfig) -> None:
        self.config = config
        self.store = Store(config.db)
        self.http: httpx.AsyncClient | None = None
        self._basic = (
            "Basic " + base64.b64encode(f"{config.key_id}:{config.key_secret}".encode()).decode()
        )

    # --- plumbing -----------------------------------------------------------------------

    def endpoint(
        self, handler: Callable[[Request], Awaitable[Any]], status: int = 200
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            if not self._authorized(request):
                return ApiError(401, "Authentication failed").response()
            try:
                return JSONResponse(await handler(request), status)
            except ApiError as e:
                return e.response()

        return run

    def _authorized(self, request: Request) -> bool:
        given = request.headers.get("authorization", "")
        if not given.startswith("Basic "):
            return False
        try:
            base64.b64decode(given[6:], validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given.encode(), self._basic.encode())

    async def _json(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        if not raw:
            return {}
        if request.headers.get("content-type", "").startswith("application/x-www-form"):
            form = await request.form()
            return {k: v for k, v in form.items()}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, "The request body is not valid JSON.") from e
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object.")
        return body

    def _found(self, entity: str, entity_id: str) -> dict[str, Any]:
        found = self.store.get(entity, entity_id)
        if found is None:
            raise ApiError(400, "The id provided does not exist", "id")
        return found

    # --- orders -------------------------------------------------------------------------

    async def create_order(self, request: Request) -> dict[str, Any]:
        body = await self._json(request)
        if "amount" not in body:
            raise ApiError(400, "The amount field is required.", "amount")
        amount = _int(body["amount"], "amount")
        if amount < MIN_AMOUNT:
            raise ApiError(400, "Order amount less than minimum amount allowed", "amount")
        currency = body.get("currency", "INR")
        if not isinstance(currency, str) or len(currency) != 3:
            raise ApiError(400, "The currency must be 3 characters.", "currency")
        receipt = body.get("receipt")
        if receipt is not None and (not isinstance(receipt, str) or len(receipt) > MAX_RECEIPT):
            raise ApiError(400, "The receipt may not be greater than 40 characters.", "receipt")
        notes = body.get("notes") or {}
        if not isinstance(notes, dict) or len(notes) > MAX_NOTES:
            raise ApiError(400, "The notes may not have more than 15 items.", "notes")
        if any(len(str(v)) > MAX_NOTE_CHARS for v in notes.values()):
            raise ApiError(400, "The notes values may not be greater than 256 characters.")
        capture = body.get("payment_capture", 1)
        order = {
            "id": razorpay_id("order"),
            "entity": "order",
            "amount": amount,
            "amount_paid": 0,
            "amount_due": amount,
            "currency": currency.upper(),
            "receipt": receipt,
            "offer_id": None,
            "status": "created",
            "attempts": 0,
            "notes": notes or [],
            "created_at": now(),
            # Not in Razorpay's answer: kept to know whether payments auto-capture.
            "_payment_capture": str(capture) in ("1", "true", "True"),
        }
        self.store.put(order)
        return _public(order)

    async def get_order(self, request: Request) -> dict[str, Any]:
        return _public(self._found("order", request.path_params["order_id"]))

    async def order_payments(self, request: Request) -> dict[str, Any]:
        order = self._found("order", request.path_params["order_id"])
        return _collection(self.store.children("payment", order["id"]))

    # --- payments -----------------------------------------------------------------------

    async def get_payment(self, request: Request) -> dict[str, Any]:
        return self._found("payment", request.path_params["payment_id"])

    async def list_payments(self, request: Request) -> dict[str, Any]:
        count = _query_int(request, "count", 10) or 10
        if count > MAX_COUNT:
            raise ApiError(400, "The count may not be greater than 100.", "count")
        items = self.store.window(
            "payment",
            _query_int(request, "from", None),
            _query_int(request, "to", None),
            count,
            _query_int(request, "skip", 0) or 0,
        )
        return _collection(items)

    async def capture_payment(self, request: Request) -> dict[str, Any]:
        payment = self._found("payment", request.path_params["payment_id"])
        body = await self._json(request)
        amount = _int(body.get("amount", payment["amount"]), "amount")
        if payment["status"] == "captured":
            raise ApiError(400, "This payment has already been captured")
        if payment["status"] != "authorized":
            raise ApiError(400, "Only payments which have been authorized can be captured")
        if amount != payment["amount"]:
            raise ApiError(400, "Capture amount must be equal to the amount authorized", "amount")
        return self._capture(payment)

    def _capture(self, payment: dict[str, Any]) -> dict[str, Any]:
        payment.update(status="captured", captured=True, error_code=None)
        payment.update(error_description=None, error_source=None, error_step=None)
        payment["error_reason"] = None
        self.store.put(payment, parent=payment["order_id"])
        order = self.store.get("order", payment["order_id"])
        if order is not None:
            paid = order["amount_paid"] + payment["amount"]
            order.update(status="paid", amount_paid=paid, amount_due=max(0, order["amount"] - paid))
            self.store.put(order)
        return payment

    async def refund_payment(self, request: Request) -> dict[str, Any]:
        payment = self._found("payment", request.path_params["payment_id"])
        body = await self._json(request)
        refund = self._refund(payment, body.get("amount"))
        await self._send([("refund.processed", self._refund_payload(refund))], {})
        return refund

    def _refund(self, payment: dict[str, Any], amount: Any) -> dict[str, Any]:
        if payment["status"] not in ("captured", "refunded"):
            raise ApiError(400, "Payment has not been captured yet")
        left = payment["amount"] - payment["amount_refunded"]
        amount = left if amount is None else _int(amount, "amount")
        if amount < 100 or amount > left:
            raise ApiError(400, "The refund amount provided is greater than amount captured")
        refund = {
            "id": razorpay_id("rfnd"),
            "entity": "refund",
            "amount": amount,
            "currency": payment["currency"],
            "payment_id": payment["id"],
            "notes": [],
            "receipt": None,
            "acquirer_data": {"arn": None},
            "created_at": now(),
            "batch_id": None,
            "status": "processed",
            "speed_processed": "normal",
            "speed_requested": "normal",
        }
        self.store.put(refund, parent=payment["id"])
        payment["amount_refunded"] += amount
        full = payment["amount_refunded"] >= payment["amount"]
        payment.update(status="refunded" if full else "captured")
        payment["refund_status"] = "full" if full else "partial"
        self.store.put(payment, parent=payment["order_id"])
        return refund

    async def get_refund(self, request: Request) -> dict[str, Any]:
        return self._found("refund", request.path_params["refund_id"])

    # --- test controls ------------------------------------------------------------------

    async def test_pay(self, request: Request) -> dict[str, Any]:
        """Pay an order as Checkout would; answers what Checkout hands the browser, and the
        webhooks sent. Body: ``outcome`` (captured | failed | failed_then_captured |
        authorized), ``amount`` / ``currency`` (to pay other than the order says),
        ``deliver`` (false: send no webhook) and the webhook options."""
        order = self._found("order", request.path_params["order_id"])
        body = await self._json(request)
        outcome = body.get("outcome", "captured")
        if outcome not in OUTCOMES:
            raise ApiError(400, f"outcome must be one of {', '.join(OUTCOMES)}", "outcome")
        amount = _int(body.get("amount", order["amount"]), "amount")
        payment = self._new_payment(order, amount, str(body.get("currency", order["currency"])))
        events: list[tuple[str, dict[str, Any]]] = []
        order["attempts"] += 1
        if order["status"] == "created":
            order["status"] = "attempted"
        self.store.put(order)
        if outcome in ("failed", "failed_then_captured"):
            payment.update(
                status="failed",
                error_code="BAD_REQUEST_ERROR",
                error_description="Payment failed because the bank declined it",
                error_source="bank",
                error_step="payment_authorization",
                error_reason="payment_declined",
            )
            self.store.put(payment, parent=order["id"])
            events.append(("payment.failed", {"payment": {"entity": dict(payment)}}))
        if outcome in ("captured", "failed_then_captured", "authorized"):
            payment.update(status="authorized", error_code=None, error_description=None)
            payment.update(error_source=None, error_step=None, error_reason=None)
            self.store.put(payment, parent=order["id"])
            events.append(("payment.authorized", {"payment": {"entity": dict(payment)}}))
            if order.get("_payment_capture", True) and outcome != "authorized":
                self._capture(payment)
                paid = self.store.get("order", order["id"])
                assert paid is not None
                events.append(("payment.captured", {"payment": {"entity": dict(payment)}}))
                events.append(
                    (
                        "order.paid",
                        {"payment": {"entity": dict(payment)}, "order": {"entity": _public(paid)}},
                    )
                )
        sent = await self._send(events, body) if body.get("deliver", True) else []
        answer: dict[str, Any] = {
            "razorpay_payment_id": payment["id"],
            "razorpay_order_id": order["id"],
            "razorpay_signature": sign(self.config.key_secret, f"{order['id']}|{payment['id']}"),
        }
        return {**answer, "payment": payment, "webhooks": sent}

    def _new_payment(self, order: dict[str, Any], amount: int, currency: str) -> dict[str, Any]:
        payment = {
            "id": razorpay_id("pay"),
            "entity": "payment",
            "amount": amount,
            "currency": currency,
            "status": "created",
            "order_id": order["id"],
            "invoice_id": None,
            "international": False,
            "method": "upi",
            "amount_refunded": 0,
            "refund_status": None,
            "captured": False,
            "description": None,
            "card_id": None,
            "bank": None,
            "wallet": None,
            "vpa": "success@razorpay",
            "email": "payer@example.com",
            "contact": "+919999999999",
            "notes": order["notes"],
            "fee": None,
            "tax": None,
            "error_code": None,
            "error_description": None,
            "error_source": None,
            "error_step": None,
            "error_reason": None,
            "acquirer_data": {"rrn": str(secrets.randbelow(10**12)).zfill(12)},
            "created_at": now(),
        }
        return self.store.put(payment, parent=order["id"])

    async def test_refund(self, request: Request) -> dict[str, Any]:
        """Refund a payment (all that is left, or ``amount``) and send ``refund.processed``."""
        payment = self._found("payment", request.path_params["payment_id"])
        body = await self._json(request)
        refund = self._refund(payment, body.get("amount"))
        sent = await self._send([("refund.processed", self._refund_payload(refund))], body)
        return {"refund": refund, "webhooks": sent}

    def _refund_payload(self, refund: dict[str, Any]) -> dict[str, Any]:
        payment = self.store.get("payment", refund["payment_id"])
        return {"refund": {"entity": refund}, "payment": {"entity": payment}}

    async def test_dispute_lost(self, request: Request) -> dict[str, Any]:
        """A chargeback the payer won on a captured payment: ``payment.dispute.lost``."""
        payment = self._found("payment", request.path_params["payment_id"])
        body = await self._json(request)
        if payment["status"] not in ("captured", "refunded"):
            raise ApiError(400, "Payment has not been captured yet")
        amount = _int(body.get("amount", payment["amount"]), "amount")
        dispute = {
            "id": razorpay_id("disp"),
            "entity": "dispute",
            "payment_id": payment["id"],
            "amount": amount,
            "currency": payment["currency"],
            "amount_deducted": amount,
            "reason_code": "chargeback",
            "respond_by": now() + 7 * 86400,
            "status": "lost",
            "phase": "chargeback",
            "created_at": now(),
        }
        self.store.put(dispute, parent=payment["id"])
        payload = {"payment": {"entity": payment}, "dispute": {"entity": dispute}}
        sent = await self._send([("payment.dispute.lost", payload)], body)
        return {"dispute": dispute, "webhooks": sent}

    # --- webhooks -----------------------------------------------------------------------

    async def _send(
        self, events: list[tuple[str, dict[str, Any]]], options: dict[str, Any]
    ) -> list[dict[str, Any]]:
        """POST each event, signed, to the webhook URL; ``duplicate`` sends each twice (same
        event id), ``reverse`` in reverse order, ``sign_with`` signs with another secret."""
        url = options.get("webhook_url") or self.config.webhook_url
        if not url or not events:
            return []
        secret = str(options.get("sign_with") or self.config.webhook_secret)
        bodies = [(razorpay_id("evt")[4:], self._event(name, payload)) for name, payload in events]
        if options.get("reverse"):
            bodies.reverse()
        if options.get("duplicate"):
            bodies = [b for b in bodies for _ in range(2)]
        sent = []
        for event_id, (name, body) in bodies:
            sent.append(await self._post(url, event_id, name, body, secret))
        return sent

    def _event(self, name: str, payload: dict[str, Any]) -> tuple[str, str]:
        body = {
            "entity": "event",
            "account_id": ACCOUNT_ID,
            "event": name,
            "contains": list(payload),
            "payload": payload,
            "created_at": now(),
        }
        return name, json.dumps(body, separators=(",", ":"))

    async def _post(
        self, url: str, event_id: str, name: str, body: str, secret: str
    ) -> dict[str, Any]:
        assert self.http is not None
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": sign(secret, body),
            "X-Razorpay-Event-Id": event_id,
            "User-Agent": "Razorpay-Webhook/v1",
        }
        try:
            r = await self.http.post(url, content=body.encode(), headers=headers)
            status: int | None = r.status_code
            answer = r.text[:500]
        except httpx.HTTPError as e:
            status, answer = None, repr(e)
            log.warning("webhook %s %s to %s failed: %r", name, event_id, url, e)
        return {"event_id": event_id, "event": name, "status": status, "response": answer}


def _public(order: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in order.items() if not k.startswith("_")}


async def _ping(_request: Request) -> Response:
    return JSONResponse({"status": "ok", "service": "razorpay stand-in"})


def create_app(config: RazorpayConfig) -> Starlette:
    rzp = RazorpayStandIn(config)
    e = rzp.endpoint

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        # Razorpay waits 5 s for a webhook's answer.
        async with httpx.AsyncClient(timeout=5.0) as http:
            rzp.http = http
            yield
        rzp.store.close()

    routes = [
        Route("/", _ping),
        Route("/v1/orders", e(rzp.create_order), methods=["POST"]),
        Route("/v1/orders/{order_id}", e(rzp.get_order), methods=["GET"]),
        Route("/v1/orders/{order_id}/payments", e(rzp.order_payments), methods=["GET"]),
        Route("/v1/payments", e(rzp.list_payments), methods=["GET"]),
        Route("/v1/payments/{payment_id}", e(rzp.get_payment), methods=["GET"]),
        Route("/v1/payments/{payment_id}/capture", e(rzp.capture_payment), methods=["POST"]),
        Route("/v1/payments/{payment_id}/refund", e(rzp.refund_payment), methods=["POST"]),
        Route("/v1/refunds/{refund_id}", e(rzp.get_refund), methods=["GET"]),
        Route("/_test/orders/{order_id}/pay", e(rzp.test_pay), methods=["POST"]),
        Route("/_test/payments/{payment_id}/refund", e(rzp.test_refund), methods=["POST"]),
        Route(
            "/_test/payments/{payment_id}/dispute_lost", e(rzp.test_dispute_lost), methods=["POST"]
        ),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.standin = rzp
    return app


def run_forever(config: RazorpayConfig, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(create_app(config), host=host, port=port, log_level="warning")


__all__ = ["RazorpayConfig", "create_app", "run_forever", "sign"]
