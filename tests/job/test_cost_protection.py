"""Cost protection on the job aggregate and its view, without I/O: pausing (before the
scene is staged, queued or while rendering), resuming to where it was paused from, a stop
for the cost cap that ends the job failed with its code (at once, or once the farm
stopped), and billing's totals recorded in any status and shown in the envelope."""

from __future__ import annotations

from decimal import Decimal

import pytest

from contracts.base import Event
from contracts.envelope import AwaitingReason, CostStatus, EstimateUnknownReason, EtaUnknownReason
from contracts.errors import InvalidStateTransition, JobCancelling, JobFinished
from contracts.jobs import (
    ACCOUNT_SUSPENDED,
    JobAction,
    JobCostRecorded,
    JobStatus,
    StepName,
    StepStatus,
)
from services.job.domain import Job
from services.job.views import JobView
from tests.job.test_domain import (
    NOW,
    STAGED_KEY,
    cancelling,
    queued,
    record,
    refused,
    rendering,
    staged,
    staging,
    submitted,
    types,
)

S = JobStatus
CAP = "cost_cap_reached"
CAP_REASON = "the job's cost reached its cap of 100.00 credits"


def status_of(job: Job) -> JobStatus | None:
    """The job's status now (a call, so each assertion reads it afresh)."""
    return job.status


def view_of(job: Job) -> JobView:
    """The jobs read model's view folded from every event the job recorded."""
    events: list[Event] = list(job.pending)
    view = JobView.submitted(events[0])  # type: ignore[arg-type]
    for e in events[1:]:
        view = JobView.model_validate_json(view.model_dump_json())  # stored between events
        view.apply(e)
    return view


def cost(version: int, status: str = "held", **kw: object) -> JobCostRecorded:
    fields: dict[str, object] = {
        "job_id": "job_1",
        "cost_version": version,
        "status": status,
        "estimate_credits": Decimal("40.00"),
        "estimate_low_credits": Decimal("30.00"),
        "estimate_high_credits": Decimal("55.00"),
        "held_credits": Decimal("60.50"),
        "so_far_credits": Decimal("0.00"),
        "captured_credits": Decimal("0.00"),
        "awaiting_reason": None,
        "at": NOW,
    }
    return JobCostRecorded.model_validate({**fields, **kw})


# -- pausing and resuming -------------------------------------------------------------------


def test_a_job_whose_first_hold_was_refused_is_paused_before_staging_and_resumes_submitted() -> (
    None
):
    job = submitted()
    assert types(job.pause("insufficient_credits", NOW)) == ["JobPaused"]
    assert status_of(job) is S.paused
    assert types(job.resume(NOW)) == ["JobResumed"]
    assert status_of(job) is S.submitted
    assert types(job.start_staging(NOW)) == ["JobStepStarted"]  # staged only now
    assert status_of(job) is S.preparing


def test_a_job_paused_while_its_scene_is_staged_resumes_preparing() -> None:
    job = staging()
    job.pause("spend_cap_reached", NOW)
    assert status_of(job) is S.paused
    job.resume(NOW)
    assert status_of(job) is S.preparing


def test_a_job_paused_before_it_was_queued_is_not_queued_until_resumed() -> None:
    job = staged()
    job.pause("insufficient_credits", NOW)
    assert refused(job.queue, "skip", NOW) is InvalidStateTransition
    job.resume(NOW)
    job.record_prepared(STAGED_KEY, "not a .blend file", NOW)
    assert types(job.queue("skip", NOW))[-1] == "JobQueued"


def test_a_queued_job_resumes_queued_and_a_rendering_one_rendering() -> None:
    waiting = queued()
    waiting.pause("insufficient_credits", NOW)
    waiting.resume(NOW)
    assert status_of(waiting) is S.queued

    busy = rendering()
    busy.pause("insufficient_credits", NOW)
    assert status_of(busy) is S.paused
    busy.resume(NOW)
    assert status_of(busy) is S.rendering


def test_a_paused_render_still_records_late_tasks_and_may_complete() -> None:
    job = rendering()
    job.pause("insufficient_credits", NOW)
    assert types(record(job, 0)) == ["JobFramesRendered"]
    assert status_of(job) is S.paused
    assert types(job.complete(NOW)) == ["JobResumed", "JobStepSucceeded", "JobCompleted"]


def test_pausing_a_paused_job_and_resuming_a_job_that_is_not_paused_change_nothing() -> None:
    job = rendering()
    job.pause("insufficient_credits", NOW)
    assert job.pause("spend_cap_reached", NOW) == []
    assert rendering().resume(NOW) == []


