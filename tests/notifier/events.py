"""One trigger event of every notification kind (and the events naming their owners)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from contracts.base import Event
from contracts.billing import CostTotals, JobCostCapReached
from contracts.envelope import CostStatus
from contracts.jobs import (
    JobCompleted,
    JobFailed,
    JobKilled,
    JobPaused,
    JobStatus,
    JobSubmitted,
    JobTestRenderCompleted,
    KillCause,
)
from contracts.notifications import NotificationKind
from contracts.payments import PaymentFailed, TopUpCredited, TopUpOrdered
from contracts.uploads import UploadExpired
from contracts.wallet import CreditsHeld
from tests.fixtures import job_spec

AT = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def submitted(job_id: str, owner: str, api_key_id: str | None = None) -> JobSubmitted:
    spec = job_spec()
    return JobSubmitted.model_validate(
        {
            "job_id": job_id,
            "owner_id": owner,
            "name": "shot",
            "scene_key": "scenes/a.blend",
            "renderer": spec["renderer"],
            "frame_range": spec["frame_range"],
            "chunk_size": 1,
            "resolution": spec["resolution"],
            "render_settings": {},
            "priority": "normal",
            "cost_cap_credits": None,
            "submitted_at": AT,
            "api_key_id": api_key_id,
        }
    )


def ordered(order_id: str, user: str) -> TopUpOrdered:
    return TopUpOrdered(
        order_id=order_id,
        topup_id="top_1",
        user_id=user,
        amount_paise=50_000,
        currency="INR",
        credits=Decimal("500"),
        receipt="topup_top_1",
        at=AT,
    )


def owners(user: str, job_id: str, order_id: str, api_key_id: str | None = None) -> list[Event]:
    return [submitted(job_id, user, api_key_id), ordered(order_id, user)]


def triggers(user: str, job_id: str, order_id: str) -> dict[NotificationKind, Event]:
    """One trigger per kind, for ``user``'s job and order."""
    totals = CostTotals(
        status=CostStatus.cap_reached,
        estimate=None,
        cap_credits=Decimal("20.00"),
        held_credits=Decimal("20.00"),
        so_far_credits=Decimal("20.00"),
        captured_credits=Decimal(0),
        released_credits=Decimal(0),
    )
    return {
        NotificationKind.test_render_ready: JobTestRenderCompleted(
            job_id=job_id, render_id=f"{job_id}.test.1", at=AT
        ),
        NotificationKind.render_completed: JobCompleted(job_id=job_id, at=AT),
        NotificationKind.render_failed: JobFailed(
            job_id=job_id, reason="the farm gave up", code="render_failed", at=AT
        ),
        NotificationKind.job_paused: JobPaused(job_id=job_id, reason="insufficient_credits", at=AT),
        NotificationKind.job_stopped: JobCostCapReached(
            job_id=job_id, owner_id=user, totals=totals, at=AT
        ),
        NotificationKind.payment_succeeded: TopUpCredited(
            order_id=order_id,
            payment_id="pay_1",
            user_id=user,
            transfer_id="topup:pay_1",
            credits=Decimal("500.00"),
            at=AT,
        ),
        NotificationKind.payment_failed: PaymentFailed(
            order_id=order_id,
            payment_id="pay_2",
            error_code="BAD_REQUEST_ERROR",
            error_description="declined",
            at=AT,
        ),
        NotificationKind.balance_low: CreditsHeld(
            user_id=user,
            transfer_id="hold:job",
            at=AT,
            balance_after=Decimal("12.00"),
            held_after=Decimal("8.00"),
            hold_id="h1",
            job_id=job_id,
            amount=Decimal("8.00"),
            expires_at=AT,
        ),
        NotificationKind.upload_expired: UploadExpired(upload_id="upl_1", owner_id=user, at=AT),
        NotificationKind.job_killed: JobKilled(
            job_id=job_id,
            owner_id=user,
            job_name="shot_010",
            cause=KillCause.admin_kill,
            reason="runaway render",
            killed_by="usr_admin",
            status=JobStatus.rendering,
            at=AT,
        ),
    }
