"""Staging scenes to the farm: the scene a job renders, and the upload service's staging
events (``upload.SceneStaging*``, stream ``staging-<job id>``) and commands.

A job renders a completed scene upload or a manifest (complete, or still waiting for
files: its staging then waits for each file's upload). Before its render is queued
the upload service copies that scene from the scenes bucket to where the farm's workers
read scenes, under a path named by the owner and the scene's content hash; a later job on
the same content finds the copy there and reuses it.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.text import IdText, Reason

#: Staged scenes live under ``<stage root>/<STAGED_DIR>/<owner>/<content sha256>/``.
STAGED_DIR = "staged"
#: Written last into a staged folder by the stager (what it holds, all verified): not a
#: file of the scene.
STAGED_MARKER = ".rf-staged.json"
#: Written first into the folder of a manifest scene's needed files
#: (``<STAGED_DIR>/<NEEDED_DIR>/<job id>/``): every file the scene will hold and where the
#: staged folder will be, so the scene check judges "missing" against the manifest, not
#: against what is copied yet. Not a file of the scene.
STAGING_LISTING = ".rf-staging.json"
#: Under ``<STAGED_DIR>/``: one folder per job holding (hard links to) the files its test
#: frames need, readable while the rest of its scene is still being copied.
NEEDED_DIR = ".needed"
#: Under ``<STAGED_DIR>/``: the content of each manifest file, staged as soon as its upload
#: completed, at ``<CONTENT_DIR>/<owner>/<sha256>`` (one file per content, verified); a
#: job's staging hard-links it instead of fetching it from the bucket.
CONTENT_DIR = ".content"


class SceneKind(StrEnum):
    upload = "upload"  # one scene file, uploaded as one upload session (upl_...)
    manifest = "manifest"  # a folder of files sent as a manifest (man_...)


class StagingStatus(StrEnum):
    requested = "requested"  # recorded; the stager has not started copying
    copying = "copying"
    staged = "staged"  # on the farm's scene root, verified
    failed = "failed"
    cancelled = "cancelled"


FINISHED_STAGING_STATUSES = frozenset(
    {StagingStatus.staged, StagingStatus.failed, StagingStatus.cancelled}
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SceneRef(_Model):
    """The scene a job renders, as resolved when the job was created (the caller's own,
    complete upload or manifest)."""

    scene_id: str = Field(description="The upload (upl_...) or manifest (man_...) id.")
    kind: SceneKind = Field(description="A single uploaded file, or a manifest of files.")
    main_file: str = Field(
        description="The file the farm opens: the upload's file name, or the manifest's"
        " main file (a path relative to the manifest's root)."
    )
    file_count: int = Field(ge=1, description="Files in the scene (1 for an upload).")
    size_bytes: int = Field(ge=0, description="Bytes of all the scene's files.")
    content_sha256: str = Field(
        description="SHA-256 (lowercase hex) of the uploaded file, or the manifest's content"
        " hash (of its sorted path, size and SHA-256 list)."
    )
    bucket: str | None = Field(
        default=None, description="Bucket of the uploaded file; null for a manifest."
    )
    object_key: str | None = Field(
        default=None, description="Object key of the uploaded file; null for a manifest."
    )


# --- events ------------------------------------------------------------------------------


@EVENTS.register
class SceneStagingRequested(Event):
    """A job's scene is to be staged to ``staged_key`` (relative to the farm's scene root)."""

    event_type = "upload.SceneStagingRequested"
    job_id: str
    owner_id: str
    scene: SceneRef
    staged_key: str
    at: datetime
    test_frames: list[int] = Field(
        default_factory=list,
        description="The frames whose files are copied first (none: no needed-first set).",
    )


@EVENTS.register
class SceneStagingStarted(Event):
    """The stager started copying the scene from the bucket."""

    event_type = "upload.SceneStagingStarted"
    job_id: str
    files_total: int
    bytes_total: int
    at: datetime


@EVENTS.register
class SceneStagingProgressed(Event):
    event_type = "upload.SceneStagingProgressed"
    job_id: str
    files_done: int
    bytes_done: int
    bytes_total: int
    at: datetime
    bytes_prestaged: int = Field(
        default=0,
        description="Of bytes_done, those linked from content staged as it was uploaded"
        " (not fetched from the bucket).",
    )


@EVENTS.register
class SceneFilesAwaited(Event):
    """The staging waits for files of its manifest that are not uploaded yet (a job may be
    created on a manifest still waiting for files): it goes on as each one's upload
    completes. ``needed``: some of them are files the test frames need (the test render
    waits too), else only the rest of the scene (the full render waits). Recorded when
    the staging begins to wait, again when it waits again after files arrived."""

    event_type = "upload.SceneFilesAwaited"
    job_id: str
    needed: bool = Field(description="Whether files the test frames need are among them.")
    files_waiting: int = Field(description="Files of the scene not uploaded yet.")
    bytes_waiting: int = Field(description="Their bytes.")
    needed_files_waiting: int = Field(
        description="Of files_waiting, those the test frames need (as traced so far)."
    )
    files_done: int = Field(description="Files of the scene on the farm so far.")
    bytes_done: int = Field(description="Their bytes.")
    files_total: int
    bytes_total: int
    paths: list[str] = Field(
        description="The first (by path) of the files waited for, at most 20; the test"
        " frames' files first."
    )
    at: datetime


@EVENTS.register
class SceneNeededFilesStaged(Event):
    """The files the job's test frames need (the main file, the files it references, and of
    each sequence the test frames' entries) are on the farm's scene root at ``staged_key``,
    every one's SHA-256 checked; the rest of the scene is still being copied. Only for a
    manifest scene that is copied (an upload is one file: ``SceneStaged`` says it)."""

    event_type = "upload.SceneNeededFilesStaged"
    job_id: str
    staged_key: str = Field(
        description="The main file in the needed files' folder (staged/.needed/<job id>/...)."
    )
    files: list[str] = Field(description="The needed files, relative to the scene's root.")
    bytes_needed: int
    files_total: int
    bytes_total: int
    seconds: float = Field(description="From the start of the copy until they were all there.")
    at: datetime
    bytes_prestaged: int = Field(
        default=0,
        description="Of bytes_needed, those linked from content staged as it was uploaded.",
    )


@EVENTS.register
class SceneStaged(Event):
    """The scene is on the farm's scene root, every file's SHA-256 checked. ``reused``: the
    farm held a verified copy of the same content already, and nothing was copied."""

    event_type = "upload.SceneStaged"
    job_id: str
    staged_key: str
    reused: bool
    bytes_copied: int = Field(
        description="Bytes fetched from the bucket for this staging (0 when reused)."
    )
    at: datetime
    bytes_prestaged: int = Field(
        default=0,
        description="Bytes of files whose content was staged as it was uploaded: hard-linked,"
        " not fetched (bytes_copied + bytes_prestaged: the scene's bytes, unless reused).",
    )


@EVENTS.register
class AssetStaged(Event):
    """A file a user uploaded (an asset of a manifest, stream ``asset-<owner>.<sha256>``) is
    on the farm's scene root at ``staged_key`` (``staged/.content/<owner>/<sha256>``), its
    size and SHA-256 checked, before any job needs it."""

    event_type = "upload.AssetStaged"
    owner_id: str
    sha256: str
    size_bytes: int
    staged_key: str
    seconds: float = Field(description="Of the copy from the bucket.")
    at: datetime


@EVENTS.register
class AssetStagingFailed(Event):
    """The asset cannot be staged as uploaded: its bytes in the bucket are not what was
    declared (``code``: scene_checksum_mismatch, scene_size_mismatch, scene_file_missing).
    Not tried again; a job's staging copies (and judges) the file as it always does."""

    event_type = "upload.AssetStagingFailed"
    owner_id: str
    sha256: str
    code: str
    reason: str
    at: datetime


