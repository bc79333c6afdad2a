"""The scene work queue on a real Redis: priorities, one copy per item id, taking again what a
dead or silent holder had, heartbeats, bounded retries ending in dead letters, operators'
figures, and the worker loop."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from contracts.errors.jobs import JobNotFound
from libs.workqueue import (
    Depth,
    Item,
    ItemLost,
    PermanentFailure,
    Released,
    Worker,
    WorkQueue,
)
from tests.conftest import Servers
from tests.waiting import until

Queues = Callable[..., WorkQueue]


@pytest.fixture
async def redis(servers: Servers) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(servers.redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def queues(redis: aioredis.Redis) -> Queues:
    """Makes queues named ``scene`` under this test's own key prefix."""
    prefix = f"t{secrets.token_hex(4)}"

    def make(**kw: Any) -> WorkQueue:
        return WorkQueue(redis, "scene", prefix=prefix, **kw)

    return make


def empty() -> Depth:
    return Depth(waiting=0, in_flight=0, retrying=0, dead=0)


async def test_a_test_render_queued_after_100_full_renders_is_taken_first(queues: Queues) -> None:
    q = queues()
    for n in range(100):
        assert await q.enqueue(f"full-{n}", {"job_id": f"j{n}"}, "full")
    assert await q.enqueue("test-1", {"job_id": "jt"}, "test")

    first = await q.take("w1")
    second = await q.take("w1")

    assert first is not None
    assert (first.item_id, first.priority, first.payload) == ("test-1", "test", {"job_id": "jt"})
    assert first.delivery == 1
    assert first.last_error is None
    assert second is not None
    assert (second.item_id, second.priority) == ("full-0", "full")  # then the oldest full one


async def test_enqueueing_an_item_twice_queues_it_once_and_a_finished_id_stays_used(
    queues: Queues, redis: aioredis.Redis
) -> None:
    q = queues(dedupe_ttl_seconds=3600)
    assert await q.enqueue("scene-check:j1", {"job_id": "j1"}, "full") is True
    assert await q.enqueue("scene-check:j1", {"job_id": "j1"}, "test") is False
    assert (await q.depth())["full"] == Depth(waiting=1, in_flight=0, retrying=0, dead=0)
    assert (await q.depth())["test"] == empty()

    item = await q.take("w1")
    assert item is not None
    assert await q.enqueue("scene-check:j1", {"job_id": "j1"}, "full") is False  # held
    await q.ack(item)

    assert await q.enqueue("scene-check:j1", {"job_id": "j1"}, "full") is False  # finished
    assert 3500 < await redis.ttl(f"{q._base}:item:scene-check:j1") <= 3600
    assert await q.take("w1") is None
    assert await q.enqueue("scene-check:j1:2", {"job_id": "j1"}, "full") is True  # a new id


async def test_an_item_whose_holder_dies_is_taken_again_after_the_visibility_timeout(
    queues: Queues,
) -> None:
    q = queues(visibility_timeout_seconds=0.3)
    await q.enqueue("repath:j1", {"job_id": "j1"}, "full")
    held = await q.take("worker-a")
    assert held is not None
    # worker-a dies here: it never acks nor heartbeats.
    assert await q.take("worker-b") is None  # not yet: the timeout has not passed
    loop = asyncio.get_running_loop()
    started = loop.time()

    again = await q.take("worker-b", block_ms=5000)

    assert again is not None
    assert loop.time() - started >= 0.2  # it waited for the rest of the timeout
    assert (again.item_id, again.delivery, again.consumer) == ("repath:j1", 2, "worker-b")
    assert again.last_error is not None
    assert "worker-a" in again.last_error
    with pytest.raises(ItemLost):  # the first holder can no longer touch it
        await q.heartbeat(held)
    with pytest.raises(ItemLost):
        await q.ack(held)
    await q.ack(again)
    assert await q.depth() == {"test": empty(), "full": empty()}