def test_an_ended_or_cancelling_job_is_not_paused_and_says_why() -> None:
    done = rendering()
    done.complete(NOW)
    assert refused(done.pause, "insufficient_credits", NOW) is JobFinished
    assert refused(cancelling().pause, "insufficient_credits", NOW) is JobCancelling
    assert done.resume(NOW) == []


def test_a_paused_view_says_so_with_no_eta_and_lets_the_client_update_or_cancel() -> None:
    job = rendering()
    job.pause("insufficient_credits", NOW)
    envelope = view_of(job).envelope(job.version, NOW)
    assert envelope.status is S.paused
    assert envelope.eta.reason is EtaUnknownReason.paused
    assert envelope.allowed_actions == [JobAction.update, JobAction.cancel]
    job.resume(NOW)
    assert view_of(job).envelope(job.version, NOW).status is S.rendering


def test_the_view_resumes_a_job_paused_before_staging_to_where_it_was() -> None:
    job = submitted()
    job.pause("insufficient_credits", NOW)
    job.resume(NOW)
    assert view_of(job).status is S.submitted


def test_cancelling_a_job_paused_before_it_was_queued_is_at_once() -> None:
    job = submitted()
    job.pause("insufficient_credits", NOW)
    assert types(job.cancel(None, NOW)) == ["JobCancellationRequested", "JobCancelled"]
    assert status_of(job) is S.cancelled


def test_cancelling_a_job_paused_on_the_farm_waits_for_the_farm() -> None:
    job = rendering()
    job.pause("insufficient_credits", NOW)
    assert types(job.cancel(None, NOW)) == ["JobCancellationRequested"]
    assert status_of(job) is S.cancelling


# -- stopping for the cost cap --------------------------------------------------------------


@pytest.mark.parametrize("make", [queued, rendering], ids=["queued", "rendering"])
def test_a_stop_on_the_farm_waits_for_the_farm_then_fails_with_the_code(make: object) -> None:
    assert callable(make)
    job: Job = make()
    stopped = job.stop(CAP, CAP_REASON, NOW)
    assert types(stopped) == ["JobCancellationRequested"]
    assert stopped[0].code == CAP  # type: ignore[attr-defined]
    assert status_of(job) is S.cancelling
    ended = job.confirm_cancelled(NOW)
    assert types(ended)[-1] == "JobFailed"
    assert status_of(job) is S.failed
    envelope = view_of(job).envelope(job.version, NOW)
    assert (envelope.status, envelope.failure_code) == (S.failed, CAP)
    assert envelope.failure_reason == CAP_REASON


def test_a_stop_of_a_rendering_job_fails_its_render_step_with_the_code() -> None:
    job = rendering()
    job.stop(CAP, CAP_REASON, NOW)
    job.confirm_cancelled(NOW)
    render = next(s for s in view_of(job).steps if s.name is StepName.render)
    assert (render.status, render.error_code) == (StepStatus.failed, CAP)


def test_a_stop_with_nothing_on_the_farm_fails_the_job_at_once() -> None:
    job = submitted()
    job.pause("insufficient_credits", NOW)
    assert types(job.stop(CAP, CAP_REASON, NOW)) == ["JobCancellationRequested", "JobFailed"]
    assert (status_of(job), job.failure_reason) == (S.failed, CAP_REASON)


def test_a_stop_of_a_staging_job_fails_the_staging_step_too() -> None:
    job = staging()
    assert types(job.stop(CAP, CAP_REASON, NOW)) == [
        "JobCancellationRequested",
        "JobStepFailed",
        "JobFailed",
    ]
    assert job.step(StepName.stage_scene).status is StepStatus.failed


def test_a_stop_of_an_ended_or_stopping_job_changes_nothing() -> None:
    job = rendering()
    job.stop(CAP, CAP_REASON, NOW)
    assert job.stop(CAP, CAP_REASON, NOW) == []
    job.confirm_cancelled(NOW)
    assert job.stop(CAP, CAP_REASON, NOW) == []


def test_a_cancel_asked_by_the_owner_still_ends_cancelled() -> None:
    job = cancelling()
    assert types(job.confirm_cancelled(NOW)) == ["JobCancelled"]


# -- the job's money ------------------------------------------------------------------------


def test_before_billing_records_anything_the_cost_is_pending_and_not_estimated() -> None:
    block = view_of(submitted()).envelope(1, NOW).cost
    assert block.status is CostStatus.pending
    assert block.estimate_unknown_reason is EstimateUnknownReason.not_estimated_yet
    assert block.held_credits == block.so_far_credits == block.captured_credits == Decimal(0)


