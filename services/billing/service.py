"""The billing service: prices, estimates, each job's cost, API keys' spend caps, and the two
process managers that move a job's money through the wallet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.bus.commands import Actor, CommandClient
from libs.eventstore.store import ConcurrencyError
from libs.eventstore.uow import UnitOfWork
from libs.logging import get_logger
from libs.process import PostgresProcessStore, ProcessRunner
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.billing.commands import BillingCommands
from services.billing.process import (
    AwaitingJobs,
    CreditsRetryProcess,
    JobBillingProcess,
    JobMoney,
)
from services.billing.projections import (
    CostLinesProjection,
    JobCostsProjection,
    KeySpendProjection,
    PricesProjection,
)
from services.billing.settings import BillingSettings

log = get_logger(__name__)

#: Redelivery back-off: a wallet or job service outage of a few minutes delays, never loses.
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
MAX_DELIVER = 20


@dataclass(frozen=True)
class Billing:
    """What the wiring made: the handlers and the two process managers' runners."""

    commands: BillingCommands
    jobs: ProcessRunner[JobMoney]
    credits: ProcessRunner[AwaitingJobs]


async def publish_default_prices(rt: ServiceRuntime[Billing], commands: BillingCommands) -> None:
    """Version 1 of the prices from the settings, unless a version exists (two instances
    starting at once: one publishes, the other's append conflicts and changes nothing)."""
    assert isinstance(rt.settings, BillingSettings)
    uow = UnitOfWork(rt.store, metadata={"actor": {"kind": "service", "id": "billing"}})
    try:
        if await commands.publish_default(uow, rt.settings.default_prices):
            await uow.commit()
            log.info("default_prices_published", version=1)
    except ConcurrencyError:
        pass


async def wire(rt: ServiceRuntime[Billing]) -> Billing:
    settings = rt.settings
    assert isinstance(settings, BillingSettings)
    commands = BillingCommands(settings, rt.store)
    commands.register(rt.commands)
    await publish_default_prices(rt, commands)
    client = CommandClient(rt.nc, settings, timeout=settings.command_timeout_seconds)
    store = PostgresProcessStore(rt.store)
    actor = Actor(kind="service", id=settings.service_name)
    jobs = ProcessRunner(JobBillingProcess(), client, store, actor)
    credits = ProcessRunner(CreditsRetryProcess(), client, store, actor)
    for runner in (jobs, credits):
        rt.consumer(
            runner.manager.name,
            runner.manager.subjects,
            runner.handle,
            max_deliver=MAX_DELIVER,
            backoff=BACKOFF,
            batch=100,
        )
    return Billing(commands, jobs, credits)


SERVICE = Service(
    name="billing",
    schema="billing",
    settings=BillingSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(
        PricesProjection(),
        JobCostsProjection(),
        CostLinesProjection(),
        KeySpendProjection(),
    ),
    wire=wire,
)
