"""Render jobs: enums, events (``job.*``), commands and results."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contracts.base import COMMANDS, EVENTS, Command, Event, JsonDict
from contracts.scenes import FindingSeverity, SceneFinding
from contracts.staging import SceneRef
from contracts.text import IdText, Line, Reason, TextRefused, check_line
from libs.keys import KeyRefused, check_key

MAX_FRAMES_PER_JOB = 100_000


class JobStatus(StrEnum):
    submitted = "submitted"  # accepted, waiting for scene processing
    preparing = "preparing"  # staging the scene, scene check, repathing, render settings
    ready = "ready"  # prepared; a test render or the full render can start
    test_rendering = "test_rendering"
    test_render_ready = "test_render_ready"
    queued = "queued"  # full render ordered, waiting for farm capacity
    rendering = "rendering"
    paused = "paused"  # e.g. the cost cap was reached
    cancelling = "cancelling"  # cancel asked; waiting for the farm to stop
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.completed, JobStatus.failed, JobStatus.cancelled})


class JobPriority(StrEnum):
    low = "low"
    normal = "normal"
    high = "high"
    urgent = "urgent"


class Renderer(StrEnum):
    blender_cycles = "blender_cycles"
    blender_eevee = "blender_eevee"


class OutputFormat(StrEnum):
    png = "png"
    exr = "exr"
    jpeg = "jpeg"


class StepName(StrEnum):
    stage_scene = "stage_scene"  # the scene is copied to where the farm reads it
    scene_check = "scene_check"
    repath = "repath"
    render_settings = "render_settings"
    test_render = "test_render"
    render = "render"


class StepStatus(StrEnum):
    pending = "pending"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    skipped = "skipped"
    cancelled = "cancelled"


class LogLevel(StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class JobAction(StrEnum):
    """What a client may do next with a job."""

    update = "update"  # name, priority, cost cap
    update_render_settings = "update_render_settings"  # frames, resolution, render settings
    test_render = "test_render"  # POST /v1/jobs/{id}/test-render
    start_full_render = "start_full_render"  # POST /v1/jobs/{id}/start
    cancel = "cancel"


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FrameRange(_Model):
    """Frames ``start``..``end`` inclusive, every ``step``-th frame."""

    start: StrictInt = Field(ge=0, le=1_000_000, description="First frame, inclusive.")
    end: StrictInt = Field(ge=0, le=1_000_000, description="Last frame, inclusive.")
    step: StrictInt = Field(default=1, ge=1, le=10_000, description="Render every n-th frame.")

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.end < self.start:
            raise PydanticCustomError(
                "invalid_frame_range",
                "frame range end {end} is before start {start}",
                {"start": self.start, "end": self.end},
            )
        if self.frame_count > MAX_FRAMES_PER_JOB:
            raise PydanticCustomError(
                "invalid_frame_range",
                "frame range has {count} frames; at most {limit} per job",
                {"count": self.frame_count, "limit": MAX_FRAMES_PER_JOB},
            )
        return self

    @property
    def frame_count(self) -> int:
        return (self.end - self.start) // self.step + 1

    def frames(self) -> range:
        return range(self.start, self.end + 1, self.step)


def default_test_frames(frame_range: FrameRange) -> list[int]:
    """The first, middle and last frame of the range (fewer when it has fewer)."""
    frames = list(range(frame_range.start, frame_range.end + 1, frame_range.step))
    picked = {frames[0], frames[len(frames) // 2], frames[-1]}
    return sorted(picked)


class Resolution(_Model):
    width: StrictInt = Field(ge=16, le=16384, description="Output width in pixels.")
    height: StrictInt = Field(ge=16, le=16384, description="Output height in pixels.")


class RenderSettings(_Model):
    output_format: OutputFormat = Field(
        default=OutputFormat.png, description="Image format of rendered frames."
    )
    samples: StrictInt | None = Field(
        default=None, ge=1, le=65536, description="Samples per pixel; null keeps the scene's."
    )
    # Plain str: render settings are stored in events. Requests check it with
    # ``_camera_is_one_line`` (JobSpec, JobChanges).
    camera: str | None = Field(
        default=None, max_length=200, description="Camera object name; null keeps the scene's."
    )


def _camera_is_one_line(settings: RenderSettings | None) -> RenderSettings | None:
    if settings is not None and settings.camera is not None:
        try:
            check_line(settings.camera)
        except TextRefused as e:
            raise PydanticCustomError("text_refused", "camera " + str(e)) from None
    return settings


def _staged_key(value: str) -> str:
    try:
        return check_key(value, "scene_key")
    except KeyRefused as e:
        raise PydanticCustomError("invalid_key", str(e)) from None


CostCredits = Annotated[
    Decimal,
    Field(ge=0, max_digits=14, decimal_places=4, description="An amount of credits."),
]
#: What a scene id looks like: an upload (``upl_``) or a manifest (``man_``) id.
SCENE_ID_PATTERN = r"^(upl|man)_[0-9A-HJKMNP-TV-Z]{26}$"
SceneId = Annotated[
    str,
    Field(
        min_length=30,
        max_length=30,
        pattern=SCENE_ID_PATTERN,
        description=(
            "The scene to render: the id of your completed scene upload (upl_..., from"
            " create_upload) or of your complete manifest (man_..., from create_manifest)."
        ),
    ),
]
#: Where a staged scene's file is, relative to the farm's scene root (checked as a key).
StagedKey = Annotated[str, AfterValidator(_staged_key)]
JobName = Annotated[Line, Field(min_length=1, max_length=200, description="Display name.")]


class FrameThumbnail(_Model):
    """A small JPEG of a rendered frame, stored next to it in the outputs bucket
    (``contracts/outputs.py`` ``thumbnail_key``)."""

    object_key: str = Field(description="Key of the thumbnail in the outputs bucket.")
    width: int = Field(ge=1, description="Width in pixels.")
    height: int = Field(ge=1, description="Height in pixels.")
    size_bytes: int = Field(ge=0, description="File size in bytes.")
    sha256: str = Field(description="SHA-256 of the file, lowercase hex.")


class FrameOutput(_Model):
    """A rendered image file, as stored in the outputs bucket (``contracts/outputs.py``).

    ``output_id`` and ``object_key`` are null only for frames recorded before frames were
    stored in object storage (history from then names a farm path, which is dropped)."""

    frame: int = Field(description="Frame number.")
    output_id: str | None = Field(description="The output's id (download it by this id).")
    object_key: str | None = Field(description="Key of the file in the outputs bucket.")
    size_bytes: int = Field(ge=0, description="File size in bytes.")
    sha256: str = Field(description="SHA-256 of the file, lowercase hex.")
    thumbnail: FrameThumbnail | None = Field(
        default=None,
        description="A small preview of the frame; null when none was made (an OpenEXR"
        " frame, a frame recorded before thumbnails were made).",
    )


def frames_stored_in_object_storage(data: JsonDict, field: str) -> JsonDict:
    """Upcast an event whose ``field`` lists v1 frame outputs: the farm ``path`` is dropped,
    and the frames were never stored in the outputs bucket (no output id, no key)."""
    frames = [
        {**{k: v for k, v in f.items() if k != "path"}, "output_id": None, "object_key": None}
        for f in data[field]
    ]
    return {**data, field: frames}


# --- events ------------------------------------------------------------------------------


@EVENTS.register
class JobSubmitted(Event):
    """A job was accepted. ``scene`` is the upload or manifest it renders (staged before the
    render); jobs submitted before uploads existed have none, only the ``scene_key`` the
    farm opened as given (schema 1)."""

    event_type = "job.JobSubmitted"
    schema_version = 2
    job_id: str
    owner_id: str
    name: str
    scene: SceneRef | None = None
    scene_key: str | None = None
    renderer: Renderer
    frame_range: FrameRange
    chunk_size: int
    resolution: Resolution
    render_settings: RenderSettings
    priority: JobPriority
    cost_cap_credits: Decimal | None
    submitted_at: datetime
    #: The API key the job was submitted with (its spend caps apply); null for a session.
    api_key_id: str | None = None
    #: False: the full render waits for ``job.JobFullRenderReleased`` (a test render first).
    start_full_render: bool = True


class TestRenderStatus(StrEnum):
    __test__ = False  # not a pytest test class

    requested = "requested"  # asked for; waiting for the scene, the credits or the farm
    rendering = "rendering"  # ordered from the farm (its frames are queued there or render)
    completed = "completed"  # every frame rendered
    failed = "failed"


class TestRenderFrame(_Model):
    """One frame of a test render, as the farm rendered and measured it."""

    __test__ = False  # not a pytest test class

    output: FrameOutput = Field(description="The stored image (download it by output_id).")
    task_id: int = Field(description="The farm task that rendered it.")
    render_seconds: float = Field(description="The farm task's render time.")
    peak_memory_bytes: int | None = Field(
        description="The render's peak memory on the farm; null when not measured."
    )
    worker: str = Field(description="The farm worker that rendered it.")


#: At most this many frames in one test render.
MAX_TEST_FRAMES = 10


class TestRenderQuality(_Model):
    """What a test render's frames render at, against the job's own settings: a smaller
    image or fewer samples give a faster preview; the re-estimate scales its measured seconds
    back up to the job's settings (:meth:`work_factor`)."""

    __test__ = False  # not a pytest test class

    resolution_percent: StrictInt = Field(
        default=100,
        ge=10,
        le=100,
        description="Each side of the image as a percentage of the job's resolution (at least"
        " 16 pixels); 100: the job's own size.",
    )
    samples: StrictInt | None = Field(
        default=None,
        ge=1,
        le=65536,
        description="Samples per pixel of the test frames; null: the job's (or the scene's).",
    )

    def resolution_of(self, job: Resolution) -> Resolution:
        """The test frames' size for a job of size ``job``."""

        def side(pixels: int) -> int:
            return max(16, (pixels * self.resolution_percent + 50) // 100)

        return Resolution(width=side(job.width), height=side(job.height))

    def settings_of(self, job: RenderSettings) -> RenderSettings:
        """The test frames' render settings for a job's ``job``."""
        return job if self.samples is None else job.model_copy(update={"samples": self.samples})

    def work_factor(
        self, resolution: Resolution, settings: RenderSettings, scene_samples: int
    ) -> Decimal:
        """How many times a test frame's work a frame at the job's settings is: pixels times
        samples, with ``scene_samples`` standing for a scene's own samples where the job
        leaves them to the scene. 1 at the job's own settings."""
        test = self.resolution_of(resolution)
        job_samples = settings.samples or scene_samples
        test_samples = self.samples or job_samples
        job_work = resolution.width * resolution.height * job_samples
        return Decimal(job_work) / Decimal(test.width * test.height * test_samples)


@EVENTS.register
class JobTestRenderRequested(Event):
    """A test render of ``frames`` was asked for, due by ``deadline_at``; with
    ``budget_credits`` the full render starts by itself if the re-estimate is within it."""

    event_type = "job.JobTestRenderRequested"
    job_id: str
    render_id: str
    frames: list[int]
    deadline_at: datetime
    budget_credits: Decimal | None
    at: datetime
    #: Recorded before test renders could be reduced: the job's own settings.
    quality: TestRenderQuality = Field(default_factory=TestRenderQuality)


@EVENTS.register
class JobTestRenderStarted(Event):
    event_type = "job.JobTestRenderStarted"
    job_id: str
    render_id: str
    at: datetime


@EVENTS.register
class JobTestRenderFramesRendered(Event):
    event_type = "job.JobTestRenderFramesRendered"
    job_id: str
    render_id: str
    frames: list[TestRenderFrame]
    at: datetime


@EVENTS.register
class JobTestRenderCompleted(Event):
    event_type = "job.JobTestRenderCompleted"
    job_id: str
    render_id: str
    at: datetime


@EVENTS.register
class JobTestRenderFailed(Event):
    event_type = "job.JobTestRenderFailed"
    job_id: str
    render_id: str
    reason: str
    at: datetime


@EVENTS.register
class JobTestRenderDeadlineMissed(Event):
    """The test render was not ready by its deadline (it goes on: the frames still come)."""

    event_type = "job.JobTestRenderDeadlineMissed"
    job_id: str
    render_id: str
    deadline_at: datetime
    at: datetime


class FullRenderStartedBy(StrEnum):
    user = "user"  # POST /v1/jobs/{id}/start
    budget = "budget"  # the test render's re-estimate was within start_full_render_if_within


@EVENTS.register
class JobFullRenderReleased(Event):
    """A job submitted with ``start_full_render=false`` may start its full render."""

    event_type = "job.JobFullRenderReleased"
    job_id: str
    by: FullRenderStartedBy
    at: datetime


@EVENTS.register
class JobRenamed(Event):
    event_type = "job.JobRenamed"
    job_id: str
    name: str


@EVENTS.register
class JobPriorityChanged(Event):
    event_type = "job.JobPriorityChanged"
    job_id: str
    priority: JobPriority


@EVENTS.register
class JobCostCapChanged(Event):
    event_type = "job.JobCostCapChanged"
    job_id: str
    cost_cap_credits: Decimal | None


@EVENTS.register
class JobFramesChanged(Event):
    event_type = "job.JobFramesChanged"
    job_id: str
    frame_range: FrameRange
    chunk_size: int


@EVENTS.register
class JobRenderSettingsChanged(Event):
    event_type = "job.JobRenderSettingsChanged"
    job_id: str
    resolution: Resolution
    render_settings: RenderSettings


@EVENTS.register
class JobStepStarted(Event):
    event_type = "job.JobStepStarted"
    job_id: str
    step: StepName
    at: datetime


@EVENTS.register
class JobStepProgressed(Event):
    event_type = "job.JobStepProgressed"
    job_id: str
    step: StepName
    progress_percent: float
    at: datetime


@EVENTS.register
class JobStepLogged(Event):
    event_type = "job.JobStepLogged"
    job_id: str
    step: StepName
    level: LogLevel
    message: str
    at: datetime


@EVENTS.register
class JobStepSucceeded(Event):
    event_type = "job.JobStepSucceeded"
    job_id: str
    step: StepName
    at: datetime


@EVENTS.register
class JobStepFailed(Event):
    """A step failed; ``code`` is a stable error code when the failure has one (schema 2)."""

    event_type = "job.JobStepFailed"
    schema_version = 2
    job_id: str
    step: StepName
    error: str
    code: str | None = None
    at: datetime


@EVENTS.register
class JobStepSkipped(Event):
    event_type = "job.JobStepSkipped"
    job_id: str
    step: StepName
    reason: str


@EVENTS.register
class JobSceneStaged(Event):
    """The job's scene is where the farm reads it: ``scene_key``, relative to the farm's
    scene root, is what the render opens. ``reused``: a copy staged earlier was used."""

    event_type = "job.JobSceneStaged"
    job_id: str
    scene_key: str
    reused: bool
    at: datetime


@EVENTS.register
class JobSceneNeededFilesStaged(Event):
    """The files the job's test frames need are where the farm reads them, at
    ``scene_key`` (relative to the farm's scene root), while the rest of the scene is still
    being staged: the scene steps may run on them, and a test render after them."""

    event_type = "job.JobSceneNeededFilesStaged"
    job_id: str
    scene_key: str
    files: int
    bytes_staged: int
    at: datetime


#: The code a job fails with when its scene check found an error.
SCENE_CHECK_FAILED = "scene_check_failed"
#: The steps the scene workers run, in order, after the scene is staged.
SCENE_STEPS = (StepName.scene_check, StepName.repath, StepName.render_settings)


@EVENTS.register
class JobSceneChecked(Event):
    """The scene check's findings and the assets it traced. A finding of severity
    ``error`` fails the step and the job (``scene_check_failed``) before any render."""

    event_type = "job.JobSceneChecked"
    job_id: str
    findings: list[SceneFinding]
    assets_total: int
    assets_missing: int
    at: datetime

    @property
    def errors(self) -> list[SceneFinding]:
        return [f for f in self.findings if f.severity is FindingSeverity.error]


@EVENTS.register
class JobScenePrepared(Event):
    """The scene is checked, repathed and carries the job's settings: ``scene_key`` (relative
    to the farm's scene root) is what the renders open from now on."""

    event_type = "job.JobScenePrepared"
    job_id: str
    scene_key: str
    at: datetime


@EVENTS.register
class JobQueued(Event):
    event_type = "job.JobQueued"
    job_id: str
    at: datetime


@EVENTS.register
class JobFramesRendered(Event):
    """A farm task finished: its frames' files, who rendered them and how long it took."""

    event_type = "job.JobFramesRendered"
    schema_version = 2  # v1 frames had the farm path, no output id or key
    job_id: str
    render_id: str
    task_id: int
    frames: list[FrameOutput]
    worker: str
    render_seconds: float
    at: datetime
    #: The task's peak memory on the farm; null when the farm did not measure it, and for
    #: tasks recorded before it was kept.
    peak_memory_bytes: int | None = None


@EVENTS.upcaster(JobFramesRendered.event_type, from_version=1)
def _frames_rendered_v1(data: JsonDict) -> JsonDict:
    return frames_stored_in_object_storage(data, "frames")


@EVENTS.register
class JobPaused(Event):
    event_type = "job.JobPaused"
    job_id: str
    reason: str
    at: datetime


@EVENTS.register
class JobResumed(Event):
    event_type = "job.JobResumed"
    job_id: str
    at: datetime


@EVENTS.register
class JobCompleted(Event):
    event_type = "job.JobCompleted"
    job_id: str
    at: datetime


@EVENTS.register
class JobFailed(Event):
    """The job failed; ``code`` is a stable error code when the failure has one (schema 2)."""

    event_type = "job.JobFailed"
    schema_version = 2
    job_id: str
    reason: str
    code: str | None = None
    at: datetime


@EVENTS.upcaster(JobSubmitted.event_type, from_version=1)
def _submitted_v1(data: JsonDict) -> JsonDict:
    """Schema 1 named the scene by its key on the farm only: no scene upload."""
    return {"scene": None, **data}


@EVENTS.upcaster(JobStepFailed.event_type, from_version=1)
def _step_failed_v1(data: JsonDict) -> JsonDict:
    return {"code": None, **data}


@EVENTS.upcaster(JobFailed.event_type, from_version=1)
def _failed_v1(data: JsonDict) -> JsonDict:
    return {"code": None, **data}


@EVENTS.register
class JobCancellationRequested(Event):
    """The job is to stop. ``code`` is set when the system stops it (``cost_cap_reached``):
    such a job ends ``failed`` with that code once the farm stopped, not ``cancelled``."""

    event_type = "job.JobCancellationRequested"
    job_id: str
    reason: str | None
    code: str | None = None
    at: datetime


class KillCause(StrEnum):
    """Why a job was stopped by someone other than its owner."""

    #: An administrator killed it (``POST /v1/admin/jobs/{id}/kill``).
    admin_kill = "admin_kill"
    #: An administrator suspended its owner (``identity.UserSuspended``).
    user_suspended = "user_suspended"


@EVENTS.register
class JobKilled(Event):
    """Someone other than the owner stopped the job: an administrator's kill, or the owner's
    suspension. Recorded with the ``JobCancellationRequested`` that starts the existing cancel
    path (the farm job is stopped, billing settles the cost). Carries what a notification to
    the owner needs."""

    event_type = "job.JobKilled"
    job_id: str
    owner_id: str
    job_name: str
    cause: KillCause
    reason: str
    #: The administrator who killed the job or suspended its owner.
    killed_by: str
    #: The job's status when it was killed.
    status: JobStatus
    at: datetime


class JobCostFigures(BaseModel):
    """A job's money after a billing event, as the job records it (``cost_version``: the
    version of the job's cost stream; an older one than recorded changes nothing)."""

    job_id: str
    cost_version: int
    status: str
    estimate_credits: Decimal | None
    estimate_low_credits: Decimal | None
    estimate_high_credits: Decimal | None
    held_credits: Decimal
    so_far_credits: Decimal
    captured_credits: Decimal
    awaiting_reason: str | None
    at: datetime


@EVENTS.register
class JobCostRecorded(JobCostFigures, Event):
    """The job's money after a billing event."""

    event_type = "job.JobCostRecorded"


@EVENTS.register
class JobCancelled(Event):
    event_type = "job.JobCancelled"
    job_id: str
    at: datetime


@EVENTS.register
class JobSlotTaken(Event):
    """An owner's active-job slot was taken by a job (stream ``owner-<user>``)."""

    event_type = "job.JobSlotTaken"
    owner_id: str
    job_id: str


@EVENTS.register
class JobSlotFreed(Event):
    event_type = "job.JobSlotFreed"
    owner_id: str
    job_id: str


# --- commands ----------------------------------------------------------------------------


class JobSpec(_Model):
    """What a client asks to render."""

    name: JobName
    scene_id: SceneId
    renderer: Renderer = Field(default=Renderer.blender_cycles, description="Render engine.")
    frame_range: FrameRange = Field(description="Frames to render.")
    chunk_size: StrictInt = Field(
        default=1, ge=1, le=1000, description="Frames per farm task (Deadline chunk size)."
    )
    resolution: Resolution = Field(description="Output resolution.")
    render_settings: RenderSettings = Field(
        default_factory=RenderSettings, description="Format, samples and camera."
    )
    priority: JobPriority = Field(default=JobPriority.normal, description="Scheduling priority.")
    cost_cap_credits: CostCredits | None = Field(
        default=None, description="Stop spending beyond this many credits; null for no cap."
    )
    start_full_render: bool = Field(
        default=True,
        description="true: the full render starts as soon as the scene is prepared. false: the"
        " job waits at ready for a test render and POST /v1/jobs/{id}/start (or the test"
        " render's start_full_render_if_within).",
    )

    check_camera = field_validator("render_settings")(_camera_is_one_line)


@COMMANDS.register
class SubmitJob(Command):
    """Submit a job for ``scene``: the caller's own complete upload or manifest, which the
    gateway resolved from ``spec.scene_id``."""

    command_type = "job.SubmitJob"
    job_id: IdText
    owner_id: IdText
    spec: JobSpec
    scene: SceneRef
    #: The API key the caller used (its spend caps apply); null for a session.
    api_key_id: IdText | None = None

    @model_validator(mode="after")
    def _scene_is_the_specs(self) -> Self:
        if self.scene.scene_id != self.spec.scene_id:
            raise ValueError(
                f"scene {self.scene.scene_id} is not the spec's scene {self.spec.scene_id}"
            )
        return self


class JobChanges(_Model):
    """Fields to change; absent fields stay as they are."""

    name: JobName | None = Field(default=None, description="New display name.")
    priority: JobPriority | None = Field(default=None, description="New scheduling priority.")
    cost_cap_credits: CostCredits | None = Field(
        default=None, description="New spending cap in credits."
    )
    clear_cost_cap: StrictBool = Field(default=False, description="True to remove the cost cap.")
    frame_range: FrameRange | None = Field(
        default=None, description="New frames to render (only before rendering starts)."
    )
    chunk_size: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="New frames per farm task (before rendering)."
    )
    resolution: Resolution | None = Field(
        default=None, description="New output resolution (only before rendering starts)."
    )
    render_settings: RenderSettings | None = Field(
        default=None, description="New format, samples, camera (only before rendering starts)."
    )

    check_camera = field_validator("render_settings")(_camera_is_one_line)


