"""``renderctl audit``, ``export`` and ``erase`` on a studio whose job rendered on the local
farm and was charged: the render path as processes (``tests/render/conftest.py``), identity
in the test's process, a registered user with an API key."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from contracts.billing import InstancePrice, PriceList, PriceUnit
from contracts.jobs import JobPriority
from libs.config import BaseServiceSettings
from libs.ids import new_id
from libs.runtime import ServiceRuntime
from services.gateway.settings import GatewaySettings
from tests.fixtures import Users
from tests.render.conftest import RenderSystem
from tests.tools.cli import printed
from tests.waiting import until
from tools import renderctl

EMAIL = "Ada.Lovelace@Studio.test"
NAME = "Ada Lovelace"
PASSWORD = "a-long-password"
#: Read models an erasure must leave as they were (but for the personal fields).
READ_MODELS = (
    "identity.users",
    "identity.api_keys",
    "job.jobs",
    "billing.job_costs",
    "billing.cost_lines",
    "wallet.balances",
    "wallet.transfers",
    "wallet.holds",
    "bridge.renders",
)


@pytest.fixture(autouse=True)
def priced_by_the_second(monkeypatch: pytest.MonkeyPatch) -> None:
    """The farm's machine at 3,600 credits an hour, so a task of a second costs a credit
    (at the default 36.00 a short test task rounds to 0.00)."""
    prices = PriceList(
        instances=[
            InstancePrice(
                instance_type="local-cpu",
                cores=8,
                ghz=Decimal("3.00"),
                unit=PriceUnit.instance_hour,
                rates=dict.fromkeys(JobPriority, Decimal("3600.0000")),
            )
        ],
        default_instance_type="local-cpu",
        storage_per_gb_month=Decimal("0"),
        egress_per_gb=Decimal("0"),
    )
    monkeypatch.setenv("RF_BILLING_DEFAULT_PRICES", prices.model_dump_json())


@dataclass
class Studio:
    system: RenderSystem
    user_id: str
    job_id: str
    #: The user's session (a JWT).
    me: dict[str, str]
    key_id: str
    key_secret: str

    @property
    def dsn(self) -> str:
        return self.system.env["RF_DATABASE_URL"]

    def settings(self) -> BaseServiceSettings:
        return self.system.env.settings(BaseServiceSettings, service_name="renderctl")

    async def get(self, path: str) -> Any:
        r = await self.system.api.get(path, headers=self.me)
        assert r.status_code == 200, r.text
        return r.json()


async def rendered(system: RenderSystem) -> Studio:
    """A registered, approved user with credits and an API key, whose job (created with
    the key) rendered, was charged and settled."""
    api = system.api
    admin = Users(system.env.settings(GatewaySettings)).headers(new_id("usr"), "admin")
    r = await api.post(
        "/v1/auth/register", json={"email": EMAIL, "password": PASSWORD, "display_name": NAME}
    )
    assert r.status_code == 201, r.text
    user_id = r.json()["user_id"]
    r = await api.post(f"/v1/admin/users/{user_id}/approve", headers=admin)
    assert r.status_code == 200, r.text
    r = await api.post("/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert r.status_code == 200, r.text
    me = {"Authorization": f"Bearer {r.json()['access_token']}"}
    r = await api.post(
        "/v1/api-keys", json={"name": "pipeline", "scopes": ["jobs:read", "jobs:write"]}, headers=me
    )
    assert r.status_code == 201, r.text
    key = r.json()
    r = await api.post(
        f"/v1/admin/users/{user_id}/credits",
        json={"amount_credits": "250.00"},
        headers={**admin, "Idempotency-Key": f"grant-{user_id}"},
    )
    assert r.status_code == 200, r.text
    scene_id = await replace(system, headers=me).upload()
    as_key = replace(system, headers={"Authorization": f"Bearer {key['secret']}"})
    job = await as_key.create_job(scene_id, frame_range={"start": 1, "end": 4})
    done = await as_key.finished(job["job_id"])
    assert done["status"] == "completed", done
    studio = Studio(system, user_id, job["job_id"], me, key["key_id"], key["secret"])

    async def settled() -> bool:
        cost = await studio.get(f"/v1/jobs/{studio.job_id}/cost")
        envelope = await studio.get(f"/v1/jobs/{studio.job_id}")
        return bool(cost["cost_status"] == "settled" and envelope["cost"]["status"] == "settled")

    await until(settled, "the job's cost settled", timeout=60)

    async def logged() -> bool:
        rows = await fetch(
            studio.dsn,
            "SELECT operation_id FROM gateway.action_log WHERE target_ids->>'job_id' = $1",
            studio.job_id,
        )
        return "create_job" in {r["operation_id"] for r in rows}

    await until(logged, "the job's API calls in the action log")
    return studio


async def fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def cli(studio: Studio, capsys: pytest.CaptureFixture[str], *argv: str, code: int = 0) -> str:
    capsys.readouterr()
    assert await renderctl.run(list(argv), studio.settings()) == code
    return printed(capsys.readouterr().out)


async def audit_json(studio: Studio, capsys: pytest.CaptureFixture[str], what: str) -> Any:
    ident = studio.job_id if what == "job" else studio.user_id
    return json.loads(await cli(studio, capsys, "audit", what, ident, "--json"))


async def holding(dsn: str, text: str) -> list[str]:
    """Every table of every schema with a row whose text holds ``text`` (any case)."""
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables"
            " WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        found = []
        for t in tables:
            name = f"{t['table_schema']}.{t['table_name']}"
            if await conn.fetchval(
                f'SELECT count(*) FROM "{t["table_schema"]}"."{t["table_name"]}" x'
                " WHERE strpos(lower(x::text), lower($1)) > 0",
                text,
            ):
                found.append(name)
        return found
    finally:
        await conn.close()


async def read_models(dsn: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(dsn)
    try:
        return {
            t: [
                {k: v for k, v in dict(r).items() if k != "last_used_at"}
                for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1, 2")
            ]
            for t in READ_MODELS
        }
    finally:
        await conn.close()


async def test_the_audit_explains_a_charged_job_and_the_wallet_and_the_export_holds_it_all(
    render_system: RenderSystem,
    identity_service: ServiceRuntime[Any],
    notifier: ServiceRuntime[Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    studio = await rendered(render_system)
    cost = await studio.get(f"/v1/jobs/{studio.job_id}/cost")
    audit = await audit_json(studio, capsys, "job")

    for section in ("api_calls", "job_events", "farm_tasks", "cost", "cost_lines", "wallet"):
        assert audit[section], section
    assert audit["owner_id"] == studio.user_id and audit["status"] == "completed"
    totals = audit["totals"]
    assert Decimal(totals["so_far_credits"]) == Decimal(cost["so_far_credits"]) > 0
    assert Decimal(totals["captured_credits"]) == Decimal(cost["captured_credits"])
    assert Decimal(totals["held_credits"]) == Decimal(cost["held_credits"]) == 0
    assert totals["lines"] == cost["lines_total"]
    assert Decimal(cost["amount_total_credits"]) == Decimal(totals["so_far_credits"])
    # Who did what through the API: the job created with the key, read with it.
    created = [c for c in audit["api_calls"] if c["kind"] == "create_job"]
    assert [c["data"]["api_key_id"] for c in created] == [studio.key_id]
    assert created[0]["data"]["outcome"] == "succeeded"
    # Every farm task is a cost line; the lines' seconds are the VM time charged.
    completed = [e for e in audit["farm_tasks"] if e["kind"] == "render.RenderTaskCompleted"]
    task_lines = [x for x in audit["cost_lines"] if x["task_id"] is not None]
    assert len(completed) == len(task_lines) == 4
    machines = audit["vm_time"]["machines"]
    assert sum(m["tasks"] for m in machines) == 4
    assert sum(Decimal(m["credits"]) for m in machines) == sum(
        Decimal(x["amount_credits"]) for x in task_lines
    )
    assert "busy" in audit["vm_time"]["note"]
    assert {e["kind"] for e in audit["wallet"]} >= {"wallet.CreditsHeld", "wallet.HoldCaptured"}
    steps = {e["data"].get("step") for e in audit["job_events"]}
    assert {"stage_scene", "render"} <= steps
    times = [e["at"] for e in audit["timeline"]]
    assert times == sorted(times) and len(times) > len(audit["job_events"])

    human = await cli(studio, capsys, "audit", "job", studio.job_id)
    assert f"so far    {cost['so_far_credits']:>12}" in human
    assert "VM time charged" in human and "%" in human

    wallet = await studio.get("/v1/wallet")
    user = await audit_json(studio, capsys, "user")
    t = user["totals"]
    assert (t["balance_credits"], t["held_credits"], t["available_credits"]) == (
        wallet["balance_credits"],
        wallet["held_credits"],
        wallet["available_credits"],
    )
    assert Decimal(t["deposited_credits"]) == Decimal("250.00")
    assert [j["job_id"] for j in user["jobs"]] == [studio.job_id]
    assert user["jobs"][0]["captured_credits"] == totals["captured_credits"]
    assert "balance" in await cli(studio, capsys, "audit", "user", studio.user_id)

    assert await cli(studio, capsys, "audit", "job", "job_missing", code=1) == ""

    async def notified() -> bool:
        rows = await fetch(
            studio.dsn, "SELECT kind FROM notifier.notifications WHERE user_id = $1", studio.user_id
        )
        return bool(rows)

    await until(notified, "the job's notification", timeout=30)
    out = tmp_path / "export.json"
    await cli(studio, capsys, "export", "user", studio.user_id, "--output", str(out))
    text = out.read_text()
    export = json.loads(text)
    assert export["profile"]["email"] == EMAIL and "password_hash" not in export["profile"]
    assert [k["key_id"] for k in export["api_keys"]] == [studio.key_id]
    assert [j["job_id"] for j in export["jobs"]] == [studio.job_id]
    assert export["jobs"][0]["job"]["status"] == "completed"
    assert [c["job_id"] for c in export["costs"]["jobs"]] == [studio.job_id]
    assert len(export["costs"]["lines"]) == len(audit["cost_lines"])
    assert export["wallet"]["balance"][0]["balance"] == wallet["balance_credits"]
    assert export["wallet"]["transfers"] and export["wallet"]["ledger"]
    assert export["uploads"]["uploads"]
    assert set(export["notifications"]) == {"notifications", "webhook_endpoints"}
    assert export["notifications"]["notifications"][0]["payload"]["job_id"] == studio.job_id
    assert "create_job" in {c["operation_id"] for c in export["api_calls"]}
    secret = studio.key_secret.rsplit("_", 1)[-1]
    hashes = await fetch(
        studio.dsn,
        "SELECT key_hash AS h FROM identity.api_keys WHERE user_id = $1"
        " UNION ALL SELECT password_hash FROM identity.users WHERE user_id = $1",
        studio.user_id,
    )
    for hidden in (studio.key_secret, secret, PASSWORD, *(r["h"] for r in hashes)):
        assert hidden not in text


async def test_erasure_shreds_the_personal_fields_and_leaves_the_ledger_and_rebuilds_as_they_were(
    render_system: RenderSystem,
    identity_service: ServiceRuntime[Any],
    notifier: ServiceRuntime[Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    studio = await rendered(render_system)
    assert "identity.events" in await holding(studio.dsn, EMAIL)  # the scan finds it

    async def notifier_has_it() -> bool:  # the recipient of its e-mails
        return "notifier.events" in await holding(studio.dsn, EMAIL)

    await until(notifier_has_it, "the notifier to record the address")
    job_before = (await audit_json(studio, capsys, "job"))["totals"]
    user_before = (await audit_json(studio, capsys, "user"))["totals"]
    models_before = await read_models(studio.dsn)

    erased = json.loads(await cli(studio, capsys, "erase", "user", studio.user_id))
    assert (erased["user"]["email"], erased["user"]["display_name"]) == ("erased", "erased")
    assert erased["api_calls_erased"] > 0
    # Again: nothing left to do, the same answer.
    assert (
        json.loads(await cli(studio, capsys, "erase", "user", studio.user_id))["user"]
        == (erased["user"])
    )

    async def users_row_erased() -> bool:
        rows = await fetch(
            studio.dsn, "SELECT email FROM identity.users WHERE user_id = $1", studio.user_id
        )
        return bool(rows[0]["email"] == "erased")

    await until(users_row_erased, "the users projection to apply UserErased")

    async def shredded_everywhere() -> bool:
        return await holding(studio.dsn, EMAIL) == []

    # The notifier shreds its own copies (the recipient, its events' metadata) on UserErased.
    await until(shredded_everywhere, "every service to shred the address")
    tombstones = await fetch(
        studio.dsn,
        "SELECT count(*) AS n FROM notifier.events WHERE type = 'notifier.RecipientErased'"
        " AND data->>'user_id' = $1",
        studio.user_id,
    )
    assert tombstones[0]["n"] == 1  # once, though `erase` ran twice
    assert await holding(studio.dsn, NAME) == []
    ips = await fetch(
        studio.dsn,
        "SELECT DISTINCT client_ip FROM gateway.action_log WHERE user_id = $1",
        studio.user_id,
    )
    assert [r["client_ip"] for r in ips] == ["erased"]
    r = await studio.system.api.post("/v1/auth/login", json={"email": EMAIL, "password": PASSWORD})
    assert r.status_code == 401, r.text

    # The ledger balances as before, the audit's totals are unchanged.
    wallet = await studio.get("/v1/wallet")
    user_after = (await audit_json(studio, capsys, "user"))["totals"]
    assert user_after == user_before
    assert user_after["balance_credits"] == wallet["balance_credits"]
    assert (await audit_json(studio, capsys, "job"))["totals"] == job_before

    # Every projection rebuilt from the overwritten events is what was there, but for the
    # personal fields.
    await cli(studio, capsys, "rebuild")
    assert "0 difference(s)" in await cli(studio, capsys, "rebuild", "--verify")
    expected = dict(models_before)
    expected["identity.users"] = [
        {**u, "email": "erased", "display_name": "erased", "password_hash": "erased"}
        if u["user_id"] == studio.user_id
        else u
        for u in models_before["identity.users"]
    ]
    assert await read_models(studio.dsn) == expected
    assert await holding(studio.dsn, EMAIL) == []
    await cli(studio, capsys, "verify")
