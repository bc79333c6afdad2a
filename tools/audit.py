"""``renderctl audit`` and ``renderctl export``: a job or a user explained from what the
services recorded, read-only (docs/audit.md).

Every service's events are read through its schema's event table (``<schema>.events``,
decoded and upcast as the services do) and the gateway's action log through
``gateway.action_log``; a schema that is not there (a service never started) reads as
empty. Nothing here writes.

Totals are recomputed from the events, and set next to what the services answer, so a
difference shows:

* a job: Σ its cost lines (``billing.TaskCharged`` lines and the settlement's adjustment
  lines) is ``so_far``; Σ the wallet's ``HoldCaptured.captured`` for the job is
  ``captured`` (``GET /v1/jobs/{id}/cost``);
* a user: Σ deposits - Σ captures - Σ debits of the wallet's events is ``balance``; what
  holds placed minus what they captured and released is ``held`` (``GET /v1/wallet``).
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

import contracts.all  # noqa: F401  (registers every event type)
from contracts.base import Event
from contracts.billing import CostLine, JobCostSettled, TaskCharged
from contracts.wallet import (
    CreditsDebited,
    CreditsDeposited,
    CreditsHeld,
    HoldCaptured,
    HoldExpired,
    HoldIncreased,
    HoldVoided,
)
from libs.eventstore.store import RecordedEvent

ZERO = Decimal("0.00")
_EVENT_COLUMNS = (
    "global_position, tx_id::text::bigint AS tx_id, event_id, stream_id, version, type,"
    " schema_version, data, metadata, recorded_at"
)
#: Columns an export never shows: hashes of secrets.
SECRET_COLUMNS = frozenset({"password_hash", "key_hash", "token_hash", "secret"})

VM_TIME_NOTE = (
    "VM time charged to a job is its task lines: each line is the seconds one farm machine"
    " (worker) was busy rendering that task, at its instance type's price; idle, boot and"
    " drain time (fleet.* phase spans) is the fleet's, not charged to jobs"
)


class Reader:
    """Read-only access to every schema's events and to the read-model tables."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self._tables: dict[str, bool] = {}

    async def has(self, table: str) -> bool:
        if table not in self._tables:
            self._tables[table] = (
                await self.pool.fetchval("SELECT to_regclass($1)", table) is not None
            )
        return self._tables[table]

    async def events(self, schema: str, where: str, *args: object) -> list[RecordedEvent]:
        """``schema``'s events matching the SQL condition ``where``, in stored order."""
        if not await self.has(f"{schema}.events"):
            return []
        rows = await self.pool.fetch(
            f"SELECT {_EVENT_COLUMNS} FROM {schema}.events WHERE {where} ORDER BY global_position",
            *args,
        )
        return [RecordedEvent(*r) for r in rows]

    async def rows(
        self, table: str, where: str, *args: object, order: str = "1"
    ) -> list[dict[str, Any]]:
        """Rows of a read-model table, without secret columns; [] when it is not there."""
        if not await self.has(table):
            return []
        rows = await self.pool.fetch(f"SELECT * FROM {table} WHERE {where} ORDER BY {order}", *args)
        return [{k: v for k, v in dict(r).items() if k not in SECRET_COLUMNS} for r in rows]


@dataclass
class Entry:
    """One line of a timeline: when, from which service, what, and the event's data."""

    at: datetime
    source: str
    kind: str
    summary: str
    data: dict[str, Any]
    stream_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "source": self.source,
            "kind": self.kind,
            "summary": self.summary,
            "stream_id": self.stream_id,
            "data": self.data,
        }


def _decoded(source: str, e: RecordedEvent) -> tuple[Event, Entry]:
    event = e.decode()
    data = event.model_dump(mode="json")
    for name in getattr(event, "private_fields", ()):
        data[name] = "redacted"
    entry = Entry(e.recorded_at, source, e.event_type, _summary(event), data, e.stream_id)
    return event, entry