@COMMANDS.register
class UpdateJob(Command):
    command_type = "job.UpdateJob"
    job_id: IdText
    owner_id: IdText | None = Field(description="The caller's user id; null when an admin acts.")
    changes: JobChanges


@COMMANDS.register
class CancelJob(Command):
    command_type = "job.CancelJob"
    job_id: IdText
    owner_id: IdText | None = Field(description="The caller's user id; null when an admin acts.")
    reason: Reason | None = None


class JobAccepted(_Model):
    """Reply to a job command: the job's id and the stream version after the command."""

    job_id: str
    version: int


# --- commands from the scheduler (internal: the gateway never sends these) ---------------


@COMMANDS.register
class StartSceneStaging(Command):
    """The upload service started copying the job's scene to the farm."""

    command_type = "job.StartSceneStaging"
    job_id: str
    at: datetime


@COMMANDS.register
class RecordSceneStagingProgress(Command):
    """Bytes of the job's scene copied so far; a report older than one recorded changes
    nothing."""

    command_type = "job.RecordSceneStagingProgress"
    job_id: str
    bytes_done: int = Field(ge=0)
    bytes_total: int = Field(ge=0)
    at: datetime


@COMMANDS.register
class RecordSceneStaged(Command):
    """The job's scene is staged at ``scene_key`` (relative to the farm's scene root)."""

    command_type = "job.RecordSceneStaged"
    job_id: str
    scene_key: StagedKey
    reused: bool
    at: datetime


