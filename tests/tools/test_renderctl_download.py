"""A studio downloads a job's frames with ``renderctl download``: in parallel through URLs
minted for each file, every file checked against its size and SHA-256, a run killed halfway
continued with Range requests, a tampered partial file caught and removed, and the job's zip.

The frames are in the outputs bucket as the bridge stores them (``tests/upload/rendering``),
the gateway is served over real HTTP (``gateway_url``) and MiniStack serves the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, S3Settings
from services.upload.settings import UploadSettings
from tests.conftest import Env
from tests.fixtures import Users
from tests.processes import ROOT
from tests.tools.cli import printed
from tests.upload.rendering import frame_bytes, render
from tools import renderctl

MiB = 2**20
OWNER = "usr_01JZ0000000000000000000001"


@pytest.fixture
def upload_settings(env: Env) -> UploadSettings:
    """Archives are looked for every 0.1 s, so a completed job's zip is there at once."""
    return env.settings(
        UploadSettings, upload_min_part_bytes=5 * MiB, outputs_archive_poll_seconds=0.1
    )


@pytest.fixture
def token(users: Users) -> str:
    return users.headers(OWNER)["Authorization"].removeprefix("Bearer ")


async def rendered(
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
    url: str,
    token: str,
    frames: dict[int, bytes],
    completed: bool = True,
) -> str:
    """A job of OWNER that rendered ``frames``, once the API lists every one of them."""
    job_id = await render(
        job_service, s3, s3_settings.s3_outputs_bucket, OWNER, frames, completed=completed
    )
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as c:
        async with asyncio.timeout(20):
            while len((await c.get(f"/v1/jobs/{job_id}/outputs")).json()["items"]) < len(frames):
                await asyncio.sleep(0.05)
    return job_id


async def download(
    url: str, token: str, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, Any, str]:
    """renderctl download ... --json: (exit code, the report or None, stderr)."""
    code = await renderctl.run(["download", *args, "--json", "--api-url", url, "--token", token])
    out = capsys.readouterr()
    mine = printed(out.out)
    return code, json.loads(mine) if mine else None, out.err


def results(report: dict[str, Any]) -> dict[str, tuple[str, int]]:
    return {f["file_name"]: (f["result"], f["had_bytes"]) for f in report["files"]}


