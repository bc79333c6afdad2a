"""Command handlers of the billing service."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol

from contracts.billing import (
    ChargeTask,
    CostEstimate,
    EstimateCost,
    HoldRequest,
    JobCostReply,
    KeySpend,
    OpenJobCost,
    PriceList,
    PriceVersion,
    PublishPrices,
    RecordHoldRefused,
    RecordJobHold,
    RecordJobSettled,
    RetryJobHold,
    SetKeySpendCaps,
    SettleJobCost,
)
from contracts.envelope import AwaitingReason, CostStatus
from contracts.errors import JobCostNotFound
from libs.bus.commands import CommandServer
from libs.eventstore.uow import ReadOnlyUnitOfWork, StorePort, UnitOfWork
from services.billing.domain import (
    JobCost,
    KeyBudget,
    PriceCatalogue,
    estimate,
    price_or_refuse,
)
from services.billing.settings import BillingSettings

#: The one key of the price catalogue's stream.
CATALOGUE = "catalogue"

Clock = Callable[[], datetime]


def _now() -> datetime:
    return datetime.now(UTC)


class NotifyingStore(StorePort, Protocol):
    def waiter(self) -> asyncio.Event:
        """An event set whenever the store may have new events."""
        ...


class CatalogueCache:
    """The price catalogue kept in the process between estimates, loaded again only after
    an append that may have moved it.

    The store's waiter is set by every append this process makes and, for another
    replica's, by the process's feed watcher (billing's projectors run one) when the feed's
    head moves: a publish elsewhere reaches the estimates here within a feed poll. The kept
    catalogue is sealed: nothing records on it."""

    def __init__(self, store: NotifyingStore) -> None:
        self.store = store
        self._moved = store.waiter()
        self._moved.set()
        self._lock = asyncio.Lock()
        self._catalogue: PriceCatalogue | None = None
        #: Times the catalogue was loaded (for tests and benchmarks).
        self.loads = 0

    async def get(self) -> PriceCatalogue:
        if self._moved.is_set():
            async with self._lock:  # one load for the estimates arriving meanwhile
                if self._moved.is_set():
                    # Cleared before the load: an append the load misses sets it again.
                    self._moved.clear()
                    try:
                        uow = ReadOnlyUnitOfWork(self.store)
                        self._catalogue = await uow.get(PriceCatalogue, CATALOGUE)
                    except BaseException:
                        self._moved.set()
                        raise
                    self.loads += 1
        assert self._catalogue is not None
        return self._catalogue


class BillingCommands:
    def __init__(
        self, settings: BillingSettings, store: NotifyingStore, clock: Clock = _now
    ) -> None:
        self.settings = settings
        self.catalogue = CatalogueCache(store)
        self.model = settings.estimator()
        self.rules = settings.hold_rules()
        self.clock = clock

    def register(self, server: CommandServer) -> None:
        server.register(PublishPrices, self.publish_prices)
        server.register(EstimateCost, self.estimate_cost, read_only=True)
        server.register(SetKeySpendCaps, self.set_key_spend_caps)
        # From billing's own process managers: internal, no owner check.
        server.register(OpenJobCost, self.open)
        server.register(RecordJobHold, self.record_hold)
        server.register(RecordHoldRefused, self.record_refused)
        server.register(RetryJobHold, self.retry_hold)
        server.register(ChargeTask, self.charge_task)
        server.register(SettleJobCost, self.settle)
        server.register(RecordJobSettled, self.record_settled)

    # -- prices and estimates -------------------------------------------------------------

    async def publish_prices(self, cmd: PublishPrices, uow: UnitOfWork) -> PriceVersion:
        catalogue = await uow.get(PriceCatalogue, CATALOGUE)
        return catalogue.publish(cmd.prices, cmd.effective_from, uow.actor_id, self.clock())

    async def publish_default(self, uow: UnitOfWork, prices: PriceList) -> bool:
        """Publish ``prices`` as version 1 if no version exists; True if it did."""
        catalogue = await uow.get(PriceCatalogue, CATALOGUE)
        if catalogue.versions:
            return False
        catalogue.publish(prices, None, self.settings.service_name, self.clock())
        return True

    async def estimate_cost(self, cmd: EstimateCost, uow: UnitOfWork) -> CostEstimate:
        """A query (read-only): the prices from the kept catalogue, a job's cost loaded."""
        price = price_or_refuse(await self.catalogue.get(), self.clock())
        if cmd.parameters is not None:
            return estimate(cmd.parameters, price, self.model)
        assert cmd.job_id is not None
        cost = await self._cost(uow, cmd.job_id, cmd.owner_id)
        assert cost.parameters is not None
        return estimate(cost.parameters, price, self.model, cost.lines)

    # -- key spend caps -------------------------------------------------------------------

    async def set_key_spend_caps(self, cmd: SetKeySpendCaps, uow: UnitOfWork) -> KeySpend:
        """The gateway checked the key is the caller's."""
        now = self.clock()
        budget = await uow.get(KeyBudget, cmd.api_key_id)
        budget.set_caps(cmd.owner_id, cmd.daily_cap_credits, cmd.total_cap_credits, now)
        return budget.view(now)

    # -- a job's cost ---------------------------------------------------------------------

    async def _cost(self, uow: UnitOfWork, job_id: str, owner_id: str | None = None) -> JobCost:
        cost = await uow.get(JobCost, job_id)
        if not cost.exists or (owner_id is not None and cost.owner_id != owner_id):
            raise JobCostNotFound(f"no cost for job {job_id}", job_id=job_id)
        return cost

    def _reply(self, cost: JobCost, hold: HoldRequest | None = None) -> JobCostReply:
        return JobCostReply(
            job_id=cost.job_id,
            totals=cost.totals,
            hold=hold,
            capture=None,
            version=cost.version,
        )

    async def _next_hold(self, uow: UnitOfWork, cost: JobCost, at: datetime) -> HoldRequest | None:
        """The hold the job needs now if its API key has room for it; otherwise the job
        waits (JobHoldRefused, spend_cap_reached) and there is nothing to ask the wallet."""
        hold = cost.next_hold(self.rules, at)
        if hold is None or cost.api_key_id is None:
            return hold
        budget = await uow.get(KeyBudget, cost.api_key_id)
        if budget.room_for(hold.amount, at) is None:
            return hold
        cost.refuse_hold(AwaitingReason.spend_cap_reached, hold.amount, None, at)
        return None

    async def open(self, cmd: OpenJobCost, uow: UnitOfWork) -> JobCostReply:
        cost = await uow.get(JobCost, cmd.job_id)
        now = self.clock()
        if cost.exists:  # opened before: the hold it still needs, if any
            holding = cost.status is CostStatus.holding
            return self._reply(cost, cost.next_hold(self.rules, now) if holding else None)
        catalogue = await uow.get(PriceCatalogue, CATALOGUE)
        price = price_or_refuse(catalogue, cmd.at)
        est = estimate(cmd.parameters, price, self.model)
        cost.open(
            cmd.job_id,
            cmd.owner_id,
            cmd.api_key_id,
            cmd.parameters,
            cmd.cap_credits,
            est,
            self.rules,
            cmd.at,
        )
        return self._reply(cost, await self._next_hold(uow, cost, now))

    async def record_hold(self, cmd: RecordJobHold, uow: UnitOfWork) -> JobCostReply:
        cost = await self._cost(uow, cmd.job_id)
        increase = cost.record_hold(cmd.transfer_id, cmd.held_total, cmd.at)
        if cost.api_key_id is not None and increase > 0:
            budget = await uow.get(KeyBudget, cost.api_key_id)
            budget.commit(cost.job_id, increase, cmd.at)
        return self._reply(cost)

    async def record_refused(self, cmd: RecordHoldRefused, uow: UnitOfWork) -> JobCostReply:
        cost = await self._cost(uow, cmd.job_id)
        cost.refuse_hold(cmd.reason, cmd.needed_credits, cmd.available_credits, cmd.at)
        return self._reply(cost)

    async def retry_hold(self, cmd: RetryJobHold, uow: UnitOfWork) -> JobCostReply:
        """The hold a job awaiting credits needs now (none for a job not waiting)."""
        cost = await self._cost(uow, cmd.job_id)
        if cost.status is not CostStatus.awaiting_credits:
            return self._reply(cost)
        return self._reply(cost, await self._next_hold(uow, cost, cmd.at))

    async def charge_task(self, cmd: ChargeTask, uow: UnitOfWork) -> JobCostReply:
        cost = await self._cost(uow, cmd.job_id)
        catalogue = await uow.get(PriceCatalogue, CATALOGUE)
        price = price_or_refuse(catalogue, cmd.finished_at)
        charged = cost.charge_task(
            cmd.render_id,
            cmd.task_id,
            cmd.frames,
            cmd.worker,
            cmd.instance_type,
            cmd.render_seconds,
            cmd.finished_at,
            price,
            self.model,
            cmd.quality,
        )
        if not charged or cost.check_cap(cmd.finished_at):
            return self._reply(cost)
        if cost.status is CostStatus.awaiting_credits:
            return self._reply(cost)  # a top-up or a raised cap retries the hold
        now = self.clock()
        return self._reply(cost, await self._next_hold(uow, cost, now))

    async def settle(self, cmd: SettleJobCost, uow: UnitOfWork) -> JobCostReply:
        """What to capture (or void) now the job ended; with no hold placed, it is settled
        at once."""
        cost = await self._cost(uow, cmd.job_id)
        capture = cost.capture_request()
        if capture is None and cost.settle(Decimal(0), Decimal(0), cmd.at):
            await self._release(uow, cost, Decimal(0), cmd.at)
        reply = self._reply(cost)
        return reply.model_copy(update={"capture": capture})

    async def record_settled(self, cmd: RecordJobSettled, uow: UnitOfWork) -> JobCostReply:
        cost = await self._cost(uow, cmd.job_id)
        if cost.settle(cmd.captured, cmd.released, cmd.at, cmd.transfer_id):
            await self._release(uow, cost, cmd.captured, cmd.at)
        return self._reply(cost)

    async def _release(
        self, uow: UnitOfWork, cost: JobCost, captured: Decimal, at: datetime
    ) -> None:
        if cost.api_key_id is not None:
            budget = await uow.get(KeyBudget, cost.api_key_id)
            budget.release(cost.job_id, captured, at)
