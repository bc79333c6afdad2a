"""The job service's answer to a suspended user (``services/job/suspensions.py``): kill their
active jobs, pause them until the reactivation, or keep them, per
``RF_JOB_SUSPENDED_USER_JOBS``. The policy alone; the kill on
real servers is in ``tests/gateway/test_admin_ops.py`` and, through the farm, in
``tests/render/test_admin_render.py``."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from contracts.base import Event
from contracts.identity import UserReactivated, UserStatus, UserSuspended
from contracts.jobs import (
    KillOwnerJobs,
    OwnerJobsChanged,
    OwnerJobsKilled,
    PauseOwnerJobs,
    ResumeOwnerJobs,
)
from libs.process import Cause
from services.job.settings import JobSettings
from services.job.suspensions import NoState, SuspendedUserJobs, SuspensionProcess

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SUSPENDED = UserSuspended(
    user_id="usr_1", reason="chargebacks", suspended_by="usr_admin", suspended_at=NOW
)


def cause(event: Event) -> Cause:
    return Cause(event=event, event_id=uuid.uuid4(), recorded_at=NOW, correlation_id=None)


def test_a_suspension_kills_the_users_active_jobs_by_default() -> None:
    assert JobSettings().suspended_user_jobs is SuspendedUserJobs.cancel
    [send] = SuspensionProcess(SuspendedUserJobs.cancel).policy(cause(SUSPENDED), NoState())
    assert send.command == KillOwnerJobs(
        owner_id="usr_1",
        reason="the account was suspended: chargebacks",
        killed_by="usr_admin",
        at=NOW,
    )
    assert send.reply is OwnerJobsKilled


def test_kept_jobs_are_left_running() -> None:
    assert SuspensionProcess(SuspendedUserJobs.keep).policy(cause(SUSPENDED), NoState()) == []


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RF_JOB_SUSPENDED_USER_JOBS", "keep")
    assert JobSettings().suspended_user_jobs is SuspendedUserJobs.keep


def test_paused_jobs_are_paused_for_the_suspension() -> None:
    [send] = SuspensionProcess(SuspendedUserJobs.pause).policy(cause(SUSPENDED), NoState())
    assert send.command == PauseOwnerJobs(owner_id="usr_1", at=NOW)
    assert send.reply is OwnerJobsChanged


@pytest.mark.parametrize("setting", list(SuspendedUserJobs))
def test_the_reactivation_resumes_what_the_suspension_paused_whatever_the_setting(
    setting: SuspendedUserJobs,
) -> None:
    reactivated = UserReactivated(
        user_id="usr_1", reactivated_by="usr_admin", reactivated_at=NOW, status=UserStatus.active
    )
    [send] = SuspensionProcess(setting).policy(cause(reactivated), NoState())
    assert send.command == ResumeOwnerJobs(owner_id="usr_1", at=NOW)
