"""Errors of output delivery (the upload service's outputs)."""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails
from contracts.outputs import OutputStatus


class OutputRef(ErrorDetails):
    output_id: str = Field(description="The output's id.")


class OutputStatusRef(ErrorDetails):
    output_id: str = Field(description="The output's id.")
    status: OutputStatus = Field(description="The output's current status.")


class OutputNotFound(DomainError[OutputRef]):
    """No such output among the caller's outputs (another user's output answers the same)."""

    code = "output_not_found"
    http_status = 404
    retryable = False
    Details = OutputRef


class OutputDeleted(DomainError[OutputRef]):
    """The output's retention ended and it was deleted from storage."""

    code = "output_deleted"
    http_status = 410
    retryable = False
    Details = OutputRef


class OutputNotReady(DomainError[OutputStatusRef]):
    """The output cannot be downloaded yet (an archive being built) or at all (one whose
    building failed)."""

    code = "output_not_ready"
    http_status = 409
    retryable = True
    Details = OutputStatusRef
