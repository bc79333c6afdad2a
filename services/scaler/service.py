"""The scaler: the render fleet follows the farm's queue (``docs/scaling.md``).

One replica leads at a time (an advisory lock); the leader runs a round every
``tick_seconds``: reconcile the provider's machines and the farm's workers with the
machines' streams, decide (``domain.decide``), act. A round that cannot reach the farm or
the provider is logged and shown in readiness, and the next round tries again; anything
else takes the task down (restarted, then the process, by the runtime).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from libs.leader import leadership, lock_key, sleep_or_stop
from libs.logging import get_logger
from libs.readmodels import billing as billing_queries
from libs.readmodels.billing import BillingQuery
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.scaler.domain import affordable_tasks
from services.scaler.farm import FarmQueue
from services.scaler.fleet import FleetRound
from services.scaler.projections import FleetProjection, VmUsageProjection
from services.scaler.provider import VmInfo, VmStatus
from services.scaler.providers import provider_of
from services.scaler.settings import ScalerSettings

log = get_logger(__name__)


@dataclass
class Scaler:
    """The leader's loop around :class:`FleetRound`, and what readiness reports."""

    rt: ServiceRuntime[Any]
    fleet: FleetRound
    last_error: str | None = None
    last_round_at: float | None = None
    rounds: int = 0

    async def run(self, stopping: asyncio.Event) -> None:
        settings = self.fleet.settings
        async with leadership(self.rt.pool, lock_key(self.rt.schema, "fleet"), stopping) as led:
            if not led:
                return
            # Every machine a previous leader recorded is in the fleet read model before
            # the first round, or the round would not know it and launch another.
            fleet = self.rt.projectors[FleetProjection.name]
            async with asyncio.timeout(60):
                await fleet.wait_for(await self.rt.store.head())
            while not stopping.is_set():
                try:
                    await self.fleet.run_once()
                    self.last_error = None
                except httpx.HTTPError as e:  # the farm or the provider away: next round
                    self.last_error = f"{type(e).__name__}: {e}"
                    log.error("fleet_round_failed", error=self.last_error)
                self.rounds += 1
                self.last_round_at = time.monotonic()
                if await sleep_or_stop(stopping, settings.tick_seconds):
                    return

    async def readiness(self) -> str | None:
        return None if self.last_error is None else f"fleet round failed: {self.last_error}"


async def launches_in_flight(rt: ServiceRuntime[Any]) -> list[VmInfo]:
    """Machines asked for and accepted by the provider, not yet up: a restarted scaler hands
    them to the provider (SkyPilot finds its launches by request id)."""
    rows = await rt.pool.fetch(
        f"SELECT * FROM {rt.schema}.fleet_vms WHERE phase = 'requested' AND request_id IS NOT NULL"
    )
    return [
        VmInfo(
            vm_id=r["vm_id"],
            pool=r["pool"],
            instance_type=r["instance_type"],
            spot=r["spot"],
            status=VmStatus.launching,
            worker_name=r["worker_name"],
            hourly_price_usd=r["hourly_price_usd"],
            request_id=r["request_id"],
            launched_at=r["requested_at"],
            region=r["region"],
        )
        for r in rows
    ]


def budgets_from(billing: BillingQuery) -> Callable[[Sequence[str]], Awaitable[dict[str, int]]]:
    """Our jobs' budgets from billing's published read model (``libs/readmodels/billing``):
    how many more tasks each capped job pays for, one query a round. Without billing's tables
    (a scaler run on its own) no budget binds."""

    async def affordable(job_ids: Sequence[str]) -> dict[str, int]:
        try:
            costs = await billing.job_costs(job_ids)
        except asyncpg.UndefinedTableError:
            return {}
        found: dict[str, int] = {}
        for job_id, cost in costs.items():
            estimate = cost.estimate
            tasks = affordable_tasks(
                cost.cap_credits,
                cost.so_far_credits,
                cost.lines,
                estimate.expected_credits if estimate else None,
                estimate.assumptions.tasks if estimate else None,
            )
            if tasks is not None:
                found[job_id] = tasks
        return found

    return affordable


async def wire(rt: ServiceRuntime[Scaler]) -> Scaler:
    assert isinstance(rt.settings, ScalerSettings)
    settings = rt.settings
    auth = None
    if settings.farm_username:
        secret = settings.farm_password.get_secret_value() if settings.farm_password else ""
        auth = httpx.BasicAuth(settings.farm_username, secret)
    farm = httpx.AsyncClient(
        base_url=settings.farm_url, auth=auth, timeout=settings.farm_timeout_seconds
    )
    rt.on_close(farm.aclose)

    async def recorded_live() -> set[str]:
        rows = await rt.pool.fetch(
            f"SELECT vm_id FROM {rt.schema}.fleet_vms WHERE phase = ANY($1::text[])",
            ["requested", "idle", "busy", "draining"],
        )
        return {r["vm_id"] for r in rows}

    provider = provider_of(settings, farm, await launches_in_flight(rt))
    billing = BillingQuery(rt.pool, billing_queries.SCHEMA)
    fleet = FleetRound(
        rt.store, provider, FarmQueue(farm), settings, recorded_live, budgets_from(billing)
    )
    scaler = Scaler(rt, fleet)
    rt.background("fleet", scaler.run)
    rt.readiness_checks.append(scaler.readiness)
    return scaler


SERVICE = Service(
    name="scaler",
    schema="scaler",
    settings=ScalerSettings,
    projections=(FleetProjection(), VmUsageProjection()),
    migrations=Path(__file__).parent / "migrations",
    secrets=frozenset({"farm_password"}),
    wire=wire,
)
