"""The one error shape every API answer and every command reply uses."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ErrorCode(StrEnum):
    """Stable, machine-readable error codes. Never rename one: clients branch on them."""

    validation_failed = "validation_failed"
    invalid_frame_range = "invalid_frame_range"
    unauthenticated = "unauthenticated"
    invalid_token = "invalid_token"
    token_expired = "token_expired"
    invalid_api_key = "invalid_api_key"
    api_key_revoked = "api_key_revoked"
    invalid_credentials = "invalid_credentials"
    user_not_approved = "user_not_approved"
    refresh_token_invalid = "refresh_token_invalid"
    refresh_token_reused = "refresh_token_reused"
    forbidden = "forbidden"
    insufficient_scope = "insufficient_scope"
    email_taken = "email_taken"
    user_not_found = "user_not_found"
    user_already_approved = "user_already_approved"
    api_key_not_found = "api_key_not_found"
    job_not_found = "job_not_found"
    job_limit_reached = "job_limit_reached"
    job_not_editable = "job_not_editable"
    job_finished = "job_finished"
    invalid_state_transition = "invalid_state_transition"
    concurrency_conflict = "concurrency_conflict"
    rate_limited = "rate_limited"
    idempotency_key_reused = "idempotency_key_reused"
    idempotency_in_progress = "idempotency_in_progress"
    invalid_cursor = "invalid_cursor"
    not_found = "not_found"
    method_not_allowed = "method_not_allowed"
    service_unavailable = "service_unavailable"
    internal_error = "internal_error"


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.validation_failed: 422,
    ErrorCode.invalid_frame_range: 422,
    ErrorCode.unauthenticated: 401,
    ErrorCode.invalid_token: 401,
    ErrorCode.token_expired: 401,
    ErrorCode.invalid_api_key: 401,
    ErrorCode.api_key_revoked: 401,
    ErrorCode.invalid_credentials: 401,
    ErrorCode.user_not_approved: 403,
    ErrorCode.refresh_token_invalid: 401,
    ErrorCode.refresh_token_reused: 401,
    ErrorCode.forbidden: 403,
    ErrorCode.insufficient_scope: 403,
    ErrorCode.email_taken: 409,
    ErrorCode.user_not_found: 404,
    ErrorCode.user_already_approved: 409,
    ErrorCode.api_key_not_found: 404,
    ErrorCode.job_not_found: 404,
    ErrorCode.job_limit_reached: 409,
    ErrorCode.job_not_editable: 409,
    ErrorCode.job_finished: 409,
    ErrorCode.invalid_state_transition: 409,
    ErrorCode.concurrency_conflict: 409,
    ErrorCode.rate_limited: 429,
    ErrorCode.idempotency_key_reused: 422,
    ErrorCode.idempotency_in_progress: 409,
    ErrorCode.invalid_cursor: 422,
    ErrorCode.not_found: 404,
    ErrorCode.method_not_allowed: 405,
    ErrorCode.service_unavailable: 503,
    ErrorCode.internal_error: 500,
}

RETRYABLE: frozenset[ErrorCode] = frozenset(
    {
        ErrorCode.concurrency_conflict,
        ErrorCode.rate_limited,
        ErrorCode.idempotency_in_progress,
        ErrorCode.service_unavailable,
        ErrorCode.internal_error,
    }
)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code, a human message, and whether retrying can help."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode = Field(description="Stable machine-readable error code.")
    message: str = Field(description="Human-readable explanation of what went wrong.")
    retryable: bool = Field(description="True when repeating the same request later may succeed.")
    details: dict[str, Any] | None = Field(
        default=None, description="Structured context, e.g. the invalid fields; null if none."
    )
    trace_id: str | None = Field(
        default=None, description="Trace id of the request, for support and log search."
    )


class DomainError(Exception):
    """Raised by domain and command code; carried over NATS and rendered by the gateway."""

    def __init__(
        self, code: ErrorCode, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def body(self, trace_id: str | None = None) -> ErrorBody:
        return ErrorBody(
            code=self.code,
            message=self.message,
            retryable=self.retryable,
            details=self.details,
            trace_id=trace_id,
        )
