"""10. Uploads of a multi-GB scene, and staging it to the farm.

The gateway, the upload service, the job service and the scheduler run as their own
processes against one MiniStack; the client runs here, with renderctl's own code
(``tools/uploads.py``).

a. A sparse multi-GB file sent through the upload API and presigned part URLs (create, part
   URLs in batches, parallel PUTs with signed checksums, complete) against the same bytes
   sent straight to the same MiniStack with aioboto3 multipart (same part size, same
   parallelism, the same per-part SHA-256 checksum), rounds alternating. MB/s is of the
   parts phase (first part URL asked for to last part stored); create and complete are
   timed apart (MiniStack joins the parts in RAM at complete, the same work either way).
b. The gateway's CPU seconds (its whole process tree) per GB while the parts go up, less
   what it uses idle: it never carries a file byte, so this is only its part-URL calls. What
   a session costs it whatever its size (create, list parts, complete) is shown apart.
c. A job created on the uploaded scene: the time from ``create_job`` to its ``stage_scene``
   step succeeded (the upload service copies the scene to the farm's scene root and checks
   its SHA-256), and the same for a second job on the same scene (the staged copy reused).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import sys
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aioboto3
import httpx
from botocore.config import Config

from bench.api_bench import JOB_SPEC, Stack
from bench.cpu import tree_run_seconds
from bench.infra import Child, Infra, Servers
from bench.report import Figure
from libs.auth import issue_access_token
from libs.ids import new_id
from libs.s3 import S3Client, S3Settings, client_config
from tools.client import Api
from tools.progress import size_text
from tools.uploads import (
    LocalFile,
    PartSender,
    UploadOptions,
    complete,
    digest,
    plan,
    url_batch,
)

if TYPE_CHECKING:
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

SECTION = "10"
#: Seconds the gateway is watched idle, for what its background tasks cost per second.
IDLE_SECONDS = 5.0
GiB = 1024**3


@dataclass(frozen=True)
class UploadBenchOptions:
    size_bytes: int = 2 * GiB
    parallel: int = 4
    #: Rounds of each way (alternating: gateway, direct, gateway, ...); the best of each.
    rounds: int = 2
    #: Seconds to wait for a job's stage_scene step.
    stage_timeout: float = 600.0


@dataclass
class Round:
    parts_seconds: float
    total_seconds: float
    #: Seconds of the steps around the parts (create, plan, complete).
    steps: dict[str, float] = field(default_factory=dict)
    #: The gateway's CPU seconds in each step, the parts included.
    gateway_cpu: dict[str, float] = field(default_factory=dict)

    def rate(self, size: int) -> float:
        return size / self.parts_seconds / 1e6


async def idle_cpu(child: Child, seconds: float) -> float:
    """CPU seconds per second ``child`` uses doing nothing (its background tasks)."""
    c0, t0 = tree_run_seconds(child.pid), time.perf_counter()
    await asyncio.sleep(seconds)
    return (tree_run_seconds(child.pid) - c0) / (time.perf_counter() - t0)


def steps_text(r: Round) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in r.steps.items())


def sparse_file(path: Path, size: int) -> None:
    """``size`` bytes, nearly all a hole, with a marked first byte of every GiB."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset in range(0, size, GiB):
            f.seek(offset)
            f.write(b"R")


async def through_gateway(
    api: Api, f: LocalFile, opts: UploadOptions, gateway: Child
) -> tuple[Round, str]:
    """One upload session of ``f`` by renderctl's code: (its times and the gateway's CPU
    seconds in each step, the upload id)."""
    assert f.record is not None
    marks = [(time.perf_counter(), tree_run_seconds(gateway.pid))]
    view = await api.call(
        "POST",
        "/v1/uploads",
        json={"file_name": f.rel, "size_bytes": f.size, "sha256": f.record.sha256},
    )
    marks.append((time.perf_counter(), tree_run_seconds(gateway.pid)))
    todo = await plan(api, [(f, view)], opts)
    sender = PartSender(api, opts, opts.bar("uploading", f.size))
    try:
        marks.append((time.perf_counter(), tree_run_seconds(gateway.pid)))
        await sender.send(todo.parts)
        marks.append((time.perf_counter(), tree_run_seconds(gateway.pid)))
        done = await complete(api, sender, f, view)
    finally:
        await sender.close()
    marks.append((time.perf_counter(), tree_run_seconds(gateway.pid)))
    if done["status"] != "completed":
        raise RuntimeError(f"complete_upload answered {done}")
    names = ("create", "plan", "parts", "complete")
    steps = {n: b[0] - a[0] for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}
    cpu = {n: b[1] - a[1] for n, a, b in zip(names, marks[:-1], marks[1:], strict=True)}
    parts = steps.pop("parts")
    return Round(parts, marks[-1][0] - marks[0][0], steps, cpu), str(view["upload_id"])


