"""Razorpay's REST API, the part payments uses, over httpx with a timeout (the official SDK
is synchronous and waits for ever by default). The only Razorpay caller."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import httpx

from contracts.errors import PaymentProviderUnavailable
from libs.logging import get_logger
from services.payments.settings import PaymentsSettings

log = get_logger(__name__)

#: Payment statuses that mean the money was captured (refunded ones were captured first).
CAPTURED = ("captured", "refunded")


def was_captured(payment: dict[str, Any]) -> bool:
    """Whether Razorpay's payment entity says the money was captured."""
    return bool(payment.get("captured")) or payment.get("status") in CAPTURED


def signature(secret: str, message: str) -> str:
    """HMAC-SHA256 hex: Checkout's ``order_id|payment_id`` and every webhook body."""
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def signature_matches(secret: str, message: str, given: str) -> bool:
    return bool(secret) and hmac.compare_digest(signature(secret, message), given)


class RazorpayError(Exception):
    """Razorpay refused a request (a 4xx): its error's code and description."""

    def __init__(self, status: int, code: str, description: str) -> None:
        super().__init__(f"razorpay {status} {code}: {description}")
        self.status, self.code, self.description = status, code, description


class Razorpay:
    def __init__(
        self, settings: PaymentsSettings, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.http = httpx.AsyncClient(
            base_url=settings.razorpay_url,
            auth=(settings.razorpay_key_id, settings.razorpay_key_secret),
            timeout=settings.razorpay_timeout_seconds,
            transport=transport,
            headers={"User-Agent": "renderfarm-payments"},
        )

    async def close(self) -> None:
        await self.http.aclose()

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            r = await self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            log.warning("razorpay_unreachable", path=path, error=repr(e))
            raise PaymentProviderUnavailable(
                "the payment provider did not answer in time; retry"
            ) from e
        if r.status_code >= 500:
            log.warning("razorpay_failed", path=path, status=r.status_code)
            raise PaymentProviderUnavailable(f"the payment provider answered {r.status_code}")
        body: dict[str, Any] = r.json()
        if r.status_code >= 400:
            error = body.get("error") or {}
            raise RazorpayError(
                r.status_code, str(error.get("code")), str(error.get("description"))
            )
        return body

    async def create_order(
        self, amount_paise: int, currency: str, receipt: str, notes: dict[str, str]
    ) -> dict[str, Any]:
        return await self._call(
            "POST",
            "/v1/orders",
            json={
                "amount": amount_paise,
                "currency": currency,
                "receipt": receipt,
                "notes": notes,
                "payment_capture": 1,
            },
        )

    async def payment(self, payment_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/payments/{payment_id}")

    async def capture(self, payment_id: str, amount_paise: int, currency: str) -> dict[str, Any]:
        return await self._call(
            "POST",
            f"/v1/payments/{payment_id}/capture",
            json={"amount": amount_paise, "currency": currency},
        )

    async def payments(
        self, start: int, end: int, count: int = 100, skip: int = 0
    ) -> list[dict[str, Any]]:
        """One page of the payments created in [start, end] (unix seconds)."""
        page = await self._call(
            "GET", "/v1/payments", params={"from": start, "to": end, "count": count, "skip": skip}
        )
        items: list[dict[str, Any]] = page.get("items", [])
        return items
