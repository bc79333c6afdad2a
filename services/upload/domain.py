"""Aggregates of the upload service: pure decisions, no I/O."""

from __future__ import annotations

import re
from datetime import datetime

from contracts.base import Event
from contracts.errors import FieldProblem, ValidationFailed
from contracts.staging import (
    FINISHED_STAGING_STATUSES,
    SceneKind,
    SceneRef,
    SceneStaged,
    SceneStagingCancelled,
    SceneStagingFailed,
    SceneStagingProgressed,
    SceneStagingRequested,
    SceneStagingStarted,
    StagingStatus,
)
from libs.eventstore.aggregate import Aggregate

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------

#: Staged scenes live under ``<stage root>/<STAGED_DIR>/``.
STAGED_DIR = "staged"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def staged_dir(owner_id: str, content_sha256: str) -> str:
    """Where a scene's files are staged, relative to the farm's scene root:
    ``staged/<owner>/<content sha256>``.

    Keyed by content, so a later job on the same content finds the copy, and by owner, so
    a user's staging never reuses (and its speed never reveals) another user's files."""
    return f"{STAGED_DIR}/{owner_id}/{content_sha256}"


def staged_name(scene: SceneRef) -> str:
    """The path of the scene's main file inside its staged folder: a manifest's main file
    as it is (its textures are found relative to it), an upload's file name with every
    character a farm path may not hold replaced by ``_``."""
    if scene.kind is SceneKind.manifest:
        return scene.main_file
    name = _UNSAFE_NAME.sub("_", scene.main_file).lstrip(".")[:200]
    return name or "scene"


def staged_key(owner_id: str, scene: SceneRef) -> str:
    """The scene file the farm opens, relative to its scene root."""
    return f"{staged_dir(owner_id, scene.content_sha256)}/{staged_name(scene)}"


class SceneStaging(Aggregate):
    """Staging one job's scene to the farm (stream ``staging-<job id>``)."""

    stream_prefix = "staging"

    job_id: str = ""
    owner_id: str = ""
    scene: SceneRef | None = None
    staged_key: str = ""
    status: StagingStatus | None = None
    bytes_done: int = 0

    def apply(self, event: Event) -> None:
        match event:
            case SceneStagingRequested():
                self.job_id, self.owner_id = event.job_id, event.owner_id
                self.scene, self.staged_key = event.scene, event.staged_key
                self.status = StagingStatus.requested
            case SceneStagingStarted():
                self.status = StagingStatus.copying
            case SceneStagingProgressed():
                self.bytes_done = event.bytes_done
            case SceneStaged():
                self.status = StagingStatus.staged
            case SceneStagingFailed():
                self.status = StagingStatus.failed
            case SceneStagingCancelled():
                self.status = StagingStatus.cancelled
            case _:
                raise TypeError(f"scene staging cannot apply {type(event).__name__}")

    @property
    def exists(self) -> bool:
        return self.status is not None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STAGING_STATUSES

    def request(self, job_id: str, owner_id: str, scene: SceneRef, now: datetime) -> list[Event]:
        """Ask for the job's scene to be staged. Asking again changes nothing: a job has one
        scene."""
        if self.exists:
            return []
        if not _SHA256.fullmatch(scene.content_sha256):
            problem = FieldProblem(
                loc=["scene", "content_sha256"],
                message="must be 64 lowercase hex digits",
                type="sha256",
            )
            raise ValidationFailed(
                f"scene {scene.scene_id} has no usable content hash", errors=[problem]
            )
        return self.record(
            SceneStagingRequested(
                job_id=job_id,
                owner_id=owner_id,
                scene=scene,
                staged_key=staged_key(owner_id, scene),
                at=now,
            )
        )

    def start(self, files_total: int, bytes_total: int, now: datetime) -> list[Event]:
        """The copy starts. A staging started before (and restarted after a crash), or one
        that has ended, changes nothing."""
        if self.status is not StagingStatus.requested:
            return []
        return self.record(
            SceneStagingStarted(
                job_id=self.job_id, files_total=files_total, bytes_total=bytes_total, at=now
            )
        )

    def progress(
        self, files_done: int, bytes_done: int, bytes_total: int, now: datetime
    ) -> list[Event]:
        """Bytes copied so far; only a copy in progress that moved on records it."""
        if self.status is not StagingStatus.copying or bytes_done <= self.bytes_done:
            return []
        return self.record(
            SceneStagingProgressed(
                job_id=self.job_id,
                files_done=files_done,
                bytes_done=bytes_done,
                bytes_total=bytes_total,
                at=now,
            )
        )

    def staged(self, reused: bool, bytes_copied: int, now: datetime) -> list[Event]:
        if self.finished:
            return []
        return self.record(
            SceneStaged(
                job_id=self.job_id,
                staged_key=self.staged_key,
                reused=reused,
                bytes_copied=bytes_copied,
                at=now,
            )
        )

    def fail(self, code: str, reason: str, now: datetime) -> list[Event]:
        if self.finished:
            return []
        return self.record(SceneStagingFailed(job_id=self.job_id, code=code, reason=reason, at=now))

    def cancel(self, reason: str | None, now: datetime) -> list[Event]:
        """Stop staging. A staging that has ended, or was never asked for, changes nothing."""
        if not self.exists or self.finished:
            return []
        return self.record(SceneStagingCancelled(job_id=self.job_id, reason=reason, at=now))


# --- outputs ------------------------------------------------------------------------------
