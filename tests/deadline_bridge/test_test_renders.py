"""Test renders through the bridge on the local farm: the farm job they become (the test
pool first, the full renders' pool as secondary, the test priority, one frame a task, the
frames listed, never interrupted) beside an interruptible full render; and what a rendered
task reports: its peak memory, and a thumbnail of each frame stored next to it."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from contracts.base import EVENTS
from contracts.jobs import FrameRange, OutputFormat, RenderSettings
from contracts.outputs import thumbnail_key
from contracts.render import (
    RenderAccepted,
    RenderCompleted,
    RenderKind,
    RenderTaskCompleted,
    SubmitRender,
)
from libs.bus.commands import CommandClient
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from services.deadline_bridge.service import Bridge
from tests.deadline_bridge.test_bridge import ACTOR, bridge_on, order
from tests.farm.conftest import Farm
from tests.waiting import until

__all__ = ["bridge_on"]  # the fixture, used by name


def preview_order(job_id: str, frames: list[int], **changes: Any) -> SubmitRender:
    """A test render of three frames of 1-100, asked with the job's chunk size of 10."""
    return order(
        job_id,
        kind=RenderKind.test,
        frame_range=FrameRange(start=1, end=100),
        chunk_size=10,
        frames=frames,
        **changes,
    )


async def farm_job(farm: Farm, farm_job_id: str | None) -> dict[str, Any]:
    [job] = farm.client.get("/api/jobs", params={"JobID": farm_job_id}).json()
    found: dict[str, Any] = job
    return found


