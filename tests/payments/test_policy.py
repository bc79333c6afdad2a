"""The payments process manager on the kit's in-memory twins (no servers): a received
webhook is applied; a capture credits the wallet under ``topup:<payment id>`` and is then
recorded; refunds and lost disputes debit under their own ids; a redelivery sends nothing."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar

import pytest
from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.errors import DomainError, ServiceUnavailable
from contracts.payments import (
    ApplyWebhook,
    DisputeLost,
    OrderStatus,
    PaymentCaptured,
    PaymentRefunded,
    PaymentVia,
    RecordTopUpCredited,
    RecordWalletDebit,
    TopUpOrder,
    WebhookApplied,
    WebhookOutcome,
    WebhookReceived,
)
from contracts.wallet import (
    CauseKind,
    DebitCredits,
    DepositCredits,
    TransferOutcome,
    WalletBalance,
)
from libs.bus.commands import Actor
from libs.bus.consumer import BusEvent, Retry
from libs.process import InMemoryProcessStore, ProcessRunner
from services.payments.process import NoState, PaymentsProcess
from tests.policies import ScriptedCommands, delivery

R = TypeVar("R", bound=BaseModel)
T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def balance(_: Command) -> WalletBalance:
    return WalletBalance(
        user_id="usr_1",
        currency="credits",
        balance_credits=Decimal("500.00"),
        held_credits=Decimal(0),
        available_credits=Decimal("500.00"),
        outcome=TransferOutcome.applied,
        version=1,
    )


def the_order(_: Command) -> TopUpOrder:
    return TopUpOrder(
        order_id="order_A",
        topup_id="top_1",
        key_id="rzp_test_1",
        amount_paise=50_000,
        currency="INR",
        credits=Decimal("500.00"),
        credit_currency="credits",
        receipt="topup_top_1",
        status=OrderStatus.credited,
        payment_id="pay_1",
        created_at=T,
        updated_at=T,
    )


def applied(cmd: Command) -> WebhookApplied:
    assert isinstance(cmd, ApplyWebhook)
    return WebhookApplied(
        event_id=cmd.event_id,
        event="payment.captured",
        outcome=WebhookOutcome.applied,
        order_id="order_A",
        reason=None,
    )


ANSWERS: dict[type[Command], Callable[[Command], BaseModel | DomainError[Any]]] = {
    ApplyWebhook: applied,
    DepositCredits: balance,
    DebitCredits: balance,
    RecordTopUpCredited: the_order,
    RecordWalletDebit: the_order,
}


def bus_event(event: Event, event_id: uuid.UUID | None = None) -> BusEvent:
    return delivery(event, stream_id="order-order_A", recorded_at=T, event_id=event_id)


@pytest.fixture
def commands() -> ScriptedCommands:
    return ScriptedCommands(dict(ANSWERS))


@pytest.fixture
def runner(commands: ScriptedCommands) -> ProcessRunner[NoState]:
    return ProcessRunner(
        PaymentsProcess(), commands, InMemoryProcessStore(), Actor(kind="service", id="payments")
    )


CAPTURED = PaymentCaptured(
    order_id="order_A",
    payment_id="pay_1",
    user_id="usr_1",
    amount_paise=50_000,
    credits=Decimal("500.00"),
    via=PaymentVia.webhook,
    at=T,
)


async def test_a_received_webhook_is_applied(
    runner: ProcessRunner[NoState], commands: ScriptedCommands
) -> None:
    received = WebhookReceived(
        event_id="EvtA1", event="payment.captured", payload={}, secret="current", at=T
    )
    await runner.handle(bus_event(received))
    assert [cmd for _, cmd in commands.sent] == [ApplyWebhook(event_id="EvtA1")]


async def test_a_capture_credits_the_wallet_then_is_recorded_once(
    runner: ProcessRunner[NoState], commands: ScriptedCommands
) -> None:
    delivery = bus_event(CAPTURED)
    await runner.handle(delivery)
    await runner.handle(delivery)  # redelivered: the inbox has it
    (deposit_id, deposit), (record_id, record) = commands.sent
    assert deposit == DepositCredits(
        user_id="usr_1",
        transfer_id="topup:pay_1",
        amount=Decimal("500.00"),
        cause=CauseKind.payment,
        cause_id="pay_1",
    )
    assert record == RecordTopUpCredited(
        order_id="order_A", payment_id="pay_1", transfer_id="topup:pay_1"
    )
    assert deposit_id == f"payments:{delivery.event_id}:0"
    assert record_id == f"payments:{delivery.event_id}:0>:0"


async def test_a_wallet_away_is_retried_with_the_same_transfer(
    runner: ProcessRunner[NoState], commands: ScriptedCommands
) -> None:
    commands.answers[DepositCredits] = lambda _: ServiceUnavailable("wallet away")
    delivery = bus_event(CAPTURED)
    with pytest.raises(Retry):
        await runner.handle(delivery)
    commands.answers[DepositCredits] = balance
    await runner.handle(delivery)
    deposits = [(cid, c) for cid, c in commands.sent if isinstance(c, DepositCredits)]
    assert len(deposits) == 2 and deposits[0] == deposits[1]  # same command id and transfer


async def test_refunds_and_lost_disputes_debit_under_their_own_ids(
    runner: ProcessRunner[NoState], commands: ScriptedCommands
) -> None:
    common = {"order_id": "order_A", "payment_id": "pay_1", "user_id": "usr_1", "at": T}
    await runner.handle(
        bus_event(
            PaymentRefunded(
                refund_id="rfnd_1", amount_paise=20_000, credits=Decimal("200.00"), **common
            )
        )
    )
    await runner.handle(
        bus_event(
            DisputeLost(
                dispute_id="disp_1", amount_paise=50_000, credits=Decimal("500.00"), **common
            )
        )
    )
    debits = [c for _, c in commands.sent if isinstance(c, DebitCredits)]
    assert [(d.transfer_id, d.amount, d.cause) for d in debits] == [
        ("refund:rfnd_1", Decimal("200.00"), CauseKind.refund),
        ("dispute:disp_1", Decimal("500.00"), CauseKind.dispute),
    ]
    recorded = [c for _, c in commands.sent if isinstance(c, RecordWalletDebit)]
    assert [r.transfer_id for r in recorded] == ["refund:rfnd_1", "dispute:disp_1"]
