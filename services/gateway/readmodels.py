"""The owners' read models as the API serves them (jobs, frames, job history, scenes,
outputs, users, keys).

The data comes only through the owners' query modules (:mod:`libs.readmodels`, ADR 0007).
Job envelopes are stored as the exact JSON text clients get, so they are served as bytes.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime, timedelta

import orjson

from contracts.errors import (
    InvalidCursor,
    JobNotFound,
    JobViewCatchingUp,
    OutputNotFound,
    SceneNotFound,
    SceneNotReady,
    SceneUploadEnded,
    UploadNotAScene,
)
from contracts.identity import ApiKeyInfo, UserProfile, UserStatus
from contracts.staging import SceneRef
from contracts.text import ID_PATTERN
from libs.readmodels.identity import IdentityQuery
from libs.readmodels.jobs import JobEvent, JobsQuery, RenderedFrame
from libs.readmodels.outputs import JobOutput, OutputsQuery
from libs.readmodels.scenes import ScenesQuery
from services.gateway.schemas import JobState

_CATCH_UP_SECONDS = 5.0
#: The largest value an ``integer`` (int4) column holds: positions and frame numbers.
INT4_MAX = 2**31 - 1


def encode_cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    padded = cursor + "=" * (-len(cursor) % 4)
    try:
        value = base64.b64decode(padded, altchars=b"-_", validate=True).decode()
    except ValueError:
        value = ""
    if not value or not value.isascii() or not value.isprintable() or len(value) > 200:
        raise InvalidCursor("the cursor is not one we issued")
    return value


def int_cursor(cursor: str | None) -> int | None:
    """A cursor holding a position in an int4 column (a version, a frame number)."""
    value = decode_cursor(cursor)
    if value is None:
        return None
    if not (value.isdigit() and len(value) <= 10 and int(value) <= INT4_MAX):
        raise InvalidCursor("the cursor is not one we issued")
    return int(value)


def page_body(items: list[str], next_cursor: str | None) -> bytes:
    """``{"items": [...], "next_cursor": ...}`` from items that are already JSON text."""
    cursor = "null" if next_cursor is None else f'"{next_cursor}"'
    return f'{{"items":[{",".join(items)}],"next_cursor":{cursor}}}'.encode()


class ReadModels:
    """The gateway's use of the owners' read models, through their query modules (ADR 0007):
    cursors, pages of stored bytes and the errors the API answers. No SQL here."""

    def __init__(
        self,
        jobs: JobsQuery,
        identity: IdentityQuery,
        scenes: ScenesQuery,
        outputs: OutputsQuery,
    ) -> None:
        self.jobs = jobs
        self.identity = identity
        self.scenes = scenes
        self.outputs = outputs

    async def scene(self, scene_id: str, owner_id: str) -> SceneRef:
        """The caller's scene a job may render: a completed scene upload, or a manifest
        (complete, or still waiting for files that are being uploaded: the job's staging
        waits for them). Someone else's is a 404, like a missing one."""
        found = await self.scenes.scene(scene_id, owner_id)
        if found is None:
            raise SceneNotFound(f"no upload or manifest {scene_id}", scene_id=scene_id)
        if found.upload_kind == "asset":
            raise UploadNotAScene(
                f"upload {scene_id} is a file of a manifest; create the job on the manifest",
                scene_id=scene_id,
            )
        if not found.renderable:
            raise SceneNotReady(
                f"{scene_id} is {found.status}: only a completed upload or a manifest can be"
                " rendered",
                scene_id=scene_id,
                status=found.status,
            )
        if not found.ready and (ended := await self.scenes.ended_file(scene_id, owner_id)):
            raise SceneUploadEnded(
                f"{ended.path} of {scene_id} is not uploaded and its upload session"
                f" {ended.status}: submit the manifest again for a new one",
                path=ended.path,
                sha256=ended.sha256,
                status=ended.status,
            )
        return found.ref()

    async def job_envelope(self, job_id: str, owner_id: str | None, min_version: int = 0) -> str:
        """The job's envelope JSON; someone else's job is a 404, like a missing one.

        With ``min_version`` (the stream version a command just reached) it waits until the
        read model shows at least that version: a client always reads its own writes.
        """
        if min_version:
            found = await self.jobs.wait_for_envelope(
                job_id, owner_id, min_version, _CATCH_UP_SECONDS
            )
        else:
            found = await self.jobs.envelope(job_id, owner_id)
        if found is not None and found.version >= min_version:
            return found.envelope
        if min_version:
            raise JobViewCatchingUp(
                f"job {job_id} was changed but its view is still catching up; retry the same"
                " request (with the same Idempotency-Key) to read it",
                job_id=job_id,
            )
        raise JobNotFound(f"no job {job_id}", job_id=job_id)

    async def list_jobs(
        self, owner_id: str | None, status: str | None, cursor: str | None, limit: int
    ) -> bytes:
        """Newest first (job ids sort by creation time), ``limit`` per page."""
        after = decode_cursor(cursor)
        rows = await self.jobs.list_envelopes(owner_id, status, after, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].job_id) if more and rows else None
        return page_body([r.envelope for r in rows], next_cursor)

    async def job_state(self, job_id: str, owner_id: str | None) -> JobState:
        """Where the job stands (for pages about a job); someone else's job is a 404."""
        return JobState.of(orjson.loads(await self.job_envelope(job_id, owner_id)))

    async def admin_jobs(
        self,
        *,
        owner_id: str | None,
        status: str | None,
        render_kinds: list[str] | None,
        created_before: datetime | None,
        cursor: str | None,
        limit: int,
    ) -> bytes:
        """Every user's jobs, newest first, filtered (administrators)."""
        rows = await self.jobs.admin_envelopes(
            owner_id=owner_id,
            status=status,
            render_kinds=render_kinds,
            created_before=created_before,
            before_job_id=decode_cursor(cursor),
            limit=limit + 1,
        )
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].job_id) if more and rows else None
        return page_body([r.envelope for r in rows], next_cursor)

    async def stuck_jobs(self, now: datetime, minutes: int, limit: int) -> bytes:
        """Jobs not finished with no progress event for ``minutes``, the longest first:
        ``{"minutes", "items": [{"job", "last_progress_at", "idle_seconds"}]}``."""
        rows = await self.jobs.stuck(now - timedelta(minutes=minutes), limit)
        items = [
            f'{{"job":{r.envelope},"last_progress_at":"{r.progressed_at.isoformat()}",'
            f'"idle_seconds":{int((now - r.progressed_at).total_seconds())}}}'
            for r in rows
        ]
        return f'{{"minutes":{minutes},"items":[{",".join(items)}]}}'.encode()

    async def job_events(self, job_id: str, after_version: int, limit: int) -> list[JobEvent]:
        return await self.jobs.events(job_id, after_version, limit)

    async def job_frames(self, job_id: str, after_frame: int, limit: int) -> list[RenderedFrame]:
        return await self.jobs.frames(job_id, after_frame, limit)

    async def job_outputs(
        self, job_id: str, cursor: str | None, limit: int
    ) -> tuple[list[JobOutput], JobOutput | None, str | None]:
        """The job's frame outputs by output id, ``limit`` per page, its archive, and the
        next cursor."""
        after = decode_cursor(cursor) or ""
        if after and not (after.startswith(f"{job_id}-") and re.fullmatch(ID_PATTERN, after)):
            raise InvalidCursor("the cursor is not one we issued for this job")
        rows, archive = await self.outputs.page(job_id, after, limit + 1)
        items = rows[:limit]
        more = len(rows) > limit
        return items, archive, (encode_cursor(items[-1].output_id) if more else None)

    async def output(self, output_id: str, owner_id: str | None) -> JobOutput:
        """One output; someone else's is a 404, like a missing one."""
        found = await self.outputs.output(output_id, owner_id)
        if found is None:
            raise OutputNotFound(f"no output {output_id}", output_id=output_id)
        return found

    async def user(self, user_id: str) -> UserProfile | None:
        return await self.identity.user(user_id)

    async def users(
        self, status: str | None, cursor: str | None, limit: int
    ) -> tuple[list[UserProfile], str | None]:
        after = decode_cursor(cursor)
        rows = await self.identity.users(UserStatus(status) if status else None, after, limit + 1)
        items = rows[:limit]
        return items, (encode_cursor(items[-1].user_id) if len(rows) > limit else None)

    async def api_keys(self, user_id: str) -> list[ApiKeyInfo]:
        return await self.identity.api_keys(user_id)