async def direct(s3: S3Client, bucket: str, f: LocalFile, parallel: int) -> Round:
    """The same bytes as one aioboto3 multipart upload, ``parallel`` parts at a time, each
    read from the file and sent with its SHA-256 checksum, as the client's PUTs are."""
    assert f.record is not None
    key = f"bench/direct-{new_id('upl')}"
    ps = f.record.part_size_bytes
    t0 = time.perf_counter()
    mpu = await s3.create_multipart_upload(Bucket=bucket, Key=key, ChecksumAlgorithm="SHA256")
    slots = asyncio.Semaphore(parallel)
    fd = os.open(f.path, os.O_RDONLY)
    parts: list[CompletedPartTypeDef] = []

    async def one(number: int, sha: str) -> None:
        async with slots:
            size = min(ps, f.size - (number - 1) * ps)
            body = await asyncio.to_thread(os.pread, fd, size, (number - 1) * ps)
            checksum = base64.b64encode(bytes.fromhex(sha)).decode()
            r = await s3.upload_part(
                Bucket=bucket,
                Key=key,
                UploadId=mpu["UploadId"],
                PartNumber=number,
                Body=body,
                ChecksumSHA256=checksum,
            )
            parts.append({"PartNumber": number, "ETag": r["ETag"], "ChecksumSHA256": checksum})

    try:
        t1 = time.perf_counter()
        await asyncio.gather(*(one(n, sha) for n, sha in enumerate(f.record.part_sha256, 1)))
        t2 = time.perf_counter()
    finally:
        os.close(fd)
    t3 = time.perf_counter()
    await s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": sorted(parts, key=lambda p: p["PartNumber"])},
    )
    t4 = time.perf_counter()
    await s3.delete_object(Bucket=bucket, Key=key)
    return Round(t2 - t1, t4 - t0, {"create": t1 - t0, "complete": t4 - t3})


@contextlib.asynccontextmanager
async def direct_client(settings: S3Settings) -> AsyncIterator[S3Client]:
    """An aioboto3 client of the store as the services make one, but that does not hash each
    part's body again to sign it (botocore does over plain HTTP): the per-part checksum
    header protects the bytes, as in a presigned PUT."""
    style = settings.s3_addressing_style
    config = client_config(settings).merge(
        Config(s3={"addressing_style": style, "payload_signing_enabled": False})
    )
    session = aioboto3.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        region_name=settings.s3_region,
    )
    async with session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config) as s3:
        yield s3


async def drop_uploads(s3: S3Client, bucket: str, keep: int) -> None:
    """Delete the scene objects the gateway rounds made, but the newest ``keep``."""
    found = []
    async for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        found += page.get("Contents", [])
    found.sort(key=lambda o: o["LastModified"])
    for obj in found[: len(found) - keep] if keep else found:
        await s3.delete_object(Bucket=bucket, Key=obj["Key"])


async def stage_time(api: Api, scene_id: str, timeout: float) -> tuple[float, dict[str, Any]]:
    """Seconds from create_job on ``scene_id`` to its stage_scene step succeeded."""
    t0 = time.perf_counter()
    job = await api.call("POST", "/v1/jobs", json={**JOB_SPEC, "scene_id": scene_id})
    while True:
        steps = {s["name"]: s for s in job["steps"]}
        state = steps.get("stage_scene", {}).get("status")
        if state == "succeeded":
            return time.perf_counter() - t0, job
        if state == "failed" or job["status"] == "failed":
            raise RuntimeError(f"staging failed: {job}")
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"stage_scene not done after {timeout:.0f} s: {job}")
        await asyncio.sleep(0.05)
        job = await api.call("GET", f"/v1/jobs/{job['job_id']}")


