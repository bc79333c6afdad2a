"""Random interleavings of every wallet operation keep the ledger's invariants."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from contracts.errors import DomainError
from contracts.wallet import CauseKind, HoldCaptured
from tests.wallet.book import Book

USER = "usr_01PROPERTY"
NOW = datetime(2025, 6, 1, tzinfo=UTC)

amounts = st.decimals(min_value=Decimal("0.01"), max_value=Decimal("500.00"), places=2)
holds = st.integers(min_value=0, max_value=5)
step = st.one_of(
    st.tuples(st.just("deposit"), amounts, holds),
    st.tuples(st.just("debit"), amounts, holds),
    st.tuples(st.just("hold"), amounts, holds),
    st.tuples(st.just("increase"), amounts | st.just(Decimal("0.00")), holds),
    st.tuples(st.just("capture"), amounts | st.just(Decimal("0.00")), holds),
    st.tuples(st.just("void"), amounts, holds),
    st.tuples(st.just("expire"), amounts, holds),
)


def run(wallet: Book, n: int, op: str, amount: Decimal, h: int) -> None:
    """One operation; a refusal records nothing (checked by the caller)."""
    tid, hold_id, later = f"{op}:t{n}", f"hld_{h}", NOW + timedelta(hours=n % 3)
    match op:
        case "deposit":
            wallet.deposit(tid, amount, CauseKind.payment, f"pay_{n}", NOW)
        case "debit":
            wallet.debit(tid, amount, CauseKind.refund, f"rfnd_{n}", NOW)
        case "hold":
            wallet.hold(tid, hold_id, f"job_{h}", amount, later, NOW)
        case "increase":
            wallet.increase(tid, hold_id, amount, later, NOW)
        case "capture":
            wallet.capture(tid, hold_id, amount, NOW)
        case "void":
            wallet.void(tid, hold_id, "cancelled", NOW)
        case "expire":
            wallet.expire(hold_id, NOW + timedelta(hours=2))


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=40))
def test_no_hold_overdraws_captures_balance_and_replay_matches(
    steps: list[tuple[str, Decimal, int]],
) -> None:
    wallet = Book(USER)
    wallet.deposit("topup:first", Decimal("100.00"), CauseKind.grant, "first", NOW)
    for n, (op, amount, h) in enumerate(steps):
        before_events, before_available = len(wallet.pending), wallet.available
        holds_before = dict(wallet.holds)
        try:
            run(wallet, n, op, amount, h)
        except DomainError:
            assert len(wallet.pending) == before_events  # a refusal moves nothing
            continue
        new = wallet.pending[before_events:]
        assert len(new) <= 1
        if op in ("hold", "increase") and new:
            # A hold never makes available negative (only a debit may).
            assert wallet.available >= 0
        if op == "debit":
            assert wallet.available == before_available - amount
        for e in new:
            if isinstance(e, HoldCaptured):
                assert e.captured + e.released == holds_before[e.hold_id].amount
        pending = [x.amount for x in wallet.holds.values()]
        assert wallet.held == sum(pending, Decimal("0.00"))
        assert wallet.held >= 0
        replayed = wallet.replayed()
        assert replayed.wallet.model_dump() == wallet.wallet.model_dump()
        for value in (wallet.balance, wallet.held, wallet.available):
            assert value == value.quantize(Decimal("0.01"))
