"""The payments service's orders as the gateway and reconciliation read them
(libs/readmodels/payments.py, ADR 0007): the real service's projection over real commands
(against the Razorpay stand-in), read back only through :class:`PaymentsQuery` on a
read-only pool."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest

from contracts.payments import (
    CreateTopUpOrder,
    OrderStatus,
    RecordTopUpCredited,
    TopUpOrder,
    VerifyCheckout,
)
from deploy.local import servers as local
from libs.bus.commands import Actor, CommandClient
from libs.readmodels import payments as payment_queries
from libs.readmodels import read_only_pool
from libs.readmodels.payments import PaymentsQuery
from libs.runtime import ServiceRuntime, build
from services.payments.service import SERVICE
from services.payments.settings import PaymentsSettings
from tests.conftest import Env

KEY = {"key_id": "rzp_test_contract", "key_secret": "contract-secret", "webhook_secret": "w"}


@pytest.fixture(scope="module")
def razorpay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    handle = local.start_razorpay(
        tmp_path_factory.mktemp("rzp") / "rzp.db",
        local.free_port(),
        key_id=KEY["key_id"],
        key_secret=KEY["key_secret"],
        webhook_secret=KEY["webhook_secret"],
    )
    yield handle.url
    handle.stop()


@pytest.fixture
async def payments(env: Env, razorpay_url: str) -> AsyncIterator[ServiceRuntime[Any]]:
    settings = env.settings(
        PaymentsSettings,
        razorpay_url=razorpay_url,
        razorpay_key_id=KEY["key_id"],
        razorpay_key_secret=KEY["key_secret"],
        razorpay_webhook_secret=KEY["webhook_secret"],
    )
    rt = await build(SERVICE, settings)
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def read_pool(payments: ServiceRuntime[Any]) -> AsyncIterator[asyncpg.Pool]:
    pool = await read_only_pool(payments.settings.database_url, max_size=2)
    yield pool
    await pool.close()


def test_the_module_reads_the_schema_the_payments_service_owns() -> None:
    assert SERVICE.schema == payment_queries.SCHEMA


async def test_orders_are_read_by_owner_page_window_and_payment(
    payments: ServiceRuntime[Any], read_pool: asyncpg.Pool, razorpay_url: str
) -> None:
    client = CommandClient(payments.nc, payments.settings, timeout=10)

    async def send(cmd: Any) -> TopUpOrder:
        return await client.send(
            cmd, TopUpOrder, command_id=uuid.uuid4().hex, actor=Actor(kind="user", id="usr_a")
        )

    made = [
        await send(CreateTopUpOrder(user_id="usr_a", topup_id=f"top_{n}", amount_paise=n * 100))
        for n in (1, 2, 3)
    ]
    async with httpx.AsyncClient(
        base_url=razorpay_url, auth=(KEY["key_id"], KEY["key_secret"])
    ) as standin:
        paid = (await standin.post(f"/_test/orders/{made[0].order_id}/pay", json={})).json()
    await send(
        VerifyCheckout(
            user_id="usr_a",
            order_id=paid["razorpay_order_id"],
            payment_id=paid["razorpay_payment_id"],
            signature=paid["razorpay_signature"],
        )
    )
    pay_id = paid["razorpay_payment_id"]
    await send(
        RecordTopUpCredited(
            order_id=made[0].order_id, payment_id=pay_id, transfer_id=f"topup:{pay_id}"
        )
    )
    query = PaymentsQuery(read_pool, SERVICE.schema)

    one = await query.order(made[0].order_id, "usr_a")
    assert one is not None
    assert (one.status, one.payment_id, one.credited_transfer) == (
        OrderStatus.credited,
        pay_id,
        f"topup:{pay_id}",
    )
    assert (one.amount_paise, one.currency, one.credits) == (100, "INR", Decimal("1.00"))
    assert one.credited_credits == Decimal("1.00") and one.credited_at is not None
    assert one.view(KEY["key_id"]).model_dump(exclude={"updated_at"}) == made[0].model_copy(
        update={"status": OrderStatus.credited, "payment_id": pay_id}
    ).model_dump(exclude={"updated_at"})
    assert await query.order(made[0].order_id, "usr_b") is None

    first = await query.orders("usr_a", None, 2)
    rest = await query.orders("usr_a", (first[-1].created_at, first[-1].order_id), 2)
    assert [o.order_id for o in first + rest] == [o.order_id for o in reversed(made)]
    assert await query.orders("usr_b", None, 10) == []

    now = datetime.now(UTC)
    window = await query.window(now - timedelta(hours=1), now + timedelta(hours=1))
    assert [o.order_id for o in window] == [o.order_id for o in made]
    assert [o.order_id for o in await query.by_payments([pay_id])] == [made[0].order_id]