async def test_heartbeats_keep_a_long_item_from_being_taken(queues: Queues) -> None:
    q = queues(visibility_timeout_seconds=0.5)
    await q.enqueue("settings:j1", {}, "test")
    held = await q.take("worker-a")
    assert held is not None

    loop = asyncio.get_running_loop()
    until_t = loop.time() + 1.5  # three visibility timeouts of work
    while loop.time() < until_t:
        await asyncio.sleep(0.1)  # the holder working
        await q.heartbeat(held)
        assert await q.take("worker-b") is None
    assert (await q.depth())["test"] == Depth(waiting=0, in_flight=1, retrying=0, dead=0)

    # Once its heartbeats stop, another worker gets it.
    again = await q.take("worker-b", block_ms=5000)
    assert again is not None
    assert again.delivery == 2


async def test_failed_attempts_are_retried_until_the_last_then_dead_lettered_with_the_error(
    queues: Queues,
) -> None:
    q = queues(max_deliveries=3, retry_delay_seconds=0)
    await q.enqueue("check:j1", {"job_id": "j1"}, "full")

    outcomes = []
    for attempt in (1, 2, 3):
        item = await q.take("w1")
        assert item is not None
        assert item.delivery == attempt
        assert item.last_error == (None if attempt == 1 else f"boom {attempt - 1}")
        outcomes.append(await q.release(item, f"boom {attempt}"))

    assert outcomes == [Released.WILL_RETRY, Released.WILL_RETRY, Released.DEAD_LETTERED]
    assert await q.take("w1") is None
    [dead] = await q.dead_letters()
    assert (dead.item_id, dead.priority, dead.payload) == ("check:j1", "full", {"job_id": "j1"})
    assert (dead.error, dead.deliveries, dead.consumer) == ("boom 3", 3, "w1")
    assert (await q.depth())["full"] == Depth(waiting=0, in_flight=0, retrying=0, dead=1)
    assert await q.enqueue("check:j1", {}, "full") is False  # a dead item still holds its id

    assert await q.retry_dead_letter("check:j1") is True
    assert await q.retry_dead_letter("check:j1") is False  # no dead letter any more
    retried = await q.take("w1")
    assert retried is not None
    assert (retried.item_id, retried.delivery, retried.payload) == ("check:j1", 1, {"job_id": "j1"})
    await q.ack(retried)
    assert await q.dead_letters() == []
    assert await q.retry_dead_letter("never-queued") is False


async def test_an_item_whose_holders_keep_dying_is_dead_lettered_after_max_deliveries(
    queues: Queues,
) -> None:
    q = queues(visibility_timeout_seconds=0.3, max_deliveries=2)
    await q.enqueue("check:j1", {}, "test")
    assert (await q.take("worker-a")) is not None  # dies
    second = await q.take("worker-b", block_ms=5000)  # dies too
    assert second is not None
    assert second.delivery == 2

    async def dead_lettered() -> bool:
        assert await q.take("worker-c") is None  # never a third delivery
        return bool(await q.dead_letters())

    await until(dead_lettered, "the item to be dead-lettered")
    [dead] = await q.dead_letters()
    assert dead.deliveries == 2
    assert dead.consumer == "worker-b"
    assert "worker-b" in dead.error
    assert "visibility timeout" in dead.error


async def test_a_permanent_failure_is_dead_lettered_at_once_and_can_be_discarded(
    queues: Queues,
) -> None:
    q = queues(max_deliveries=5, dedupe_ttl_seconds=60)
    await q.enqueue("repath:j1", {"job_id": "j1"}, "full")
    item = await q.take("w1")
    assert item is not None

    await q.dead_letter(item, "scene file missing: shots/a.blend")

    [dead] = await q.dead_letters()
    assert (dead.error, dead.deliveries) == ("scene file missing: shots/a.blend", 1)
    with pytest.raises(ItemLost):
        await q.ack(item)
    assert await q.discard_dead_letter("repath:j1") is True
    assert await q.dead_letters() == []
    assert await q.enqueue("repath:j1", {}, "full") is False  # remembered like a finished one


