"""The job envelope: the one shape every API answer about a job carries."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from contracts.jobs import (
    FrameRange,
    FullRenderStartedBy,
    JobAction,
    JobPriority,
    JobStatus,
    Renderer,
    RenderSettings,
    Resolution,
    StepName,
    StepStatus,
    TestRenderFrame,
    TestRenderQuality,
    TestRenderStatus,
)
from contracts.scenes import SceneFinding


class Currency(StrEnum):
    credits = "credits"


class EtaUnknownReason(StrEnum):
    not_started = "not_started"
    no_measurements = "no_measurements"
    paused = "paused"
    finished = "finished"


class _View(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StepView(_View):
    name: StepName = Field(description="Step of the job's pipeline.")
    status: StepStatus = Field(description="State of this step.")
    progress_percent: float = Field(ge=0, le=100, description="Progress of this step, 0-100.")
    started_at: datetime | None = Field(description="UTC time the step started; null if not yet.")
    finished_at: datetime | None = Field(description="UTC time the step ended; null if not yet.")
    error: str | None = Field(description="Why the step failed; null unless it failed.")
    error_code: str | None = Field(
        description="Stable code of the step's failure (e.g. scene_checksum_mismatch); null"
        " unless it failed with one."
    )


class EtaView(_View):
    """Measured while rendering: the farm tasks left, at the mean render time of the tasks
    finished so far, shared by as many workers as have finished tasks of the job."""

    eta_seconds: int | None = Field(
        description=(
            "Expected seconds of rendering left, counted from the end of the latest finished"
            " farm task (eta_at is that time plus these seconds); null when there is no ETA."
        )
    )
    eta_at: datetime | None = Field(description="UTC time the job is expected to finish.")
    reason: EtaUnknownReason | None = Field(
        description="Why there is no ETA; null when eta_seconds is set."
    )


class CostStatus(StrEnum):
    """Where a job's money stands."""

    pending = "pending"  # billing has not taken the job yet
    holding = "holding"  # the first hold is being placed; nothing renders yet
    held = "held"  # the hold covers the job; it may render
    awaiting_credits = "awaiting_credits"  # a hold could not be placed or grown: paused
    cap_reached = "cap_reached"  # the cost reached the job's cap: stopping
    settled = "settled"  # the job ended; its cost was captured, the rest released


class AwaitingReason(StrEnum):
    insufficient_credits = "insufficient_credits"  # the wallet cannot cover the hold
    spend_cap_reached = "spend_cap_reached"  # the API key's daily or total spend cap


class EstimateUnknownReason(StrEnum):
    not_estimated_yet = "not_estimated_yet"  # billing has not seen the job yet
    no_prices = "no_prices"  # no price version is in force


class CostView(_View):
    """A job's money: the estimate (a range), what is held in the wallet, the cost so far,
    what was charged at the end, and the cap. Details: ``get_job_cost``."""

    status: CostStatus = Field(description="Where the job's money stands.")
    estimate_credits: Decimal | None = Field(
        description="Expected total cost; null with estimate_unknown_reason saying why."
    )
    estimate_low_credits: Decimal | None = Field(description="Low end of the estimate.")
    estimate_high_credits: Decimal | None = Field(description="High end of the estimate.")
    estimate_unknown_reason: EstimateUnknownReason | None = Field(
        description="Why there is no estimate; null when there is one."
    )
    held_credits: Decimal = Field(description="Credits reserved in the wallet for the job now.")
    so_far_credits: Decimal = Field(description="Cost incurred so far.")
    captured_credits: Decimal = Field(
        description="Credits charged when the job ended (at most the cap); 0 before."
    )
    cap_credits: Decimal | None = Field(description="Spending cap; null means no cap.")
    awaiting_reason: AwaitingReason | None = Field(
        description="Why the job waits for credits (status awaiting_credits); null otherwise."
    )
    currency: Currency = Field(description="Unit of every amount here.")


