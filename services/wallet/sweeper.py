"""The hold sweeper: releases holds nobody resolved before their ``expires_at``.

Every ``RF_WALLET_HOLD_SWEEP_SECONDS`` (and once when it starts leading) the leader, one
replica at a time under an advisory lock (``libs/leader.py``), finds the pending holds past
their expiry in the ``holds`` read model and sends each wallet ``ExpireHold``. The handler
checks again on the wallet's own stream (a hold captured, voided or extended meanwhile is
left alone), so a stale read model never releases a live hold.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg

from contracts.errors import DomainError
from contracts.wallet import ExpireHold, TransferOutcome, WalletBalance
from libs.bus.commands import Actor, CommandClient
from libs.eventstore.store import EventStore
from libs.leader import leadership, lock_key, sleep_or_stop
from libs.logging import get_logger
from services.wallet.settings import WalletSettings

log = get_logger(__name__)

ACTOR = Actor(kind="service", id="wallet-hold-sweeper")
#: Stale holds fetched per batch.
BATCH = 500


class HoldSweeper:
    def __init__(self, settings: WalletSettings, store: EventStore, commands: CommandClient):
        self.settings = settings
        self.store = store
        self.commands = commands
        self._stale_sql = (
            f"SELECT user_id, hold_id FROM {store.schema}.holds WHERE status = 'pending'"
            " AND expires_at <= $1 AND (user_id, hold_id) > ($2, $3)"
            " ORDER BY user_id, hold_id LIMIT $4"
        )

    async def run(self, stopping: asyncio.Event) -> None:
        """Background task: while leading, sweep, then wait an interval."""
        key = lock_key(self.store.schema, "hold-sweeper")
        async with leadership(self.store.pool, key, stopping) as leading:
            while leading and not stopping.is_set():
                await self.sweep(datetime.now(UTC))
                if await sleep_or_stop(stopping, self.settings.hold_sweep_seconds):
                    return

    async def sweep(self, now: datetime) -> int:
        """Send ``ExpireHold`` for every pending hold past its expiry; how many expired."""
        expired, after = 0, ("", "")
        gate = asyncio.Semaphore(self.settings.hold_sweep_concurrency)
        while True:
            rows: Sequence[asyncpg.Record] = await self.store.pool.fetch(
                self._stale_sql, now, *after, BATCH
            )
            done = await asyncio.gather(
                *(self._expire(r["user_id"], r["hold_id"], now, gate) for r in rows)
            )
            expired += sum(done)
            if len(rows) < BATCH:
                break
            after = (rows[-1]["user_id"], rows[-1]["hold_id"])
        if expired:
            log.info("holds_expired", count=expired)
        return expired

    async def _expire(
        self, user_id: str, hold_id: str, now: datetime, gate: asyncio.Semaphore
    ) -> bool:
        async with gate:
            try:
                reply = await self.commands.send(
                    ExpireHold(user_id=user_id, hold_id=hold_id),
                    WalletBalance,
                    # One id per sweep: a no-op answer (not due yet on the wallet's clock)
                    # must not be replayed to the next sweep.
                    command_id=f"expire_hold:{user_id}:{hold_id}:{now.isoformat()}",
                    actor=ACTOR,
                )
            except DomainError as e:  # tried again at the next sweep
                log.warning("hold_not_expired", user_id=user_id, hold_id=hold_id, code=e.code)
                return False
        return reply.outcome is TransferOutcome.applied
