"""What happens to a suspended user's jobs: the process manager ``job-suspensions`` follows
identity's ``UserSuspended`` and, per ``RF_JOB_SUSPENDED_USER_JOBS``, kills every active job
of the user (``KillOwnerJobs``: ``JobKilled`` with cause ``user_suspended`` and the cancel
path, so the farm job stops and billing settles the cost), pauses them (``PauseOwnerJobs``:
``JobPaused`` with reason ``account_suspended``; the scheduler suspends the farm job), or
keeps them running. ``UserReactivated`` resumes the jobs paused for the suspension
(``ResumeOwnerJobs``, whatever the setting is by then)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from contracts.base import Event
from contracts.identity import UserReactivated, UserSuspended
from contracts.jobs import (
    KillOwnerJobs,
    OwnerJobsChanged,
    OwnerJobsKilled,
    PauseOwnerJobs,
    ResumeOwnerJobs,
)
from libs.process import Cause, ProcessManager, Send


class SuspendedUserJobs(StrEnum):
    """``RF_JOB_SUSPENDED_USER_JOBS``: what to do with a suspended user's active jobs."""

    #: Kill them through the cancel path (the default).
    cancel = "cancel"
    #: Pause them (the farm job suspended, nothing charged meanwhile) until reactivated.
    pause = "pause"
    #: Leave them running; only the user's access stops.
    keep = "keep"


class NoState(BaseModel):
    """The manager keeps no state: each suspension is answered on its own."""


class SuspensionProcess(ProcessManager[NoState]):
    name = "job-suspensions"
    subjects = (f"events.{UserSuspended.event_type}", f"events.{UserReactivated.event_type}")
    state_type = NoState

    def __init__(self, jobs: SuspendedUserJobs) -> None:
        self.jobs = jobs

    def key(self, event: Event) -> str | None:
        return None

    def evolve(self, state: NoState, event: Event) -> NoState:
        return state

    def policy(self, cause: Cause, state: NoState) -> list[Send]:
        event = cause.event
        match event:
            case UserReactivated():
                resume = ResumeOwnerJobs(owner_id=event.user_id, at=event.reactivated_at)
                return [Send(resume, OwnerJobsChanged)]
            case UserSuspended() if self.jobs is SuspendedUserJobs.cancel:
                kill = KillOwnerJobs(
                    owner_id=event.user_id,
                    reason=f"the account was suspended: {event.reason}"[:500],
                    killed_by=event.suspended_by,
                    at=event.suspended_at,
                )
                return [Send(kill, OwnerJobsKilled)]
            case UserSuspended() if self.jobs is SuspendedUserJobs.pause:
                pause = PauseOwnerJobs(owner_id=event.user_id, at=event.suspended_at)
                return [Send(pause, OwnerJobsChanged)]
        return []
