"""A job created through the gateway on an uploaded scene has the scene staged to the farm,
renders on the local farm and reaches its end state, through the scheduler, the upload
service and the deadline-bridge as separate processes."""

from __future__ import annotations

import asyncio
import hashlib
import math
import signal
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from tests.render.conftest import SCENE, RenderSystem
from tests.upload.protocol import Uploader, cut, sha256_hex

PNG = b"\x89PNG\r\n\x1a\n"
EXR = b"\x76\x2f\x31\x01"  # OpenEXR magic number


def rendering(j: dict[str, Any]) -> bool:
    return bool(j["frames_done"] >= 2)


async def assert_every_frame_once(system: RenderSystem, job: dict[str, Any]) -> None:
    """One file per frame on disk, one record per frame on the job, one farm job."""
    job_id = job["job_id"]
    frames = list(range(job["frame_range"]["start"], job["frame_range"]["end"] + 1))
    recorded = await system.events("job", "job.JobFramesRendered", job_id)
    counts = Counter(f["frame"] for e in recorded for f in e["frames"])
    assert counts == Counter(frames), counts
    files = sorted(system.outputs.rglob("frame_*.png"))
    files = [f for f in files if job_id in str(f)]
    assert [int(f.stem.removeprefix("frame_")) for f in files] == frames
    assert all(f.read_bytes().startswith(PNG) for f in files)
    assert len(await system.farm_jobs_of(job_id)) == 1


