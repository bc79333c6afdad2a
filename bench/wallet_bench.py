"""11. Wallet holds per second through the real command path.

The wallet service runs as its own process (``python -m services.wallet``, as deployed) on a
fresh database; the clients run here and send ``wallet.HoldCredits`` over NATS
request/reply with the services' own ``CommandClient``, as billing does. Two runs of the
same number of concurrent clients, each sending its next hold as soon as the last is
answered:

a. **contended**: every hold on one wallet. The service runs one wallet's commands one at a
   time (``serialize=wallet_key``), so this is the rate of one wallet's decide-append-commit
   loop, and each hold waits behind the others in flight.
b. **spread**: the holds go round-robin over 1,000 wallets, so they run side by side.

A hold that times out is sent again with the same command id and transfer id (its first
try may have been applied: the answer is then ``exists`` and nothing moves twice). At the
end, once the ``wallet.balances`` read model has caught up, every wallet's row must equal
what the replies say was moved, to the minor unit: balance = deposits, held = the applied
holds, available = deposits - holds ("ledger exact").
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
from nats.aio.client import Client

from bench.api_bench import wait_http_ok
from bench.cpu import CpuMeter, cpu_text
from bench.infra import Child, Infra, Servers
from bench.report import Figure, percentile
from contracts.errors import DomainError
from contracts.wallet import (
    CauseKind,
    DepositCredits,
    HoldCredits,
    TransferOutcome,
    WalletBalance,
)
from libs.bus.commands import Actor, CommandClient
from libs.bus.nats import connect
from libs.config import BaseServiceSettings

SECTION = "11 wallet"
#: holds/s each run should reach (the contended one: one wallet's serialized loop, on a
#: 2-core machine that also runs PostgreSQL, NATS and these clients).
TARGET_CONTENDED = 300.0
TARGET_SPREAD = 300.0
ACTOR = Actor(kind="service", id="bench-billing")
DEPOSIT = Decimal("1000000.00")
#: Amounts of successive holds: 0.01 .. 0.97 credits, so a lost or doubled minor unit shows.
AMOUNTS = [Decimal(n) / 100 for n in range(1, 98)]


@dataclass(frozen=True)
class WalletBenchOptions:
    seconds: float = 10.0
    warmup: float = 1.0
    clients: int = 50
    wallets: int = 1000
    #: Seconds a hold's reply is waited for before it is sent again (same ids).
    timeout: float = 10.0
    #: Seconds the balances read model is given to catch up at the end.
    settle_seconds: float = 60.0


@dataclass
class Run:
    """What one run sent and was answered."""

    name: str
    #: (time answered, seconds from send to answer) of every applied hold.
    answered: list[tuple[float, float]] = field(default_factory=list)
    #: wallet -> credits the applied holds reserved, as the replies say.
    held: defaultdict[str, Decimal] = field(default_factory=lambda: defaultdict(Decimal))
    #: wallet -> applied holds (each one event on the stream).
    holds: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    resent: int = 0
    started: float = 0.0
    ended: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    def edges(self, warmup: float) -> tuple[float, float]:
        """holds/s in the first and in the last second measured (a loop that slows as the
        wallet's history grows shows here)."""
        since = self.started + warmup
        first = sum(1 for t, _ in self.answered if since <= t < since + 1)
        last = sum(1 for t, _ in self.answered if t >= self.ended - 1)
        return float(first), float(last)

    def measured(self, warmup: float) -> tuple[float, list[float]]:
        """(holds/s, sorted latencies in ms) of the holds answered after the warm-up."""
        since = self.started + warmup
        late = [(t, lat) for t, lat in self.answered if t >= since]
        seconds = self.ended - since
        return len(late) / seconds, sorted(lat * 1000 for _, lat in late)


class Ledger:
    """Sends wallet commands and keeps, per wallet, what the replies say moved."""

    def __init__(self, nc: Client, settings: BaseServiceSettings, timeout: float) -> None:
        self.client = CommandClient(nc, settings, timeout=timeout)
        self.deposited: defaultdict[str, Decimal] = defaultdict(Decimal)
        self.versions: dict[str, int] = {}
        self._n = itertools.count()

    async def send(
        self, cmd: HoldCredits | DepositCredits, command_id: str, run: Run | None = None
    ) -> tuple[WalletBalance, bool]:
        """``cmd`` until answered, and whether it was sent again: a timeout sends it again
        with the same ids."""
        resent = False
        while True:
            try:
                reply = await self.client.send(
                    cmd, WalletBalance, command_id=command_id, actor=ACTOR
                )
            except TimeoutError:
                resent = True
                if run is not None:
                    run.resent += 1
                continue
            self.versions[cmd.user_id] = max(self.versions.get(cmd.user_id, 0), reply.version)
            return reply, resent

    async def deposit(self, user_id: str) -> None:
        n = next(self._n)
        reply, resent = await self.send(
            DepositCredits(
                user_id=user_id,
                transfer_id=f"topup:pay_bench{n}",
                amount=DEPOSIT,
                cause=CauseKind.payment,
                cause_id=f"pay_bench{n}",
            ),
            f"bench-deposit-{n}",
        )
        if reply.outcome is TransferOutcome.applied or resent:
            self.deposited[user_id] += DEPOSIT

    async def hold(self, user_id: str, run: Run, expires_at: datetime) -> None:
        n = next(self._n)
        amount = AMOUNTS[n % len(AMOUNTS)]
        cmd = HoldCredits(
            user_id=user_id,
            transfer_id=f"hold:job_bench{n}:1",
            hold_id=f"hld_bench{n}",
            job_id=f"job_bench{n}",
            amount=amount,
            expires_at=expires_at,
        )
        t0 = time.perf_counter()
        try:
            reply, resent = await self.send(cmd, f"bench-hold-{n}", run)
        except DomainError as e:
            run.refused[e.code] += 1
            return
        t1 = time.perf_counter()
        if reply.outcome is TransferOutcome.applied or resent:
            # Each hold has a transfer id of its own: ``exists`` only after a resend whose
            # first try was applied.
            run.held[user_id] += amount
            run.holds[user_id] += 1
            run.answered.append((t1, t1 - t0))


async def drive(
    ledger: Ledger, run: Run, wallets: list[str], opts: WalletBenchOptions, meter: CpuMeter
) -> None:
    """``opts.clients`` clients, each sending its next hold once the last is answered, on
    ``wallets`` round-robin, for the warm-up and ``opts.seconds``."""
    expires_at = datetime.now(UTC) + timedelta(days=1)
    turn = itertools.cycle(wallets)
    run.started = time.perf_counter()
    deadline = run.started + opts.warmup + opts.seconds
    measuring = asyncio.get_running_loop().call_later(opts.warmup, meter.start)

    async def client() -> None:
        while time.perf_counter() < deadline:
            await ledger.hold(next(turn), run, expires_at)

    try:
        await asyncio.gather(*(client() for _ in range(opts.clients)))
    finally:
        measuring.cancel()
    run.ended = time.perf_counter()
    run.cpu = meter.stop()


async def exact(dsn: str, ledger: Ledger, runs: list[Run], timeout: float) -> tuple[bool, int, str]:
    """Whether every wallet's balance row is what the replies moved, to the minor unit, once
    the read model has caught up (each row at its stream's last version); (exact, wallets
    checked, the first difference)."""
    wallets = sorted(ledger.deposited)
    held: defaultdict[str, Decimal] = defaultdict(Decimal)
    for run in runs:
        for w, amount in run.held.items():
            held[w] += amount
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = {
                r["user_id"]: r
                for r in await conn.fetch(
                    "SELECT user_id, balance, held, available, version FROM wallet.balances"
                    " WHERE user_id = ANY($1::text[])",
                    wallets,
                )
            }
            behind = [
                w for w in wallets if w not in rows or rows[w]["version"] < ledger.versions[w]
            ]
            if not behind or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
    finally:
        await conn.close()
    if behind:
        return False, len(wallets), f"{len(behind)} wallet rows not caught up after {timeout:.0f} s"
    for w in wallets:
        want = (ledger.deposited[w], held[w], ledger.deposited[w] - held[w])
        got = (rows[w]["balance"], rows[w]["held"], rows[w]["available"])
        if got != want:
            return False, len(wallets), f"{w}: (balance, held, available) {got}, expected {want}"
    return True, len(wallets), ""


def report(run: Run, warmup: float) -> tuple[float, float, float, str]:
    """Prints the run's figures; (holds/s, p50 ms, p99 ms, a summary for the note)."""
    rate, lat = run.measured(warmup)
    p50, p99 = percentile(lat, 50), percentile(lat, 99)
    first, last = run.edges(warmup)
    refused = f", refused {dict(run.refused)}" if run.refused else ""
    print(
        f"  {run.name}: {rate:,.0f} holds/s; latency p50 {p50:.1f} ms, p99 {p99:.1f} ms"
        f" ({len(lat)} holds measured over {run.ended - run.started - warmup:.1f} s after"
        f" {warmup:.1f} s warm-up; resent after a timeout {run.resent}{refused})"
    )
    print(f"    first second measured {first:,.0f} holds/s, last second {last:,.0f} holds/s")
    print(f"    {cpu_text(run.cpu)}")
    summary = (
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; first/last second {first:.0f}/{last:.0f} holds/s"
    )
    return rate, p50, p99, summary


async def run_wallet(infra: Infra, servers: Servers, opts: WalletBenchOptions) -> list[Figure]:
    from deploy.local.servers import free_port

    dsn = await infra.create_database("wallet")
    prefix = f"b{infra.tag}w"
    health = free_port()
    service: Child = infra.spawn(
        "wallet",
        ["-m", "services.wallet"],
        {
            "RF_DATABASE_URL": dsn,
            "RF_NATS_URL": servers.nats_url,
            "RF_NATS_PREFIX": prefix,
            "RF_REDIS_URL": servers.redis_url,
            "RF_REDIS_PREFIX": prefix,
            "RF_HEALTH_PORT": str(health),
            "RF_LOG_LEVEL": "WARNING",
        },
    )
    settings = BaseServiceSettings(
        service_name="bench-wallet-clients",
        database_url=dsn,
        nats_url=servers.nats_url,
        nats_prefix=prefix,
    )
    t0 = time.perf_counter()
    try:
        await wait_http_ok(health, "/readyz", 60, service)
        print(f"   wallet service ready in {time.perf_counter() - t0:.1f} s")
        nc = await connect(settings, "bench-wallet-clients")
        try:
            ledger = Ledger(nc, settings, opts.timeout)
            hot = "usr_bench_contended"
            spread = [f"usr_bench_{n:04d}" for n in range(opts.wallets)]
            await ledger.deposit(hot)
            for i in range(0, len(spread), opts.clients):
                await asyncio.gather(*(ledger.deposit(w) for w in spread[i : i + opts.clients]))
            print(f"  deposited {DEPOSIT} credits on each of {1 + len(spread)} wallets")
            contended = Run(f"(a) one wallet, {opts.clients} clients")
            await drive(ledger, contended, [hot], opts, CpuMeter([service]))
            a = report(contended, opts.warmup)
            wide = Run(f"(b) {opts.wallets:,} wallets, {opts.clients} clients")
            await drive(ledger, wide, spread, opts, CpuMeter([service]))
            b = report(wide, opts.warmup)
            ok, checked, why = await exact(dsn, ledger, [contended, wide], opts.settle_seconds)
        finally:
            await nc.drain()
    finally:
        infra.stop_child(service)
    ratio = b[0] / a[0] if a[0] else float("nan")
    print(f"  (b)/(a): {ratio:.2f}")
    why_text = f"; {why}" if why else ""
    print(f"  ledger exact: {'yes' if ok else 'no'} ({checked} wallets checked{why_text})")
    note = (
        f"{opts.clients} concurrent clients over one NATS connection, each sending its next"
        f" HoldCredits once answered, {opts.seconds:.0f} s after {opts.warmup:.0f} s warm-up;"
        " the wallet service in its own process"
    )
    return [
        Figure(
            SECTION,
            "holds/s, one contended wallet",
            a[0],
            "holds/s",
            target=TARGET_CONTENDED,
            note=f"{note}; {a[3]}",
            extra={"p50_ms": a[1], "p99_ms": a[2], "resent": contended.resent, **contended.cpu},
        ),
        Figure(SECTION, "hold latency p99, contended", a[2], "ms", direction="max"),
        Figure(
            SECTION,
            f"holds/s, across {opts.wallets:,} wallets",
            b[0],
            "holds/s",
            baseline=a[0],
            baseline_name="holds/s on one contended wallet, same clients",
            target=TARGET_SPREAD,
            note=f"round-robin over the wallets; {b[3]}; (b)/(a) {ratio:.2f}",
            extra={"p50_ms": b[1], "p99_ms": b[2], "resent": wide.resent, **wide.cpu},
        ),
        Figure(SECTION, "hold latency p99, across wallets", b[2], "ms", direction="max"),
        Figure(
            SECTION,
            "ledger exact (1 = yes)",
            1.0 if ok else 0.0,
            "",
            target=1.0,
            note=(
                f"each of {checked} wallets' balances row = deposits - applied holds, to the"
                f" minor unit{why_text}"
            ),
        ),
    ]