async def test_a_jobs_frames_are_downloaded_in_parallel_and_each_is_checked(
    gateway_url: str,
    token: str,
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = {n: frame_bytes(n, 300_000) for n in range(1, 7)}
    job_id = await rendered(job_service, s3, s3_settings, gateway_url, token, frames)
    dest = tmp_path / "shot_030"
    code, report, err = await download(gateway_url, token, capsys, job_id, str(dest))
    assert code == 0, err
    assert (report["job_id"], report["job_status"]) == (job_id, "completed")
    names = [f"frame_{n:04d}.png" for n in frames]
    assert results(report) == {name: ("downloaded", 0) for name in names}
    assert sorted(p.name for p in dest.iterdir()) == names  # no .part file left
    for n, data in frames.items():
        assert (dest / f"frame_{n:04d}.png").read_bytes() == data
    assert "downloading [" in err and "MB/s" in err and "ETA" in err
    assert "6 downloaded, 0 already here" in err

    # Run again: every file is there and checked, none is fetched; a frame damaged on disk
    # (same size, other bytes) is fetched again.
    (dest / "frame_0002.png").write_bytes(bytes(len(frames[2])))
    code, report, err = await download(gateway_url, token, capsys, job_id, str(dest))
    assert code == 0, err
    assert results(report)["frame_0002.png"] == ("downloaded", 0)
    assert results(report)["frame_0005.png"] == ("skipped", len(frames[5]))
    assert (dest / "frame_0002.png").read_bytes() == frames[2]
    assert "1 downloaded, 5 already here" in err


async def test_a_download_killed_halfway_continues_where_it_stopped(
    gateway_url: str,
    token: str,
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = {n: frame_bytes(n, 3 * MiB) for n in (1, 2, 3)}
    job_id = await rendered(job_service, s3, s3_settings, gateway_url, token, frames)
    dest = tmp_path / "frames"
    # Slowed down (2 MB/s, one file at a time) so it can be killed halfway through a file.
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tools.renderctl", "download", job_id, str(dest)),
        *("--parallel", "1", "--limit-rate", "2M", "--api-url", gateway_url, "--token", token),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        async with asyncio.timeout(60):
            while not [p for p in dest.glob("*.part") if p.stat().st_size >= MiB]:
                assert proc.returncode is None
                await asyncio.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    [partial] = dest.glob("*.part")
    had = partial.stat().st_size
    name = partial.name.removesuffix(".part")
    assert MiB <= had < len(frames[1])

    code, report, err = await download(gateway_url, token, capsys, job_id, str(dest))
    assert code == 0, err
    assert results(report)[name] == ("downloaded", had)  # continued from its last byte
    assert sorted(p.name for p in dest.iterdir()) == [f"frame_{n:04d}.png" for n in frames]
    for n, data in frames.items():
        assert (dest / f"frame_{n:04d}.png").read_bytes() == data


async def test_a_tampered_partial_file_is_caught_and_removed(
    gateway_url: str,
    token: str,
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = {n: frame_bytes(n, MiB) for n in (1, 2)}
    job_id = await rendered(job_service, s3, s3_settings, gateway_url, token, frames)
    dest = tmp_path / "frames"
    dest.mkdir()
    # Left by an interrupted run, then damaged: its first bytes are not the frame's.
    (dest / "frame_0001.png.part").write_bytes(b"x" * 1000)

    code, report, err = await download(gateway_url, token, capsys, job_id, str(dest))
    assert code == 1 and report is None
    assert "frame_0001.png: SHA-256 " in err and "the bad file was removed" in err
    assert sorted(p.name for p in dest.iterdir()) == ["frame_0002.png"]  # the good one stays
    assert (dest / "frame_0002.png").read_bytes() == frames[2]

    code, report, err = await download(gateway_url, token, capsys, job_id, str(dest))
    assert code == 0, err
    assert results(report) == {
        "frame_0001.png": ("downloaded", 0),
        "frame_0002.png": ("skipped", len(frames[2])),
    }
    assert (dest / "frame_0001.png").read_bytes() == frames[1]


async def archive(api: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await api.get(f"/v1/jobs/{job_id}/outputs")).json()["archive"] or {}
    return found


async def test_the_jobs_zip_is_downloaded_once_it_is_built(
    gateway_url: str,
    token: str,
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    frames = {n: frame_bytes(n) for n in (1, 2, 3)}
    running = await rendered(
        job_service, s3, s3_settings, gateway_url, token, frames, completed=False
    )
    code, _, err = await download(gateway_url, token, capsys, running, str(tmp_path), "--archive")
    assert code == 1 and "the archive is not ready (none: the job has not completed)" in err

    job_id = await rendered(job_service, s3, s3_settings, gateway_url, token, frames)
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=gateway_url, headers=bearer) as api:
        async with asyncio.timeout(20):
            while (await archive(api, job_id)).get("status") != "ready":
                await asyncio.sleep(0.05)
    dest = str(tmp_path)
    code, report, err = await download(gateway_url, token, capsys, job_id, dest, "--archive")
    assert code == 0, err
    assert results(report) == {f"{job_id}.zip": ("downloaded", 0)}
    with zipfile.ZipFile(io.BytesIO((tmp_path / f"{job_id}.zip").read_bytes())) as zf:
        assert {n: zf.read(f"frame_{n:04d}.png") for n in frames} == frames


async def test_another_users_job_has_nothing_to_download(
    gateway_url: str,
    token: str,
    users: Users,
    job_service: ServiceRuntime[Any],
    s3: S3Client,
    s3_settings: S3Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    job_id = await rendered(job_service, s3, s3_settings, gateway_url, token, {1: frame_bytes(1)})
    other = users.new()["Authorization"].removeprefix("Bearer ")
    code, report, err = await download(gateway_url, other, capsys, job_id, str(tmp_path / "x"))
    assert code == 1 and report is None and "renderctl: job_not_found" in err
    assert not (tmp_path / "x").exists()
