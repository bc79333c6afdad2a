"""The wallet's rules on the aggregate alone: transfers, holds, available credits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import orjson
import pytest

from contracts.errors import (
    CaptureExceedsHold,
    HoldNotFound,
    HoldNotPending,
    InsufficientCredits,
    TransferIdReused,
)
from contracts.wallet import (
    CauseKind,
    CreditsDebited,
    HoldCaptured,
    HoldExpired,
    HoldStatus,
    TransferOutcome,
)
from services.wallet.domain import Wallet
from tests.wallet.book import Book

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
USER = "usr_01WALLET"
D = Decimal


def funded(amount: str = "100.00") -> Book:
    wallet = Book(USER)
    wallet.deposit("topup:pay_1", D(amount), CauseKind.payment, "pay_1", NOW)
    return wallet


def hold(wallet: Book, n: int, amount: str, expires_at: datetime = LATER) -> TransferOutcome:
    return wallet.hold(f"hold:job_{n}:1", f"hld_{n}", f"job_{n}", D(amount), expires_at, NOW)


def test_a_deposit_raises_balance_and_available() -> None:
    wallet = funded("100.00")
    assert (wallet.balance, wallet.held, wallet.available) == (D("100.00"), D(0), D("100.00"))
    assert wallet.version == 1


def test_a_transfer_id_applied_again_with_the_same_fields_moves_nothing() -> None:
    wallet = funded("100.00")
    again = wallet.deposit("topup:pay_1", D("100"), CauseKind.payment, "pay_1", LATER)
    assert again is TransferOutcome.exists
    assert wallet.balance == D("100.00") and len(wallet.pending) == 1
    assert hold(wallet, 1, "10.00") is TransferOutcome.applied
    assert hold(wallet, 1, "10.00") is TransferOutcome.exists
    assert wallet.held == D("10.00") and len(wallet.pending) == 2


def test_a_transfer_id_reused_with_other_fields_is_refused() -> None:
    wallet = funded("100.00")
    with pytest.raises(TransferIdReused) as refused:
        wallet.deposit("topup:pay_1", D("99.00"), CauseKind.payment, "pay_1", NOW)
    assert refused.value.details is not None
    assert refused.value.details.transfer_id == "topup:pay_1"
    with pytest.raises(TransferIdReused):  # the same id for another kind of transfer
        wallet.debit("topup:pay_1", D("100.00"), CauseKind.payment, "pay_1", NOW)
    assert wallet.balance == D("100.00") and len(wallet.pending) == 1


def test_the_fingerprint_survives_a_replay() -> None:
    wallet = funded("100.00").replayed()
    assert (
        wallet.deposit("topup:pay_1", D("100.00"), CauseKind.payment, "pay_1", NOW)
        is TransferOutcome.exists
    )
    with pytest.raises(TransferIdReused):
        wallet.deposit("topup:pay_1", D("1.00"), CauseKind.payment, "pay_1", NOW)


def test_a_hold_reserves_credits_and_more_than_available_is_refused() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "60.00")
    assert (wallet.balance, wallet.held, wallet.available) == (D(100), D(60), D(40))
    with pytest.raises(InsufficientCredits) as refused:
        hold(wallet, 2, "40.01")
    assert refused.value.details is not None
    assert refused.value.details.required_credits == D("40.01")
    assert refused.value.details.available_credits == D("40.00")
    assert hold(wallet, 2, "40.00") is TransferOutcome.applied
    assert wallet.available == 0


def test_a_hold_id_taken_by_another_hold_is_refused() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "10.00")
    with pytest.raises(TransferIdReused):
        wallet.hold("hold:job_1:2", "hld_1", "job_1", D("5.00"), LATER, NOW)
    assert wallet.held == D("10.00")


def test_a_hold_grows_within_available_and_zero_only_moves_its_expiry() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "10.00")
    wallet.increase("hold:job_1:2", "hld_1", D("15.00"), LATER, NOW)
    assert wallet.holds["hld_1"].amount == D("25.00") and wallet.held == D("25.00")
    with pytest.raises(InsufficientCredits):
        wallet.increase("hold:job_1:3", "hld_1", D("75.01"), LATER, NOW)
    far = LATER + timedelta(days=1)
    wallet.increase("hold:job_1:4", "hld_1", D("0.00"), far, NOW)
    assert wallet.holds["hld_1"].expires_at == far and wallet.held == D("25.00")
    with pytest.raises(HoldNotFound):
        wallet.increase("hold:job_9:2", "hld_9", D("1.00"), LATER, NOW)


def test_a_capture_posts_the_cost_and_releases_the_rest_in_the_same_event() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    wallet.capture("capture:job_1", "hld_1", D("12.34"), NOW)
    event = wallet.pending[-1]
    assert isinstance(event, HoldCaptured)
    assert (event.captured, event.released) == (D("12.34"), D("17.66"))
    assert (wallet.balance, wallet.held, wallet.available) == (D("87.66"), D(0), D("87.66"))
    assert "hld_1" not in wallet.holds  # only pending holds stay in the wallet
    assert wallet.retired_hold("hld_1").status is HoldStatus.captured


def test_a_capture_of_zero_releases_everything() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    wallet.capture("capture:job_1", "hld_1", D("0.00"), NOW)
    assert (wallet.balance, wallet.held) == (D("100.00"), D(0))


def test_a_capture_above_the_hold_is_refused() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    with pytest.raises(CaptureExceedsHold) as refused:
        wallet.capture("capture:job_1", "hld_1", D("30.01"), NOW)
    assert refused.value.details is not None
    assert refused.value.details.held_credits == D("30.00")
    assert wallet.held == D("30.00")


def test_a_hold_resolves_once() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    wallet.void("void:job_1", "hld_1", "job cancelled", NOW)
    assert wallet.held == 0 and wallet.balance == D("100.00")
    with pytest.raises(HoldNotPending) as refused:
        wallet.capture("capture:job_1", "hld_1", D("1.00"), NOW)
    assert refused.value.details is not None and refused.value.details.status == "voided"
    with pytest.raises(HoldNotPending):
        wallet.void("void:job_1:again", "hld_1", "twice", NOW)
    with pytest.raises(HoldNotPending):
        wallet.increase("hold:job_1:2", "hld_1", D("1.00"), LATER, NOW)
    assert wallet.expire("hld_1", LATER) is TransferOutcome.exists
    with pytest.raises(HoldNotFound):
        wallet.capture("capture:job_2", "hld_2", D("1.00"), NOW)


def test_a_hold_expires_only_when_pending_and_due() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    assert wallet.expire("hld_1", LATER - timedelta(seconds=1)) is TransferOutcome.exists
    assert wallet.held == D("30.00") and len(wallet.pending) == 2
    assert wallet.expire("hld_1", LATER) is TransferOutcome.applied
    assert isinstance(wallet.pending[-1], HoldExpired)
    assert (wallet.held, wallet.available) == (D(0), D("100.00"))
    assert "hld_1" not in wallet.holds
    assert wallet.retired_hold("hld_1").status is HoldStatus.expired
    with pytest.raises(HoldNotFound):
        wallet.expire("hld_404", LATER)


def test_a_refund_may_drive_the_balance_negative_which_blocks_every_hold() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "80.00")
    wallet.capture("capture:job_1", "hld_1", D("80.00"), NOW)
    wallet.debit("refund:rfnd_1", D("100.00"), CauseKind.refund, "rfnd_1", NOW)
    assert isinstance(wallet.pending[-1], CreditsDebited)
    assert (wallet.balance, wallet.available) == (D("-80.00"), D("-80.00"))
    with pytest.raises(InsufficientCredits):
        hold(wallet, 2, "0.01")
    wallet.deposit("topup:pay_2", D("80.01"), CauseKind.payment, "pay_2", NOW)
    assert hold(wallet, 2, "0.01") is TransferOutcome.applied


def test_replay_and_snapshot_give_the_same_state() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    wallet.increase("hold:job_1:2", "hld_1", D("5.55"), LATER, NOW)
    wallet.capture("capture:job_1", "hld_1", D("20.00"), NOW)
    hold(wallet, 2, "10.00")
    again = wallet.replayed().wallet
    from_snapshot = Wallet.model_validate(wallet.wallet.snapshot())
    for other in (again, from_snapshot):
        assert other.model_dump() == wallet.wallet.model_dump()
    assert again.version == wallet.version == 5


def test_a_resolved_hold_id_is_never_taken_again_and_its_capture_retried_moves_nothing() -> None:
    wallet = funded("100.00")
    hold(wallet, 1, "30.00")
    wallet.capture("capture:job_1", "hld_1", D("10.00"), NOW)
    wallet = wallet.replayed()  # what the next command loads
    assert wallet.capture("capture:job_1", "hld_1", D("10.00"), NOW) is TransferOutcome.exists
    with pytest.raises(TransferIdReused):
        wallet.capture("capture:job_1", "hld_1", D("11.00"), NOW)
    with pytest.raises(TransferIdReused) as refused:
        wallet.hold("hold:job_1:again", "hld_1", "job_1", D("1.00"), LATER, NOW)
    assert refused.value.details is not None
    assert refused.value.details.transfer_id == "hold:job_1:again"
    assert hold(wallet, 1, "30.00") is TransferOutcome.exists  # its first transfer, retried
    assert (wallet.balance, wallet.held) == (D("90.00"), D(0))


def test_the_wallet_state_does_not_grow_with_applied_transfers_and_resolved_holds() -> None:
    wallet = funded("1000000.00")

    def cycle(n: int) -> None:
        hold(wallet, n, "1.00")
        wallet.increase(f"hold:job_{n}:2", f"hld_{n}", D("0.50"), LATER, NOW)
        if n % 2:
            wallet.capture(f"capture:job_{n}", f"hld_{n}", D("1.25"), NOW)
        else:
            wallet.void(f"void:job_{n}", f"hld_{n}", "cancelled", NOW)
        wallet.deposit(f"topup:more_{n}", D("1.00"), CauseKind.payment, f"more_{n}", NOW)

    for n in range(10):
        cycle(n)
    size_after_10 = len(orjson.dumps(wallet.wallet.snapshot()))
    for n in range(10, 1010):
        cycle(n)
    size_after_1010 = len(orjson.dumps(wallet.wallet.snapshot()))
    assert wallet.version == 1 + 4 * 1010
    assert size_after_1010 == size_after_10 < 300  # bytes: balance, held, no holds left
    hold(wallet, 5000, "2.00")  # a pending hold is in it while pending
    assert len(orjson.dumps(wallet.wallet.snapshot())) > size_after_1010