@COMMANDS.register
class RecordSceneNeededFilesStaged(Command):
    """The files the job's test frames need are staged at ``scene_key`` (relative to the
    farm's scene root); the rest is still being copied. A repeat changes nothing."""

    command_type = "job.RecordSceneNeededFilesStaged"
    job_id: str
    scene_key: StagedKey
    files: int = Field(ge=1)
    bytes_staged: int = Field(ge=0)
    at: datetime


# --- commands from the scene workers (internal) -------------------------------------------


def _scene_step(step: StepName) -> StepName:
    if step not in SCENE_STEPS:
        raise PydanticCustomError(
            "not_a_scene_step", "{step} is not a scene step", {"step": step.value}
        )
    return step


SceneStep = Annotated[StepName, AfterValidator(_scene_step)]


@COMMANDS.register
class StartJobStep(Command):
    """A scene worker started one of the scene steps. A repeat, or a start after the step
    ended, changes nothing."""

    command_type = "job.StartJobStep"
    job_id: str
    step: SceneStep
    at: datetime


@COMMANDS.register
class RecordJobStepProgress(Command):
    """How far a scene step is; a report not ahead of the last one changes nothing."""

    command_type = "job.RecordJobStepProgress"
    job_id: str
    step: SceneStep
    progress_percent: float = Field(ge=0, le=100)
    at: datetime