def test_the_envelope_shows_billings_latest_totals() -> None:
    job = rendering()
    job.record_cost(cost(1))
    job.record_cost(cost(2, so_far_credits=Decimal("12.25")))
    block = view_of(job).envelope(job.version, NOW).cost
    assert block.status is CostStatus.held
    assert (block.estimate_low_credits, block.estimate_credits, block.estimate_high_credits) == (
        Decimal("30.00"),
        Decimal("40.00"),
        Decimal("55.00"),
    )
    assert (block.held_credits, block.so_far_credits) == (Decimal("60.50"), Decimal("12.25"))
    assert block.estimate_unknown_reason is None
    assert block.cap_credits is None


def test_an_older_or_repeated_cost_changes_nothing() -> None:
    job = rendering()
    job.record_cost(cost(3, so_far_credits=Decimal("5.00")))
    assert job.record_cost(cost(3)) == []
    assert job.record_cost(cost(2, so_far_credits=Decimal("1.00"))) == []
    assert view_of(job).envelope(job.version, NOW).cost.so_far_credits == Decimal("5.00")


def test_a_job_awaiting_credits_shows_why() -> None:
    job = submitted()
    job.record_cost(
        cost(1, "awaiting_credits", held_credits=Decimal(0), awaiting_reason="spend_cap_reached")
    )
    job.pause("spend_cap_reached", NOW)
    block = view_of(job).envelope(job.version, NOW).cost
    assert (block.status, block.awaiting_reason) == (
        CostStatus.awaiting_credits,
        AwaitingReason.spend_cap_reached,
    )


def test_without_prices_the_estimate_says_so() -> None:
    job = submitted()
    job.record_cost(
        cost(1, estimate_credits=None, estimate_low_credits=None, estimate_high_credits=None)
    )
    block = view_of(job).envelope(job.version, NOW).cost
    assert block.estimate_unknown_reason is EstimateUnknownReason.no_prices


def test_settlement_is_recorded_after_the_job_ended() -> None:
    job = rendering()
    job.stop(CAP, CAP_REASON, NOW)
    job.confirm_cancelled(NOW)
    settled = cost(9, "settled", held_credits=Decimal(0), captured_credits=Decimal("100.00"))
    assert types(job.record_cost(settled)) == ["JobCostRecorded"]
    block = view_of(job).envelope(job.version, NOW).cost
    assert (block.status, block.captured_credits) == (CostStatus.settled, Decimal("100.00"))


def test_a_cost_status_the_view_does_not_know_keeps_the_last_one() -> None:
    job = submitted()
    job.record_cost(cost(1))
    job.record_cost(cost(2, "refunded_later", awaiting_reason="gremlins"))
    block = view_of(job).envelope(job.version, NOW).cost
    assert (block.status, block.awaiting_reason) == (CostStatus.held, None)


# -- paused for the owner's suspension ------------------------------------------------------


def test_a_job_paused_for_its_owners_suspension_resumes_only_on_the_reactivation() -> None:
    job = rendering()
    assert types(job.pause_for_suspension(NOW)) == ["JobPaused"]
    assert job.paused_reason == ACCOUNT_SUSPENDED
    assert job.resume(NOW) == []  # a hold placed meanwhile does not resume it
    assert job.pause_for_suspension(NOW) == []  # suspended twice: paused once
    assert types(job.resume(NOW, reactivated=True)) == ["JobResumed"]
    assert status_of(job) is S.rendering and view_of(job).status is S.rendering


def test_a_suspension_takes_over_a_pause_for_credits_and_the_view_resumes_where_it_was() -> None:
    job = rendering()
    job.pause("insufficient_credits", NOW)
    assert types(job.pause_for_suspension(NOW)) == ["JobPaused"]
    assert job.resume(NOW) == []  # credits came back: the suspension still holds it
    assert types(job.resume(NOW, reactivated=True)) == ["JobResumed"]
    assert status_of(job) is S.rendering and view_of(job).status is S.rendering


def test_the_reactivation_does_not_resume_a_job_paused_for_credits() -> None:
    job = queued()
    job.pause("insufficient_credits", NOW)
    assert job.resume(NOW, reactivated=True) == []
    assert status_of(job) is S.paused


def test_a_job_that_cannot_be_paused_is_left_as_it_is_by_a_suspension() -> None:
    assert cancelling().pause_for_suspension(NOW) == []
