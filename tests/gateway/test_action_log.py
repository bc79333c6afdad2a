"""The action log: batched rows in a table partitioned by day, kept for the retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from contracts.gateway import ApiCall, Outcome
from services.gateway.actionlog import ActionLog
from services.gateway.service import Gateway

AT = datetime.now(UTC)


def call(request_id: str, at: datetime = AT, path: str = "/v1/jobs/x") -> ApiCall:
    return ApiCall(
        request_id=request_id,
        operation_id="get_job",
        method="GET",
        path=path,
        user_id="usr_1",
        api_key_id=None,
        target_ids={"job_id": "x"},
        status_code=200,
        outcome=Outcome.succeeded,
        error_code=None,
        latency_ms=1.5,
        trace_id=None,
        client_ip="127.0.0.1",
        at=at,
    )


async def test_a_record_already_stored_does_not_hold_back_the_rest(gateway: Gateway) -> None:
    log = ActionLog(gateway.rt.pool, gateway.rt.schema)
    log.record(call("r1"))
    await log.flush()
    for rid in ("r2", "r1", "r3"):  # r1 again, e.g. a retried flush
        log.record(call(rid))
    await log.flush()
    ids = [c.request_id for c in await log.calls("usr_1", None, 100)]
    assert sorted(ids) == ["r1", "r2", "r3"]
    assert log.written == 3


async def test_a_record_the_table_refuses_does_not_hold_back_the_rest(gateway: Gateway) -> None:
    log = ActionLog(gateway.rt.pool, gateway.rt.schema)
    log.record(call("ok1"))
    log.record(call("bad", path="/v1/\x00"))  # text cannot hold NUL
    log.record(call("ok2"))
    await log.flush()
    assert sorted(c.request_id for c in await log.calls(None, None, 100)) == ["ok1", "ok2"]
    assert (log.written, log.dropped) == (2, 1)


async def test_partitions_are_made_ahead_and_dropped_after_the_retention(
    gateway: Gateway,
) -> None:
    log = ActionLog(gateway.rt.pool, gateway.rt.schema, retention_days=3)
    today = date(2031, 5, 10)
    old = datetime(2031, 5, 1, 12, tzinfo=UTC)
    log.record(call("old", at=old))  # a day without a partition yet gets one
    await log.flush()
    await log.maintain(today)
    days = await log.partitions()
    assert {today, today + timedelta(days=1), today + timedelta(days=2)} <= set(days)
    assert old.date() not in days and min(days) >= today - timedelta(days=3)
    assert [c.request_id for c in await log.calls(None, None, 100)] == []


async def test_admins_page_through_the_log_newest_first(gateway: Gateway) -> None:
    log = ActionLog(gateway.rt.pool, gateway.rt.schema)
    for i in range(5):
        log.record(call(f"p{i}", at=AT + timedelta(seconds=i)))
    await log.flush()
    first = await log.calls("usr_1", None, 3)
    assert [c.request_id for c in first] == ["p4", "p3", "p2"]
    rest = await log.calls("usr_1", (first[-1].at, first[-1].request_id), 3)
    assert [c.request_id for c in rest] == ["p1", "p0"]