@COMMANDS.register
class RecordSceneChecked(Command):
    """The scene check ended with these findings: the step succeeds, or fails the job when
    a finding is an error. A repeat changes nothing."""

    command_type = "job.RecordSceneChecked"
    job_id: str
    findings: list[SceneFinding] = Field(max_length=1000)
    assets_total: int = Field(ge=0)
    assets_missing: int = Field(ge=0)
    at: datetime


@COMMANDS.register
class RecordSceneRepathed(Command):
    """The scene's asset paths now point into the farm's layout (``rewritten`` of them
    changed). A repeat changes nothing."""

    command_type = "job.RecordSceneRepathed"
    job_id: str
    rewritten: int = Field(ge=0)
    at: datetime


@COMMANDS.register
class RecordScenePrepared(Command):
    """The job's settings are in the scene at ``scene_key``: the job is ready. With
    ``skip_reason``, the repath and settings steps still pending are skipped with it (a scene
    the workers cannot rewrite, rendered as staged). A repeat changes nothing."""

    command_type = "job.RecordScenePrepared"
    job_id: str
    scene_key: StagedKey
    skip_reason: str | None = Field(default=None, max_length=400)
    at: datetime


@COMMANDS.register
class RequestTestRender(Command):
    """Render a few frames ahead of the full render (``frames``; null: the first, middle and
    last), due ``deadline_seconds`` from now. One test render at a time."""

    command_type = "job.RequestTestRender"
    job_id: IdText
    owner_id: IdText | None = Field(description="The caller's user id; null when an admin acts.")
    frames: list[StrictInt] | None = Field(default=None, min_length=1, max_length=MAX_TEST_FRAMES)
    deadline_seconds: StrictInt = Field(default=600, ge=60, le=24 * 3600)
    start_full_render_if_within: CostCredits | None = None
    quality: TestRenderQuality = Field(default_factory=TestRenderQuality)


