"""``renderctl reconcile payments``: Razorpay's payments against our credits. A payment
captured at Razorpay whose webhook never came (and whose checkout never returned) is a
difference, printed, with exit code 1; once everything is credited, exit 0 and nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from deploy.local import servers as local
from libs.config import BaseServiceSettings
from libs.runtime import ServiceRuntime
from tests.fixtures import Users
from tests.payments.conftest import KEY_ID, StandIn
from tests.tools.cli import printed
from tests.waiting import until
from tools import renderctl

pytestmark = pytest.mark.usefixtures("wallet_service")


@pytest.fixture(scope="module")
def razorpay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandIn]:
    """A stand-in of this module's own: no other test's payments in its lists."""
    handle = local.start_razorpay(
        tmp_path_factory.mktemp("razorpay") / "reconcile.db",
        local.free_port(),
        key_id=KEY_ID,
        key_secret="reconcile-key-secret",
        webhook_secret="reconcile-webhook-secret",
    )
    yield StandIn(handle.url, KEY_ID, "reconcile-key-secret", "reconcile-webhook-secret")
    handle.stop()


async def reconcile(
    payments: ServiceRuntime[Any],
    razorpay: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *flags: str,
) -> tuple[int, list[str]]:
    monkeypatch.setenv("RF_RAZORPAY_URL", razorpay.url)
    monkeypatch.setenv("RF_RAZORPAY_KEY_ID", razorpay.key_id)
    monkeypatch.setenv("RF_RAZORPAY_KEY_SECRET", razorpay.key_secret)
    today = datetime.now(UTC).date().isoformat()
    settings = BaseServiceSettings(database_url=payments.settings.database_url)
    capsys.readouterr()
    code = await renderctl.run(
        ["reconcile", "payments", "--from", today, "--to", today, *flags], settings
    )
    return code, [line for line in printed(capsys.readouterr().out).splitlines() if line]


async def test_a_capture_whose_webhook_never_came_is_a_difference_until_credited(
    pay_api: httpx.AsyncClient,
    standin: httpx.AsyncClient,
    webhook_url: str,
    users: Users,
    payments_service: ServiceRuntime[Any],
    razorpay: StandIn,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    user = users.new()

    async def order() -> str:
        r = await pay_api.post("/v1/payments/orders", json={"amount_paise": 20_000}, headers=user)
        assert r.status_code == 201, r.text
        order_id: str = r.json()["order_id"]
        return order_id

    async def status(order_id: str) -> str:
        r = await pay_api.get(f"/v1/payments/orders/{order_id}", headers=user)
        found: str = r.json()["status"]
        return found

    credited = await order()
    await standin.post(f"/_test/orders/{credited}/pay", json={"webhook_url": webhook_url})

    async def is_credited() -> bool:
        return await status(credited) == "credited"

    await until(is_credited, "the first order credited")
    assert await reconcile(payments_service, razorpay, monkeypatch, capsys) == (0, [])

    lost = await order()
    paid = (await standin.post(f"/_test/orders/{lost}/pay", json={"deliver": False})).json()
    pay_id = paid["razorpay_payment_id"]
    code, lines = await reconcile(payments_service, razorpay, monkeypatch, capsys)
    assert code == 1
    assert len(lines) == 1 and lines[0].startswith(
        f"captured_not_credited payment={pay_id} order={lost}:"
    )
    code, lines = await reconcile(payments_service, razorpay, monkeypatch, capsys, "--json")
    assert code == 1
    assert [json.loads(line) for line in lines] == [
        {
            "kind": "captured_not_credited",
            "payment_id": pay_id,
            "order_id": lost,
            "detail": "20000 INR captured at Razorpay; order " + lost + " is created",
        }
    ]

    # The checkout's answer arrives after all: credited, and the books agree again.
    r = await pay_api.post(
        "/v1/payments/verify",
        json={
            k: paid[k] for k in ("razorpay_order_id", "razorpay_payment_id", "razorpay_signature")
        },
        headers=user,
    )
    assert r.status_code == 200, r.text

    async def lost_credited() -> bool:
        return await status(lost) == "credited"

    await until(lost_credited, "the second order credited")
    assert await reconcile(payments_service, razorpay, monkeypatch, capsys) == (0, [])
