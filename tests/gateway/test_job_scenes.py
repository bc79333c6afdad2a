"""create_job names the scene it renders: the caller's completed scene upload or manifest
(complete, or with its files still uploading), made through the real upload API. Anything
else is a 4xx with a code."""

from __future__ import annotations

import os
from typing import Any

import httpx

from libs.ids import new_id
from libs.runtime import ServiceRuntime
from tests.fixtures import Scenes, Users, job_spec
from tests.upload.protocol import Uploader, cut, sha256_hex


async def create_job(api: httpx.AsyncClient, me: dict[str, str], scene_id: str) -> httpx.Response:
    return await api.post("/v1/jobs", json=job_spec(scene_id=scene_id), headers=me)


async def test_a_job_renders_the_callers_completed_scene_upload(
    upload_api: httpx.AsyncClient,
    scenes: Scenes,
    users: Users,
    job_service: ServiceRuntime[Any],
) -> None:
    me = users.new()
    data = os.urandom(200_000)
    scene_id = await scenes.new(me, data, name="shot 010 lighting.blend")
    r = await create_job(upload_api, me, scene_id)
    assert r.status_code == 201, r.text
    job = r.json()
    assert (job["scene_id"], job["scene_file"]) == (scene_id, "shot 010 lighting.blend")
    assert (job["status"], job["steps"][0]["name"]) == ("submitted", "stage_scene")
    [submitted] = await job_service.store.read_stream(f"job-{job['job_id']}")
    scene = submitted.decode().scene  # type: ignore[attr-defined]
    assert (scene.scene_id, scene.kind, scene.size_bytes) == (scene_id, "upload", len(data))
    assert scene.content_sha256 == sha256_hex(data)
    assert scene.object_key.startswith("uploads/")


async def test_another_users_scene_or_a_missing_one_is_not_found_and_indistinguishable(
    upload_api: httpx.AsyncClient, scenes: Scenes, users: Users, job_service: ServiceRuntime[Any]
) -> None:
    theirs = await scenes.of(users.new())
    missing = new_id("upl")
    me = users.new()
    answers = [await create_job(upload_api, me, scene_id) for scene_id in (theirs, missing)]
    assert [r.status_code for r in answers] == [404, 404]
    bodies = [{**r.json(), "trace_id": None} for r in answers]
    assert [b["code"] for b in bodies] == ["scene_not_found", "scene_not_found"]
    assert [b["details"] for b in bodies] == [{"scene_id": theirs}, {"scene_id": missing}]
    assert bodies[0]["message"].replace(theirs, "X") == bodies[1]["message"].replace(missing, "X")
    assert (await upload_api.get("/v1/jobs", headers=me)).json()["items"] == []


async def test_an_upload_not_completed_is_not_ready_with_its_status(
    upload_api: httpx.AsyncClient, users: Users, job_service: ServiceRuntime[Any]
) -> None:
    me = users.new()
    uploader = Uploader(upload_api, me)
    data = os.urandom(10_000)
    open_session = await uploader.create("shot_020.blend", data)
    aborted = await uploader.create("shot_021.blend", data)
    assert (await uploader.abort(aborted["upload_id"])).status_code == 200
    for session, status in ((open_session, "uploading"), (aborted, "aborted")):
        r = await create_job(upload_api, me, session["upload_id"])
        assert r.status_code == 409, r.text
        assert r.json()["code"] == "scene_not_ready" and r.json()["retryable"] is False
        assert r.json()["details"] == {"scene_id": session["upload_id"], "status": status}
    # Completed, the same upload is a scene a job can render.
    await uploader.send(open_session["upload_id"], cut(data, open_session["part_size_bytes"]))
    assert (await uploader.complete(open_session["upload_id"])).status_code == 200
    assert (await create_job(upload_api, me, open_session["upload_id"])).status_code == 201


async def test_a_manifest_renders_while_its_files_upload_and_its_files_are_not_scenes(
    upload_api: httpx.AsyncClient, users: Users, job_service: ServiceRuntime[Any]
) -> None:
    me = users.new()
    uploader = Uploader(upload_api, me)
    scene, texture = os.urandom(3000), os.urandom(1000)
    files = [
        {"path": "shots/shot_030.blend", "size_bytes": len(scene), "sha256": sha256_hex(scene)},
        {"path": "textures/wood.png", "size_bytes": len(texture), "sha256": sha256_hex(texture)},
    ]

    async def submit() -> dict[str, Any]:
        body = {"main_file": "shots/shot_030.blend", "files": files}
        r = await upload_api.post("/v1/manifests", json=body, headers=me)
        assert r.status_code == 201, r.text
        manifest: dict[str, Any] = r.json()
        return manifest

    # A file whose upload session ended without it: the manifest can never be complete.
    ended = await submit()
    texture_upload = ended["missing"][1]["upload_id"]
    assert (await uploader.abort(texture_upload)).status_code == 200
    refused = await create_job(upload_api, me, ended["manifest_id"])
    assert refused.status_code == 409, refused.text
    assert (refused.json()["code"], refused.json()["retryable"]) == ("scene_upload_ended", False)
    assert refused.json()["details"] == {
        "path": "textures/wood.png",
        "sha256": sha256_hex(texture),
        "status": "aborted",
    }

    # Submitted again, it has a session for each file it lacks: a job can be created on it
    # while they are uploaded (its staging waits for them).
    manifest = await submit()
    assert [m["upload_id"] is not None for m in manifest["missing"]] == [True, True]
    waiting = await create_job(upload_api, me, manifest["manifest_id"])
    assert waiting.status_code == 201, waiting.text
    assert waiting.json()["scene_id"] == manifest["manifest_id"]

    asset = manifest["missing"][0]["upload_id"]
    for missing, data in zip(manifest["missing"], (scene, texture), strict=True):
        session = await uploader.get(missing["upload_id"])
        await uploader.send(missing["upload_id"], cut(data, session["part_size_bytes"]))
        assert (await uploader.complete(missing["upload_id"])).status_code == 200
    not_a_scene = await create_job(upload_api, me, asset)
    assert not_a_scene.status_code == 422, not_a_scene.text
    assert not_a_scene.json()["code"] == "upload_not_a_scene"

    done = await upload_api.post(f"/v1/manifests/{manifest['manifest_id']}/complete", headers=me)
    assert done.status_code == 200, done.text
    r = await create_job(upload_api, me, manifest["manifest_id"])
    assert r.status_code == 201, r.text
    assert (r.json()["scene_id"], r.json()["scene_file"]) == (
        manifest["manifest_id"],
        "shots/shot_030.blend",
    )