@EVENTS.register
class AssetUnstaged(Event):
    """The asset's content staged as uploaded was removed from the farm's scene root (kept
    ``RF_STAGE_CONTENT_RETENTION_DAYS``); scenes staged from it keep their own links."""

    event_type = "upload.AssetUnstaged"
    owner_id: str
    sha256: str
    reason: str
    at: datetime


@EVENTS.register
class SceneStagingFailed(Event):
    """The scene cannot be staged; ``code`` is an error code (e.g. scene_checksum_mismatch)."""

    event_type = "upload.SceneStagingFailed"
    job_id: str
    code: str
    reason: str
    at: datetime


@EVENTS.register
class SceneStagingCancelled(Event):
    event_type = "upload.SceneStagingCancelled"
    job_id: str
    reason: str | None
    at: datetime


# --- commands (from the scheduler) -------------------------------------------------------


@COMMANDS.register
class StageScene(Command):
    """Stage a job's scene to the farm. Answers at once: the copy runs in the background,
    and its progress and end come as events. Asking again for the same job changes nothing."""

    command_type = "upload.StageScene"
    job_id: IdText
    owner_id: IdText
    scene: SceneRef
    test_frames: list[int] = Field(
        default_factory=list,
        max_length=100,
        description="The frames a test render renders first: their files are staged first.",
    )


@COMMANDS.register
class CancelStaging(Command):
    """Stop staging a job's scene (the job was cancelled). A staging that has ended, or
    that was never asked for, is left as it is."""

    command_type = "upload.CancelStaging"
    job_id: IdText
    reason: Reason | None = None


class StagingAccepted(_Model):
    """Reply to a staging command: where the staging stands."""

    job_id: str
    status: StagingStatus | None = Field(description="Null when no staging was asked for.")
    staged_key: str | None
    version: int
