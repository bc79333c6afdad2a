"""Errors of the operators' views and actions (``/v1/admin/quarantine``)."""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails


class QuarantinedStreamRef(ErrorDetails):
    schema_name: str = Field(description="The owning service's schema.")
    projection: str = Field(description="The projection.")
    stream_id: str = Field(description="The stream.")


class QuarantinedStreamNotFound(DomainError[QuarantinedStreamRef]):
    """No service with that schema declares that projection, or the stream is not
    quarantined there."""

    code = "quarantined_stream_not_found"
    http_status = 404
    retryable = False
    Details = QuarantinedStreamRef
