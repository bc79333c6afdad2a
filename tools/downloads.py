"""``renderctl download``: a job's frames (or its zip archive) into a folder.

Each file comes through a presigned URL minted for it just before use (and minted again for
every retry, so an expired URL never stops a download). A file is written as
``<name>.part`` and renamed only once its size and SHA-256 match what the farm reported; a
``.part`` left by an interrupted run is continued with a Range request. A finished file
already in the folder with the right size and hash is skipped.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

import httpx

from tools.client import Api, RateLimit, backoff
from tools.progress import Progress

#: Bytes hashed at a time when checking a file already on disk.
CHUNK = 4 * 1024 * 1024


class DownloadFailed(Exception):
    """A file could not be fetched, or arrived with other bytes than the farm reported."""


@dataclass(frozen=True)
class Output:
    """One file to fetch (a frame or the archive) and where it goes, relative to the folder."""

    output_id: str
    file_name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, item: dict[str, Any]) -> Output:
        """A frame of the full render goes into the folder itself, one of a test render into
        ``test/`` (the render kind is the object key's folder); the archive as named."""
        name = PurePosixPath(str(item["file_name"]))
        if len(name.parts) != 1 or name.name in ("", ".", ".."):
            raise DownloadFailed(f"refusing the file name {item['file_name']!r}")
        kind = str(item.get("object_key", "")).rsplit("/", 2)[-2:-1]
        if kind and kind[0] not in ("full", "archive"):
            name = PurePosixPath(kind[0]) / name
        return cls(item["output_id"], str(name), item["size_bytes"], item["sha256"])


@dataclass
class DownloadOptions:
    parallel: int = 4
    show_progress: bool = True
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    #: Tries of one file (each with a fresh URL, continuing where the last one stopped).
    attempts: int = 6
    #: Bytes per second over all files, or None for as fast as the link goes.
    limit_rate: float | None = None


def file_sha256(path: Path, size: int | None = None) -> tuple[Any, int]:
    """(hash object, bytes read) of the first ``size`` bytes of ``path`` (all if None)."""
    h, read = hashlib.sha256(), 0
    with path.open("rb", buffering=0) as f:
        while size is None or read < size:
            block = f.read(CHUNK if size is None else min(CHUNK, size - read))
            if not block:
                break
            h.update(block)
            read += len(block)
    return h, read


class Fetcher:
    def __init__(self, api: Api, dest: Path, opts: DownloadOptions, progress: Progress) -> None:
        self.api = api
        self.dest = dest
        self.opts = opts
        self.progress = progress
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(60.0))
        self.limit = RateLimit(opts.limit_rate) if opts.limit_rate else None

    async def close(self) -> None:
        await self.http.aclose()

    async def mint(self, out: Output) -> str:
        answer = await self.api.call("POST", f"/v1/outputs/{out.output_id}/download-url", json={})
        return str(answer["url"])

    async def fetch(self, out: Output) -> Fetched:
        """What was done; DownloadFailed if the bytes do not match (the bad file is
        removed)."""
        target = self.dest / out.file_name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_file() and target.stat().st_size == out.size:
            h, _ = await asyncio.to_thread(file_sha256, target)
            if h.hexdigest() == out.sha256:
                return Fetched("skipped", out.size)
        self.progress.add(-self._counted(out))  # counted as done at the start: it was not
        part = target.with_name(target.name + ".part")
        got = Received(hashlib.sha256(), 0)
        if part.is_file() and part.stat().st_size <= out.size:
            got.hash, got.size = await asyncio.to_thread(file_sha256, part)
        else:
            part.write_bytes(b"")
        self.progress.add(got.size)
        resumed_from, problem = got.size, ""
        for attempt in range(1, self.opts.attempts + 1):
            if got.size == out.size:
                break
            try:
                problem = await self._get(out, part, got)
            except httpx.TransportError as e:
                problem = repr(e)
            if got.size != out.size and attempt < self.opts.attempts:
                await asyncio.sleep(backoff(attempt))
        if got.size != out.size and problem:
            raise DownloadFailed(f"{out.file_name}: {problem} (run again to continue)")
        if got.hash.hexdigest() != out.sha256:
            part.unlink()
            self.progress.add(-got.size)
            raise DownloadFailed(
                f"{out.file_name}: SHA-256 {got.hash.hexdigest()}, expected {out.sha256}:"
                " the bad file was removed"
            )
        os.replace(part, target)
        return Fetched("downloaded", resumed_from)

    def _counted(self, out: Output) -> int:
        """Bytes of ``out`` counted as done when the bar started (see :func:`download`)."""
        target = self.dest / out.file_name
        return out.size if target.is_file() and target.stat().st_size == out.size else 0

    async def _get(self, out: Output, part: Path, got: Received) -> str:
        """One GET from ``got.size`` on, appended to ``part``; the problem, or ""."""
        url = await self.mint(out)
        headers = {"Range": f"bytes={got.size}-"} if got.size else {}
        async with self.http.stream("GET", url, headers=headers) as r:
            if r.status_code == 206:
                start = r.headers.get("content-range", "").removeprefix("bytes ").split("-")[0]
                if start != str(got.size):
                    return f"the store answered range {start!r} for {got.size}"
                mode = "ab"
            elif r.status_code == 200:  # the whole file: start over
                self.progress.add(-got.size)
                got.hash, got.size, mode = hashlib.sha256(), 0, "wb"
            else:
                body = (await r.aread())[:200].decode(errors="replace")
                return f"the store answered {r.status_code} {body}"
            with part.open(mode) as f:
                async for block in r.aiter_raw():
                    if got.size + len(block) > out.size:
                        return "the store sent more bytes than the file has"
                    f.write(block)
                    got.hash.update(block)
                    got.size += len(block)
                    self.progress.add(len(block))
                    if self.limit is not None:
                        await self.limit.take(len(block))
        return ""


