"""Frames recorded before outputs went to object storage (schema v1: a farm path) still
load: the path is dropped, and they have no output id and no object key. Frames and tasks
recorded before thumbnails and peak memory load with neither."""

from __future__ import annotations

from typing import Any

from contracts.base import EVENTS
from contracts.jobs import JobFramesRendered
from contracts.render import RenderTaskCompleted

V1_FRAME = {
    "frame": 7,
    "path": "/mnt/renders/u1/j1/j1.full.1/frame_0007.png",
    "size_bytes": 9,
    "sha256": "ab" * 32,
}
NO_OUTPUT = {
    "frame": 7,
    "output_id": None,
    "object_key": None,
    "size_bytes": 9,
    "sha256": "ab" * 32,
    "thumbnail": None,
}
AT = "2026-11-22T14:00:00Z"


def decoded(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    return EVENTS.decode(event_type, 1, data).model_dump(mode="json")


def test_a_v1_frames_rendered_event_loads_without_its_farm_path() -> None:
    v1 = {
        "job_id": "j1",
        "render_id": "j1.full.1",
        "task_id": 0,
        "frames": [V1_FRAME],
        "worker": "w1",
        "render_seconds": 1.5,
        "at": AT,
    }
    assert JobFramesRendered.schema_version == 2
    assert decoded(JobFramesRendered.event_type, v1)["frames"] == [NO_OUTPUT]


def test_a_v1_task_completed_event_loads_without_its_farm_path() -> None:
    v1 = {
        "render_id": "j1.full.1",
        "job_id": "j1",
        "task_id": 0,
        "frames": [7],
        "worker": "w1",
        "started_at": AT,
        "finished_at": AT,
        "render_seconds": 0.0,
        "outputs": [V1_FRAME],
    }
    assert RenderTaskCompleted.schema_version == 2
    decoded_v1 = decoded(RenderTaskCompleted.event_type, v1)
    assert decoded_v1["outputs"] == [NO_OUTPUT] and decoded_v1["peak_memory_bytes"] is None


def test_a_task_completed_before_thumbnails_and_peak_memory_loads_with_neither() -> None:
    stored = {
        "render_id": "j1.full.1",
        "job_id": "j1",
        "task_id": 0,
        "frames": [7],
        "worker": "w1",
        "started_at": AT,
        "finished_at": AT,
        "render_seconds": 2.0,
        "outputs": [{k: v for k, v in NO_OUTPUT.items() if k != "thumbnail"}],
    }
    event = EVENTS.decode(RenderTaskCompleted.event_type, 2, stored)
    assert isinstance(event, RenderTaskCompleted)
    assert event.outputs[0].thumbnail is None and event.peak_memory_bytes is None
