"""A job's cost on the in-memory unit of work (no servers): the hold before rendering, a line
per farm task, growing the hold, the cap, settling, and API keys' spend caps."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from contracts.billing import (
    ChargeTask,
    EstimateCost,
    EstimateParameters,
    JobCostReply,
    KeySpend,
    LineCause,
    OpenJobCost,
    PublishPrices,
    RecordHoldRefused,
    RecordJobHold,
    RecordJobSettled,
    RetryJobHold,
    SetKeySpendCaps,
    SettleJobCost,
)
from contracts.envelope import AwaitingReason, CostStatus
from contracts.errors import JobCostNotFound, NoPrices, ValidationFailed
from contracts.jobs import FrameRange, Resolution, TestRenderQuality
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.uow import ReadOnlyUnitOfWork, UnitOfWork
from services.billing.commands import BillingCommands
from services.billing.domain import JobCost, KeyBudget
from services.billing.settings import BillingSettings
from tests.prices import TEST_PRICES

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
JOB = "job_1"
#: 100 frames of 60 s at local-cpu's 1 credit/hour (tests/prices.py): estimate 0.83 / 1.67 /
#: 4.17; hold 4.17 x 1.2 = 5.00.
PARAMS = EstimateParameters(
    frame_range=FrameRange(start=1, end=100), resolution=Resolution(width=1920, height=1080)
)

Handler = Callable[[Any, UnitOfWork], Awaitable[Any]]


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore("billing")


@pytest.fixture
async def billing(store: InMemoryEventStore) -> BillingCommands:
    commands = BillingCommands(BillingSettings(), store, clock=lambda: NOW)
    uow = UnitOfWork(store)
    assert await commands.publish_default(uow, TEST_PRICES)
    await uow.commit()
    return commands


async def run(store: InMemoryEventStore, handler: Handler, cmd: object) -> Any:
    """One command as the command server runs it: a unit of work, the handler, a commit."""
    uow = UnitOfWork(store, metadata={"actor": {"kind": "user", "id": "adm_1"}})
    reply = await handler(cmd, uow)
    await uow.commit()
    return reply


async def query(store: InMemoryEventStore, handler: Handler, cmd: object) -> Any:
    """A read-only command as the command server runs it: loads only, nothing committed."""
    return await handler(cmd, ReadOnlyUnitOfWork(store))


async def cost_of(store: InMemoryEventStore, job_id: str = JOB) -> JobCost:
    return await UnitOfWork(store).get(JobCost, job_id)


def opening(job_id: str = JOB, cap: str | None = None, key: str | None = None) -> OpenJobCost:
    return OpenJobCost(
        job_id=job_id,
        owner_id="usr_1",
        api_key_id=key,
        parameters=PARAMS,
        cap_credits=Decimal(cap) if cap else None,
        at=NOW,
    )


def task(n: int, hours: str = "1", job_id: str = JOB) -> ChargeTask:
    return ChargeTask(
        job_id=job_id,
        render_id=f"{job_id}.full.1",
        task_id=n,
        frames=[n],
        worker="w1",
        render_seconds=float(Decimal(hours) * 3600),
        finished_at=NOW + timedelta(minutes=n),
    )


async def held(
    store: InMemoryEventStore, billing: BillingCommands, job_id: str = JOB, **open_kw: Any
) -> JobCostReply:
    """Open the job's cost and record the wallet placing the hold it asked for."""
    reply = await run(store, billing.open, opening(job_id, **open_kw))
    assert reply.hold is not None
    record = RecordJobHold(
        job_id=job_id, transfer_id=reply.hold.transfer_id, held_total=reply.hold.amount, at=NOW
    )
    result: JobCostReply = await run(store, billing.record_hold, record)
    return result


