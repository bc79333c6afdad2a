"""A studio uploads scenes with ``renderctl upload``: a file in parallel parts straight to the
store, a folder as a manifest (only what the farm lacks is sent), and a run killed halfway
that, run again, sends only the parts the store does not hold.

The gateway is served over real HTTP (``gateway_url``) with the upload service behind it and
MiniStack as the store, which checks every part's signed length and SHA-256.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.ids import new_id
from libs.s3 import S3Client, S3Settings
from services.upload.domain import part_plan
from tests.fixtures import Users
from tests.processes import ROOT
from tests.scene.conftest import blender_python, built
from tests.tools.cli import printed
from tools import renderctl
from tools.uploads import planned_part_size

MiB = 2**20

__all__ = ["blender_python", "built"]  # fixtures, used by name


@pytest.fixture
def token(users: Users) -> str:
    return users.new()["Authorization"].removeprefix("Bearer ")


def write(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


async def upload(
    url: str, token: str, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    code = await renderctl.run(["upload", *args, "--api-url", url, "--token", token])
    out = capsys.readouterr()
    return code, printed(out.out), out.err


class Api:
    def __init__(self, url: str, token: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    async def get(self, path: str) -> Any:
        r = await self.http.get(path)
        assert r.status_code == 200, r.text
        return r.json()

    async def held(self, upload_id: str) -> list[int]:
        page = await self.get(f"/v1/uploads/{upload_id}/parts")
        return [p["part_number"] for p in page["items"]]


@pytest.fixture
async def api(gateway_url: str, token: str) -> AsyncIterator[Api]:
    a = Api(gateway_url, token)
    yield a
    await a.http.aclose()


async def stored(s3: S3Client, s3_settings: S3Settings, upload_id: str) -> bytes:
    """The bytes of an upload's object in the scenes bucket."""
    bucket = s3_settings.s3_scenes_bucket
    listed = await s3.list_objects_v2(Bucket=bucket, Prefix="uploads/")
    [key] = [o["Key"] for o in listed.get("Contents", []) if f"/{upload_id}/" in o["Key"]]
    body: bytes = await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
    return body


