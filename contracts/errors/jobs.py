"""Errors of the job context."""

from __future__ import annotations

from pydantic import ConfigDict, Field

from contracts.errors.base import DomainError, ErrorDetails
from contracts.errors.common import FieldProblems
from contracts.jobs import JobStatus


class JobRef(ErrorDetails):
    job_id: str = Field(description="The job's id.")


class JobStatusRef(ErrorDetails):
    status: JobStatus = Field(description="The job's current status.")


class JobLimit(ErrorDetails):
    active_jobs: int = Field(description="The caller's active jobs now.")
    limit: int = Field(description="Most active jobs allowed.")


class JobTransition(ErrorDetails):
    model_config = ConfigDict(
        frozen=True, extra="ignore", validate_by_name=True, serialize_by_alias=True
    )

    from_: JobStatus | None = Field(alias="from", description="The job's status (null if new).")
    to: JobStatus | None = Field(
        default=None, description="The status it cannot move to; null for no particular one."
    )


class InvalidFrameRange(DomainError[FieldProblems]):
    """frame_range.end is before start, or the range has too many frames."""

    code = "invalid_frame_range"
    http_status = 422
    retryable = False
    Details = FieldProblems


class JobNotFound(DomainError[JobRef]):
    """No such job among the caller's jobs."""

    code = "job_not_found"
    http_status = 404
    retryable = False
    Details = JobRef


class JobIdTaken(DomainError[JobRef]):
    """A job with this id exists already; the same submission will never succeed."""

    code = "job_id_taken"
    http_status = 409
    retryable = False
    Details = JobRef


class JobLimitReached(DomainError[JobLimit]):
    """Too many active jobs."""

    code = "job_limit_reached"
    http_status = 409
    retryable = False
    Details = JobLimit


class JobNotEditable(DomainError[JobStatusRef]):
    """The change is not allowed in the job's current status."""

    code = "job_not_editable"
    http_status = 409
    retryable = False
    Details = JobStatusRef


class JobFinished(DomainError[JobStatusRef]):
    """The job has completed, failed or been cancelled."""

    code = "job_finished"
    http_status = 409
    retryable = False
    Details = JobStatusRef


class JobCancelling(DomainError[JobRef]):
    """The job is being cancelled: it takes no changes and is not queued."""

    code = "job_cancelling"
    http_status = 409
    retryable = False
    Details = JobRef


class InvalidStateTransition(DomainError[JobTransition]):
    """A command would break the job state machine (an internal guard)."""

    code = "invalid_state_transition"
    http_status = 409
    retryable = False
    Details = JobTransition


class JobViewCatchingUp(DomainError[JobRef]):
    """The job changed, but the view served to clients does not show it yet: retry to read it."""

    code = "job_view_catching_up"
    http_status = 503
    retryable = True
    Details = JobRef


class TestRenderState(ErrorDetails):
    __test__ = False  # not a pytest test class

    job_id: str = Field(description="The job.")
    render_id: str = Field(description="The test render in progress.")
    status: str = Field(description="Its status: requested or rendering.")


class TestRenderInProgress(DomainError[TestRenderState]):
    """The job has a test render that has not ended: ask again once it has."""

    __test__ = False  # not a pytest test class

    code = "test_render_in_progress"
    http_status = 409
    retryable = False
    Details = TestRenderState


class TestRenderNotAllowed(DomainError[JobStatusRef]):
    """A test render is possible only before the full render is queued."""

    __test__ = False  # not a pytest test class

    code = "test_render_not_allowed"
    http_status = 409
    retryable = False
    Details = JobStatusRef
