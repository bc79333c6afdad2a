"""NATS: the relay, durable consumers with redelivery and dead letters, and commands."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import asyncpg
import pytest
from nats.aio.client import Client
from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.errors import (
    DomainError,
    FieldProblem,
    InternalError,
    InvalidFrameRange,
    ServiceUnavailable,
)
from libs.bus.commands import Actor, CommandClient, CommandServer
from libs.bus.consumer import BusEvent, DurableConsumer, claim_event
from libs.bus.relay import Relay
from libs.config import BaseServiceSettings
from libs.eventstore.aggregate import Aggregate, RecordingRefused
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.store import EventStore, NewEvent, Position
from libs.eventstore.uow import ReadOnlyUnitOfWork, UnitOfWork
from tests.libs.conftest import FrameRendered, registry

ACTOR = Actor(kind="user", id="usr_test")


async def stream_messages(nc: Client, settings: BaseServiceSettings, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.messages)


async def test_the_relay_publishes_every_event_once_even_when_it_resends_after_a_crash(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    for i in range(5):
        await store.append(f"job-{i}", [NewEvent(FrameRendered(frame=i))], 0)
    relay = Relay(store, nc.jetstream(), settings)
    await relay.catch_up()
    assert relay.published == 5
    # Crash before the checkpoint moved: a restarted relay sends the batch again.
    async with store.pool.acquire() as conn:
        await store.advance_checkpoint(conn, relay.name, relay.position, Position.start())
    again = Relay(store, nc.jetstream(), settings)
    await again.catch_up()
    assert again.duplicates == 5
    assert await stream_messages(nc, settings, settings.events_stream) == 5


async def relay_all(store: EventStore, nc: Client, settings: BaseServiceSettings) -> None:
    await Relay(store, nc.jetstream(), settings).catch_up()


async def run_consumer(consumer: DurableConsumer, until: asyncio.Event, timeout: float) -> None:
    stopping = asyncio.Event()
    task = asyncio.create_task(consumer.run(stopping))
    try:
        await asyncio.wait_for(until.wait(), timeout)
    finally:
        stopping.set()
        await task


async def test_a_failing_handler_is_retried_until_it_succeeds(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    await store.append("job-r", [NewEvent(FrameRendered(frame=1))], 0)
    await relay_all(store, nc, settings)
    attempts: list[int] = []
    handled = asyncio.Event()

    async def flaky(event: BusEvent) -> None:
        attempts.append(event.deliveries)
        if len(attempts) < 3:
            raise ConnectionError("farm unreachable")
        handled.set()

    consumer = DurableConsumer(
        nc,
        nc.jetstream(),
        settings,
        "flaky",
        ["events.test.>"],
        flaky,
        backoff=(0.1, 0.1, 0.1, 0.1),
    )
    await run_consumer(consumer, handled, 10)
    assert attempts == [1, 2, 3]
    assert consumer.dead_lettered == 0


async def test_a_message_that_always_fails_lands_in_the_dead_letter_stream(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    [recorded] = await store.append("job-d", [NewEvent(FrameRendered(frame=1))], 0)
    await relay_all(store, nc, settings)
    dead = asyncio.Event()

    async def broken(event: BusEvent) -> None:
        raise ValueError("cannot handle")

    consumer = DurableConsumer(
        nc,
        nc.jetstream(),
        settings,
        "broken",
        ["events.test.>"],
        broken,
        max_deliver=3,
        backoff=(0.1, 0.1, 0.1),
    )

    async def watch() -> None:
        while consumer.dead_lettered == 0:
            await asyncio.sleep(0.05)
        dead.set()

    watcher = asyncio.create_task(watch())
    await run_consumer(consumer, dead, 15)
    await watcher
    js = nc.jetstream()
    msg = await js.get_last_msg(settings.dlq_stream, settings.subject("dlq.broken"))
    assert msg.headers is not None
    assert msg.headers["Dlq-Consumer"] == "broken"
    assert "failed 3 deliveries" in msg.headers["Dlq-Reason"]
    assert msg.data is not None
    assert BusEvent.parse(msg.data).event_id == recorded.event_id


async def test_an_undecodable_message_is_dead_lettered_at_once(
    nc: Client, settings: BaseServiceSettings
) -> None:
    js = nc.jetstream()
    await js.publish(settings.subject("events.test.Garbage"), b"not json")
    calls: list[BusEvent] = []

    async def handler(event: BusEvent) -> None:
        calls.append(event)

    consumer = DurableConsumer(nc, js, settings, "strict", ["events.test.>"], handler)
    done = asyncio.Event()

    async def watch() -> None:
        while consumer.dead_lettered == 0:
            await asyncio.sleep(0.05)
        done.set()

    watcher = asyncio.create_task(watch())
    await run_consumer(consumer, done, 10)
    await watcher
    assert calls == []
    msg = await js.get_last_msg(settings.dlq_stream, settings.subject("dlq.strict"))
    assert msg.headers is not None and msg.headers["Dlq-Reason"].startswith("poison")


async def test_an_effect_committed_before_a_lost_ack_is_not_applied_again(
    store: EventStore, pool: asyncpg.Pool, nc: Client, settings: BaseServiceSettings
) -> None:
    await store.append("job-x", [NewEvent(FrameRendered(frame=1))], 0)
    await relay_all(store, nc, settings)
    async with pool.acquire() as conn:
        await conn.execute("CREATE TABLE es.effects (event_id uuid)")
    deliveries: list[int] = []
    done = asyncio.Event()

    async def handler(event: BusEvent) -> None:
        deliveries.append(event.deliveries)
        async with pool.acquire() as conn, conn.transaction():
            if await claim_event(conn, "es", "billing", event.event_id):
                await conn.execute("INSERT INTO es.effects VALUES ($1)", event.event_id)
        if len(deliveries) == 1:
            raise ConnectionResetError("died after commit, before the ack")
        done.set()

    consumer = DurableConsumer(
        nc, nc.jetstream(), settings, "billing", ["events.test.>"], handler, backoff=(0.1,) * 4
    )
    await run_consumer(consumer, done, 10)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM es.effects") == 1
    assert deliveries == [1, 2]


async def test_a_batch_handler_takes_a_fetched_batch_whole_or_leaves_it_to_the_event_handler(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    async def publish(first: int) -> None:
        for i in range(first, first + 5):
            await store.append(f"job-b{i}", [NewEvent(FrameRendered(frame=i))], 0)
        await relay_all(store, nc, settings)

    singles: list[int] = []
    batches: list[list[int]] = []
    refuse = True
    enough = asyncio.Event()

    async def one(event: BusEvent) -> None:
        singles.append(event.data["frame"])
        if len(singles) + sum(map(len, batches)) >= target:
            enough.set()

    async def many(events: Sequence[BusEvent]) -> None:
        if refuse:  # the first batch is refused: each of its events goes to the handler
            raise ConnectionError("the database went away mid-batch")
        batches.append([e.data["frame"] for e in events])
        if len(singles) + sum(map(len, batches)) >= target:
            enough.set()

    def consumer() -> DurableConsumer:
        return DurableConsumer(
            nc, nc.jetstream(), settings, "batched", ["events.test.>"], one, batch_handler=many
        )

    await publish(0)
    target, first = 5, consumer()
    await run_consumer(first, enough, 10)
    assert (sorted(singles), batches, first.batches_split) == ([0, 1, 2, 3, 4], [], 1)
    refuse, enough = False, asyncio.Event()
    await publish(5)
    target, second = 10, consumer()
    await run_consumer(second, enough, 10)
    assert sorted(f for b in batches for f in b) == [5, 6, 7, 8, 9]
    assert max(map(len, batches)) > 1 and second.handled == 5
    assert len(singles) == 5  # nothing handled twice


async def test_a_backlog_is_fetched_ahead_and_what_was_fetched_is_handled_at_a_stop(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    for i in range(250):
        await store.append(f"job-a{i}", [NewEvent(FrameRendered(frame=i))], 0)
    await relay_all(store, nc, settings)
    seen: list[int] = []
    stopping = asyncio.Event()

    async def many(events: Sequence[BusEvent]) -> None:
        seen.extend(e.data["frame"] for e in events)
        stopping.set()  # stop after the first batch: the one fetched ahead is handled too

    async def one(event: BusEvent) -> None:
        seen.append(event.data["frame"])

    def consumer() -> DurableConsumer:
        return DurableConsumer(
            nc,
            nc.jetstream(),
            settings,
            "ahead",
            ["events.test.>"],
            one,
            batch=50,
            batch_handler=many,
            ack_wait=30,
        )

    first = consumer()
    await asyncio.wait_for(first.run(stopping), 10)
    assert first.batches == 2 and len(seen) == 100
    # Nothing was left unacknowledged: the rest comes at once, not after the 30 s ack wait.
    rest = consumer()
    stopping = asyncio.Event()
    task = asyncio.create_task(rest.run(stopping))

    async def many_rest(events: Sequence[BusEvent]) -> None:
        seen.extend(e.data["frame"] for e in events)
        if len(seen) >= 250:
            stopping.set()

    rest.batch_handler = many_rest
    await asyncio.wait_for(task, 10)
    assert sorted(seen) == list(range(250))


# -- commands ---------------------------------------------------------------------------


class RenderFrame(Command):
    command_type = "test.RenderFrame"
    job_id: str
    frame: int


class Rendered(BaseModel):
    job_id: str
    version: int


class FrameLog(Aggregate):
    """The frames rendered for one job (stream ``job-<job id>``)."""

    stream_prefix = "job"
    frames: list[int] = []

    def apply(self, event: Event) -> None:
        assert isinstance(event, FrameRendered)
        self.frames.append(event.frame)

    def render(self, frame: int) -> None:
        if frame < 0:
            problem = FieldProblem(loc=["frame"], message="below 0", type="invalid_frame_range")
            raise InvalidFrameRange(f"frame {frame} < 0", errors=[problem])
        self.record(FrameRendered(frame=frame))


@pytest.fixture
async def command_server(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> CommandServer:
    async def render(cmd: RenderFrame, uow: UnitOfWork) -> Rendered:
        log = await uow.get(FrameLog, cmd.job_id)
        await asyncio.sleep(0.01)  # widen the window for a concurrent writer
        log.render(cmd.frame)
        return Rendered(job_id=cmd.job_id, version=log.version)

    server = CommandServer(nc, store, settings)
    server.register(RenderFrame, render)
    await server.start()
    return server


def test_a_command_type_gets_one_handler(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    async def handler(cmd: RenderFrame, uow: UnitOfWork) -> Rendered:
        raise AssertionError("not called")

    server = CommandServer(nc, store, settings)
    server.register(RenderFrame, handler)
    with pytest.raises(ValueError, match=r"test\.RenderFrame"):
        server.register(RenderFrame, handler)


async def test_a_repeated_command_id_returns_the_first_reply_and_acts_once(
    command_server: CommandServer, store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    client = CommandClient(nc, settings)
    cid = str(uuid.uuid4())
    first = await client.send(
        RenderFrame(job_id="j", frame=1), Rendered, command_id=cid, actor=ACTOR
    )
    second = await client.send(
        RenderFrame(job_id="j", frame=1), Rendered, command_id=cid, actor=ACTOR
    )
    assert first == second
    assert len(await store.read_stream("job-j")) == 1


async def test_a_domain_error_reaches_the_caller_with_its_code(
    command_server: CommandServer, nc: Client, settings: BaseServiceSettings
) -> None:
    with pytest.raises(DomainError) as err:
        await CommandClient(nc, settings).send(
            RenderFrame(job_id="j", frame=-1), Rendered, command_id="c1", actor=ACTOR
        )
    assert type(err.value) is InvalidFrameRange


async def test_concurrent_commands_on_one_stream_are_retried_and_all_succeed(
    command_server: CommandServer, store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    client = CommandClient(nc, settings)
    replies = await asyncio.gather(
        *(
            client.send(
                RenderFrame(job_id="hot", frame=i), Rendered, command_id=f"c{i}", actor=ACTOR
            )
            for i in range(4)
        )
    )
    assert sorted(r.version for r in replies) == [1, 2, 3, 4]
    events = await store.read_stream("job-hot")
    assert [e.metadata["actor"]["id"] for e in events] == ["usr_test"] * 4


async def test_a_command_nobody_serves_is_a_retryable_service_unavailable(
    nc: Client, settings: BaseServiceSettings
) -> None:
    with pytest.raises(DomainError) as err:
        await CommandClient(nc, settings, timeout=1).send(
            RenderFrame(job_id="j", frame=1), Rendered, command_id="c", actor=ACTOR
        )
    assert type(err.value) is ServiceUnavailable and err.value.retryable


async def test_a_repeat_stops_at_its_first_load_and_answers_the_first_reply(
    command_server: CommandServer, store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    # The stored-reply lookup rides on the handler's first load: a repeat whose handler
    # would now refuse (a negative frame) still gets the first answer and writes nothing.
    client = CommandClient(nc, settings)
    first = await client.send(
        RenderFrame(job_id="rp", frame=1), Rendered, command_id="rp-1", actor=ACTOR
    )
    again = await client.send(
        RenderFrame(job_id="rp", frame=-1), Rendered, command_id="rp-1", actor=ACTOR
    )
    assert first == again == Rendered(job_id="rp", version=1)
    assert len(await store.read_stream("job-rp")) == 1


async def test_concurrent_repeats_of_one_command_act_once(
    command_server: CommandServer, store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    client = CommandClient(nc, settings)
    replies = await asyncio.gather(
        *(
            client.send(
                RenderFrame(job_id="dup", frame=1), Rendered, command_id="dup-1", actor=ACTOR
            )
            for _ in range(4)
        )
    )
    assert all(r == replies[0] for r in replies)
    assert len(await store.read_stream("job-dup")) == 1


# -- read-only commands (queries) -------------------------------------------------------------


class CountFrames(Command):
    command_type = "test.CountFrames"
    job_id: str


class FrameCount(BaseModel):
    job_id: str
    frames: int


async def count_frames(cmd: CountFrames, uow: UnitOfWork) -> FrameCount:
    log = await uow.get(FrameLog, cmd.job_id)
    return FrameCount(job_id=cmd.job_id, frames=len(log.frames))


async def stored_replies(store: EventStore, command_id: str) -> int:
    async with store.pool.acquire() as conn:
        n: int = await conn.fetchval(
            f"SELECT count(*) FROM {store.schema}.processed_commands WHERE command_id = $1",
            command_id,
        )
    return n


async def render_now(cmd: RenderFrame, uow: UnitOfWork) -> Rendered:
    log = await uow.get(FrameLog, cmd.job_id)
    log.render(cmd.frame)
    return Rendered(job_id=cmd.job_id, version=log.version)


async def test_a_read_only_command_answers_from_the_state_now_and_stores_no_reply(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    server = CommandServer(nc, store, settings)
    server.register(RenderFrame, render_now)
    server.register(CountFrames, count_frames, read_only=True)
    await server.start()
    client = CommandClient(nc, settings)
    query = CountFrames(job_id="ro")
    before = await client.send(query, FrameCount, command_id="count-1", actor=ACTOR)
    await client.send(RenderFrame(job_id="ro", frame=1), Rendered, command_id="r1", actor=ACTOR)
    # The same command id again: nothing was stored, so it answers what holds now.
    after = await client.send(query, FrameCount, command_id="count-1", actor=ACTOR)
    assert (before.frames, after.frames) == (0, 1)
    assert await stored_replies(store, "count-1") == 0
    assert await stored_replies(store, "r1") == 1  # a writer's reply is still stored


async def test_a_read_only_handler_that_records_fails_loudly_and_changes_nothing(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    async def buggy(cmd: CountFrames, uow: UnitOfWork) -> FrameCount:
        log = await uow.get(FrameLog, cmd.job_id)
        log.render(7)  # a query must not record
        return FrameCount(job_id=cmd.job_id, frames=len(log.frames))

    server = CommandServer(nc, store, settings)
    server.register(CountFrames, buggy, read_only=True)
    await server.start()
    with pytest.raises(InternalError):
        await CommandClient(nc, settings).send(
            CountFrames(job_id="bug"), FrameCount, command_id="bug-1", actor=ACTOR
        )
    assert await store.read_stream("job-bug") == []
    assert await stored_replies(store, "bug-1") == 0


async def test_a_read_only_unit_of_work_refuses_to_record_or_commit() -> None:
    store = InMemoryEventStore("test", registry)
    await store.append("job-m", [NewEvent(FrameRendered(frame=1))], 0)
    uow = ReadOnlyUnitOfWork(store)
    log = await uow.get(FrameLog, "m")
    assert log.frames == [1]
    with pytest.raises(RecordingRefused, match="job-m"):
        log.render(2)
    assert log.frames == [1] and log.pending == ()
    with pytest.raises(RecordingRefused):
        await uow.commit()
    with pytest.raises(RecordingRefused):
        await uow.commit_alone()


async def test_read_only_commands_answer_while_every_writer_slot_is_taken(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    writers = settings.db_pool_size // 2
    inside, release = asyncio.Semaphore(0), asyncio.Event()

    async def slow_render(cmd: RenderFrame, uow: UnitOfWork) -> Rendered:
        inside.release()
        await release.wait()
        return await render_now(cmd, uow)

    server = CommandServer(nc, store, settings)
    server.register(RenderFrame, slow_render)
    server.register(CountFrames, count_frames, read_only=True)
    await server.start()
    client = CommandClient(nc, settings)
    held = [
        asyncio.create_task(
            client.send(
                RenderFrame(job_id=f"w{i}", frame=1), Rendered, command_id=f"w{i}", actor=ACTOR
            )
        )
        for i in range(writers)
    ]
    try:
        async with asyncio.timeout(5):
            for _ in range(writers):
                await inside.acquire()
        answer = await client.send(
            CountFrames(job_id="w0"), FrameCount, command_id="q", actor=ACTOR, timeout_seconds=2
        )
        assert answer.frames == 0
    finally:
        release.set()
    assert [r.version for r in await asyncio.gather(*held)] == [1] * writers


def test_a_read_only_command_takes_neither_store_reply_nor_serialize(
    store: EventStore, nc: Client, settings: BaseServiceSettings
) -> None:
    server = CommandServer(nc, store, settings)
    with pytest.raises(ValueError, match="read-only"):
        server.register(CountFrames, count_frames, read_only=True, serialize=lambda c: c.job_id)
    with pytest.raises(ValueError, match="read-only"):
        server.register(CountFrames, count_frames, read_only=True, store_reply=False)
