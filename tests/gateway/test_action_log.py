"""The action log keeps writing even when one record cannot be stored."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.gateway import ApiCallRecorded, Outcome
from services.gateway.actionlog import ActionLog
from services.gateway.service import Gateway


def call(request_id: str) -> ApiCallRecorded:
    return ApiCallRecorded(
        request_id=request_id,
        operation_id="get_job",
        method="GET",
        path="/v1/jobs/x",
        user_id="usr_1",
        api_key_id=None,
        target_ids={"job_id": "x"},
        status_code=200,
        outcome=Outcome.succeeded,
        error_code=None,
        latency_ms=1.5,
        trace_id=None,
        client_ip="127.0.0.1",
        at=datetime.now(UTC),
    )


async def test_a_record_already_stored_does_not_hold_back_the_rest(gateway: Gateway) -> None:
    log = ActionLog(gateway.rt.store)
    log.record(call("r1"), {})
    await log.flush()
    for rid in ("r2", "r1", "r3"):  # r1 again, e.g. a retried flush
        log.record(call(rid), {})
    await log.flush()
    streams = {e.stream_id for e in await gateway.rt.store.read_by_position(0, 100)}
    assert {"apicall-r1", "apicall-r2", "apicall-r3"} <= streams
    assert log.written == 3