async def grant_credits(url: str, stack: Stack, user_id: str) -> None:
    """More credits than the staging jobs hold, granted by an admin."""
    assert stack.settings is not None
    admin = issue_access_token(stack.settings, "usr_admin", "admin")
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        granted = await http.post(
            f"/v1/admin/users/{user_id}/credits",
            json={"amount_credits": "1000000.00"},
            headers={"Authorization": f"Bearer {admin}", "Idempotency-Key": uuid.uuid4().hex},
        )
        granted.raise_for_status()


async def run_uploads(infra: Infra, servers: Servers, opts: UploadBenchOptions) -> list[Figure]:
    env = {"RF_STAGE_ROOT": str(infra.root / "farm-scenes"), "RF_LOG_LEVEL": "WARNING"}
    # No scene is staged before billing holds the job's credits: the wallet and billing run.
    services = ("job", "upload", "scheduler", "wallet", "billing")
    stack = Stack(infra, servers, services=services, env=env)
    t0 = time.perf_counter()
    await stack.start()
    print(f"   gateway, {', '.join(services)} ready in {time.perf_counter() - t0:.1f} s")
    gateway = stack.gateway
    assert gateway is not None
    s3_env = infra.s3_env(stack.prefix)
    settings = S3Settings(
        s3_endpoint_url=s3_env["RF_S3_ENDPOINT_URL"],
        s3_scenes_bucket=s3_env["RF_S3_SCENES_BUCKET"],
        s3_outputs_bucket=s3_env["RF_S3_OUTPUTS_BUCKET"],
    )
    path = infra.root / "scene.bin"
    sparse_file(path, opts.size_bytes)
    uopts = UploadOptions(
        parallel=opts.parallel, show_progress=False, stream=sys.stdout, cache=infra.root / "cache"
    )
    f = LocalFile.of(path, uopts.cache)
    url = f"http://127.0.0.1:{stack.gateway_port}"
    gw_rounds: list[Round] = []
    direct_rounds: list[Round] = []
    gw_cpu = upload_cpu = idle_rate = 0.0
    gw_seconds = parts_cpu = parts_seconds = fixed_cpu = 0.0
    upload_id = ""
    try:
        user_id = new_id("usr")
        async with Api(url, stack.token(user_id)) as api, direct_client(settings) as s3:
            await grant_credits(url, stack, user_id)
            h0 = time.perf_counter()
            await digest([f], uopts)
            hash_seconds = time.perf_counter() - h0
            assert f.record is not None
            parts = len(f.record.part_sha256)
            print(
                f"  {size_text(f.size)} sparse file, {parts} parts of"
                f" {size_text(f.record.part_size_bytes)}, {opts.parallel} at a time; hashed in"
                f" {hash_seconds:.1f} s ({f.size / hash_seconds / 1e6:,.0f} MB/s)"
            )
            idle_rate = await idle_cpu(gateway, IDLE_SECONDS)
            for n in range(opts.rounds):
                c0 = tree_run_seconds(gateway.pid), stack.services["upload"].cpu_seconds()
                r, upload_id = await through_gateway(api, f, uopts, gateway)
                gw_cpu += tree_run_seconds(gateway.pid) - c0[0]
                upload_cpu += stack.services["upload"].cpu_seconds() - c0[1]
                gw_seconds += r.total_seconds
                parts_cpu += r.gateway_cpu["parts"]
                parts_seconds += r.parts_seconds
                fixed_cpu += sum(v for k, v in r.gateway_cpu.items() if k != "parts")
                gw_rounds.append(r)
                await drop_uploads(s3, settings.s3_scenes_bucket, keep=1)
                d = await direct(s3, settings.s3_scenes_bucket, f, opts.parallel)
                direct_rounds.append(d)
                print(
                    f"  round {n + 1}: presigned {r.rate(f.size):,.1f} MB/s"
                    f" ({r.total_seconds:.1f} s in all: {steps_text(r)}),"
                    f" direct {d.rate(f.size):,.1f} MB/s"
                    f" ({d.total_seconds:.1f} s in all: {steps_text(d)})"
                )
                cpu = ", ".join(f"{k} {v:.3f} s" for k, v in r.gateway_cpu.items())
                print(f"    gateway CPU: {cpu}")
            try:
                staged, job = await stage_time(api, upload_id, opts.stage_timeout)
                step = step_seconds(job)
                print(
                    f"  {job['job_id']}: create_job to stage_scene succeeded {staged:.2f} s"
                    f" (the step itself {step:.2f} s, {f.size / step / 1e6:,.0f} MB/s)"
                )
                reused, job2 = await stage_time(api, upload_id, opts.stage_timeout)
                print(f"  {job2['job_id']} on the same scene: {reused:.2f} s")
                staging = staging_figure(f.size, staged, step, reused)
            except Exception as e:  # the upload figures stand on their own
                traceback.print_exc()
                staging = Figure(
                    f"{SECTION} uploads",
                    "stage a scene to the farm",
                    float("nan"),
                    "s",
                    note=f"FAILED: {type(e).__name__}: {e}",
                )
    finally:
        stack.stop()
    best_gw = min(gw_rounds, key=lambda r: r.parts_seconds)
    best_direct = min(direct_rounds, key=lambda r: r.parts_seconds)
    gb = f.size * len(gw_rounds) / 1e9
    return [
        Figure(
            f"{SECTION} uploads",
            "presigned part upload",
            best_gw.rate(f.size),
            "MB/s",
            baseline=best_direct.rate(f.size),
            baseline_name=(
                "aioboto3 multipart straight to the same MiniStack: same bytes, part size,"
                " parallelism and per-part SHA-256 header, no body hashing to sign"
            ),
            target=0.90,
            target_on_ratio=True,
            note=(
                f"{size_text(f.size)} in {parts} parts, {opts.parallel} at a time, best of"
                f" {opts.rounds} rounds each (alternating); parts phase only: with create and"
                f" complete {best_gw.total_seconds:.1f} s vs {best_direct.total_seconds:.1f} s"
            ),
            extra={
                "presigned_parts_seconds": [r.parts_seconds for r in gw_rounds],
                "presigned_total_seconds": [r.total_seconds for r in gw_rounds],
                "direct_parts_seconds": [r.parts_seconds for r in direct_rounds],
                "direct_total_seconds": [r.total_seconds for r in direct_rounds],
                "hash_seconds": hash_seconds,
            },
        ),
        Figure(
            f"{SECTION} uploads",
            "gateway CPU per GB uploaded",
            max(0.0, parts_cpu - idle_rate * parts_seconds) / gb,
            "s/GB",
            target=0.05,  # 0.5 % of a core at 100 MB/s
            direction="max",
            note=(
                f"the gateway's threads (scheduler ns counters) while the parts went up"
                f" ({parts_seconds:.0f} s over {len(gw_rounds)} uploads: its part-URL calls,"
                f" one per {url_batch(opts.parallel)} parts), less what it uses idle"
                f" ({idle_rate:.4f} CPU s/s over {IDLE_SECONDS:.0f} s before); with idle"
                f" {parts_cpu / gb:.4f} s/GB. Create to complete, idle included:"
                f" {gw_cpu / gb:.3f} s/GB; the upload service {upload_cpu / gb:.3f} s/GB"
            ),
            extra={
                "gateway_cpu_seconds": gw_cpu,
                "idle_cpu_per_second": idle_rate,
                "gateway_cpu_by_step": [r.gateway_cpu for r in gw_rounds],
            },
        ),
        Figure(
            f"{SECTION} uploads",
            "gateway CPU per upload session",
            fixed_cpu / len(gw_rounds),
            "s",
            note=(
                "create, plan (list parts) and complete, whatever the size: complete_upload"
                " watches the session for up to 10 s while the store joins the parts"
            ),
        ),
        staging,
    ]


def step_seconds(job: dict[str, Any]) -> float:
    """How long the job's stage_scene step ran, by its own times."""
    [step] = [s for s in job["steps"] if s["name"] == "stage_scene"]
    started, finished = (datetime.fromisoformat(step[k]) for k in ("started_at", "finished_at"))
    return (finished - started).total_seconds()


def staging_figure(size: int, staged: float, step: float, reused: float) -> Figure:
    return Figure(
        f"{SECTION} uploads",
        f"stage a {size_text(size)} scene to the farm",
        staged,
        "s",
        note=(
            f"create_job to stage_scene succeeded ({size / staged / 1e6:,.0f} MB/s); the step"
            f" itself {step:.2f} s: read from the store, SHA-256 checked, written to the farm's"
            f" scene root; a second job on the same scene: {reused:.2f} s (reused)"
        ),
        extra={"bytes_per_second": size / staged, "step_seconds": step, "reused_seconds": reused},
    )
