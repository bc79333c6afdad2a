"""The error shape on the wire: ``ErrorCode`` built from the registry, ``ErrorBody``, decoding.

Importing this module imports every context's errors and then freezes the registry, so
``ErrorCode`` lists every code there is.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from contracts.errors import (  # noqa: F401  (declare errors)
    common,
    identity,
    jobs,
    operations,
    outputs,
    render,
    scenes,
    uploads,
)
from contracts.errors.base import ERRORS, DomainError
from contracts.errors.common import InternalError, UnknownError

ERRORS.freeze()

if TYPE_CHECKING:  # mypy cannot see the members of an enum built at run time
    ErrorCode = StrEnum
else:
    ErrorCode = StrEnum("ErrorCode", [(c, c) for c in ERRORS.codes()], module=__name__)
    ErrorCode.__doc__ = (
        "Stable, machine-readable error codes. Never rename one: clients branch on them."
    )


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: a stable code, a human message, and whether retrying can help."""

    model_config = ConfigDict(extra="forbid")

    code: ErrorCode = Field(description="Stable machine-readable error code.")
    message: str = Field(description="Human-readable explanation of what went wrong.")
    retryable: bool = Field(description="True when repeating the same request later may succeed.")
    details: dict[str, Any] | None = Field(
        default=None,
        description="Structured context whose schema depends on code; null if none.",
    )
    trace_id: str | None = Field(
        default=None, description="Trace id of the request, for support and log search."
    )

    @classmethod
    def of(cls, err: DomainError[Any], trace_id: str | None = None) -> ErrorBody:
        """The body of ``err``; an :class:`UnknownError` goes out as ``internal_error``."""
        code = InternalError.code if isinstance(err, UnknownError) else err.code
        return cls(
            code=ErrorCode(code),
            message=err.message,
            retryable=err.retryable,
            details=err.details_json(),
            trace_id=trace_id,
        )


def error_from_body(body: Mapping[str, Any]) -> DomainError[Any]:
    """Rebuild the error of an ``ErrorBody`` (as JSON data): its class, with typed details.

    A code this build does not know, or details that do not fit its class's model (a newer
    peer's), give an :class:`UnknownError` that keeps the code, message and retryable flag.
    """
    code, message = str(body.get("code")), str(body.get("message", ""))
    cls = ERRORS.get(code)
    if cls is not None:
        try:
            if cls.Details is None:
                return cls(message)
            return cls(message, cls.Details.model_validate(body.get("details") or {}))
        except ValidationError:
            pass
    return UnknownError(code, message, bool(body.get("retryable", True)))
