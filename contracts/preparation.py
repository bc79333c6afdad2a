"""Scene preparation: the scheduler's order to the scene service (``scene.*``).

Once a job's scene is staged, the scheduler asks the scene service to prepare it; the
service queues the work for the scene workers (a Redis queue, ``docs/pipeline.md``), who run
the scene check, repathing and render settings and report each step on the job through the
job service's commands (``job.StartJobStep`` ... ``job.RecordScenePrepared``).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, Command
from contracts.jobs import FrameRange, Renderer, RenderSettings, Resolution, StagedKey
from contracts.text import IdText


class PreparationPriority(StrEnum):
    """Queue order: a job waiting for a test render is prepared before full renders."""

    test = "test"
    full = "full"


class SceneSettings(BaseModel):
    """The job's settings the settings step writes into the scene."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    renderer: Renderer
    frame_range: FrameRange
    resolution: Resolution
    render_settings: RenderSettings


@COMMANDS.register
class PrepareScene(Command):
    """Queue the preparation of a job's staged scene (at ``staged_key``, relative to the
    farm's scene root). Asking again for the same job queues nothing more."""

    command_type = "scene.PrepareScene"
    job_id: IdText
    owner_id: IdText
    staged_key: StagedKey
    main_file: str = Field(max_length=1000, description="The scene's main file name.")
    settings: SceneSettings
    priority: PreparationPriority = PreparationPriority.full


class PreparationQueued(BaseModel):
    """Reply to :class:`PrepareScene`: the queue item and whether this call queued it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    item_id: str
    queued: bool = Field(description="False when the item was queued by an earlier call.")
