"""Events of the gateway: the action log (one event per API call)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from contracts.base import EVENTS, Event


class Outcome(StrEnum):
    succeeded = "succeeded"
    refused = "refused"  # a 4xx: bad input, no permission, limits
    failed = "failed"  # a 5xx


@EVENTS.register
class ApiCallRecorded(Event):
    """Who did what, when, through which credential, and how it ended (stream ``apicall-<id>``)."""

    event_type = "gateway.ApiCallRecorded"
    request_id: str
    operation_id: str | None
    method: str
    path: str
    user_id: str | None
    api_key_id: str | None
    target_ids: dict[str, str]
    status_code: int
    outcome: Outcome
    error_code: str | None
    latency_ms: float
    trace_id: str | None
    client_ip: str | None
    at: datetime
