"""The wallet API at the gateway: balances, transactions, admins' grants."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from contracts.wallet import HoldCredits, WalletBalance
from libs.auth import verify_access_token
from libs.bus.commands import Actor, CommandClient
from libs.runtime import ServiceRuntime, build
from services.gateway.service import Gateway
from services.wallet.service import SERVICE
from services.wallet.settings import WalletSettings
from tests.conftest import Env
from tests.fixtures import Users

ZEROS = {"balance_credits": "0.00", "held_credits": "0.00", "available_credits": "0.00"}


@pytest.fixture
async def wallet_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, env.settings(WalletSettings))
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def wallet_api(
    gateway: Gateway, wallet_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


def user_id(users: Users, headers: dict[str, str]) -> str:
    token = headers["Authorization"].removeprefix("Bearer ")
    return verify_access_token(users.settings, token).user_id


async def grant(
    api: httpx.AsyncClient, admin: dict[str, str], user: str, amount: str, key: str = ""
) -> httpx.Response:
    return await api.post(
        f"/v1/admin/users/{user}/credits",
        json={"amount_credits": amount, "note": "trial"},
        headers={**admin, "Idempotency-Key": key or str(uuid.uuid4())},
    )


def amounts(body: dict[str, Any]) -> dict[str, str]:
    return {k: body[k] for k in ZEROS}


async def test_a_user_without_credits_sees_zeros(
    wallet_api: httpx.AsyncClient, users: Users
) -> None:
    r = await wallet_api.get("/v1/wallet", headers=users.new())
    assert r.status_code == 200, r.text
    assert r.json() == {**ZEROS, "currency": "credits", "updated_at": None}
    r = await wallet_api.get("/v1/wallet/transactions", headers=users.new())
    assert r.json() == {"items": [], "next_cursor": None}


async def test_an_admin_grants_credits_once_per_idempotency_key(
    wallet_api: httpx.AsyncClient, users: Users
) -> None:
    admin, me = users.new("admin"), users.new()
    mine = user_id(users, me)
    first = await grant(wallet_api, admin, mine, "25.50", key="grant-1")
    assert first.status_code == 200, first.text
    assert amounts(first.json()) == {k: "25.50" for k in ZEROS} | {"held_credits": "0.00"}
    again = await grant(wallet_api, admin, mine, "25.50", key="grant-1")
    assert again.status_code == 200 and amounts(again.json()) == amounts(first.json())
    r = await wallet_api.get("/v1/wallet", headers=me)
    assert r.json()["balance_credits"] == "25.50" and r.json()["updated_at"] is not None
    await grant(wallet_api, admin, mine, "0.50", key="grant-2")
    r = await wallet_api.get("/v1/wallet", headers=me)
    assert r.json()["available_credits"] == "26.00"


async def test_only_admins_grant_and_only_with_an_idempotency_key(
    wallet_api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    mine = user_id(users, me)
    r = await grant(wallet_api, me, mine, "1000.00")
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await wallet_api.post(
        f"/v1/admin/users/{mine}/credits",
        json={"amount_credits": "5.00"},
        headers=users.new("admin"),
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_failed"
    assert (await wallet_api.get("/v1/wallet", headers=me)).json()["balance_credits"] == "0.00"


BAD_AMOUNTS = {
    "zero": "0.00",
    "negative": "-1.00",
    "three places": "1.005",
    "not a number": "ten",
    "too large": "1000000000.01",
    "a JSON number list": [1],
}


async def test_bad_amounts_are_refused(wallet_api: httpx.AsyncClient, users: Users) -> None:
    admin, me = users.new("admin"), users.new()
    mine = user_id(users, me)
    for case, amount in BAD_AMOUNTS.items():
        r = await wallet_api.post(
            f"/v1/admin/users/{mine}/credits",
            json={"amount_credits": amount},
            headers={**admin, "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 422, case
        assert r.json()["code"] == "validation_failed", case
    r = await wallet_api.post(
        f"/v1/admin/users/{mine}/credits",
        json={"amount_credits": "1.00", "extra": 1},
        headers={**admin, "Idempotency-Key": "k"},
    )
    assert r.status_code == 422
    assert (await wallet_api.get("/v1/wallet", headers=me)).json()["balance_credits"] == "0.00"


async def test_transactions_page_newest_first_and_each_user_sees_only_their_own(
    wallet_api: httpx.AsyncClient, users: Users, wallet_service: ServiceRuntime[Any]
) -> None:
    admin, me, other = users.new("admin"), users.new(), users.new()
    mine = user_id(users, me)
    for n in range(1, 6):
        assert (await grant(wallet_api, admin, mine, f"{n}.00")).status_code == 200
    await grant(wallet_api, admin, user_id(users, other), "99.00")
    client = CommandClient(wallet_service.nc, wallet_service.settings)
    await client.send(
        HoldCredits(
            user_id=mine,
            transfer_id="hold:job_1:1",
            hold_id="hld_job_1",
            job_id="job_1",
            amount=Decimal("4.25"),
            expires_at=datetime.now(UTC) + timedelta(hours=1),
        ),
        WalletBalance,
        command_id="test-hold",
        actor=Actor(kind="service", id="test"),
    )
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await wallet_api.get("/v1/wallet/transactions", params=params, headers=me)
        assert r.status_code == 200, r.text
        page = r.json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [t["kind"] for t in seen] == ["hold"] + ["deposit"] * 5
    assert [t["amount_credits"] for t in seen[1:]] == ["5.00", "4.00", "3.00", "2.00", "1.00"]
    newest = seen[0]
    assert newest["cause"] == {"kind": "job", "id": "job_1"}
    assert (newest["job_id"], newest["hold_id"]) == ("job_1", "hld_job_1")
    assert (
        newest["balance_after_credits"],
        newest["held_after_credits"],
        newest["available_after_credits"],
    ) == ("15.00", "4.25", "10.75")
    assert (
        seen[1]["balance_after_credits"] == "15.00" and seen[-1]["balance_after_credits"] == "1.00"
    )
    assert all(t["cause"]["kind"] == "grant" for t in seen[1:])
    assert [t["sequence"] for t in seen] == [6, 5, 4, 3, 2, 1]
    theirs = (await wallet_api.get("/v1/wallet/transactions", headers=other)).json()["items"]
    assert [t["amount_credits"] for t in theirs] == ["99.00"]
    r = await wallet_api.get("/v1/wallet/transactions", params={"cursor": "!!"}, headers=me)
    assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"