def _summary(event: Event) -> str:
    """A short human reading of an event: the fields that say what happened."""
    keys = (
        "step",
        "status",
        "render_id",
        "task_id",
        "frames",
        "worker",
        "render_seconds",
        "amount",
        "captured",
        "released",
        "reason",
        "code",
        "error",
        "message",
        "transfer_id",
        "cause",
    )
    data = event.model_dump(mode="json")
    frames = data.get("frames")
    if isinstance(frames, list) and frames and isinstance(frames[0], dict):
        data["frames"] = [f.get("frame") for f in frames]  # JobFramesRendered: their numbers
    parts = [f"{k}={_short(data[k])}" for k in keys if data.get(k) not in (None, "", [])]
    if isinstance(event, TaskCharged):
        parts.append(f"line={event.line.line_id} {event.line.amount_credits}")
    if "findings" in data:
        parts.append(f"findings={len(data['findings'])}")
    return " ".join(parts)


def _short(value: object, limit: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01'))}"


def _line_json(line: CostLine) -> dict[str, Any]:
    return line.model_dump(mode="json")


# -- a job ----------------------------------------------------------------------------


@dataclass
class JobAudit:
    job_id: str
    owner_id: str | None
    status: str | None
    api_calls: list[Entry] = field(default_factory=list)
    job_events: list[Entry] = field(default_factory=list)
    farm_tasks: list[Entry] = field(default_factory=list)
    cost: list[Entry] = field(default_factory=list)
    wallet: list[Entry] = field(default_factory=list)
    lines: list[CostLine] = field(default_factory=list)
    billing_totals: dict[str, Any] | None = None
    held: Decimal = ZERO
    captured: Decimal = ZERO
    released: Decimal = ZERO

    @property
    def so_far(self) -> Decimal:
        return sum((line.amount_credits for line in self.lines), ZERO)

    def vm_time(self) -> list[dict[str, Any]]:
        """Per (worker, instance type): tasks, busy seconds and credits of the task lines."""
        by: dict[tuple[str, str], list[CostLine]] = defaultdict(list)
        for line in self.lines:
            if line.task_id is not None:
                by[(line.worker or "-", line.instance_type or "-")].append(line)
        return [
            {
                "worker": worker,
                "instance_type": itype,
                "tasks": len(lines),
                "seconds": str(sum((x.seconds for x in lines), Decimal(0))),
                "minutes": str(
                    (sum((x.seconds for x in lines), Decimal(0)) / 60).quantize(Decimal("0.01"))
                ),
                "credits": money(sum((x.amount_credits for x in lines), ZERO)),
            }
            for (worker, itype), lines in sorted(by.items())
        ]

    def totals(self) -> dict[str, Any]:
        billed = self.billing_totals or {}
        return {
            "lines": len(self.lines),
            "so_far_credits": money(self.so_far),
            "held_credits": money(self.held - self.captured - self.released),
            "captured_credits": money(self.captured),
            "released_credits": money(self.released),
            "vm_seconds": str(sum((x.seconds for x in self.lines if x.task_id is not None), 0)),
            "billing_so_far_credits": billed.get("so_far_credits"),
            "billing_captured_credits": billed.get("captured_credits"),
            "billing_status": billed.get("status"),
        }

    def timeline(self) -> list[Entry]:
        every = self.api_calls + self.job_events + self.farm_tasks + self.cost + self.wallet
        return sorted(every, key=lambda e: e.at)

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "owner_id": self.owner_id,
            "status": self.status,
            "api_calls": [e.to_json() for e in self.api_calls],
            "job_events": [e.to_json() for e in self.job_events],
            "farm_tasks": [e.to_json() for e in self.farm_tasks],
            "cost": [e.to_json() for e in self.cost],
            "cost_lines": [_line_json(x) for x in self.lines],
            "wallet": [e.to_json() for e in self.wallet],
            "vm_time": {"note": VM_TIME_NOTE, "machines": self.vm_time()},
            "totals": self.totals(),
            "timeline": [
                {"at": e.at.isoformat(), "source": e.source, "kind": e.kind, "summary": e.summary}
                for e in self.timeline()
            ],
        }


