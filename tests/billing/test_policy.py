"""Billing's process managers on the kit with a scripted command bus (no servers): what each
event makes them send to billing, the wallet and the job service, under which ids, and what
a refused hold becomes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.billing import (
    CaptureRequest,
    ChargeTask,
    CostTotals,
    EstimateParameters,
    HoldRequest,
    JobCostHeld,
    JobCostReply,
    JobHoldRefused,
    KeySpend,
    KeySpendCapsSet,
    OpenJobCost,
    RecordHoldRefused,
    RecordJobHold,
    RecordJobSettled,
    RetryJobHold,
    SetKeySpendCaps,
    SettleJobCost,
    TaskCharged,
)
from contracts.envelope import AwaitingReason, CostStatus, Currency
from contracts.errors import DomainError, InsufficientCredits
from contracts.identity import ApiKeyCreated, Scope
from contracts.jobs import (
    FrameRange,
    JobAccepted,
    JobCompleted,
    JobSubmitted,
    RecordJobCost,
    Renderer,
    RenderSettings,
    Resolution,
)
from contracts.render import RenderTaskCompleted
from contracts.wallet import (
    CaptureHold,
    CauseKind,
    CreditsDeposited,
    HoldCredits,
    IncreaseHold,
    TransferOutcome,
    VoidHold,
    WalletBalance,
)
from libs.bus.commands import Actor
from libs.bus.consumer import BusEvent
from libs.process import InMemoryProcessStore, ProcessRunner
from services.billing.process import CreditsRetryProcess, JobBillingProcess
from tests.billing.test_commands import NOW
from tests.fixtures import scene_ref
from tests.policies import ScriptedCommands, delivery

R = TypeVar("R", bound=BaseModel)
JOB = "job_01"
Answer = BaseModel | DomainError[Any]


def bus_event(event: Event, version: int = 1, event_id: uuid.UUID | None = None) -> BusEvent:
    return delivery(
        event, stream_id=f"x-{JOB}", recorded_at=NOW, version=version, event_id=event_id
    )


def totals(status: CostStatus = CostStatus.held, held: str = "5.00", **kw: Any) -> CostTotals:
    return CostTotals(
        status=status,
        estimate=None,
        cap_credits=None,
        held_credits=Decimal(held),
        so_far_credits=Decimal(kw.pop("so_far", "0")),
        captured_credits=Decimal(0),
        released_credits=Decimal(0),
        **kw,
    )


def hold(kind: str = "open", n: int = 1, amount: str = "5.00") -> HoldRequest:
    return HoldRequest(
        user_id="usr_1",
        transfer_id=f"hold:{JOB}:{n}",
        hold_id=JOB,
        job_id=JOB,
        kind=kind,
        amount=Decimal(amount),
        expires_at=NOW + timedelta(days=7),
    )


def reply(t: CostTotals, **kw: Any) -> Callable[[Command], JobCostReply]:
    return lambda _: JobCostReply(job_id=JOB, totals=t, version=3, **kw)


def balance(_: Command) -> WalletBalance:
    return WalletBalance(
        user_id="usr_1",
        currency=Currency.credits,
        balance_credits=Decimal("10.00"),
        held_credits=Decimal("5.00"),
        available_credits=Decimal("5.00"),
        outcome=TransferOutcome.applied,
        version=2,
    )


def short(_: Command) -> InsufficientCredits:
    return InsufficientCredits(
        "not enough", required_credits=Decimal("5.00"), available_credits=Decimal("1.25")
    )


submitted = JobSubmitted(
    job_id=JOB,
    owner_id="usr_1",
    name="shot_040",
    scene=scene_ref(),
    renderer=Renderer.blender_cycles,
    frame_range=FrameRange(start=1, end=10),
    chunk_size=5,
    resolution=Resolution(width=2048, height=858),
    render_settings=RenderSettings(samples=64),
    priority="normal",
    cost_cap_credits=Decimal("50.00"),
    submitted_at=NOW,
    api_key_id="key_1",
)
task_done = RenderTaskCompleted(
    render_id=f"{JOB}.full.1",
    job_id=JOB,
    task_id=2,
    frames=[6, 7, 8, 9, 10],
    worker="w2",
    started_at=NOW,
    finished_at=NOW + timedelta(minutes=5),
    render_seconds=300.5,
    outputs=[],
)


@pytest.fixture
def commands() -> ScriptedCommands:
    return ScriptedCommands(
        {
            OpenJobCost: reply(totals(CostStatus.holding, held="0"), hold=hold()),
            HoldCredits: balance,
            IncreaseHold: balance,
            RecordJobHold: reply(totals()),
            RecordHoldRefused: reply(totals(CostStatus.awaiting_credits)),
            ChargeTask: reply(totals(so_far="4.10"), hold=hold("increase", 2, "2.50")),
            RecordJobCost: lambda _: JobAccepted(job_id=JOB, version=9),
        }
    )


def runner(manager: Any, commands: ScriptedCommands, store: InMemoryProcessStore) -> Any:
    return ProcessRunner(manager, commands, store, Actor(kind="service", id="billing"))


async def test_a_submitted_job_gets_its_cost_opened_and_its_hold_placed_and_recorded(
    commands: ScriptedCommands,
) -> None:
    billing = runner(JobBillingProcess(), commands, InMemoryProcessStore())
    event_id = uuid.uuid4()
    await billing.handle(bus_event(submitted, event_id=event_id))
    assert commands.types() == ["OpenJobCost", "HoldCredits", "RecordJobHold"]
    assert [cid for cid, _ in commands.sent] == [
        f"billing:{event_id}:0",
        f"billing:{event_id}:0>:0",
        f"billing:{event_id}:0>:0>:0",
    ]
    [opened] = commands.of(OpenJobCost)
    assert (opened.api_key_id, opened.cap_credits) == ("key_1", Decimal("50.00"))
    assert opened.parameters == EstimateParameters(
        frame_range=FrameRange(start=1, end=10),
        resolution=Resolution(width=2048, height=858),
        render_settings=RenderSettings(samples=64),
        chunk_size=5,
        scene_size_bytes=scene_ref().size_bytes,
    )
    [held] = commands.of(HoldCredits)
    assert (held.transfer_id, held.hold_id, held.amount) == (f"hold:{JOB}:1", JOB, Decimal("5.00"))
    [record] = commands.of(RecordJobHold)
    assert (record.transfer_id, record.held_total) == (f"hold:{JOB}:1", Decimal("5.00"))


async def test_a_redelivered_submission_sends_nothing_again(commands: ScriptedCommands) -> None:
    billing = runner(JobBillingProcess(), commands, InMemoryProcessStore())
    delivery = bus_event(submitted)
    await billing.handle(delivery)
    await billing.handle(delivery)
    assert len(commands.sent) == 3


async def test_too_few_credits_make_the_job_wait_with_what_is_available(
    commands: ScriptedCommands,
) -> None:
    commands.answers[HoldCredits] = short
    store = InMemoryProcessStore()
    await runner(JobBillingProcess(), commands, store).handle(bus_event(submitted))
    assert commands.types() == ["OpenJobCost", "HoldCredits", "RecordHoldRefused"]
    [waiting] = commands.of(RecordHoldRefused)
    assert waiting.reason is AwaitingReason.insufficient_credits
    assert (waiting.needed_credits, waiting.available_credits) == (
        Decimal("5.00"),
        Decimal("1.25"),
    )


async def test_a_finished_task_is_charged_and_the_hold_grown_when_billing_asks(
    commands: ScriptedCommands,
) -> None:
    await runner(JobBillingProcess(), commands, InMemoryProcessStore()).handle(bus_event(task_done))
    assert commands.types() == ["ChargeTask", "IncreaseHold", "RecordJobHold"]
    [charge] = commands.of(ChargeTask)
    assert (charge.render_id, charge.task_id, charge.render_seconds) == (
        f"{JOB}.full.1",
        2,
        300.5,
    )
    [grow] = commands.of(IncreaseHold)
    assert (grow.transfer_id, grow.amount) == (f"hold:{JOB}:2", Decimal("2.50"))
    [record] = commands.of(RecordJobHold)
    assert record.held_total == Decimal("7.50")  # 5.00 held + 2.50


async def test_the_jobs_end_captures_its_cost_and_records_the_settlement(
    commands: ScriptedCommands,
) -> None:
    capture = CaptureRequest(
        user_id="usr_1",
        transfer_id=f"capture:{JOB}",
        hold_id=JOB,
        kind="capture",
        amount=Decimal("3.20"),
    )
    commands.answers[SettleJobCost] = reply(totals(so_far="3.20"), capture=capture)
    commands.answers[CaptureHold] = balance
    commands.answers[RecordJobSettled] = reply(totals(CostStatus.settled))
    ended = JobCompleted(job_id=JOB, at=NOW)
    await runner(JobBillingProcess(), commands, InMemoryProcessStore()).handle(bus_event(ended))
    assert commands.types() == ["SettleJobCost", "CaptureHold", "RecordJobSettled"]
    [settled] = commands.of(RecordJobSettled)
    assert (settled.captured, settled.released) == (Decimal("3.20"), Decimal("1.80"))


async def test_an_unused_hold_is_voided_at_the_end(commands: ScriptedCommands) -> None:
    void = CaptureRequest(
        user_id="usr_1", transfer_id=f"void:{JOB}", hold_id=JOB, kind="void", amount=Decimal(0)
    )
    commands.answers[SettleJobCost] = reply(totals(), capture=void)
    commands.answers[VoidHold] = balance
    commands.answers[RecordJobSettled] = reply(totals(CostStatus.settled))
    ended = JobCompleted(job_id=JOB, at=NOW)
    await runner(JobBillingProcess(), commands, InMemoryProcessStore()).handle(bus_event(ended))
    assert commands.types() == ["SettleJobCost", "VoidHold", "RecordJobSettled"]
    [settled] = commands.of(RecordJobSettled)
    assert (settled.captured, settled.released) == (Decimal(0), Decimal("5.00"))


async def test_every_billing_event_shows_on_the_job_with_its_stream_version(
    commands: ScriptedCommands,
) -> None:
    charged = TaskCharged.model_validate(
        {
            "job_id": JOB,
            "owner_id": "usr_1",
            "totals": totals(so_far="1.25").model_dump(),
            "at": NOW,
            "line": {
                "line_id": f"task:{JOB}.full.1:1",
                "cause": "task",
                "render_id": f"{JOB}.full.1",
                "task_id": 1,
                "frames": [1],
                "worker": "w1",
                "instance_type": "local-cpu",
                "seconds": "4500",
                "price_per_hour_credits": "1",
                "price_version": 1,
                "amount_credits": "1.25",
                "at": NOW,
            },
        }
    )
    await runner(JobBillingProcess(), commands, InMemoryProcessStore()).handle(
        bus_event(charged, version=7)
    )
    [recorded] = commands.of(RecordJobCost)
    assert (recorded.cost_version, recorded.status) == (7, "held")
    assert (recorded.held_credits, recorded.so_far_credits) == (Decimal("5.00"), Decimal("1.25"))


def refused_event(job_id: str) -> JobHoldRefused:
    return JobHoldRefused(
        job_id=job_id,
        owner_id="usr_1",
        totals=totals(CostStatus.awaiting_credits, awaiting_reason="insufficient_credits"),
        at=NOW,
        reason=AwaitingReason.insufficient_credits,
        needed_credits=Decimal("5.00"),
        available_credits=Decimal(0),
    )


deposit = CreditsDeposited(
    user_id="usr_1",
    transfer_id="topup:pay_1",
    at=NOW,
    amount=Decimal("100.00"),
    cause=CauseKind.payment,
    cause_id="pay_1",
    balance_after=Decimal("100.00"),
    held_after=Decimal(0),
)


async def test_a_top_up_retries_the_hold_of_each_job_waiting_for_credits(
    commands: ScriptedCommands,
) -> None:
    commands.answers[RetryJobHold] = reply(totals(CostStatus.awaiting_credits, "0"), hold=hold())
    store = InMemoryProcessStore()
    credits = runner(CreditsRetryProcess(), commands, store)
    for job_id in ("job_01", "job_02"):
        await credits.handle(bus_event(refused_event(job_id)))
    resumed = JobCostHeld(
        job_id="job_02",
        owner_id="usr_1",
        totals=totals(),
        at=NOW,
        transfer_id="hold:job_02:1",
        increase_credits=Decimal("5.00"),
        resumed=True,
    )
    await credits.handle(bus_event(resumed))  # job_02 got its hold meanwhile
    assert commands.sent == []
    await credits.handle(bus_event(deposit))
    assert commands.types() == ["RetryJobHold", "HoldCredits", "RecordJobHold"]
    assert [c.job_id for c in commands.of(RetryJobHold)] == ["job_01"]
    assert store.states[("billing-credits", "usr_1")] == {"jobs": ["job_01"]}


async def test_new_key_spend_caps_retry_waiting_jobs_and_nothing_waits_without_refusals(
    commands: ScriptedCommands,
) -> None:
    commands.answers[RetryJobHold] = reply(totals(CostStatus.awaiting_credits, "0"))
    credits = runner(CreditsRetryProcess(), commands, InMemoryProcessStore())
    caps = KeySpendCapsSet(
        api_key_id="key_1",
        owner_id="usr_1",
        daily_cap_credits=Decimal("100.00"),
        total_cap_credits=None,
        at=NOW,
    )
    await credits.handle(bus_event(caps))
    assert commands.sent == []  # nobody waits
    await credits.handle(bus_event(refused_event(JOB)))
    await credits.handle(bus_event(caps))
    assert commands.types() == ["RetryJobHold"]  # billing answered: still no room, no hold


async def test_a_key_created_with_a_spend_cap_gets_it_as_its_total_cap_in_billing(
    commands: ScriptedCommands,
) -> None:
    commands.answers[SetKeySpendCaps] = lambda cmd: KeySpend(
        api_key_id="key_1",
        daily_cap_credits=None,
        total_cap_credits=Decimal("25.00"),
        today_credits=Decimal(0),
        total_credits=Decimal(0),
        currency=Currency.credits,
    )
    credits = runner(CreditsRetryProcess(), commands, InMemoryProcessStore())

    def created(key_id: str, cap: Decimal | None) -> ApiKeyCreated:
        return ApiKeyCreated(
            key_id=key_id,
            user_id="usr_1",
            name="mcp",
            scopes=[Scope.jobs_read, Scope.jobs_write],
            key_hash="redacted",
            spend_cap_credits=cap,
            expires_at=None,
            created_at=NOW,
        )

    await credits.handle(bus_event(created("key_1", Decimal("25.00"))))
    await credits.handle(bus_event(created("key_2", None)))  # no cap: nothing to set
    [caps] = commands.of(SetKeySpendCaps)
    assert (caps.api_key_id, caps.owner_id) == ("key_1", "usr_1")
    assert (caps.daily_cap_credits, caps.total_cap_credits) == (None, Decimal("25.00"))
