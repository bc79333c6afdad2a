"""Errors any context or the gateway may answer with: requests, access, limits, failures."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails
from contracts.identity import Scope


class FieldProblem(ErrorDetails):
    loc: list[str | int] = Field(description="Where the problem is, e.g. [body, frame_range].")
    message: str = Field(description="What is wrong there.")
    type: str = Field(description="Machine-readable kind of problem, e.g. missing.")


class FieldProblems(ErrorDetails):
    errors: list[FieldProblem] = Field(description="Every problem found, in order.")


def field_problems(errors: Iterable[Mapping[str, Any]]) -> FieldProblems:
    """Details from pydantic's ``ValidationError.errors()``."""
    return FieldProblems(
        errors=[
            FieldProblem(
                loc=list(e.get("loc", ())), message=e.get("msg", ""), type=e.get("type", "")
            )
            for e in errors
        ]
    )


class RequiredScope(ErrorDetails):
    required_scope: Scope = Field(description="The scope the API key lacks.")


class RetryAfter(ErrorDetails):
    retry_after_seconds: int = Field(description="Seconds to wait; also in Retry-After.")


class ValidationFailed(DomainError[FieldProblems]):
    """Body, query or path parameters (or a command payload) are invalid."""

    code = "validation_failed"
    http_status = 422
    retryable = False
    Details = FieldProblems


class BadRequest(DomainError[None]):
    """The request could not be read at all (e.g. a body that does not parse)."""

    code = "bad_request"
    http_status = 400
    retryable = False
    Details = None


class Unauthenticated(DomainError[None]):
    """No credentials, or a malformed Authorization header."""

    code = "unauthenticated"
    http_status = 401
    retryable = False
    Details = None


class Forbidden(DomainError[None]):
    """The route needs a JWT session or an admin."""

    code = "forbidden"
    http_status = 403
    retryable = False
    Details = None


class InsufficientScope(DomainError[RequiredScope]):
    """The API key lacks a scope the operation needs."""

    code = "insufficient_scope"
    http_status = 403
    retryable = False
    Details = RequiredScope


class RateLimited(DomainError[RetryAfter]):
    """A rate limit was hit."""

    code = "rate_limited"
    http_status = 429
    retryable = True
    Details = RetryAfter


class IdempotencyKeyReused(DomainError[None]):
    """The Idempotency-Key (or command id) was used for another request."""

    code = "idempotency_key_reused"
    http_status = 422
    retryable = False
    Details = None


class IdempotencyInProgress(DomainError[None]):
    """A request with this Idempotency-Key is still running."""

    code = "idempotency_in_progress"
    http_status = 409
    retryable = True
    Details = None


class InvalidCursor(DomainError[None]):
    """The page cursor was not issued by us."""

    code = "invalid_cursor"
    http_status = 422
    retryable = False
    Details = None


class NotFound(DomainError[None]):
    """No such route."""

    code = "not_found"
    http_status = 404
    retryable = False
    Details = None


class MethodNotAllowed(DomainError[None]):
    """The route exists with other methods (listed in the Allow header)."""

    code = "method_not_allowed"
    http_status = 405
    retryable = False
    Details = None


class PayloadTooLarge(DomainError[None]):
    """The request body is larger than the server accepts."""

    code = "payload_too_large"
    http_status = 413
    retryable = False
    Details = None


class ConcurrencyConflict(DomainError[None]):
    """The resource kept changing under concurrent writers; a retry re-reads it."""

    code = "concurrency_conflict"
    http_status = 409
    retryable = True
    Details = None


class ServiceUnavailable(DomainError[None]):
    """A backing service did not answer in time."""

    code = "service_unavailable"
    http_status = 503
    retryable = True
    Details = None


class InternalError(DomainError[None]):
    """An unexpected failure."""

    code = "internal_error"
    http_status = 500
    retryable = True
    Details = None


class UnknownError(InternalError):
    """An error reply whose code this build does not know (from a newer peer).

    It keeps the peer's ``code`` string, ``message`` and ``retryable``; its status is 500 and
    its details are dropped (their schema is unknown here). Not registered: answered to an
    API client, it is an ``internal_error`` with the peer's message and retryable flag.
    """

    def __init__(self, code: str, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.code = code
        self.retryable = retryable
