"""Queries on the scaler's read models: ``<schema>.fleet_vms`` and ``<schema>.vm_usage``.

Owned by the scaler service (``services/scaler``). A change to the columns these queries
read, in ``services/scaler/projections.py`` or its migrations, comes with the matching change
here in the same commit; ``tests/gateway/test_admin_fleet.py`` pins the contract (the
scaler's real projections, read back through the admin API).

A machine's row holds the time of the phases it has ended; the current phase's time, up to
``now``, is added here, so a live machine's seconds and cost are current when read.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import asyncpg

from contracts.fleet import (
    ENDED_PHASES,
    USD_SCALE,
    FleetView,
    PoolFleet,
    UsageDay,
    VmPhase,
    VmView,
    span,
)
from libs.readmodels import check_schema

#: The schema the scaler owns (its ``Service.schema``).
SCHEMA = "scaler"
HOUR = Decimal(3600)
#: Where the current phase's seconds go (draining: finishing its task, so busy).
_COLUMN = {
    VmPhase.requested: "boot_seconds",
    VmPhase.idle: "idle_seconds",
    VmPhase.busy: "busy_seconds",
    VmPhase.draining: "busy_seconds",
}


class FleetQuery:
    """Read-only access to the scaler's read models."""

    def __init__(self, pool: asyncpg.Pool, schema: str = SCHEMA) -> None:
        s = check_schema(schema)
        self.pool = pool
        columns = (
            "vm_id, pool, provider, instance_type, spot, region, phase, phase_since,"
            " worker_name, hourly_price_usd, requested_at, ended_at, reason, boot_seconds,"
            " idle_seconds, busy_seconds, cost_usd"
        )
        self._live_sql = (
            f"SELECT {columns} FROM {s}.fleet_vms WHERE phase <> ALL($1::text[])"
            " AND ($2::text IS NULL OR pool = $2) ORDER BY pool, requested_at, vm_id"
        )
        self._usage_sql = (
            "SELECT u.day, v.pool, u.phase, sum(u.seconds) AS seconds,"
            f" sum(u.cost_usd) AS cost_usd FROM {s}.vm_usage u JOIN {s}.fleet_vms v USING"
            " (vm_id) WHERE u.day BETWEEN $1 AND $2 AND ($3::text IS NULL OR v.pool = $3)"
            " GROUP BY u.day, v.pool, u.phase ORDER BY u.day, v.pool"
        )

    async def fleet(self, pool: str | None, now: datetime) -> FleetView:
        """The machines not ended, their time up to ``now``, and each pool's hourly cost."""
        ended = [p.value for p in ENDED_PHASES]
        rows = await self.pool.fetch(self._live_sql, ended, pool)
        items = [_current(dict(r), now) for r in rows]
        pools: dict[str, PoolFleet] = {}
        for vm in items:
            p = pools.get(vm.pool) or PoolFleet(
                pool=vm.pool, vms=0, busy=0, cost_per_hour_usd=Decimal(0)
            )
            pools[vm.pool] = p.model_copy(
                update={
                    "vms": p.vms + 1,
                    "busy": p.busy + (vm.phase is VmPhase.busy),
                    "cost_per_hour_usd": p.cost_per_hour_usd + vm.hourly_price_usd,
                }
            )
        return FleetView(
            at=now,
            pools=list(pools.values()),
            cost_per_hour_usd=sum((p.cost_per_hour_usd for p in pools.values()), Decimal(0)),
            items=items,
        )

    async def usage(self, from_day: date, to_day: date, pool: str | None) -> list[UsageDay]:
        """Per UTC day and pool: hours booting, idle and busy, and their cost, from the
        phases the machines have ended (a live machine's current phase is not in it yet)."""
        found: dict[tuple[date, str], dict[str, Decimal]] = {}
        for r in await self.pool.fetch(self._usage_sql, from_day, to_day, pool):
            day = found.setdefault((r["day"], r["pool"]), {})
            day[f"{r['phase']}_hours"] = r["seconds"] / HOUR
            day[f"{r['phase']}_cost"] = r["cost_usd"]
        zero = Decimal(0)
        return [
            UsageDay(
                day=day,
                pool=pool_name,
                boot_hours=v.get("boot_hours", zero),
                idle_hours=v.get("idle_hours", zero),
                busy_hours=v.get("busy_hours", zero),
                cost_usd=v.get("boot_cost", zero)
                + v.get("idle_cost", zero)
                + v.get("busy_cost", zero),
                farm_overhead_usd=v.get("boot_cost", zero) + v.get("idle_cost", zero),
            )
            for (day, pool_name), v in found.items()
        ]


def _current(row: dict[str, object], now: datetime) -> VmView:
    """The row with its current phase's time up to ``now`` added."""
    vm = VmView.model_validate(row)
    column = _COLUMN.get(vm.phase)
    if column is None or now <= vm.phase_since:
        return vm
    current = span(vm.phase, vm.phase_since, now, vm.hourly_price_usd)
    seconds: Decimal = getattr(vm, column) + current.seconds
    cost = (vm.cost_usd + current.cost_usd).quantize(USD_SCALE)
    return vm.model_copy(update={column: seconds, "cost_usd": cost})
