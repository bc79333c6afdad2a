"""Scene preparation: the scheduler's order to the scene service (``scene.*``).

Once a job's scene is staged, the scheduler asks the scene service to prepare it; the
service queues the work for the scene workers (a Redis queue, ``docs/pipeline.md``), who run
the scene check, repathing and render settings and report each step on the job through the
job service's commands (``job.StartJobStep`` ... ``job.RecordScenePrepared``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from contracts.base import COMMANDS, EVENTS, Command, Event
from contracts.jobs import FrameRange, Renderer, RenderSettings, Resolution, StagedKey
from contracts.text import IdText

#: The Redis work queue the scene workers take from (``libs/workqueue.py``); the gateway's
#: operations views read its depth and dead letters.
SCENE_QUEUE = "scenes"


class PreparationPriority(StrEnum):
    """Queue order: a job waiting for a test render is prepared before full renders."""

    test = "test"
    full = "full"


class JobSceneSettings(BaseModel):
    """What the job asks for, as the job's events hold it: the scene check compares the scene
    with these and the settings step applies them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    renderer: Renderer = Field(description="Render engine.")
    frame_range: FrameRange = Field(description="Frames to render.")
    resolution: Resolution = Field(description="Output resolution (applied at 100 %).")
    render_settings: RenderSettings = Field(
        default_factory=RenderSettings, description="Format, samples and camera."
    )


@COMMANDS.register
class PrepareScene(Command):
    """Queue the preparation of a job's staged scene (``staged_key``: its main file,
    relative to the farm's scene root). Asking again for the same job queues nothing more."""

    command_type = "scene.PrepareScene"
    job_id: IdText
    owner_id: IdText
    staged_key: StagedKey
    settings: JobSceneSettings
    priority: PreparationPriority = PreparationPriority.full


class PreparationQueued(BaseModel):
    """Reply to :class:`PrepareScene`: the queue item and whether this call queued it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    job_id: str
    item_id: str
    queued: bool = Field(description="False when the item was queued by an earlier call.")


# --- events (stream ``preparation-<job id>``) ---------------------------------------------


@EVENTS.register
class ScenePreparationQueued(Event):
    """The job's scene was queued for the scene workers as ``item_id``."""

    event_type = "scene.ScenePreparationQueued"
    job_id: str
    item_id: str
    staged_key: str
    priority: PreparationPriority
    at: datetime


@EVENTS.register
class ScenePreparationAbandoned(Event):
    """The workers gave the item up (``deliveries`` attempts, or an error no retry mends):
    it is a dead letter, and the job failed with ``code``."""

    event_type = "scene.ScenePreparationAbandoned"
    job_id: str
    item_id: str
    code: str
    error: str
    deliveries: int
    at: datetime


@COMMANDS.register
class AbandonPreparation(Command):
    """Record that the workers gave a job's scene up (from the scene service's dead-letter
    watch). A repeat changes nothing."""

    command_type = "scene.AbandonPreparation"
    job_id: IdText
    code: str = Field(max_length=100)
    error: str = Field(max_length=2000)
    deliveries: int = Field(ge=0)