@COMMANDS.register
class StartFullRender(Command):
    """Start the full render of a job submitted with ``start_full_render=false``."""

    command_type = "job.StartFullRender"
    job_id: IdText
    owner_id: IdText | None = Field(
        default=None, description="The caller's user id; null when an admin or billing acts."
    )
    by: FullRenderStartedBy = FullRenderStartedBy.user


@COMMANDS.register
class RecordTestRenderStarted(Command):
    command_type = "job.RecordTestRenderStarted"
    job_id: str
    render_id: str
    at: datetime


@COMMANDS.register
class RecordTestRenderFrames(Command):
    command_type = "job.RecordTestRenderFrames"
    job_id: str
    render_id: str
    frames: list[TestRenderFrame] = Field(max_length=MAX_TEST_FRAMES)
    at: datetime


@COMMANDS.register
class CompleteTestRender(Command):
    command_type = "job.CompleteTestRender"
    job_id: str
    render_id: str
    at: datetime


@COMMANDS.register
class FailTestRender(Command):
    command_type = "job.FailTestRender"
    job_id: str
    render_id: str
    reason: str = Field(max_length=4000)
    at: datetime


@COMMANDS.register
class RecordTestRenderDeadlineMissed(Command):
    command_type = "job.RecordTestRenderDeadlineMissed"
    job_id: str
    render_id: str
    at: datetime