async def test_a_test_render_goes_to_the_test_pool_first_at_the_test_priority_one_frame_a_task(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    client = CommandClient(bridge.nc, bridge.settings)
    cmd = preview_order("job_t", [100, 1, 50])
    assert cmd.render_id == "job_t.test.1"
    reply = await client.send(cmd, RenderAccepted, command_id="submit-t", actor=ACTOR)
    props = (await farm_job(farm, reply.farm_job_id))["Props"]
    assert (props["Frames"], props["Chunk"], props["Tasks"]) == ("1,50,100", 1, 3)
    assert (props["Pool"], props["SecPool"], props["Pri"]) == ("test", "none", 100)
    assert props["Int"] is False
    tasks = farm.client.get("/api/tasks", params={"JobID": reply.farm_job_id}).json()["Tasks"]
    assert [t["Frames"] for t in tasks] == ["1-1", "50-50", "100-100"]

    full = await client.send(order("job_t"), RenderAccepted, command_id="submit-f", actor=ACTOR)
    full_props = (await farm_job(farm, full.farm_job_id))["Props"]
    assert (full_props["Pool"], full_props["SecPool"], full_props["Pri"]) == ("none", "", 75)
    assert (full_props["Int"], full_props["Chunk"], full_props["Frames"]) == (True, 2, "1-4")


async def test_the_test_pool_and_priority_and_interruptible_full_renders_are_settings(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm(workers=0)
    bridge: ServiceRuntime[Bridge] = await bridge_on(
        farm,
        test_pool="preview",
        test_priority=95,
        farm_pool="render",
        full_render_interruptible=False,
    )
    client = CommandClient(bridge.nc, bridge.settings)
    test = await client.send(
        preview_order("job_s", [7]), RenderAccepted, command_id="t", actor=ACTOR
    )
    props = (await farm_job(farm, test.farm_job_id))["Props"]
    assert (props["Pool"], props["SecPool"], props["Pri"]) == ("preview", "render", 95)
    full = await client.send(order("job_s"), RenderAccepted, command_id="f", actor=ACTOR)
    full_props = (await farm_job(farm, full.farm_job_id))["Props"]
    assert (full_props["Pool"], full_props["Int"]) == ("render", False)


@pytest.mark.parametrize("frames", [[0], [101], [1, 1], []])
def test_a_render_of_frames_outside_its_range_or_repeated_is_refused(frames: list[int]) -> None:
    with pytest.raises(ValidationError):
        preview_order("job_v", frames)


def test_a_submit_render_from_before_frame_lists_renders_the_whole_range() -> None:
    cmd = order("job_o")  # no frames: as every sender sent it before
    assert cmd.frames is None and cmd.frames_to_render() == [1, 2, 3, 4]


async def completed_tasks(bridge: ServiceRuntime[Bridge], render_id: str) -> list[Any]:
    """The render's RenderTaskCompleted events, once it completed."""
    records = await bridge.store.read_stream(f"render-{render_id}")
    if RenderCompleted.event_type not in [r.event_type for r in records]:
        return []
    return [
        EVENTS.decode(r.event_type, r.schema_version, r.data)
        for r in records
        if r.event_type == RenderTaskCompleted.event_type
    ]


def mean(image: Image.Image) -> tuple[int, ...]:
    """The image's mean colour (RGB)."""
    colour = image.convert("RGB").resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
    assert isinstance(colour, tuple)
    return tuple(int(c) for c in colour)


async def stored(s3: S3Client, bucket: str, key: str) -> bytes:
    got = await s3.get_object(Bucket=bucket, Key=key)
    async with got["Body"] as body:
        data: bytes = await body.read()
    return data


async def test_each_task_reports_its_peak_memory_and_each_png_frame_a_stored_thumbnail(
    bridge_on: Callable[..., Any],
    make_farm: Callable[..., Farm],
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    farm = make_farm(workers=2)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    client = CommandClient(bridge.nc, bridge.settings)
    cmd = preview_order("job_m", [1, 50])
    reply = await client.send(cmd, RenderAccepted, command_id="submit-m", actor=ACTOR)
    tasks: list[RenderTaskCompleted] = await until(
        lambda: completed_tasks(bridge, cmd.render_id), "the test render to complete"
    )
    on_farm = farm.client.get("/api/tasks", params={"JobID": reply.farm_job_id}).json()["Tasks"]
    farm_peaks = {t["TaskID"]: t["RamPeak"] for t in on_farm}
    assert {t.task_id: t.peak_memory_bytes for t in tasks} == farm_peaks
    assert all(peak and peak > 0 for peak in farm_peaks.values())

    bucket = s3_settings.s3_outputs_bucket
    outputs = sorted((o for t in tasks for o in t.outputs), key=lambda o: o.frame)
    assert [o.frame for o in outputs] == [1, 50]
    for o in outputs:
        assert o.object_key is not None and o.object_key.endswith(f"/test/frame_{o.frame:04d}.png")
        thumb = o.thumbnail
        assert thumb is not None and thumb.object_key == thumbnail_key(o.object_key)
        assert thumb.object_key.endswith(f"/test/frame_{o.frame:04d}.thumb.jpg")
        data = await stored(s3, bucket, thumb.object_key)
        assert (thumb.size_bytes, thumb.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG"
            # The built-in renderer's 320x180 frames, 256 pixels on the long side.
            assert image.size == (thumb.width, thumb.height) == (256, 144)
            with Image.open(io.BytesIO(await stored(s3, bucket, o.object_key))) as frame:
                # The thumbnail is the frame: the same mean colour, give or take JPEG.
                assert all(abs(a - b) <= 4 for a, b in zip(mean(frame), mean(image), strict=True))
        head = await s3.head_object(Bucket=bucket, Key=thumb.object_key)
        assert head["ContentType"] == "image/jpeg"


async def test_an_exr_frame_is_stored_without_a_thumbnail(
    bridge_on: Callable[..., Any],
    make_farm: Callable[..., Farm],
    s3: S3Client,
    s3_settings: S3Settings,
) -> None:
    farm = make_farm(workers=1)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    client = CommandClient(bridge.nc, bridge.settings)
    cmd = preview_order(
        "job_e", [3], render_settings=RenderSettings(output_format=OutputFormat.exr)
    )
    await client.send(cmd, RenderAccepted, command_id="submit-e", actor=ACTOR)
    [task] = await until(lambda: completed_tasks(bridge, cmd.render_id), "the EXR render")
    [output] = task.outputs
    assert output.object_key is not None and output.object_key.endswith("frame_0003.exr")
    assert output.thumbnail is None
    bucket = s3_settings.s3_outputs_bucket
    assert len(await stored(s3, bucket, output.object_key)) == output.size_bytes
    listed = await s3.list_objects_v2(Bucket=bucket, Prefix=thumbnail_key(output.object_key))
    assert not listed.get("Contents")


async def test_a_test_render_interrupts_the_full_render_which_still_completes_every_task_once(
    bridge_on: Callable[..., Any], make_farm: Callable[..., Farm]
) -> None:
    farm = make_farm("--frame-seconds", "1.5", workers=1)
    bridge: ServiceRuntime[Bridge] = await bridge_on(farm)
    client = CommandClient(bridge.nc, bridge.settings)
    full = order("job_i", frame_range=FrameRange(start=1, end=3), chunk_size=1)
    full_reply = await client.send(full, RenderAccepted, command_id="submit-fi", actor=ACTOR)

    async def full_rendering() -> bool:
        jobs = farm.client.get("/api/jobs", params={"JobID": full_reply.farm_job_id}).json()
        return bool(jobs[0]["RenderingChunks"])

    await until(full_rendering, "the full render to start")
    test = preview_order("job_i", [2])
    await client.send(test, RenderAccepted, command_id="submit-ti", actor=ACTOR)
    [test_task] = await until(lambda: completed_tasks(bridge, test.render_id), "the test render")
    full_tasks = await until(lambda: completed_tasks(bridge, full.render_id), "the full render")
    assert test_task.finished_at < min(t.finished_at for t in full_tasks)
    requeues = farm.client.get(
        "/api/jobreports", params={"JobID": full_reply.farm_job_id, "Data": "requeue"}
    ).json()
    assert len(requeues) == 1 and "interrupted" in requeues[0]["Title"]
    # For the bridge an interruption is no failure: each task completes once.
    types = [r.event_type for r in await bridge.store.read_stream(f"render-{full.render_id}")]
    assert sorted(t.task_id for t in full_tasks) == [0, 1, 2]
    assert "render.RenderTaskFailed" not in types and "render.RenderTaskRequeued" not in types