async def api_calls(reader: Reader, where: str, *args: object) -> list[Entry]:
    rows = await reader.rows("gateway.action_log", where, *args, order="at, request_id")
    return [
        Entry(
            r["at"],
            "api",
            r["operation_id"] or r["path"],
            f"{r['method']} {r['path']} by {r['user_id'] or 'anonymous'}"
            f" key={r['api_key_id'] or '-'} -> {r['status_code']} {r['outcome']}"
            + (f" {r['error_code']}" if r["error_code"] else ""),
            {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()},
        )
        for r in rows
    ]


async def audit_job(reader: Reader, job_id: str) -> JobAudit | None:
    jobs = await reader.rows("job.jobs", "job_id = $1", job_id)
    job_events = await reader.events("job", "stream_id = $1", f"job-{job_id}")
    if not jobs and not job_events:
        return None
    owner = jobs[0]["owner_id"] if jobs else None
    audit = JobAudit(job_id, owner, jobs[0]["status"] if jobs else None)
    audit.api_calls = await api_calls(reader, "target_ids->>'job_id' = $1", job_id)
    audit.job_events = [_decoded("job", e)[1] for e in job_events]
    for e in await reader.events("bridge", "data->>'job_id' = $1", job_id):
        audit.farm_tasks.append(_decoded("render", e)[1])
    for e in await reader.events("billing", "stream_id = $1", f"jobcost-{job_id}"):
        event, entry = _decoded("billing", e)
        audit.cost.append(entry)
        totals = getattr(event, "totals", None)
        if totals is not None:
            audit.billing_totals = totals.model_dump(mode="json", exclude={"estimate"})
        if isinstance(event, TaskCharged):
            audit.lines.append(event.line)
        elif isinstance(event, JobCostSettled):
            audit.lines.extend(event.adjustments)
    if owner is not None:
        for e in await reader.events(
            "wallet", "stream_id = $1 AND data->>'job_id' = $2", f"wallet-{owner}", job_id
        ):
            event, entry = _decoded("wallet", e)
            audit.wallet.append(entry)
            match event:
                case CreditsHeld() | HoldIncreased():
                    audit.held += event.amount
                case HoldCaptured():
                    audit.captured += event.captured
                    audit.released += event.released
                case HoldVoided() | HoldExpired():
                    audit.released += event.released
    return audit


# -- a user's wallet ------------------------------------------------------------------


@dataclass
class UserAudit:
    user_id: str
    wallet: list[Entry] = field(default_factory=list)
    payments: list[Entry] = field(default_factory=list)
    deposited: Decimal = ZERO
    debited: Decimal = ZERO
    held: Decimal = ZERO
    captured: Decimal = ZERO
    released: Decimal = ZERO
    per_job: dict[str, dict[str, Decimal]] = field(default_factory=dict)
    last_balance: Decimal | None = None
    last_held: Decimal | None = None

    @property
    def balance(self) -> Decimal:
        return self.deposited - self.captured - self.debited

    def totals(self) -> dict[str, Any]:
        held_now = self.held - self.captured - self.released
        return {
            "deposited_credits": money(self.deposited),
            "debited_credits": money(self.debited),
            "captured_credits": money(self.captured),
            "released_credits": money(self.released),
            "balance_credits": money(self.balance),
            "held_credits": money(held_now),
            "available_credits": money(self.balance - held_now),
            "wallet_balance_after_last_event": (
                None if self.last_balance is None else money(self.last_balance)
            ),
            "wallet_held_after_last_event": (
                None if self.last_held is None else money(self.last_held)
            ),
        }

    def jobs(self) -> list[dict[str, str]]:
        return [
            {"job_id": job_id, **{k: money(v) for k, v in sums.items()}}
            for job_id, sums in sorted(self.per_job.items())
        ]

    def timeline(self) -> list[Entry]:
        return sorted(self.wallet + self.payments, key=lambda e: e.at)

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "wallet": [e.to_json() for e in self.wallet],
            "payments": [e.to_json() for e in self.payments],
            "jobs": self.jobs(),
            "totals": self.totals(),
        }


