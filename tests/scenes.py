"""Scene files in the test's scenes bucket, as a completed upload leaves them (for tests of
staging that need no upload session behind the object)."""

from __future__ import annotations

import hashlib

from contracts.staging import SceneKind, SceneRef
from libs.ids import new_id
from libs.s3 import S3Client
from tests.conftest import Env

MiB = 2**20


def scene_bytes(size: int, seed: str = "shot") -> bytes:
    """``size`` bytes of a scene file; another ``seed``, other bytes."""
    block = hashlib.sha256(seed.encode()).digest() * 32  # 1 KiB
    return (block * (size // len(block) + 1))[:size]


async def put_scene(
    s3: S3Client,
    env: Env,
    data: bytes,
    *,
    owner: str = "usr_studio1",
    name: str = "shot_030.blend",
    declared_sha256: str | None = None,
    declared_size: int | None = None,
) -> SceneRef:
    """``data`` as the object of a completed scene upload, and the scene a job names; the
    declared checksum or size may differ from the bytes, as a client may get them wrong."""
    scene_id = new_id("upl")
    key = f"uploads/{owner}/{scene_id}/{name}"
    bucket = env["RF_S3_SCENES_BUCKET"]
    await s3.put_object(Bucket=bucket, Key=key, Body=data)
    return SceneRef(
        scene_id=scene_id,
        kind=SceneKind.upload,
        main_file=name,
        file_count=1,
        size_bytes=len(data) if declared_size is None else declared_size,
        content_sha256=declared_sha256 or hashlib.sha256(data).hexdigest(),
        bucket=bucket,
        object_key=key,
    )
