"""Settings of the scene service and its workers (``RF_SCENE_*``)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from libs.config import BaseServiceSettings


class OpaqueScenes(StrEnum):
    """What the check makes of a main file that is not a ``.blend``."""

    refuse = "refuse"  # an error finding: the job stops before any render
    allow = "allow"  # a warning: rendered as staged (the farm's built-in renderer)


class SceneServiceSettings(BaseServiceSettings):
    env_section = "scene"
    service_name: str = "scene"
    #: The farm's scene root as mounted where the workers run (the upload service's
    #: ``stage_root``): staged scenes are read from ``staged/``, prepared ones written to
    #: ``prepared/<job id>/``.
    stage_root: str = "/mnt/scenes"
    #: Queue items one worker process works on at once.
    workers: int = Field(default=1, ge=1, le=32)
    #: An item not acknowledged or heartbeated for this long is taken by another worker.
    visibility_timeout_seconds: float = Field(default=60.0, gt=0)
    #: Deliveries of one item before it is dead-lettered and its job failed.
    max_deliveries: int = Field(default=3, ge=1)
    #: The Python with ``bpy`` that applies render settings (``.venv-blender``).
    blender_python: str = ".venv-blender/bin/python"
    opaque_scenes: OpaqueScenes = OpaqueScenes.refuse
    #: Seconds to wait for the job service's reply to a step report.
    command_timeout_seconds: float = Field(default=15.0, gt=0)
