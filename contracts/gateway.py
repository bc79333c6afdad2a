"""The gateway's action log: one record per API call (a row, not an event)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict


class Outcome(StrEnum):
    succeeded = "succeeded"
    refused = "refused"  # a 4xx: bad input, no permission, limits
    failed = "failed"  # a 5xx


class ApiCall(BaseModel):
    """Who did what, when, through which credential, and how it ended."""

    model_config = ConfigDict(frozen=True)

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
