"""Interruptible jobs, as Deadline's ``Interruptible`` and ``InterruptiblePercentage``: a
worker rendering a task of an interruptible job gives it up (requeued, with a requeue
report) for a queued task of higher priority it could take, while the task's progress is
below the percentage; a job that is not interruptible is never interrupted."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from tests.farm.conftest import Farm, wait_for
from tests.farm.test_deadline_protocol import (
    blender_job,
    get_job,
    get_tasks,
    reports,
    submit,
    wait_stat,
)

RENDERING, COMPLETED = 4, 5
REQUEUE = 2
#: Seconds a frame takes: long against the workers' 0.1 s preemption check.
FRAME_SECONDS = "2"


def farm_full_of(
    make_farm: Callable[..., Farm], tmp_path: Path, **job_info: Any
) -> tuple[Farm, str]:
    """Two workers, both rendering tasks of a four-task full render of priority 50."""
    farm = make_farm("--frame-seconds", FRAME_SECONDS, workers=2)
    full = submit(farm, blender_job("full", "1-4", tmp_path / "full", Priority=50, **job_info))
    wait_for(lambda: get_job(farm, full)["RenderingChunks"] == 2)
    return farm, full


def _parse_date(text: str) -> float:
    """A farm date in seconds since the epoch."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def started_after_submission(farm: Farm, job_id: str) -> float:
    """Seconds from the job's submission to its (only) task's start."""
    job = get_job(farm, job_id)
    [task] = get_tasks(farm, job_id)
    return _parse_date(task["StartRen"]) - _parse_date(job["Date"])


def test_a_higher_priority_job_interrupts_an_interruptible_render_and_both_complete(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm, full = farm_full_of(make_farm, tmp_path, Interruptible=True)
    props = get_job(farm, full)["Props"]
    assert (props["Int"], props["IntPer"]) == (True, 100)

    test = submit(farm, blender_job("test", "7", tmp_path / "test", Priority=100))
    wait_for(
        lambda: get_job(farm, test)["RenderingChunks"] + get_job(farm, test)["CompletedChunks"]
    )
    # Within a poll or two, not after a full-render task (2 s) finished.
    assert started_after_submission(farm, test) < 1.0
    [requeued] = reports(farm, full, "requeue")
    assert "interrupted" in requeued["Title"] and "priority 100" in requeued["Title"]
    assert requeued["Slave"] == get_tasks(farm, test)[0]["Slave"]

    wait_stat(farm, test, 3)
    wait_stat(farm, full, 3, timeout=30)  # the interrupted task was rendered again
    assert all(t["Stat"] == COMPLETED for t in get_tasks(farm, full))
    assert (tmp_path / "full" / "frame_0004.png").is_file()


def test_a_render_that_is_not_interruptible_is_never_interrupted(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm, full = farm_full_of(make_farm, tmp_path)
    assert get_job(farm, full)["Props"]["Int"] is False
    first_done = min(
        _parse_date(t["StartRen"]) for t in get_tasks(farm, full) if t["Stat"] == RENDERING
    ) + float(FRAME_SECONDS)

    test = submit(farm, blender_job("test", "7", tmp_path / "test", Priority=100))
    wait_stat(farm, test, 3)
    [task] = get_tasks(farm, test)
    assert _parse_date(task["StartRen"]) >= first_done  # it waited for a worker to finish
    assert reports(farm, full, "requeue") == []


def test_a_task_past_its_interruptible_percentage_finishes_first(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm("--frame-seconds", FRAME_SECONDS, workers=1)
    # One task of two frames: 50 % done once its first frame is rendered.
    full = submit(
        farm,
        blender_job(
            "full",
            "1-2",
            tmp_path / "full",
            ChunkSize=2,
            Priority=50,
            Interruptible=True,
            InterruptiblePercentage=50,
        ),
    )
    assert get_job(farm, full)["Props"]["IntPer"] == 50
    wait_for(lambda: get_tasks(farm, full)[0]["Prog"] == "50 %")

    test = submit(farm, blender_job("test", "7", tmp_path / "test", Priority=100))
    wait_stat(farm, full, 3)
    wait_stat(farm, test, 3)
    assert reports(farm, full, "requeue") == []
    [full_task], [test_task] = get_tasks(farm, full), get_tasks(farm, test)
    assert _parse_date(test_task["StartRen"]) >= _parse_date(full_task["Comp"])


def test_interruptible_and_its_percentage_can_be_saved_like_other_props(farm: Farm) -> None:
    job_id = submit(farm, blender_job("held", "1", Path("/tmp/held"), InitialStatus="Suspended"))
    job = get_job(farm, job_id)
    job["Props"].update({"Int": True, "IntPer": 30})
    saved = farm.client.put("/api/jobs", json={"Command": "save", "Job": job})
    assert (saved.status_code, saved.text) == (200, "Success")
    props = get_job(farm, job_id)["Props"]
    assert (props["Int"], props["IntPer"]) == (True, 30)