async def test_a_file_goes_up_in_parallel_parts_and_its_upload_id_is_printed(
    gateway_url: str,
    token: str,
    cache: Path,
    tmp_path: Path,
    api: Api,
    s3: S3Client,
    s3_settings: S3Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = write(tmp_path / "shot_010.blend", 22 * MiB + 3)  # 5 parts of 5 MiB
    code, out, err = await upload(
        gateway_url, token, capsys, str(tmp_path / "shot_010.blend"), "--parallel", "3"
    )
    assert code == 0, err
    upload_id = out.strip()
    assert re.fullmatch(r"upl_[0-9A-Z]{26}", upload_id)
    view = await api.get(f"/v1/uploads/{upload_id}")
    assert view["status"] == "completed" and view["file_name"] == "shot_010.blend"
    assert (view["part_count"], view["parts_confirmed"]) == (5, 5)
    assert view["sha256"] == hashlib.sha256(data).hexdigest()
    assert await stored(s3, s3_settings, upload_id) == data
    # The progress bar told what happened: hashing, then the upload, with rate and ETA.
    assert "hashing" in err and "uploading [" in err and "MB/s" in err and "ETA" in err
    assert "uploading: 22.0 MiB in" in err and "5 part(s) sent" in err

    # Run again: nothing is hashed or sent, the same upload is answered, here as JSON.
    code, out, err = await upload(
        gateway_url, token, capsys, str(tmp_path / "shot_010.blend"), "--json"
    )
    assert code == 0, err
    assert f"already uploaded ({upload_id})" in err and "hashing" not in err
    again = json.loads(out)
    assert again["upload_id"] == upload_id and again["status"] == "completed"


async def test_a_folder_is_sent_as_a_manifest_and_a_changed_texture_alone_is_sent_again(
    gateway_url: str,
    token: str,
    cache: Path,
    tmp_path: Path,
    api: Api,
    capsys: pytest.CaptureFixture[str],
) -> None:
    scene = tmp_path / "shot_020"
    write(scene / "shot_020.blend", 6 * MiB)
    wood = write(scene / "textures" / "wood.png", 300_000)
    (scene / "textures" / "wood_copy.png").write_bytes(wood)  # the same content twice
    write(scene / "textures" / "sky.exr", 1_000_000)
    (scene / "notes.txt").write_bytes(b"")  # empty: left out, with a note

    code, out, err = await upload(
        gateway_url, token, capsys, str(scene), "--main", "shot_020.blend", "--json"
    )
    assert code == 0, err
    first = json.loads(out)
    assert first["manifest_id"].startswith("man_") and first["status"] == "complete"
    assert (first["main_file"], first["file_count"]) == ("shot_020.blend", 4)
    assert "notes.txt: empty, left out" in err
    assert "4 file(s), 3 to send" in err  # the two copies of wood.png are one content

    # The sky is repainted: a new manifest, and only the new sky goes up.
    write(scene / "textures" / "sky.exr", 1_000_000)
    code, out, err = await upload(
        gateway_url, token, capsys, str(scene), "--main", "shot_020.blend"
    )
    assert code == 0, err
    second = out.strip()
    assert second.startswith("man_") and second != first["manifest_id"]
    assert "4 file(s), 1 to send (976.6 KiB)" in err
    assert "hashing: 976.6 KiB" in err  # the unchanged files were not read again
    assert (await api.get(f"/v1/manifests/{second}"))["status"] == "complete"


async def test_the_files_a_test_render_needs_are_sent_and_completed_before_the_rest(
    gateway_url: str,
    token: str,
    cache: Path,
    tmp_path: Path,
    api: Api,
    built: Callable[[str], Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A Blender-built scene of frames 1-5 with an image sequence: the main file, its
    texture and the sequence's entries of frames 1, 3 and 5 (a test render's default
    frames) go up first; the other entries and a cache nothing references after them."""
    scene = tmp_path / "shot_040"
    shutil.copytree(built("sequence"), scene)
    write(scene / "cache" / "unreferenced.bin", 2 * MiB)
    code, out, err = await upload(
        gateway_url, token, capsys, str(scene), "--main", "scene.blend", "--json"
    )
    assert code == 0, err
    assert "5 file(s) a test render needs go first" in err
    manifest = json.loads(out)
    assert manifest["status"] == "complete" and manifest["file_count"] == 8

    page = await api.get("/v1/uploads?limit=100")
    completed = {u["file_name"]: datetime.fromisoformat(u["updated_at"]) for u in page["items"]}
    first = ["scene.blend", "checker.png", "frame_0001.png", "frame_0003.png", "frame_0005.png"]
    rest = ["frame_0002.png", "frame_0004.png", "unreferenced.bin"]
    assert sorted(completed) == sorted(first + rest)
    assert max(completed[n] for n in first) < min(completed[n] for n in rest)


async def test_a_folder_needs_its_main_file_named(
    gateway_url: str, token: str, cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "scene" / "shot.blend", 10)
    code, _, err = await upload(gateway_url, token, capsys, str(tmp_path / "scene"))
    assert code == 2 and "a folder needs --main FILE" in err
    code, _, err = await upload(
        gateway_url, token, capsys, str(tmp_path / "scene"), "--main", "other.blend"
    )
    assert code == 1 and "--main other.blend: no such file" in err


async def test_an_upload_killed_halfway_sends_only_the_missing_parts_when_run_again(
    gateway_url: str,
    token: str,
    cache: Path,
    tmp_path: Path,
    api: Api,
    s3: S3Client,
    s3_settings: S3Settings,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "shot_030.blend"
    data = write(path, 40 * MiB)  # 8 parts of 5 MiB
    # Slowed down (4 MB/s, one part at a time) so it can be killed halfway.
    log = tmp_path / "first-run.log"
    with log.open("wb") as err_file:
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "tools.renderctl", "upload", str(path), "--parallel", "1"),
            *("--limit-rate", "4M", "--api-url", gateway_url, "--token", token),
            cwd=ROOT,
            env={**os.environ, "XDG_CACHE_HOME": str(cache)},
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
    try:
        # Its record names the session once it is created; kill it once the store holds
        # three parts.
        upload_id = ""
        async with asyncio.timeout(60):
            while not upload_id:
                records = list(cache.glob("renderctl/uploads/*.json"))
                text = records[0].read_text() if records else ""
                found = re.search(r'"upload_id":"(upl_\w+)"', text)
                upload_id = found.group(1) if found else ""
                await asyncio.sleep(0.05)
            while len(await api.held(upload_id)) < 3:
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    assert proc.returncode == -signal.SIGKILL
    held = await api.held(upload_id)
    assert 3 <= len(held) < 8
    assert (await api.get(f"/v1/uploads/{upload_id}"))["status"] == "uploading"

    code, out, err = await upload(gateway_url, token, capsys, str(path), "--parallel", "4")
    assert code == 0, err
    assert out.strip() == upload_id  # the same session, resumed
    assert (
        f"{len(held)} of 8 parts already in the store ({upload_id}); sending {8 - len(held)}" in err
    )
    assert "hashing" not in err  # the record kept the hashes
    assert f"{8 - len(held)} part(s) sent" in err
    view = await api.get(f"/v1/uploads/{upload_id}")
    assert view["status"] == "completed" and view["bytes_confirmed"] == len(data)
    assert await stored(s3, s3_settings, upload_id) == data


async def test_without_a_valid_token_nothing_is_read_or_sent(
    gateway_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("RF_API_TOKEN", raising=False)
    write(tmp_path / "a.blend", 10)
    code = await renderctl.run(["upload", str(tmp_path / "a.blend"), "--api-url", gateway_url])
    assert code == 2 and "set RF_API_TOKEN" in capsys.readouterr().err
    bad = await renderctl.run(
        ["upload", str(tmp_path / "a.blend"), "--api-url", gateway_url, "--token", new_id("x")]
    )
    err = capsys.readouterr().err
    assert bad == 1 and "renderctl: invalid_token" in err
    assert "hashing" not in err  # the token is checked before a big file is read


@pytest.mark.parametrize(
    "size",
    [1, 64 * MiB, 64 * MiB + 1, 700 * 10**9, 200 * 10**9, 5 * 2**40, 10_000 * 5 * 2**30],
)
def test_renderctl_foresees_the_servers_part_size_so_a_file_is_read_once_to_hash(
    size: int,
) -> None:
    """The whole file's hash and its parts' hashes come from one pass over the file, at the
    part size the server will choose (a 200 GB file is minutes of reading)."""
    assert planned_part_size(size) == part_plan(size).part_size_bytes
