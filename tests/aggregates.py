"""Helpers for aggregate tests: what a decide call recorded, and history given as replayed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from contracts.base import Event
from libs.eventstore.aggregate import Aggregate

A = TypeVar("A", bound=Aggregate)


def evolve(aggregate: A, events: Sequence[Event]) -> A:
    """The aggregate after a decide call, which recorded (applied and queued) ``events``."""
    assert list(aggregate.pending[len(aggregate.pending) - len(events) :]) == list(events)
    return aggregate


def given(aggregate: A, *history: Event) -> A:
    """The aggregate with ``history`` applied as if replayed from its stream."""
    for e in history:
        aggregate.apply(e)
    return aggregate