async def test_a_released_item_waits_for_its_back_off(queues: Queues) -> None:
    q = queues(visibility_timeout_seconds=5)
    await q.enqueue("check:j1", {}, "full")
    item = await q.take("w1")
    assert item is not None

    assert await q.release(item, "farm busy", delay_seconds=0.3) is Released.WILL_RETRY
    assert await q.take("w1") is None
    assert (await q.depth())["full"] == Depth(waiting=0, in_flight=0, retrying=1, dead=0)
    with pytest.raises(ItemLost):  # released: no longer the caller's
        await q.heartbeat(item)

    again = await q.take("w2", block_ms=5000)
    assert again is not None
    assert (again.delivery, again.last_error) == (2, "farm busy")


async def test_depth_counts_waiting_in_flight_retrying_and_dead_per_priority(
    queues: Queues,
) -> None:
    q = queues(visibility_timeout_seconds=5)
    assert await q.depth() == {"test": empty(), "full": empty()}
    for n in range(4):
        await q.enqueue(f"full-{n}", {}, "full")
    await q.enqueue("test-0", {}, "test")
    await q.enqueue("test-1", {}, "test")

    test_0, test_1, full_0, full_1 = [await q.take("w1") for _ in range(4)]
    assert test_0 is not None and test_1 is not None and full_0 is not None
    assert full_1 is not None
    await q.dead_letter(test_0, "bad scene")
    await q.release(full_0, "later", delay_seconds=5)
    await q.ack(full_1)

    assert await q.depth() == {
        "test": Depth(waiting=0, in_flight=1, retrying=0, dead=1),
        "full": Depth(waiting=2, in_flight=0, retrying=1, dead=0),
    }


async def test_a_queue_whose_redis_lost_its_data_works_again(
    queues: Queues, redis: aioredis.Redis
) -> None:
    q = queues()
    assert await q.take("w1") is None  # the streams and the group exist now
    await redis.delete(q.stream_key("test"), q.stream_key("full"))  # e.g. a failover

    assert await q.enqueue("check:j1", {}, "full") is True
    item = await q.take("w1")
    assert item is not None
    assert item.item_id == "check:j1"


async def test_unknown_priorities_and_names_are_refused(queues: Queues) -> None:
    q = queues()
    with pytest.raises(ValueError, match="unknown priority"):
        await q.enqueue("x", {}, "urgent")
    with pytest.raises(ValueError, match="priorities"):
        queues(priorities=("full", "full"))
    with pytest.raises(ValueError, match="consumer"):
        await q.take("~retry")


# -- the worker loop ------------------------------------------------------------------------


class Handler:
    """Records each delivery; behaves by item id: ``flaky*`` fail their first delivery,
    ``broken*`` fail for good, ``missing*`` raise a non-retryable domain error, ``long*`` run
    until ``finish`` is set."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.done: list[str] = []
        self.cancelled: list[str] = []
        self.finish = asyncio.Event()

    async def __call__(self, item: Item) -> None:
        self.seen.append((item.item_id, item.delivery))
        if item.item_id.startswith("flaky") and item.delivery == 1:
            raise RuntimeError("the farm share did not answer")
        if item.item_id.startswith("broken"):
            raise PermanentFailure("not a .blend file")
        if item.item_id.startswith("missing"):
            raise JobNotFound("no job j9", job_id="j9")
        if item.item_id.startswith("long"):
            try:
                await self.finish.wait()
            except asyncio.CancelledError:
                self.cancelled.append(item.item_id)
                raise
        self.done.append(item.item_id)


@pytest.fixture
async def stopping() -> asyncio.Event:
    return asyncio.Event()


Spawn = Callable[[Worker, asyncio.Event], asyncio.Task[None]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Runs workers as tasks; any still running when the test ends is cancelled."""
    tasks: list[asyncio.Task[None]] = []

    def start(worker: Worker, stopping: asyncio.Event) -> asyncio.Task[None]:
        tasks.append(asyncio.create_task(worker.run(stopping)))
        return tasks[-1]

    yield start
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=5)