@dataclass(frozen=True)
class Fetched:
    """``skipped`` (already there and verified) or ``downloaded``, and the bytes that were
    on disk before (a ``.part`` continued, or the whole file when skipped)."""

    result: str
    had_bytes: int


@dataclass
class Received:
    """What a ``.part`` file holds so far: its hash and size."""

    hash: Any
    size: int


async def job_outputs(api: Api, job_id: str) -> tuple[str, list[dict[str, Any]], Any]:
    """(the job's status, every output of every page, the archive or None)."""
    items: list[dict[str, Any]] = []
    status, archive = "", None
    async for page in api.pages(f"/v1/jobs/{job_id}/outputs", {"limit": 200}):
        status, archive = page["job_status"], page.get("archive")
        items += page["items"]
    return status, items, archive


async def download(
    api: Api, job_id: str, dest: Path, opts: DownloadOptions, archive: bool = False
) -> dict[str, Any]:
    """Fetch a job's frames (or its archive) into ``dest``; a report of what was done.
    Raises DownloadFailed after trying every file if any failed."""
    status, items, zip_item = await job_outputs(api, job_id)
    if archive:
        state = zip_item["status"] if zip_item else "none: the job has not completed"
        if state != "ready":
            raise DownloadFailed(f"{job_id}: the archive is not ready ({state})")
        items = [zip_item]
    deleted = [i for i in items if i.get("status") == "deleted"]
    outputs = [Output.of(i) for i in items if i.get("status") != "deleted"]
    if len({o.file_name for o in outputs}) != len(outputs):
        raise DownloadFailed(f"{job_id}: two outputs share a file name")
    await asyncio.to_thread(dest.mkdir, parents=True, exist_ok=True)
    gone = f"; {len(deleted)} deleted when their retention ended" if deleted else ""
    print(
        f"{job_id} ({status}): {len(outputs)} file(s) into {dest}{gone}",
        file=opts.stream,
        flush=True,
    )
    progress = Progress(
        "downloading", sum(o.size for o in outputs), stream=opts.stream, enabled=opts.show_progress
    )
    fetcher = Fetcher(api, dest, opts, progress)
    progress.add(sum(fetcher._counted(o) for o in outputs))
    slots = asyncio.Semaphore(opts.parallel)

    async def one(out: Output) -> Fetched | BaseException:
        async with slots:
            try:
                return await fetcher.fetch(out)
            except (DownloadFailed, OSError) as e:
                return e

    try:
        results = await asyncio.gather(*(one(o) for o in outputs))
    finally:
        await fetcher.close()
    failed = [r for r in results if isinstance(r, BaseException)]
    done = sum(1 for r in results if isinstance(r, Fetched) and r.result == "downloaded")
    progress.finish(f"{done} downloaded, {len(outputs) - done - len(failed)} already here")
    if failed:
        raise DownloadFailed("; ".join(str(e) for e in failed))
    return {
        "job_id": job_id,
        "job_status": status,
        "directory": str(dest),
        "files": [
            {
                "file_name": o.file_name,
                "size_bytes": o.size,
                "sha256": o.sha256,
                "result": r.result,
                "had_bytes": r.had_bytes,
            }
            for o, r in zip(outputs, results, strict=True)
            if isinstance(r, Fetched)
        ],
    }
