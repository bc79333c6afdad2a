"""VM time per day: a span that crosses midnight (UTC) is cut there, and the parts add up
exactly to the span, seconds and cost."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from contracts.fleet import VmPhase, span
from services.scaler.projections import by_day

PRICE = Decimal("1.2345")


def test_a_span_within_one_day_is_that_day() -> None:
    start = datetime(2026, 12, 4, 9, tzinfo=UTC)
    busy = span(VmPhase.busy, start, start + timedelta(hours=2), PRICE)
    assert by_day(busy) == {date(2026, 12, 4): busy}


def test_a_span_across_two_midnights_is_cut_into_three_days_that_add_up_exactly() -> None:
    start = datetime(2026, 12, 4, 23, 59, 59, 999000, tzinfo=UTC)
    idle = span(VmPhase.idle, start, start + timedelta(days=1, seconds=7, milliseconds=3), PRICE)
    parts = by_day(idle)
    assert list(parts) == [date(2026, 12, 4), date(2026, 12, 5), date(2026, 12, 6)]
    assert [p.seconds for p in parts.values()] == [
        Decimal("0.001"),
        Decimal(86400),
        Decimal("7.002"),
    ]
    assert sum(p.seconds for p in parts.values()) == idle.seconds
    assert sum(p.cost_usd for p in parts.values()) == idle.cost_usd
    assert all(p.phase is VmPhase.idle for p in parts.values())


def test_a_span_ending_at_midnight_belongs_to_the_day_before() -> None:
    start = datetime(2026, 12, 4, 22, tzinfo=UTC)
    boot = span(VmPhase.requested, start, datetime(2026, 12, 5, tzinfo=UTC), PRICE)
    assert list(by_day(boot)) == [date(2026, 12, 4)]