def _job_sums(audit: UserAudit, job_id: str) -> dict[str, Decimal]:
    return audit.per_job.setdefault(
        job_id, {"held_credits": ZERO, "captured_credits": ZERO, "released_credits": ZERO}
    )


async def audit_user(reader: Reader, user_id: str) -> UserAudit:
    audit = UserAudit(user_id)
    for e in await reader.events("wallet", "stream_id = $1", f"wallet-{user_id}"):
        event, entry = _decoded("wallet", e)
        audit.wallet.append(entry)
        audit.last_balance = getattr(event, "balance_after", audit.last_balance)
        audit.last_held = getattr(event, "held_after", audit.last_held)
        match event:
            case CreditsDeposited():
                audit.deposited += event.amount
            case CreditsDebited():
                audit.debited += event.amount
            case CreditsHeld() | HoldIncreased():
                audit.held += event.amount
                _job_sums(audit, event.job_id)["held_credits"] += event.amount
            case HoldCaptured():
                audit.captured += event.captured
                audit.released += event.released
                sums = _job_sums(audit, event.job_id)
                sums["captured_credits"] += event.captured
                sums["released_credits"] += event.released
            case HoldVoided() | HoldExpired():
                audit.released += event.released
                _job_sums(audit, event.job_id)["released_credits"] += event.released
    orders = await reader.events(
        "payments", "type = 'payment.TopUpOrdered' AND data->>'user_id' = $1", user_id
    )
    streams = [e.stream_id for e in orders]
    for e in await reader.events("payments", "stream_id = ANY($1::text[])", streams):
        audit.payments.append(_decoded("payments", e)[1])
    return audit


# -- everything held on a user --------------------------------------------------------


async def export_user(reader: Reader, user_id: str) -> dict[str, Any]:
    """Everything the read models and the action log hold on the user (no secrets)."""
    profile = await reader.rows("identity.users", "user_id = $1", user_id)
    jobs = await reader.rows("job.jobs", "owner_id = $1", user_id, order="created_at, job_id")
    job_ids = [j["job_id"] for j in jobs]
    wallet = await audit_user(reader, user_id)
    by_user = "user_id = $1"
    by_owner = "owner_id = $1"
    exported: dict[str, Any] = _plain(
        {
            "user_id": user_id,
            "profile": profile[0] if profile else None,
            "api_keys": await reader.rows("identity.api_keys", by_user, user_id),
            "jobs": [
                {
                    **{k: v for k, v in j.items() if k not in ("envelope", "view")},
                    "job": json.loads(j["envelope"]) if j.get("envelope") else None,
                }
                for j in jobs
            ],
            "costs": {
                "jobs": await reader.rows("billing.job_costs", by_owner, user_id),
                "lines": await reader.rows(
                    "billing.cost_lines", "job_id = ANY($1::text[])", job_ids, order="job_id, seq"
                ),
                "key_spend": await reader.rows("billing.key_spend", by_owner, user_id),
            },
            "wallet": {
                "balance": await reader.rows("wallet.balances", by_user, user_id),
                "transfers": await reader.rows(
                    "wallet.transfers", by_user, user_id, order="version"
                ),
                "holds": await reader.rows("wallet.holds", by_user, user_id),
                "ledger": [e.to_json() for e in wallet.wallet],
                "totals": wallet.totals(),
            },
            "payments": await reader.rows("payments.orders", by_user, user_id),
            "uploads": {
                "uploads": await reader.rows("upload.uploads", by_owner, user_id),
                "manifests": await reader.rows("upload.manifests", by_owner, user_id),
                "assets": await reader.rows("upload.assets", by_owner, user_id),
                "outputs": await reader.rows("upload.outputs", by_owner, user_id),
            },
            "notifications": {
                "notifications": await reader.rows(
                    "notifier.notifications", by_user, user_id, order="notification_id"
                ),
                "webhook_endpoints": await reader.rows(
                    "notifier.webhook_endpoints", by_user, user_id
                ),
            },
            "api_calls": [e.data for e in await api_calls(reader, "user_id = $1", user_id)],
        }
    )
    return exported