@COMMANDS.register
class QueueJob(Command):
    """Freeze the job's render settings and queue its full render.

    A job with a scene upload is queued only once its scene is staged and no step runs.
    Steps that do not run yet (scene processing, test render) are skipped with ``reason``.
    Queueing a job that is already queued or further on changes nothing."""

    command_type = "job.QueueJob"
    job_id: str
    skip_reason: str


class RenderOrder(_Model):
    """Reply to :class:`QueueJob`: what to render, as frozen when the job was queued."""

    job_id: str
    owner_id: str
    status: JobStatus
    name: str
    scene_key: str = Field(description="The scene file, relative to the farm's scene root.")
    renderer: Renderer
    frame_range: FrameRange
    chunk_size: int
    resolution: Resolution
    render_settings: RenderSettings
    priority: JobPriority
    version: int


@COMMANDS.register
class StartJobRender(Command):
    """The farm started rendering the job (its first task started)."""

    command_type = "job.StartJobRender"
    job_id: str
    render_id: str
    at: datetime


@COMMANDS.register
class RecordFramesRendered(Command):
    """A farm task finished; recording the same task twice changes nothing."""

    command_type = "job.RecordFramesRendered"
    job_id: str
    render_id: str
    task_id: int
    frames: list[FrameOutput]
    worker: str
    render_seconds: float = Field(ge=0)
    at: datetime
    peak_memory_bytes: int | None = Field(default=None, ge=0)


