"""Scenes sent as manifests: the server answers which files it lacks, a file is sent once
per user, and nobody's files help (or reveal themselves to) anyone else."""

from __future__ import annotations

import os
from typing import Any

import httpx

from libs.ids import new_id
from libs.s3 import S3Client, S3Settings
from tests.fixtures import Users
from tests.upload.protocol import Uploader, cut, sha256_hex

SCENE = os.urandom(3000)
WOOD = os.urandom(1000)
STONE = os.urandom(700)


def entry(path: str, data: bytes) -> dict[str, Any]:
    return {"path": path, "size_bytes": len(data), "sha256": sha256_hex(data)}


async def submit(api: httpx.AsyncClient, me: Uploader, *files: dict[str, Any]) -> dict[str, Any]:
    r = await api.post(
        "/v1/manifests",
        json={"main_file": files[0]["path"], "files": list(files)},
        headers=me.headers,
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def send_file(me: Uploader, upload_id: str, data: bytes) -> dict[str, Any]:
    session = await me.get(upload_id)
    await me.send(upload_id, cut(data, session["part_size_bytes"]))
    r = await me.complete(upload_id)
    assert r.status_code == 200, r.text
    done: dict[str, Any] = r.json()
    return done


async def complete(api: httpx.AsyncClient, me: Uploader, manifest_id: str) -> httpx.Response:
    return await api.post(f"/v1/manifests/{manifest_id}/complete", headers=me.headers)


async def test_a_manifest_lists_what_to_send_and_completes_once_it_is_uploaded(
    upload_api: httpx.AsyncClient, users: Users, s3: S3Client, s3_settings: S3Settings
) -> None:
    owner = new_id("usr")
    me = Uploader(upload_api, users.headers(owner))
    manifest = await submit(
        upload_api,
        me,
        entry("shot_010.blend", SCENE),
        entry("textures/wood.png", WOOD),
        entry("textures/wood_copy.png", WOOD),
    )
    assert manifest["manifest_id"].startswith("man_")
    assert manifest["status"] == "waiting_for_files"
    assert (manifest["main_file"], manifest["file_count"]) == ("shot_010.blend", 3)
    assert manifest["total_bytes"] == len(SCENE) + 2 * len(WOOD)
    assert manifest["files_present"] == 0
    missing = manifest["missing"]
    assert [(m["sha256"], m["size_bytes"], m["paths"]) for m in missing] == [
        (sha256_hex(SCENE), len(SCENE), ["shot_010.blend"]),
        (sha256_hex(WOOD), len(WOOD), ["textures/wood.png", "textures/wood_copy.png"]),
    ]
    sessions = [await me.get(m["upload_id"]) for m in missing]
    assert [(s["kind"], s["file_name"], s["status"]) for s in sessions] == [
        ("asset", "shot_010.blend", "uploading"),
        ("asset", "wood.png", "uploading"),
    ]

    refused = await complete(upload_api, me, manifest["manifest_id"])
    assert refused.status_code == 409
    assert refused.json()["code"] == "manifest_incomplete"
    details = refused.json()["details"]
    assert details["missing_file_count"] == 2
    assert [m["upload_id"] for m in details["missing"]] == [m["upload_id"] for m in missing]

    await send_file(me, missing[1]["upload_id"], WOOD)
    halfway = await upload_api.get(f"/v1/manifests/{manifest['manifest_id']}", headers=me.headers)
    assert halfway.json()["files_present"] == 2 and len(halfway.json()["missing"]) == 1
    await send_file(me, missing[0]["upload_id"], SCENE)
    done = await complete(upload_api, me, manifest["manifest_id"])
    assert done.status_code == 200, done.text
    assert done.json()["status"] == "complete" and done.json()["completed_at"] is not None
    assert (done.json()["files_present"], done.json()["missing"]) == (3, [])
    again = await complete(upload_api, me, manifest["manifest_id"])
    assert again.json() == done.json()

    key = f"assets/{owner}/{sha256_hex(WOOD)}"
    stored = await s3.get_object(Bucket=s3_settings.s3_scenes_bucket, Key=key)
    assert await stored["Body"].read() == WOOD


async def test_a_file_sent_once_is_never_sent_again(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    first = await submit(upload_api, me, entry("shot.blend", SCENE), entry("tex/wood.png", WOOD))
    for m, data in zip(first["missing"], (SCENE, WOOD), strict=True):
        await send_file(me, m["upload_id"], data)
    assert (await complete(upload_api, me, first["manifest_id"])).status_code == 200

    scene_v2 = os.urandom(3001)
    second = await submit(
        upload_api,
        me,
        entry("shot_v2.blend", scene_v2),
        entry("tex/wood.png", WOOD),
        entry("tex/renamed_wood.png", WOOD),
        entry("tex/stone.png", STONE),
    )
    assert second["files_present"] == 2  # both paths of the wood texture
    assert [m["paths"] for m in second["missing"]] == [["shot_v2.blend"], ["tex/stone.png"]]

    unchanged = await submit(upload_api, me, entry("shot.blend", SCENE), entry("w.png", WOOD))
    assert unchanged["status"] == "complete" and unchanged["missing"] == []
    assert unchanged["files_present"] == 2 and unchanged["completed_at"] is not None


async def test_a_file_still_being_uploaded_is_not_asked_for_twice(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    first = await submit(upload_api, me, entry("a.blend", SCENE), entry("tex/stone.png", STONE))
    second = await submit(upload_api, me, entry("b.blend", SCENE))
    assert second["missing"][0]["upload_id"] == first["missing"][0]["upload_id"]
    listed = (await upload_api.get("/v1/uploads", headers=me.headers)).json()["items"]
    assert len(listed) == 2  # one session per content, not per manifest


async def test_another_users_copy_of_a_file_is_never_used_nor_revealed(
    upload_api: httpx.AsyncClient, users: Users, s3: S3Client, s3_settings: S3Settings
) -> None:
    alice = Uploader(upload_api, users.new())
    theirs = await submit(upload_api, alice, entry("shot.blend", SCENE))
    await send_file(alice, theirs["missing"][0]["upload_id"], SCENE)
    assert (await complete(upload_api, alice, theirs["manifest_id"])).status_code == 200

    bob_id = new_id("usr")
    bob = Uploader(upload_api, users.headers(bob_id))
    mine = await submit(upload_api, bob, entry("shot.blend", SCENE))
    # Bob's answer is that of a file nobody has: he must send it, and learns nothing.
    nobody = await submit(upload_api, Uploader(upload_api, users.new()), entry("x.blend", STONE))
    assert mine["status"] == nobody["status"] == "waiting_for_files"
    assert mine["files_present"] == nobody["files_present"] == 0
    assert set(mine) == set(nobody) and set(mine["missing"][0]) == set(nobody["missing"][0])
    [wanted] = mine["missing"]
    assert wanted["upload_id"] not in (None, theirs["missing"][0]["upload_id"])
    refused = await complete(upload_api, bob, mine["manifest_id"])
    assert refused.status_code == 409 and refused.json()["code"] == "manifest_incomplete"

    for path in (
        f"/v1/manifests/{theirs['manifest_id']}",
        f"/v1/uploads/{theirs['missing'][0]['upload_id']}",
    ):
        r = await upload_api.get(path, headers=bob.headers)
        assert r.status_code == 404
        assert r.json()["code"] in ("manifest_not_found", "upload_not_found")
    await send_file(bob, wanted["upload_id"], SCENE)
    assert (await complete(upload_api, bob, mine["manifest_id"])).status_code == 200
    key = f"assets/{bob_id}/{sha256_hex(SCENE)}"
    head = await s3.head_object(Bucket=s3_settings.s3_scenes_bucket, Key=key)
    assert head["ContentLength"] == len(SCENE)


async def test_a_content_declared_with_another_size_is_refused(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    await submit(upload_api, me, entry("a.blend", SCENE))
    lying = {**entry("b.blend", SCENE), "size_bytes": len(SCENE) + 1}
    r = await upload_api.post(
        "/v1/manifests", json={"main_file": "b.blend", "files": [lying]}, headers=me.headers
    )
    assert r.status_code == 409
    assert r.json()["code"] == "asset_size_conflict"
    assert r.json()["details"] == {
        "sha256": sha256_hex(SCENE),
        "size_bytes": len(SCENE) + 1,
        "known_size_bytes": len(SCENE),
    }


async def test_a_scene_of_thousands_of_files_is_one_manifest(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    files = [
        {
            "path": f"tex/set_{i // 100:02d}/t_{i:04d}.png",
            "size_bytes": 100 + i,
            "sha256": f"{i:064x}",
        }
        for i in range(3000)
    ]
    first = await submit(upload_api, me, *files)
    assert first["file_count"] == 3000 and len(first["missing"]) == 3000
    sessions = {m["upload_id"] for m in first["missing"]}
    assert None not in sessions and len(sessions) == 3000
    again = await submit(upload_api, me, *files)
    assert {m["upload_id"] for m in again["missing"]} == sessions  # reused, not opened again


async def test_a_manifest_too_large_to_pass_on_is_refused_with_a_code(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    long_dir = "/".join(["d" * 200] * 4)  # 800-character paths: over 8 MB as one command
    files = [
        {"path": f"{long_dir}/{i:05d}.png", "size_bytes": 1, "sha256": f"{i:064x}"}
        for i in range(10_000)
    ]
    r = await upload_api.post(
        "/v1/manifests", json={"main_file": files[0]["path"], "files": files}, headers=users.new()
    )
    assert r.status_code == 413
    assert r.json()["code"] == "payload_too_large" and r.json()["retryable"] is False