async def test_a_job_renders_to_completed_with_one_file_per_frame(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job = await system.create_job(frame_range={"start": 1, "end": 6}, chunk_size=2)
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed", done
    assert done["frames_done"] == 6 and done["progress_percent"] == 100.0
    stage, render = done["steps"][0], done["steps"][-1]
    assert (stage["name"], stage["status"], render["status"]) == (
        "stage_scene",
        "succeeded",
        "succeeded",
    )
    assert done["allowed_actions"] == []
    await assert_every_frame_once(system, done)

    r = await system.api.get(f"/v1/jobs/{job['job_id']}/frames", headers=system.headers)
    assert r.status_code == 200, r.text
    frames = r.json()["items"]
    assert [f["frame"] for f in frames] == [1, 2, 3, 4, 5, 6]
    on_farm = system.farm_files(job["job_id"])
    for f in frames:
        data = on_farm[f["object_key"].rsplit("/", 1)[-1]].read_bytes()
        assert f["size_bytes"] == len(data) > 0
        assert f["sha256"] == hashlib.sha256(data).hexdigest()
    assert len({f["sha256"] for f in frames}) == 6  # each frame's image differs


async def test_the_scene_is_staged_where_the_farm_reads_it_and_a_second_job_reuses_the_copy(
    render_system: RenderSystem,
) -> None:
    system = render_system
    scene_id = await system.upload()
    first = await system.create_job(scene_id, frame_range={"start": 1, "end": 2})
    assert (first["scene_id"], first["scene_file"]) == (scene_id, "shot_020.blend")
    done = await system.finished(first["job_id"])
    assert done["status"] == "completed", done
    stage = done["steps"][0]
    assert (stage["status"], stage["progress_percent"]) == ("succeeded", 100.0)
    assert stage["finished_at"] <= done["steps"][-1]["started_at"]  # staged, then rendered
    [staged] = await system.events("job", "job.JobSceneStaged", first["job_id"])
    assert not staged["reused"]
    assert staged["scene_key"] == f"staged/{done['owner_id']}/{sha256_hex(SCENE)}/shot_020.blend"
    assert (system.scenes / staged["scene_key"]).read_bytes() == SCENE
    [farm_job] = await system.farm_jobs_of(first["job_id"])
    assert farm_job["Props"]["PlugInfo"]["SceneFile"] == str(system.scenes / staged["scene_key"])

    second = await system.create_job(scene_id, frame_range={"start": 1, "end": 2})
    again = await system.finished(second["job_id"])
    assert again["status"] == "completed" and again["steps"][0]["status"] == "succeeded"
    [reused] = await system.events("job", "job.JobSceneStaged", second["job_id"])
    assert reused["reused"] and reused["scene_key"] == staged["scene_key"]
    copies = await system.events("upload", "upload.SceneStagingStarted", second["job_id"])
    assert copies == []  # nothing was copied for the second job


async def test_a_scene_whose_bytes_do_not_match_its_sha256_fails_the_job_before_any_render(
    render_system: RenderSystem,
) -> None:
    """The parts were checked one by one as they were sent; the whole file's SHA-256, as the
    client declared it, is checked when the scene is staged."""
    system = render_system
    uploader = Uploader(system.api, system.headers)
    declared = sha256_hex(b"the scene the client meant to send")
    r = await system.api.post(
        "/v1/uploads",
        json={"file_name": "shot_099.blend", "size_bytes": len(SCENE), "sha256": declared},
        headers=system.headers,
    )
    assert r.status_code == 201, r.text
    session = r.json()
    await uploader.send(session["upload_id"], cut(SCENE, session["part_size_bytes"]))
    assert (await uploader.complete(session["upload_id"])).status_code == 200

    job = await system.create_job(session["upload_id"])
    done = await system.finished(job["job_id"])
    assert (done["status"], done["failure_code"]) == ("failed", "scene_checksum_mismatch"), done
    stage, render = done["steps"][0], done["steps"][-1]
    assert (stage["status"], stage["error_code"]) == ("failed", "scene_checksum_mismatch")
    assert declared in stage["error"] and sha256_hex(SCENE) in stage["error"]
    assert render["status"] == "pending"
    assert await system.farm_jobs_of(job["job_id"]) == []
    assert await system.history(job["job_id"]) == []  # the bridge never heard of it


async def test_an_exr_job_renders_exr_files(render_system: RenderSystem) -> None:
    system = render_system
    job = await system.create_job(
        frame_range={"start": 1, "end": 2},
        render_settings={"output_format": "exr", "samples": 32, "camera": "CAM_main"},
    )
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed", done
    r = await system.api.get(f"/v1/jobs/{job['job_id']}/frames", headers=system.headers)
    assert r.status_code == 200, r.text
    keys = [f["object_key"] for f in r.json()["items"]]
    assert [k.rsplit("/", 1)[-1] for k in keys] == ["frame_0001.exr", "frame_0002.exr"]
    for key in keys:
        assert (await system.stored(key))[:4] == EXR
        head = await system.s3.head_object(Bucket=system.s3_settings.s3_outputs_bucket, Key=key)
        assert head["ContentType"] == "image/x-exr"
    [farm_job] = await system.farm_jobs_of(job["job_id"])
    plugin_info = farm_job["Props"]["PlugInfo"]
    assert (plugin_info["OutputFormat"], plugin_info["Samples"]) == ("OPEN_EXR", "32")
    assert plugin_info["Camera"] == "CAM_main"


async def farm_workers(system: RenderSystem, count: int) -> None:
    """Set the farm's worker count; it answers once the stopped workers are gone."""
    r = await system.farm_api.put("/_farm/workers", json={"count": count})
    assert r.status_code == 200, r.text


async def test_eta_comes_from_measured_task_times(render_system: RenderSystem) -> None:
    system = render_system
    # The test holds the render mid-way, so the ETA is always looked at while rendering: one
    # worker renders until two frames are done, then the farm has none until it is read.
    await farm_workers(system, 0)
    job = await system.create_job(frame_range={"start": 1, "end": 12})
    job_id = job["job_id"]
    await system.wait(job_id, lambda j: j["status"] == "queued")
    await farm_workers(system, 1)
    await system.wait(job_id, lambda j: j["frames_done"] >= 2)
    await farm_workers(system, 0)
    [farm_job] = await system.farm_jobs_of(job_id)
    tasks = (await system.farm_api.get("/api/tasks", params={"JobID": farm_job["_id"]})).json()
    done_on_farm = sum(t["Stat"] == 5 for t in tasks["Tasks"])
    assert 2 <= done_on_farm < 12  # one worker renders ten frames in 3 s; it was stopped first
    mid = await system.wait(job_id, lambda j: j["frames_done"] == done_on_farm)

    assert mid["status"] == "rendering"
    # 5 % per step before the render that really ran (a skipped one adds nothing), then the
    # render's 75 % times frames done over frames.
    ran = 5 * sum(s["status"] == "succeeded" for s in mid["steps"] if s["name"] != "render")
    assert mid["progress_percent"] == round(ran + 75 * round(done_on_farm / 12 * 100, 1) / 100, 1)
    # tasks left x their mean measured time, over the workers seen, from the latest task's end
    recorded = await system.events("job", "job.JobFramesRendered", job_id)
    assert len(recorded) == done_on_farm
    mean = sum(e["render_seconds"] for e in recorded) / len(recorded)
    workers = len({e["worker"] for e in recorded})
    seconds = math.ceil(round((12 - done_on_farm) * mean / min(workers, 12 - done_on_farm), 6))
    latest = max(datetime.fromisoformat(e["at"]) for e in recorded)
    assert mid["eta"]["reason"] is None and mid["eta"]["eta_seconds"] == seconds > 0
    assert datetime.fromisoformat(mid["eta"]["eta_at"]) == latest + timedelta(seconds=seconds)

    await farm_workers(system, 2)
    done = await system.finished(job_id)
    assert done["status"] == "completed"
    assert done["eta"] == {"eta_seconds": None, "eta_at": None, "reason": "finished"}


async def test_a_task_that_fails_once_is_retried_and_the_job_completes(
    render_system: RenderSystem,
) -> None:
    system = render_system
    fault = {"match": "flaky", "frames": [3], "times": 1, "message": "GPU fell off the bus"}
    assert (await system.farm_api.post("/_farm/faults", json=fault)).status_code == 201
    job = await system.create_job(name="flaky shot", frame_range={"start": 1, "end": 4})
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed", done
    failed = await system.events("bridge", "render.RenderTaskFailed", job["job_id"])
    assert len(failed) == 1 and failed[0]["will_retry"] is True
    assert "GPU fell off the bus" in failed[0]["error"]
    assert len(await system.events("bridge", "render.RenderTaskRequeued", job["job_id"])) == 1
    logs = await system.events("job", "job.JobStepLogged", job["job_id"])
    assert any("GPU fell off the bus" in e["message"] for e in logs)
    await assert_every_frame_once(system, done)


async def test_a_task_that_always_fails_fails_the_job_with_the_farms_error(
    render_system: RenderSystem,
) -> None:
    system = render_system
    fault = {"match": "doomed", "frames": [2], "times": None, "message": "missing texture tex.exr"}
    assert (await system.farm_api.post("/_farm/faults", json=fault)).status_code == 201
    job = await system.create_job(name="doomed shot", frame_range={"start": 1, "end": 3})
    done = await system.finished(job["job_id"])
    assert done["status"] == "failed", done
    assert "missing texture tex.exr" in done["failure_reason"]
    render = next(s for s in done["steps"] if s["name"] == "render")
    assert render["status"] == "failed" and "missing texture tex.exr" in render["error"]
    failures = await system.events("bridge", "render.RenderTaskFailed", job["job_id"])
    assert [f["will_retry"] for f in failures] == [True, True, False]  # 2 retries, then give up
    [farm_job] = await system.farm_jobs_of(job["job_id"])
    assert farm_job["Stat"] == 4  # failed on the farm too: nothing renders on for nothing
    assert done["allowed_actions"] == []
    # the slot is free again: the failed job no longer counts against the user's limit
    assert len(await system.events("job", "job.JobSlotFreed", job["job_id"])) == 1


async def test_cancel_while_rendering_stops_the_farm_job(render_system: RenderSystem) -> None:
    system = render_system
    job = await system.create_job(frame_range={"start": 1, "end": 40})
    await system.wait(job["job_id"], lambda j: j["status"] == "rendering")
    r = await system.api.post(f"/v1/jobs/{job['job_id']}/cancel", json={}, headers=system.headers)
    assert r.status_code == 200, r.text  # docs/api.md: 200 with the job envelope
    done = await system.finished(job["job_id"])
    assert done["status"] == "cancelled", done
    assert await system.farm_jobs_of(job["job_id"]) == []  # deleted from the farm
    frames_then = done["frames_done"]
    await asyncio.sleep(1.5)
    later = await system.job(job["job_id"])
    assert later["status"] == "cancelled" and later["frames_done"] == frames_then
    assert frames_then < 40


async def test_killing_the_bridge_mid_render_loses_and_repeats_nothing(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job = await system.create_job(frame_range={"start": 1, "end": 12})
    await system.wait(job["job_id"], rendering)
    bridge = system.procs["deadline_bridge"]
    bridge.stop(signal.SIGKILL)
    await asyncio.sleep(1.0)  # the farm renders on meanwhile
    bridge.start()
    await bridge.ready()
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed", done
    assert done["frames_done"] == 12
    await assert_every_frame_once(system, done)


async def test_killing_the_scheduler_mid_render_loses_and_repeats_nothing(
    render_system: RenderSystem,
) -> None:
    system = render_system
    job = await system.create_job(frame_range={"start": 1, "end": 12})
    await system.wait(job["job_id"], rendering)
    scheduler = system.procs["scheduler"]
    scheduler.stop(signal.SIGKILL)
    await asyncio.sleep(1.0)
    scheduler.start()
    await scheduler.ready()
    done = await system.finished(job["job_id"])
    assert done["status"] == "completed", done
    assert done["frames_done"] == 12
    await assert_every_frame_once(system, done)