@COMMANDS.register
class LogJobStep(Command):
    command_type = "job.LogJobStep"
    job_id: str
    step: StepName
    level: LogLevel
    message: str = Field(max_length=4000)
    at: datetime


@COMMANDS.register
class CompleteJob(Command):
    """The render finished: every frame is there."""

    command_type = "job.CompleteJob"
    job_id: str
    at: datetime


@COMMANDS.register
class FailJob(Command):
    """Fail the running step (the render if none runs) and the job, with the reason and,
    when there is one, a stable error code."""

    command_type = "job.FailJob"
    job_id: str
    reason: str = Field(max_length=4000)
    code: str | None = Field(default=None, max_length=100)
    at: datetime


@COMMANDS.register
class ConfirmJobCancelled(Command):
    """The farm stopped the job's render (or an operator deleted it on the farm)."""

    command_type = "job.ConfirmJobCancelled"
    job_id: str
    at: datetime


@COMMANDS.register
class PauseJob(Command):
    """From the scheduler: the job may not render until resumed (``reason``: a code such as
    ``insufficient_credits`` or ``spend_cap_reached``). Pausing a paused job changes nothing."""

    command_type = "job.PauseJob"
    job_id: str
    reason: str = Field(max_length=100)
    at: datetime


@COMMANDS.register
class ResumeJob(Command):
    """From the scheduler: the job goes back to where it was paused from."""

    command_type = "job.ResumeJob"
    job_id: str
    at: datetime


