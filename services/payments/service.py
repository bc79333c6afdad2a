"""The payments service: Razorpay top-ups. The only holder of the Razorpay key secret and
webhook secrets; it creates orders, checks Checkout's answers and webhooks, and has the
wallet credited once per payment (docs/payments.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.bus.commands import Actor, CommandClient
from libs.process import PostgresProcessStore, ProcessRunner
from libs.runtime import ServiceRuntime
from libs.service import Service
from services.payments.commands import PaymentsCommands
from services.payments.process import NoState, PaymentsProcess
from services.payments.projections import OrdersProjection
from services.payments.razorpay import Razorpay
from services.payments.settings import PaymentsSettings

#: Redelivery back-off: a wallet outage of a few minutes delays a credit, never loses it.
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 60.0)
MAX_DELIVER = 200


@dataclass(frozen=True)
class Payments:
    commands: PaymentsCommands
    process: ProcessRunner[NoState]
    razorpay: Razorpay


async def wire(rt: ServiceRuntime[Payments]) -> Payments:
    settings = rt.settings
    assert isinstance(settings, PaymentsSettings)
    settings.check_secrets()
    razorpay = Razorpay(settings)
    rt.on_close(razorpay.close)
    commands = PaymentsCommands(settings, razorpay)
    commands.register(rt.commands)
    runner = ProcessRunner(
        PaymentsProcess(),
        CommandClient(rt.nc, settings, timeout=settings.command_timeout_seconds),
        PostgresProcessStore(rt.store),
        Actor(kind="service", id=settings.service_name),
    )
    rt.consumer(
        runner.manager.name,
        runner.manager.subjects,
        runner.handle,
        max_deliver=MAX_DELIVER,
        backoff=BACKOFF,
        batch=100,
    )
    return Payments(commands, runner, razorpay)


SERVICE = Service(
    name="payments",
    schema="payments",
    settings=PaymentsSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(OrdersProjection(),),
    wire=wire,
    secrets=frozenset(
        {"razorpay_key_secret", "razorpay_webhook_secret", "razorpay_webhook_secret_previous"}
    ),
)
