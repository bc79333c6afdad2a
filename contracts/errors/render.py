"""Errors of the render context (the Deadline bridge)."""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails


class RenderRef(ErrorDetails):
    render_id: str = Field(description="The render's id.")


class FarmStatus(ErrorDetails):
    farm_status: int | None = Field(description="HTTP status of the farm; null if unreachable.")


class RenderNotFound(DomainError[RenderRef]):
    """No such render."""

    code = "render_not_found"
    http_status = 404
    retryable = False
    Details = RenderRef


class FarmUnavailable(DomainError[FarmStatus]):
    """The render farm did not answer as expected."""

    code = "farm_unavailable"
    http_status = 503
    retryable = True
    Details = FarmStatus