class TestRenderView(_View):
    """The job's latest test render: a few frames rendered ahead of the full render, with
    their measured time and memory; the job's ``cost`` then holds the re-estimate."""

    __test__ = False  # not a pytest test class

    render_id: str = Field(description="The test render's id, e.g. job_01J....test.1.")
    status: TestRenderStatus = Field(description="requested, rendering, completed or failed.")
    frames: list[int] = Field(description="The frames asked for.")
    quality: TestRenderQuality = Field(
        default_factory=TestRenderQuality,
        description="What its frames render at, against the job's settings.",
    )
    resolution: Resolution | None = Field(
        default=None,
        description="The test frames' size in pixels; null for test renders from before it"
        " was shown.",
    )
    requested_at: datetime = Field(description="UTC time it was asked for.")
    deadline_at: datetime = Field(description="UTC time it is due (10 minutes by default).")
    seconds_left: int | None = Field(
        description="Seconds to the deadline as of updated_at (0 once past); null once ended."
    )
    deadline_missed: bool = Field(description="It was not ready by its deadline.")
    ready_at: datetime | None = Field(description="UTC time every frame was there; null before.")
    ready_in_seconds: float | None = Field(
        description="Seconds from the request to ready; null before."
    )
    start_full_render_if_within: Decimal | None = Field(
        description="Budget in credits: the full render starts by itself when the re-estimate's"
        " high end is within it; null for none."
    )
    results: list[TestRenderFrame] = Field(
        description="Rendered frames: the stored image (download by output_id: POST"
        " /v1/outputs/{output_id}/download-url), its thumbnail, seconds and peak memory."
    )
    failure_reason: str | None = Field(description="Why it failed; null unless failed.")


class JobEnvelope(_View):
    """A render job as clients see it: state, progress, ETA, cost and what can be done next."""

    job_id: str = Field(description="Job id, e.g. job_01J...")
    name: str = Field(description="Display name.")
    owner_id: str = Field(description="Id of the user who owns the job.")
    status: JobStatus = Field(description="Lifecycle state.")
    current_step: StepName | None = Field(description="The step running now; null if none.")
    progress_percent: float = Field(ge=0, le=100, description="Overall progress, 0-100.")
    steps: list[StepView] = Field(description="Every pipeline step in order.")
    eta: EtaView = Field(description="When the job is expected to finish.")
    cost: CostView = Field(description="Estimate, cost so far and cap.")
    allowed_actions: list[JobAction] = Field(description="Actions the client may take next.")
    scene_id: str | None = Field(
        description="The upload (upl_...) or manifest (man_...) the job renders; null for a"
        " job submitted before scene uploads existed."
    )
    scene_file: str = Field(
        description="The scene file the farm opens: the upload's file name, or the"
        " manifest's main file."
    )
    renderer: Renderer = Field(description="Render engine.")
    frame_range: FrameRange = Field(description="Frames to render.")
    chunk_size: int = Field(description="Frames per farm task.")
    frames_total: int = Field(description="Number of frames in the frame range.")
    frames_done: int = Field(description="Frames rendered so far.")
    resolution: Resolution = Field(description="Output resolution.")
    render_settings: RenderSettings = Field(description="Format, samples and camera.")
    priority: JobPriority = Field(description="Scheduling priority.")
    failure_reason: str | None = Field(description="Why the job failed; null unless failed.")
    failure_code: str | None = Field(
        description="Stable code of the failure (e.g. scene_checksum_mismatch); null unless"
        " the job failed with one."
    )
    scene_findings: list[SceneFinding] = Field(
        description="What the scene check found, each with a stable code and a severity: an"
        " error stopped the job before any render (failure_code scene_check_failed); fix the"
        " scene and submit it again. Empty before the check has run."
    )
    test_render: TestRenderView | None = Field(
        default=None, description="The latest test render; null when none was asked for."
    )
    start_full_render: bool = Field(
        default=True,
        description="As submitted: false, the full render waits for POST /v1/jobs/{id}/start"
        " (or a test render's budget).",
    )
    full_render_released_by: FullRenderStartedBy | None = Field(
        default=None,
        description="Who let a job submitted with start_full_render=false start its full"
        " render: user or budget; null until then.",
    )
    created_at: datetime = Field(description="UTC time the job was submitted.")
    updated_at: datetime = Field(description="UTC time of the job's latest event.")
    version: int = Field(description="Version of the job's event stream; grows with each event.")
