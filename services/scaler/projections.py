"""Read models of the scaler (tables: ``services/scaler/migrations``): the fleet as it is
(``fleet_vms``) and VM time per day (``vm_usage``)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from contracts.fleet import (
    SPAN_EVENTS,
    PhaseSpan,
    VmAdopted,
    VmLaunchAccepted,
    VmPhase,
    VmRequested,
    VmSpanEvent,
    span,
)
from libs.eventstore.projection import ReadModel, Row, on
from libs.eventstore.store import RecordedEvent
from services.scaler.machines import PHASE_AFTER


def _vm(e: VmRequested | VmAdopted, phase: VmPhase, since: datetime) -> Row:
    return {
        "vm_id": e.vm_id,
        "pool": e.pool,
        "provider": e.provider,
        "instance_type": e.instance_type,
        "spot": e.spot,
        "region": e.region,
        "hourly_price_usd": e.hourly_price_usd,
        "phase": phase.value,
        "phase_since": since,
        "worker_name": getattr(e, "worker_name", None),
        "request_id": None,
        "reason": getattr(e, "reason", "adopted"),
        "requested_at": since,
        "ended_at": None,
        "boot_seconds": Decimal(0),
        "idle_seconds": Decimal(0),
        "busy_seconds": Decimal(0),
        "cost_usd": Decimal(0),
        "version": 0,
    }


class FleetProjection(ReadModel):
    """``scaler.fleet_vms``: every machine, its phase and its time and cost so far (the
    current phase's time is added by readers, from ``phase_since``)."""

    name, table, key = "fleet_vms", "fleet_vms", ("vm_id",)
    columns = {
        "vm_id": "text",
        "pool": "text",
        "provider": "text",
        "instance_type": "text",
        "spot": "boolean",
        "region": "text",
        "hourly_price_usd": "numeric",
        "phase": "text",
        "phase_since": "timestamptz",
        "worker_name": "text",
        "request_id": "text",
        "reason": "text",
        "requested_at": "timestamptz",
        "ended_at": "timestamptz",
        "boot_seconds": "numeric",
        "idle_seconds": "numeric",
        "busy_seconds": "numeric",
        "cost_usd": "numeric",
        "version": "integer",
    }

    @on(VmRequested, key=lambda e: (e.vm_id,))
    def requested(self, row: Row | None, e: VmRequested, rec: RecordedEvent) -> Row | None:
        return {**_vm(e, VmPhase.requested, e.at), "version": rec.version}

    @on(VmAdopted, key=lambda e: (e.vm_id,))
    def adopted(self, row: Row | None, e: VmAdopted, rec: RecordedEvent) -> Row | None:
        phase = VmPhase.idle if e.worker_name else VmPhase.requested
        return {**_vm(e, phase, e.launched_at), "version": rec.version}

    @on(VmLaunchAccepted, key=lambda e: (e.vm_id,))
    def accepted(self, row: Row | None, e: VmLaunchAccepted, rec: RecordedEvent) -> Row | None:
        assert row is not None
        return {**row, "request_id": e.request_id, "version": rec.version}

    @on(*SPAN_EVENTS, key=lambda e: (e.vm_id,))
    def moved(self, row: Row | None, e: VmSpanEvent, rec: RecordedEvent) -> Row | None:
        assert row is not None
        ended: PhaseSpan = e.ended
        phase = PHASE_AFTER[type(e)]
        new = {**row, "phase": phase.value, "phase_since": e.at, "version": rec.version}
        column = _SECONDS_COLUMN.get(ended.phase)
        if column:
            new[column] = row[column] + ended.seconds
        new["cost_usd"] = row["cost_usd"] + ended.cost_usd
        new["worker_name"] = getattr(e, "worker_name", row["worker_name"])
        if e.event_type in ("fleet.VmStopped", "fleet.VmPreempted", "fleet.VmLost"):
            new["ended_at"] = e.at
        if e.event_type in ("fleet.VmLaunchFailed", "fleet.VmStopped", "fleet.VmPreempted"):
            new["reason"] = getattr(e, "reason", row["reason"])
        return new


#: Where a phase's seconds are counted: boot (requested), idle, busy (draining: finishing
#: its task, so busy).
_SECONDS_COLUMN = {
    VmPhase.requested: "boot_seconds",
    VmPhase.idle: "idle_seconds",
    VmPhase.busy: "busy_seconds",
    VmPhase.draining: "busy_seconds",
}


def by_day(ended: PhaseSpan) -> dict[date, PhaseSpan]:
    """``ended`` cut at UTC midnights: the part of the span in each day it touches. The
    parts' seconds and costs add up exactly to the span's (the last day takes the rest)."""
    parts: dict[date, PhaseSpan] = {}
    start, end = ended.started_at.astimezone(UTC), ended.ended_at.astimezone(UTC)
    while (midnight := datetime.combine(start.date() + timedelta(days=1), time(), UTC)) < end:
        parts[start.date()] = span(ended.phase, start, midnight, ended.hourly_price_usd)
        start = midnight
    seconds = ended.seconds - sum((p.seconds for p in parts.values()), Decimal(0))
    cost = ended.cost_usd - sum((p.cost_usd for p in parts.values()), Decimal(0))
    last = span(ended.phase, start, end, ended.hourly_price_usd)
    parts[start.date()] = last.model_copy(update={"seconds": seconds, "cost_usd": cost})
    return parts


class VmUsageProjection(ReadModel):
    """``scaler.vm_usage``: seconds and cost per UTC day, machine and phase (boot, idle,
    busy), from the spans the machines' events end."""

    name, table, key = "vm_usage", "vm_usage", ("day", "vm_id", "phase")
    columns = {
        "day": "date",
        "vm_id": "text",
        "phase": "text",
        "seconds": "numeric",
        "cost_usd": "numeric",
    }

    @on(
        *SPAN_EVENTS,
        each=lambda e: {
            (day, e.vm_id, _usage_phase(e.ended.phase)): part
            for day, part in by_day(e.ended).items()
        },
    )
    def spent(
        self, row: Row | None, e: VmSpanEvent, rec: RecordedEvent, part: PhaseSpan
    ) -> Row | None:
        row = row or {
            "day": part.started_at.date(),
            "vm_id": e.vm_id,
            "phase": _usage_phase(part.phase),
            "seconds": Decimal(0),
            "cost_usd": Decimal(0),
        }
        seconds, cost = row["seconds"] + part.seconds, row["cost_usd"] + part.cost_usd
        return {**row, "seconds": seconds, "cost_usd": cost}


def _usage_phase(phase: VmPhase) -> str:
    """A span's usage phase: ``boot`` (requested), ``idle`` or ``busy`` (draining too)."""
    return _USAGE_PHASE.get(phase, phase.value)


_USAGE_PHASE = {VmPhase.requested: "boot", VmPhase.draining: "busy"}
