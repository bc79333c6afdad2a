"""``renderctl reconcile payments --from DATE --to DATE``: Razorpay's payments against our
top-up orders and credits, every difference one per line.

Razorpay's side: ``GET /v1/payments`` over the window (paginated), and any payment we
credited that the window's list lacks, fetched by id. Our side: the payments service's
``orders`` read model, read-only (``libs/readmodels/payments.py``). Differences:

* ``captured_not_credited``: captured at Razorpay, but our order does not hold it as
  credited (its webhook never came, or the credit is stuck), or no order of ours has it;
* ``credited_not_captured``: we credited a payment Razorpay does not show captured;
* ``amount_differs`` / ``currency_differs``: a credited payment's amount or currency is not
  the order's;
* ``refunded_not_debited``: Razorpay refunded more than our order recorded, or the wallet
  has not taken a refund's or a lost dispute's debit yet.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import asyncpg

from libs.readmodels.payments import OrderRow, PaymentsQuery
from services.payments.razorpay import Razorpay, RazorpayError, was_captured
from services.payments.settings import PaymentsSettings

PAGE = 100


@dataclass(frozen=True)
class Difference:
    kind: str
    payment_id: str | None
    order_id: str | None
    detail: str

    def line(self) -> str:
        return (
            f"{self.kind} payment={self.payment_id or '-'} order={self.order_id or '-'}:"
            f" {self.detail}"
        )


def day_start(text: str) -> datetime:
    """A date (``2026-12-01``, the start of that UTC day) or an ISO date-time."""
    try:
        return datetime.combine(date.fromisoformat(text), time(), UTC)
    except ValueError:
        at = datetime.fromisoformat(text)
        return at if at.tzinfo else at.replace(tzinfo=UTC)


def window_end(text: str) -> datetime:
    """``--to``: a date includes that whole day."""
    try:
        return datetime.combine(date.fromisoformat(text), time(), UTC) + timedelta(days=1)
    except ValueError:
        return day_start(text)


async def provider_payments(
    razorpay: Razorpay, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """Every payment Razorpay lists as created in [start, end), page by page."""
    found: list[dict[str, Any]] = []
    skip = 0
    while True:
        page = await razorpay.payments(
            int(start.timestamp()), int(end.timestamp()) - 1, count=PAGE, skip=skip
        )
        found += page
        if len(page) < PAGE:
            return found
        skip += PAGE


async def reconcile(
    settings: PaymentsSettings, pool: asyncpg.Pool, start: datetime, end: datetime
) -> list[Difference]:
    query = PaymentsQuery(pool)
    razorpay = Razorpay(settings)
    try:
        theirs = {p["id"]: p for p in await provider_payments(razorpay, start, end)}
        ours = await query.window(start, end)
        ours += [
            o
            for o in await query.by_payments(list(theirs))
            if o.order_id not in {x.order_id for x in ours}
        ]
        for o in ours:  # a payment we credited but Razorpay's window lacks: ask for it
            if o.payment_id and o.payment_id not in theirs:
                # Razorpay has no such payment: reported as credited_not_captured below.
                with contextlib.suppress(RazorpayError):
                    theirs[o.payment_id] = await razorpay.payment(o.payment_id)
    finally:
        await razorpay.close()
    return differences(theirs, ours)


def differences(theirs: dict[str, dict[str, Any]], ours: list[OrderRow]) -> list[Difference]:
    found: list[Difference] = []
    by_order = {o.order_id: o for o in ours}
    credited = {o.payment_id: o for o in ours if o.payment_id and o.credited_transfer}
    for pid, p in sorted(theirs.items()):
        order_id = p.get("order_id")
        order = by_order.get(str(order_id))
        if was_captured(p) and pid not in credited:
            why = (
                f"order {order_id} is {order.status.value}"
                if order is not None
                else "no top-up order of ours has it"
            )
            found.append(
                Difference(
                    "captured_not_credited",
                    pid,
                    order_id,
                    f"{p.get('amount')} {p.get('currency')} captured at Razorpay; {why}",
                )
            )
    for pid, o in sorted(credited.items()):
        assert pid is not None
        given = theirs.get(pid)
        if given is None or not was_captured(given):
            status = "missing" if given is None else given.get("status")
            found.append(
                Difference(
                    "credited_not_captured",
                    pid,
                    o.order_id,
                    f"{o.credited_credits} credits given; Razorpay has the payment {status}",
                )
            )
            continue
        p = given
        if p.get("amount") != o.amount_paise:
            found.append(
                Difference(
                    "amount_differs",
                    pid,
                    o.order_id,
                    f"Razorpay {p.get('amount')} paise, our order {o.amount_paise}",
                )
            )
        if p.get("currency") != o.currency:
            found.append(
                Difference(
                    "currency_differs",
                    pid,
                    o.order_id,
                    f"Razorpay {p.get('currency')}, our order {o.currency}",
                )
            )
        refunded = int(p.get("amount_refunded") or 0)
        if refunded > o.refunded_paise or o.debited_credits < o.debit_due_credits:
            found.append(
                Difference(
                    "refunded_not_debited",
                    pid,
                    o.order_id,
                    f"Razorpay refunded {refunded} paise, we recorded {o.refunded_paise};"
                    f" wallet debited {o.debited_credits} of {o.debit_due_credits} credits",
                )
            )
    return found


def report(found: list[Difference], as_json: bool) -> int:
    """Print each difference on its own line; 1 when there is any."""
    for d in found:
        print(json.dumps(asdict(d), sort_keys=True) if as_json else d.line())
    return 1 if found else 0