async def test_opening_asks_for_the_estimates_high_end_plus_the_margin(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    reply = await run(store, billing.open, opening())
    assert reply.totals.status is CostStatus.holding
    assert reply.totals.estimate.high_credits == Decimal("4.17")
    hold = reply.hold
    assert hold is not None and hold.kind == "open"
    assert (hold.amount, hold.transfer_id, hold.hold_id) == (Decimal("5.00"), "hold:job_1:1", JOB)
    assert hold.expires_at == NOW + timedelta(days=7)
    again = await run(store, billing.open, opening())  # a repeat asks for the same hold
    assert again.hold == hold and again.version == reply.version


async def test_the_hold_is_never_above_the_jobs_cap(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    reply = await run(store, billing.open, opening(cap="3.00"))
    assert reply.hold.amount == Decimal("3.00")


async def test_a_placed_hold_lets_the_job_render(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    reply = await held(store, billing)
    assert reply.totals.status is CostStatus.held
    assert reply.totals.held_credits == Decimal("5.00")


async def test_each_farm_task_is_one_line_once(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await held(store, billing)
    await run(store, billing.charge_task, task(1, hours="0.5"))
    reply = await run(store, billing.charge_task, task(1, hours="0.5"))  # redelivered
    cost = await cost_of(store)
    [line] = cost.lines
    assert (line.line_id, line.seconds, line.amount_credits) == (
        "task:job_1.full.1:1",
        Decimal("1800.000"),
        Decimal("0.50"),
    )
    assert (line.instance_type, line.price_version, line.frames) == ("local-cpu", 1, [1])
    assert reply.totals.so_far_credits == Decimal("0.50") and reply.totals.lines == 1


async def test_a_reduced_test_renders_task_re_estimates_the_job_at_its_own_settings(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await held(store, billing)
    half = task(1).model_copy(
        update={
            "render_id": f"{JOB}.test.1",
            "render_seconds": 22.5,
            "quality": TestRenderQuality(resolution_percent=50),
        }
    )
    reply = await run(store, billing.charge_task, half)
    [line] = (await cost_of(store)).lines
    assert line.work_factor == Decimal(4)  # 960x540 against the job's 1920x1080
    estimate = reply.totals.estimate
    assert estimate is not None
    # 22.5 s at a quarter of the pixels: 90 s a frame at the job's own settings.
    assert estimate.assumptions.seconds_per_frame == Decimal("90.000")


async def test_the_hold_grows_when_the_cost_reaches_80_percent_of_it(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await held(store, billing)
    for n in (1, 2, 3):
        assert (await run(store, billing.charge_task, task(n))).hold is None
    reply = await run(store, billing.charge_task, task(4))  # 4.00 of 5.00 held
    hold = reply.hold
    assert hold is not None and hold.kind == "increase"
    # Half the first hold more: 5.00 held + 2.50.
    assert (hold.transfer_id, hold.amount) == ("hold:job_1:2", Decimal("2.50"))
    record = RecordJobHold(
        job_id=JOB, transfer_id=hold.transfer_id, held_total=Decimal("7.50"), at=NOW
    )
    after = await run(store, billing.record_hold, record)
    assert after.totals.held_credits == Decimal("7.50")


async def test_a_refused_hold_makes_the_job_wait_and_a_retry_asks_again(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await run(store, billing.open, opening())
    refused = RecordHoldRefused(
        job_id=JOB,
        transfer_id="hold:job_1:1",
        reason=AwaitingReason.insufficient_credits,
        needed_credits=Decimal("5.00"),
        available_credits=Decimal("1.00"),
        at=NOW,
    )
    reply = await run(store, billing.record_refused, refused)
    assert reply.totals.status is CostStatus.awaiting_credits
    assert reply.totals.awaiting_reason is AwaitingReason.insufficient_credits
    retry = await run(store, billing.retry_hold, RetryJobHold(job_id=JOB, at=NOW))
    assert retry.hold.transfer_id == "hold:job_1:1" and retry.hold.amount == Decimal("5.00")
    record = RecordJobHold(
        job_id=JOB, transfer_id="hold:job_1:1", held_total=Decimal("5.00"), at=NOW
    )
    await run(store, billing.record_hold, record)
    cost = await cost_of(store)
    assert cost.status is CostStatus.held
    again = await run(store, billing.retry_hold, RetryJobHold(job_id=JOB, at=NOW))
    assert again.hold is None  # not waiting any more


async def test_the_cap_stops_the_job_before_a_task_would_pass_it(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await held(store, billing, cap="3.00")
    first = await run(store, billing.charge_task, task(1, hours="1.2"))
    assert first.totals.status is CostStatus.held
    second = await run(store, billing.charge_task, task(2, hours="1.2"))  # 2.40 + 1.20 > 3
    assert second.totals.status is CostStatus.cap_reached and second.hold is None


async def test_a_job_at_its_cap_is_charged_at_most_the_cap_with_lines_adding_up(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await held(store, billing, cap="3.00")
    await run(store, billing.charge_task, task(1, hours="1"))
    await run(store, billing.charge_task, task(2, hours="2.5"))  # 3.50: past the cap
    settle = await run(store, billing.settle, SettleJobCost(job_id=JOB, at=NOW))
    capture = settle.capture
    assert capture is not None and capture.kind == "capture"
    assert (capture.amount, capture.transfer_id) == (Decimal("3.00"), "capture:job_1")
    done = RecordJobSettled(
        job_id=JOB,
        transfer_id="capture:job_1",
        captured=Decimal("3.00"),
        released=Decimal(0),
        at=NOW,
    )
    reply = await run(store, billing.record_settled, done)
    assert reply.totals.status is CostStatus.settled
    assert reply.totals.captured_credits == Decimal("3.00")
    cost = await cost_of(store)
    assert [ln.cause for ln in cost.lines] == [
        LineCause.task,
        LineCause.task,
        LineCause.cap_adjustment,
    ]
    assert sum(ln.amount_credits for ln in cost.lines) == Decimal("3.00")


async def test_settling_captures_the_cost_within_the_hold_and_voids_an_unused_hold(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await held(store, billing)  # 5.00 held, never grown
    for n in range(1, 7):
        await run(store, billing.charge_task, task(n))
    # The wallet refused the increase: 6.00 so far, 5.00 held -> 5.00 captured.
    refused = RecordHoldRefused(
        job_id=JOB,
        transfer_id="hold:job_1:2",
        reason=AwaitingReason.insufficient_credits,
        needed_credits=Decimal("2.50"),
        available_credits=Decimal(0),
        at=NOW,
    )
    await run(store, billing.record_refused, refused)
    settle = await run(store, billing.settle, SettleJobCost(job_id=JOB, at=NOW))
    assert settle.capture.amount == Decimal("5.00")
    done = RecordJobSettled(
        job_id=JOB,
        transfer_id="capture:job_1",
        captured=Decimal("5.00"),
        released=Decimal(0),
        at=NOW,
    )
    await run(store, billing.record_settled, done)
    cost = await cost_of(store)
    assert cost.lines[-1].cause is LineCause.hold_shortfall
    assert cost.lines[-1].amount_credits == Decimal("-1.00")
    assert sum(ln.amount_credits for ln in cost.lines) == Decimal("5.00")

    await held(store, billing, job_id="job_2")
    void = await run(store, billing.settle, SettleJobCost(job_id="job_2", at=NOW))
    assert void.capture.kind == "void" and void.capture.amount == Decimal(0)


async def test_a_job_that_never_got_a_hold_settles_at_once(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await run(store, billing.open, opening())
    reply = await run(store, billing.settle, SettleJobCost(job_id=JOB, at=NOW))
    assert reply.capture is None and reply.totals.status is CostStatus.settled


async def test_an_api_keys_daily_cap_refuses_the_hold_until_raised(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    caps = SetKeySpendCaps(api_key_id="key_1", owner_id="usr_1", daily_cap_credits=Decimal("4.00"))
    await run(store, billing.set_key_spend_caps, caps)
    reply = await run(store, billing.open, opening(key="key_1"))
    assert reply.hold is None
    assert reply.totals.status is CostStatus.awaiting_credits
    assert reply.totals.awaiting_reason is AwaitingReason.spend_cap_reached
    retry = await run(store, billing.retry_hold, RetryJobHold(job_id=JOB, at=NOW))
    assert retry.hold is None  # still over the cap
    raised = caps.model_copy(update={"daily_cap_credits": Decimal("20.00")})
    await run(store, billing.set_key_spend_caps, raised)
    retry = await run(store, billing.retry_hold, RetryJobHold(job_id=JOB, at=NOW))
    assert retry.hold is not None and retry.hold.amount == Decimal("5.00")


async def test_a_job_waiting_for_credits_says_so_when_its_key_then_has_no_room(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    await run(store, billing.open, opening(key="key_1"))
    refused = RecordHoldRefused(
        job_id=JOB,
        transfer_id="hold:job_1:1",
        reason=AwaitingReason.insufficient_credits,
        needed_credits=Decimal("5.00"),
        available_credits=Decimal("1.00"),
        at=NOW,
    )
    await run(store, billing.record_refused, refused)
    caps = SetKeySpendCaps(api_key_id="key_1", owner_id="usr_1", daily_cap_credits=Decimal("4.00"))
    await run(store, billing.set_key_spend_caps, caps)
    retry = await run(store, billing.retry_hold, RetryJobHold(job_id=JOB, at=NOW))
    assert retry.hold is None
    assert retry.totals.status is CostStatus.awaiting_credits
    assert retry.totals.awaiting_reason is AwaitingReason.spend_cap_reached


async def test_an_api_keys_total_cap_counts_holds_until_their_jobs_release_them(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    caps = SetKeySpendCaps(api_key_id="key_1", owner_id="usr_1", total_cap_credits=Decimal("8.00"))
    await run(store, billing.set_key_spend_caps, caps)
    await held(store, billing, key="key_1")
    budget = await UnitOfWork(store).get(KeyBudget, "key_1")
    assert budget.view(NOW).total_credits == Decimal("5.00")
    second = await run(store, billing.open, opening("job_2", key="key_1"))
    assert second.hold is None  # 5.00 + 5.00 > 8.00
    await run(store, billing.charge_task, task(1))
    await run(store, billing.settle, SettleJobCost(job_id=JOB, at=NOW))
    done = RecordJobSettled(
        job_id=JOB,
        transfer_id="capture:job_1",
        captured=Decimal("1.00"),
        released=Decimal("4.00"),
        at=NOW,
    )
    await run(store, billing.record_settled, done)
    spend: KeySpend = (await UnitOfWork(store).get(KeyBudget, "key_1")).view(NOW)
    assert (spend.today_credits, spend.total_credits) == (Decimal("5.00"), Decimal("1.00"))
    retry = await run(store, billing.retry_hold, RetryJobHold(job_id="job_2", at=NOW))
    assert retry.hold is not None


async def test_estimates_come_from_parameters_or_the_callers_own_job(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    est = await query(
        store, billing.estimate_cost, EstimateCost(owner_id="usr_1", parameters=PARAMS)
    )
    assert est.expected_credits == Decimal("1.67")
    await held(store, billing)
    await run(store, billing.charge_task, task(1, hours="0.05"))  # 180 s a frame
    measured = await query(store, billing.estimate_cost, EstimateCost(owner_id="usr_1", job_id=JOB))
    assert measured.assumptions.seconds_source.value == "measured"
    assert measured.expected_credits == Decimal("5.00")  # 0.05 + 99 x 180 / 3600 = 5.00
    with pytest.raises(JobCostNotFound):
        await query(store, billing.estimate_cost, EstimateCost(owner_id="usr_2", job_id=JOB))


async def test_prices_publish_as_new_versions_never_in_the_past(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    later = PublishPrices(prices=TEST_PRICES, effective_from=NOW + timedelta(days=1))
    version = await run(store, billing.publish_prices, later)
    assert (version.version, version.published_by) == (2, "adm_1")
    past = PublishPrices(prices=TEST_PRICES, effective_from=NOW - timedelta(days=1))
    with pytest.raises(ValidationFailed):
        await run(store, billing.publish_prices, past)


async def test_nothing_is_estimated_without_prices(store: InMemoryEventStore) -> None:
    commands = BillingCommands(BillingSettings(), store, clock=lambda: NOW)
    with pytest.raises(NoPrices):
        await query(
            store, commands.estimate_cost, EstimateCost(owner_id="usr_1", parameters=PARAMS)
        )


async def test_estimates_keep_the_catalogue_until_an_append_and_follow_a_new_version(
    store: InMemoryEventStore, billing: BillingCommands
) -> None:
    for _ in range(3):
        first = await query(
            store, billing.estimate_cost, EstimateCost(owner_id="usr_1", parameters=PARAMS)
        )
    assert billing.catalogue.loads == 1  # loaded once, kept while nothing was appended
    dearer = TEST_PRICES.model_copy(
        update={
            "instances": [
                i.model_copy(update={"rates": {t: r * 2 for t, r in i.rates.items()}})
                for i in TEST_PRICES.instances
            ]
        }
    )
    await run(store, billing.publish_prices, PublishPrices(prices=dearer, effective_from=NOW))
    now = await query(
        store, billing.estimate_cost, EstimateCost(owner_id="usr_1", parameters=PARAMS)
    )
    assert (first.assumptions.price_version, now.assumptions.price_version) == (1, 2)
    assert (first.expected_credits, now.expected_credits) == (Decimal("1.67"), Decimal("3.33"))
    assert billing.catalogue.loads == 2