@COMMANDS.register
class StopJob(Command):
    """From the scheduler: stop the job for ``code`` (``cost_cap_reached``); it ends
    ``failed`` with that code (at once, or once the farm stopped its render)."""

    command_type = "job.StopJob"
    job_id: str
    code: str = Field(max_length=100)
    reason: str = Field(max_length=4000)
    at: datetime


@COMMANDS.register
class KillJob(Command):
    """From the gateway (an administrator): stop the job through the cancel path, recording
    who killed it and why (``JobKilled``). A job being cancelled or cancelled changes
    nothing; a completed or failed one is refused (``job_finished``)."""

    command_type = "job.KillJob"
    job_id: IdText
    reason: Annotated[Reason, Field(min_length=1)]


@COMMANDS.register
class KillOwnerJobs(Command):
    """From the job service's suspension manager: kill every active job of the owner
    (cause ``user_suspended``), each through the cancel path."""

    command_type = "job.KillOwnerJobs"
    owner_id: str
    reason: str = Field(max_length=500)
    #: The administrator who suspended the owner.
    killed_by: str
    at: datetime


class OwnerJobsKilled(_Model):
    """Reply to ``KillOwnerJobs``: the jobs it asked to stop (none when none was active)."""

    owner_id: str
    job_ids: list[str]


#: ``JobPaused.reason`` of a job paused because its owner was suspended: only the owner's
#: reactivation resumes it (a hold placed meanwhile does not).
ACCOUNT_SUSPENDED = "account_suspended"


@COMMANDS.register
class PauseOwnerJobs(Command):
    """From the job service's suspension manager (``RF_JOB_SUSPENDED_USER_JOBS=pause``):
    pause every active job of the owner that can be paused (reason ``account_suspended``)."""

    command_type = "job.PauseOwnerJobs"
    owner_id: str
    at: datetime


@COMMANDS.register
class ResumeOwnerJobs(Command):
    """From the job service's suspension manager, on the owner's reactivation: resume every
    job of the owner paused for its suspension."""

    command_type = "job.ResumeOwnerJobs"
    owner_id: str
    at: datetime


class OwnerJobsChanged(_Model):
    """Reply to ``PauseOwnerJobs`` and ``ResumeOwnerJobs``: the jobs paused or resumed."""

    owner_id: str
    job_ids: list[str]


@COMMANDS.register
class RecordJobCost(JobCostFigures, Command):
    """From billing's process manager: the job's money after a billing event."""

    command_type = "job.RecordJobCost"