async def test_the_worker_acks_successes_retries_passing_failures_and_buries_permanent_ones(
    queues: Queues, stopping: asyncio.Event, spawn: Spawn
) -> None:
    q = queues(visibility_timeout_seconds=1, retry_delay_seconds=0)
    handler = Handler()
    for item_id in ("ok-1", "flaky-1", "broken-1", "missing-1", "ok-2"):
        await q.enqueue(item_id, {}, "full")
    task = spawn(Worker(q, "w1", handler, block_ms=100), stopping)

    async def settled() -> bool:
        d = (await q.depth())["full"]
        return d.waiting == d.in_flight == d.retrying == 0 and d.dead == 2

    await until(settled, "every item done or dead")
    assert sorted(handler.done) == ["flaky-1", "ok-1", "ok-2"]
    assert ("flaky-1", 2) in handler.seen  # the failed one ran again, as delivery 2
    dead = {d.item_id: d for d in await q.dead_letters()}
    assert dead["broken-1"].error == "PermanentFailure: not a .blend file"
    assert dead["missing-1"].error == "job_not_found: no job j9"
    assert dead["broken-1"].deliveries == dead["missing-1"].deliveries == 1
    assert not task.done()  # failing handlers never end the loop

    stopping.set()
    await asyncio.wait_for(task, 5)


async def test_the_worker_heartbeats_a_long_item_and_a_cancelled_worker_leaves_it_for_another(
    queues: Queues, stopping: asyncio.Event, spawn: Spawn
) -> None:
    q = queues(visibility_timeout_seconds=0.6)  # heartbeats every 0.2 s
    handler = Handler()
    await q.enqueue("long-1", {}, "full")
    task = spawn(Worker(q, "w1", handler, block_ms=100), stopping)
    await until(lambda: _true(bool(handler.seen)), "the worker to start the item")

    loop = asyncio.get_running_loop()
    until_t = loop.time() + 1.8  # three visibility timeouts: its heartbeats keep it
    while loop.time() < until_t:
        assert await q.take("w2") is None
        await asyncio.sleep(0.1)

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handler.cancelled == ["long-1"]
    again = await q.take("w2", block_ms=5000)
    assert again is not None
    assert (again.item_id, again.delivery) == ("long-1", 2)


async def test_a_stopping_worker_releases_its_item_at_once(
    queues: Queues, stopping: asyncio.Event, spawn: Spawn
) -> None:
    q = queues(visibility_timeout_seconds=30)
    handler = Handler()
    await q.enqueue("long-1", {}, "full")
    task = spawn(Worker(q, "w1", handler, block_ms=100), stopping)
    await until(lambda: _true(bool(handler.seen)), "the worker to start the item")

    stopping.set()
    await asyncio.wait_for(task, 5)

    assert handler.cancelled == ["long-1"]
    again = await q.take("w2")  # no wait for the 30 s timeout
    assert again is not None
    assert (again.delivery, again.last_error) == (2, "worker stopped")


async def test_a_worker_whose_item_was_taken_by_another_stops_working_on_it(
    queues: Queues, stopping: asyncio.Event, spawn: Spawn
) -> None:
    # The worker heartbeats every 0.5 s; a thief with a 0.3 s timeout sees the item idle
    # in between, as another worker would if the first missed its heartbeats.
    q = queues(visibility_timeout_seconds=1.5)
    thief = queues(visibility_timeout_seconds=0.3)
    handler = Handler()
    await q.enqueue("long-1", {}, "full")
    task = spawn(Worker(q, "w1", handler, block_ms=100), stopping)
    await until(lambda: _true(bool(handler.seen)), "the worker to start the item")

    stolen = await thief.take("w2", block_ms=5000)
    assert stolen is not None

    await until(lambda: _true(handler.cancelled == ["long-1"]), "the worker to give it up")
    assert not task.done()
    await thief.ack(stolen)
    stopping.set()
    await asyncio.wait_for(task, 5)


async def test_a_redis_failure_in_the_loop_propagates(stopping: asyncio.Event) -> None:
    from deploy.local.servers import free_port

    dead_redis = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    q = WorkQueue(dead_redis, "scene", prefix="t")
    try:
        with pytest.raises(aioredis.ConnectionError):
            await Worker(q, "w1", Handler()).run(stopping)
    finally:
        await dead_redis.aclose()


async def _true(value: bool) -> bool:
    return value