def _plain(value: Any) -> Any:
    """JSON-ready: Decimals as strings (exact), times in ISO 8601, JSON columns parsed."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    return value if value is None or isinstance(value, str | int | float | bool) else str(value)


# -- human output ---------------------------------------------------------------------


def table(rows: Iterable[Iterable[str]], header: Iterable[str]) -> str:
    """A tidy fixed-width table."""
    lines = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    out = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def bar(part: Decimal, whole: Decimal, width: int = 30) -> str:
    """``[#########.....]  62%``: ``part`` of ``whole``."""
    share = Decimal(0) if whole <= 0 else min(Decimal(1), max(Decimal(0), part / whole))
    filled = int(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {int(share * 100):3d}%"


def _timeline_text(entries: list[Entry]) -> str:
    return table(
        (
            [e.at.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], e.source, e.kind, e.summary]
            for e in entries
        ),
        ("at (UTC)", "source", "what", "details"),
    )


def job_text(audit: JobAudit) -> str:
    t = audit.totals()
    held_total = audit.held or Decimal(1)
    parts = [
        f"job {audit.job_id}  owner {audit.owner_id}  status {audit.status}",
        "",
        _timeline_text(audit.timeline()),
        "",
        "cost lines",
        table(
            (
                [
                    x.line_id,
                    x.cause.value,
                    ",".join(str(f) for f in x.frames),
                    x.worker or "-",
                    str(x.seconds),
                    money(x.amount_credits),
                ]
                for x in audit.lines
            ),
            ("line", "cause", "frames", "worker", "seconds", "credits"),
        ),
        "",
        "VM time charged",
        textwrap.fill(VM_TIME_NOTE + ".", 92),
        table(
            (
                [m["worker"], m["instance_type"], str(m["tasks"]), m["minutes"], m["credits"]]
                for m in audit.vm_time()
            ),
            ("worker", "instance type", "tasks", "minutes", "credits"),
        ),
        "",
        f"so far    {t['so_far_credits']:>12}  (billing says {t['billing_so_far_credits']})",
        f"captured  {t['captured_credits']:>12}  (billing says {t['billing_captured_credits']})",
        f"released  {t['released_credits']:>12}",
        f"held now  {t['held_credits']:>12}",
        f"captured of held  {bar(audit.captured, held_total)}",
    ]
    return "\n".join(parts)


def user_text(audit: UserAudit) -> str:
    t = audit.totals()
    parts = [
        f"wallet of {audit.user_id}",
        "",
        _timeline_text(audit.timeline()),
        "",
        "per job",
        table(
            (
                [j["job_id"], j["held_credits"], j["captured_credits"], j["released_credits"]]
                for j in audit.jobs()
            ),
            ("job", "held", "captured", "released"),
        ),
        "",
        f"deposited {t['deposited_credits']:>12}",
        f"debited   {t['debited_credits']:>12}",
        f"captured  {t['captured_credits']:>12}",
        f"balance   {t['balance_credits']:>12}  (the wallet says"
        f" {t['wallet_balance_after_last_event']})",
        f"held      {t['held_credits']:>12}",
        f"available {t['available_credits']:>12}",
        f"spent of deposited  {bar(audit.captured + audit.debited, audit.deposited)}",
    ]
    return "\n".join(parts)
