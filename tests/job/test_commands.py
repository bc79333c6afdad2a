"""The job service's command handlers on the in-memory unit of work (no servers): what a
handler records, the owner's slot taken and freed in the same append, and history that
still loads after a rule was tightened."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from contracts.errors import (
    DomainError,
    InvalidStateTransition,
    JobLimitReached,
    JobNotFound,
)
from contracts.jobs import (
    CancelJob,
    CompleteJob,
    FrameRange,
    JobAccepted,
    JobSpec,
    JobStatus,
    KillJob,
    KillOwnerJobs,
    OwnerJobsKilled,
    PauseJob,
    QueueJob,
    RecordJobCost,
    RecordScenePrepared,
    RecordSceneStaged,
    Resolution,
    ResumeJob,
    StartJobRender,
    StopJob,
    SubmitJob,
)
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.store import Position
from libs.eventstore.uow import UnitOfWork
from services.job.commands import JobCommands
from services.job.domain import TRANSITIONS, Job, OwnerJobs
from services.job.settings import JobSettings
from tests.fixtures import SCENE_ID, scene_ref

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SPEC = JobSpec(
    name="shot_020",
    scene_id=SCENE_ID,
    frame_range=FrameRange(start=1, end=8),
    chunk_size=2,
    resolution=Resolution(width=1280, height=720),
)


def submission(job_id: str) -> SubmitJob:
    return SubmitJob(job_id=job_id, owner_id="usr_1", spec=SPEC, scene=scene_ref())


def staged(job_id: str) -> RecordSceneStaged:
    return RecordSceneStaged(job_id=job_id, scene_key="staged/x/main.blend", reused=False, at=NOW)


def prepared(job_id: str) -> RecordScenePrepared:
    """The workers could not rewrite the scene: repath and settings skipped."""
    reason = "not a .blend file"
    return RecordScenePrepared(
        job_id=job_id, scene_key="staged/x/main.blend", skip_reason=reason, at=NOW
    )


async def ready(store: InMemoryEventStore, commands: JobCommands, job_id: str) -> None:
    """Submitted, staged and prepared: the job may be queued."""
    await run(store, commands.submit, submission(job_id))
    await run(store, commands.record_staged, staged(job_id))
    await run(store, commands.record_prepared, prepared(job_id))


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore("job")


@pytest.fixture
def commands() -> JobCommands:
    return JobCommands(JobSettings(active_job_limit=2))


async def run(store: InMemoryEventStore, handler: object, cmd: object) -> object:
    """One command as the command server runs it: a unit of work, the handler, a commit."""
    uow = UnitOfWork(store, metadata={"actor": {"kind": "user", "id": "usr_1"}})
    reply = await handler(cmd, uow)  # type: ignore[operator]
    await uow.commit()
    return reply


async def load(store: InMemoryEventStore, cls: type[Job] | type[OwnerJobs], key: str) -> object:
    return await UnitOfWork(store).get(cls, key)


async def test_submitting_records_the_job_and_takes_a_slot_in_one_append(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await run(store, commands.submit, submission("job_1"))
    feed = await store.read_all(Position.start())
    assert sorted((e.stream_id, e.event_type) for e in feed) == [
        ("job-job_1", "job.JobSubmitted"),
        ("owner-usr_1", "job.JobSlotTaken"),
    ]
    assert len({e.tx_id for e in feed}) == 1  # one atomic write
    assert {e.metadata["actor"]["id"] for e in feed} == {"usr_1"}


async def test_the_job_limit_refuses_a_third_active_job_and_records_nothing(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    for n in (1, 2):
        await run(store, commands.submit, submission(f"job_{n}"))
    with pytest.raises(DomainError) as refused:
        await run(store, commands.submit, submission("job_3"))
    assert type(refused.value) is JobLimitReached
    assert await store.read_stream("job-job_3") == []


async def test_a_job_that_ends_frees_its_owners_slot_in_the_same_append(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await ready(store, commands, "job_1")
    await run(store, commands.queue, QueueJob(job_id="job_1", skip_reason="none yet"))
    await run(store, commands.start_render, StartJobRender(job_id="job_1", render_id="r", at=NOW))
    reply = await run(store, commands.complete, CompleteJob(job_id="job_1", at=NOW))
    owner = await load(store, OwnerJobs, "usr_1")
    assert isinstance(owner, OwnerJobs) and owner.active == []
    [freed] = await store.read_stream("owner-usr_1", after_version=1)
    [completed] = (await store.read_stream("job-job_1"))[-1:]
    assert freed.tx_id == completed.tx_id and completed.event_type == "job.JobCompleted"
    assert getattr(reply, "version", None) == completed.version


async def test_an_admin_kill_records_who_and_why_with_the_cancel(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await ready(store, commands, "job_1")
    await run(store, commands.queue, QueueJob(job_id="job_1", skip_reason="none yet"))
    await run(store, commands.kill, KillJob(job_id="job_1", reason="abuse"))
    events = (await store.read_stream("job-job_1"))[-2:]
    assert [e.event_type for e in events] == ["job.JobKilled", "job.JobCancellationRequested"]
    killed = events[0].data
    assert (killed["cause"], killed["killed_by"], killed["status"]) == (
        "admin_kill",
        "usr_1",  # the actor of the command (the admin, from the gateway)
        "queued",
    )
    assert (killed["owner_id"], killed["job_name"], killed["reason"]) == (
        "usr_1",
        "shot_020",
        "abuse",
    )
    job = await load(store, Job, "job_1")
    assert isinstance(job, Job) and job.status is JobStatus.cancelling  # the farm confirms
    before = len(await store.read_stream("job-job_1"))
    await run(store, commands.kill, KillJob(job_id="job_1", reason="again"))
    assert len(await store.read_stream("job-job_1")) == before  # being cancelled: no change


async def test_killing_an_owners_jobs_kills_every_active_one_in_one_append(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await run(store, commands.submit, submission("job_1"))
    await ready(store, commands, "job_2")
    await run(store, commands.queue, QueueJob(job_id="job_2", skip_reason="none yet"))
    cmd = KillOwnerJobs(owner_id="usr_1", reason="suspended", killed_by="usr_admin", at=NOW)
    reply = await run(store, commands.kill_owner_jobs, cmd)
    assert reply == OwnerJobsKilled(owner_id="usr_1", job_ids=["job_1", "job_2"])
    first = await load(store, Job, "job_1")
    second = await load(store, Job, "job_2")
    assert isinstance(first, Job) and first.status is JobStatus.cancelled  # nothing on the farm
    assert isinstance(second, Job) and second.status is JobStatus.cancelling
    owner = await load(store, OwnerJobs, "usr_1")
    assert isinstance(owner, OwnerJobs) and owner.active == ["job_2"]  # until the farm stops
    again = await run(store, commands.kill_owner_jobs, cmd)
    assert again == OwnerJobsKilled(owner_id="usr_1", job_ids=[])  # being cancelled already
    [killed] = [e for e in await store.read_stream("job-job_1") if e.event_type == "job.JobKilled"]
    assert (killed.data["cause"], killed.data["killed_by"]) == ("user_suspended", "usr_admin")


async def test_someone_elses_job_is_not_found(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await run(store, commands.submit, submission("job_1"))
    with pytest.raises(DomainError) as refused:
        await run(store, commands.cancel, CancelJob(job_id="job_1", owner_id="usr_2"))
    assert type(refused.value) is JobNotFound


async def test_history_still_loads_after_a_transition_rule_is_tightened(
    store: InMemoryEventStore, commands: JobCommands, monkeypatch: pytest.MonkeyPatch
) -> None:
    await ready(store, commands, "job_1")
    await run(store, commands.queue, QueueJob(job_id="job_1", skip_reason="none yet"))
    await run(store, commands.complete, CompleteJob(job_id="job_1", at=NOW))
    # A later release forbids completing straight from rendering: old streams did just that.
    monkeypatch.setitem(TRANSITIONS, JobStatus.rendering, frozenset({JobStatus.failed}))
    job = await load(store, Job, "job_1")
    assert isinstance(job, Job) and job.status is JobStatus.completed and job.version == 13
    # The tightened rule holds for new decisions.
    await ready(store, commands, "job_2")
    await run(store, commands.queue, QueueJob(job_id="job_2", skip_reason="none yet"))
    with pytest.raises(DomainError) as refused:
        await run(store, commands.complete, CompleteJob(job_id="job_2", at=NOW))
    assert type(refused.value) is InvalidStateTransition
    assert [e.event_type for e in await store.read_stream("job-job_2")][-1] == "job.JobQueued"


async def test_a_submission_with_an_api_key_names_it_on_the_job(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    cmd = SubmitJob(
        job_id="job_k", owner_id="usr_1", spec=SPEC, scene=scene_ref(), api_key_id="key_1"
    )
    await run(store, commands.submit, cmd)
    [submitted] = await store.read_stream("job-job_k")
    assert submitted.data["api_key_id"] == "key_1"


async def test_a_stop_for_the_cost_cap_ends_the_job_failed_and_frees_the_slot(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await run(store, commands.submit, submission("job_s"))
    await run(
        store, commands.pause, PauseJob(job_id="job_s", reason="insufficient_credits", at=NOW)
    )
    stop = StopJob(job_id="job_s", code="cost_cap_reached", reason="cap of 5.00 reached", at=NOW)
    await run(store, commands.stop, stop)
    job = await load(store, Job, "job_s")
    owner = await load(store, OwnerJobs, "usr_1")
    assert isinstance(job, Job) and isinstance(owner, OwnerJobs)
    assert job.status is JobStatus.failed
    assert owner.active == []


async def test_pause_resume_and_cost_commands_record_their_events_once(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await run(store, commands.submit, submission("job_p"))
    pause = PauseJob(job_id="job_p", reason="insufficient_credits", at=NOW)
    await run(store, commands.pause, pause)
    await run(store, commands.pause, pause)
    await run(store, commands.resume, ResumeJob(job_id="job_p", at=NOW))
    await run(store, commands.resume, ResumeJob(job_id="job_p", at=NOW))
    recorded = RecordJobCost(
        job_id="job_p",
        cost_version=2,
        status="held",
        estimate_credits=Decimal("4.00"),
        estimate_low_credits=Decimal("3.00"),
        estimate_high_credits=Decimal("5.00"),
        held_credits=Decimal("5.50"),
        so_far_credits=Decimal("0.00"),
        captured_credits=Decimal("0.00"),
        awaiting_reason=None,
        at=NOW,
    )
    await run(store, commands.record_cost, recorded)
    await run(store, commands.record_cost, recorded)
    names = [e.event_type for e in await store.read_stream("job-job_p")]
    assert names == ["job.JobSubmitted", "job.JobPaused", "job.JobResumed", "job.JobCostRecorded"]


async def test_cost_is_recorded_for_a_job_that_has_ended(
    store: InMemoryEventStore, commands: JobCommands
) -> None:
    await run(store, commands.submit, submission("job_e"))
    await run(store, commands.cancel, CancelJob(job_id="job_e", owner_id="usr_1"))
    settled = RecordJobCost(
        job_id="job_e",
        cost_version=5,
        status="settled",
        estimate_credits=None,
        estimate_low_credits=None,
        estimate_high_credits=None,
        held_credits=Decimal(0),
        so_far_credits=Decimal(0),
        captured_credits=Decimal(0),
        awaiting_reason=None,
        at=NOW,
    )
    reply = await run(store, commands.record_cost, settled)
    assert isinstance(reply, JobAccepted)
    assert [e.event_type for e in await store.read_stream("job-job_e")][-1] == "job.JobCostRecorded"
