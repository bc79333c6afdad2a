"""Settings of the scene service and its workers (``RF_SCENE_*``)."""

from __future__ import annotations

import os
import socket
from enum import StrEnum

from pydantic import Field

from libs.config import BaseServiceSettings


class OpaqueScenes(StrEnum):
    """What the check makes of a main file that is not a ``.blend``."""

    refuse = "refuse"  # an error finding: the job stops before any render
    allow = "allow"  # a warning: rendered as staged (the farm's built-in renderer)


class MissingAssets(StrEnum):
    """What a file the scene uses and the upload lacks (``asset_missing``) does to the job."""

    stop = "stop"  # an error: the job stops before any render cost, to be fixed and resubmitted
    render = "render"  # a warning: it renders without the file (Blender's magenta for an image)


class SceneServiceSettings(BaseServiceSettings):
    env_section = "scene"
    service_name: str = "scene"
    #: The farm's scene root as mounted where the workers run (the upload service's
    #: ``stage_root``): staged scenes are read from ``staged/``, prepared ones written to
    #: ``prepared/<job id>/``.
    stage_root: str = "/mnt/scenes"
    #: Queue items one worker process works on at once.
    workers: int = Field(default=1, ge=1, le=32)
    #: The workers' consumer names are ``<worker_name>-<n>``: unique per process (the host
    #: name and process id by default), so a restarted process does not take over the
    #: items its predecessor held before their visibility timeout passes.
    worker_name: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    #: How often the dead letters are looked at (their jobs are failed).
    dead_letter_poll_seconds: float = Field(default=5.0, gt=0)
    #: An item not acknowledged or heartbeated for this long is taken by another worker.
    visibility_timeout_seconds: float = Field(default=60.0, gt=0)
    #: Deliveries of one item before it is dead-lettered and its job failed.
    max_deliveries: int = Field(default=3, ge=1)
    #: What applies the render settings: a Blender executable or a Python with ``bpy``;
    #: ``auto``: ``blender`` on PATH, else the ``.venv-blender`` that ``make venv`` builds.
    blender: str = "auto"
    #: Seconds Blender may take to apply the settings before the step fails.
    blender_timeout_seconds: float = Field(default=300.0, gt=0)
    opaque_scenes: OpaqueScenes = OpaqueScenes.refuse
    missing_assets: MissingAssets = MissingAssets.stop
    #: Seconds to wait for the job service's reply to a step report.
    command_timeout_seconds: float = Field(default=15.0, gt=0)
