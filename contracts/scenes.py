"""Scene processing before a render: what the scene check finds, the assets a scene uses,
and what repathing and the render settings step did (``services/scene/steps.py``).

These go into job step events and API answers, so every text in them is storable: paths
read from a ``.blend`` are decoded as UTF-8 with undecodable bytes and control characters
replaced by U+FFFD. Codes and severities are documented in ``docs/pipeline.md``.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FindingSeverity(StrEnum):
    error = "error"  # the job cannot render as asked: the caller stops it
    warning = "warning"  # it renders, but likely not as the artist expects
    info = "info"  # worth knowing; nothing to do


class FindingCode(StrEnum):
    """What a finding is about (the table in ``docs/pipeline.md`` says when each is given)."""

    # the scene file itself
    main_file_missing = "main_file_missing"
    scene_not_blend = "scene_not_blend"
    scene_unreadable = "scene_unreadable"
    scene_compressed = "scene_compressed"
    # the files it uses
    asset_missing = "asset_missing"
    asset_outside_upload = "asset_outside_upload"
    library_missing = "library_missing"
    # its settings against the job's
    engine_differs = "engine_differs"
    resolution_differs = "resolution_differs"
    frame_range_differs = "frame_range_differs"
    output_format_differs = "output_format_differs"
    samples_differ = "samples_differ"
    camera_differs = "camera_differs"
    camera_not_found = "camera_not_found"
    no_camera = "no_camera"


class SceneFinding(_Model):
    """One thing the scene check (or the settings step) found."""

    code: FindingCode = Field(description="Stable machine-readable code.")
    severity: FindingSeverity = Field(
        description="error: the job stops; warning: it renders, likely not as expected;"
        " info: nothing to do."
    )
    message: str = Field(description="What was found and what happens next, for a person.")
    path: str | None = Field(
        default=None,
        description="The asset concerned, as the .blend references it; null when the finding"
        " is about a setting or the scene file as a whole.",
    )
    setting: str | None = Field(
        default=None,
        description="The scene setting concerned (engine, resolution, frame_range,"
        " output_format, samples, camera); null when the finding is about a file.",
    )


class AssetKind(StrEnum):
    image = "image"
    library = "library"  # a linked .blend
    movie_clip = "movie_clip"
    sound = "sound"
    font = "font"
    cache = "cache"  # Alembic/USD cache file, mesh cache, fluid/particle caches
    volume = "volume"  # OpenVDB
    sequence_strip = "sequence_strip"  # a video-sequencer strip's file
    other = "other"


class AssetMatch(StrEnum):
    """How an asset's file was found in the upload."""

    path = "path"  # at the path the .blend references (relative, or absolute inside it)
    tail = "tail"  # an outside path whose last segments match an uploaded file's path
    basename = "basename"  # an outside path whose file name is that of one uploaded file
    none = "none"  # not found: missing


class FrameNeed(StrEnum):
    """Which frames need an asset. BAT cannot tell which frame uses which file (an image
    sequence's frame offsets, a driver, a linked collection shown on some frames only), so
    every asset counts as needed by every frame."""

    all = "all"


class SceneAsset(_Model):
    """A file a scene uses, as the scene check found it."""

    path: str = Field(description="The path as the .blend references it (// = its folder).")
    kind: AssetKind = Field(description="What uses the file.")
    used_by: str = Field(description="The datablock that references it, e.g. IMchecker.png.")
    referenced_from: str = Field(
        description="The .blend holding the reference, relative to the scene folder (the main"
        " file, or a linked library)."
    )
    resolved: str | None = Field(
        description="The uploaded file it resolves to, relative to the scene folder; null when"
        " it is missing. For an image sequence or UDIM set: the pattern, e.g."
        " textures/wall.<UDIM>.png."
    )
    matched_by: AssetMatch = Field(description="How the file was found in the upload.")
    present: bool = Field(description="Whether the file (or a file of the sequence) is there.")
    is_sequence: bool = Field(description="An image sequence, UDIM set or cache sequence.")
    size_bytes: int | None = Field(
        description="Bytes of the file (all files of a sequence); null when missing."
    )
    frames: FrameNeed = Field(
        default=FrameNeed.all, description="Which frames need it: every frame (see FrameNeed)."
    )


class SceneSettings(_Model):
    """Render settings of the scene the .blend opens with, read without Blender (by BAT,
    from the ``SC`` block of the active scene and its ``RenderData``)."""

    scene: str = Field(description="The active scene's name.")
    engine: str = Field(description="Blender's engine id: CYCLES, BLENDER_EEVEE_NEXT, ...")
    resolution_x: int = Field(description="Width in pixels before the percentage.")
    resolution_y: int = Field(description="Height in pixels before the percentage.")
    resolution_percentage: int = Field(description="Render size percentage.")
    frame_start: int = Field(description="First frame.")
    frame_end: int = Field(description="Last frame.")
    frame_step: int = Field(description="Frame step.")
    output_format: str = Field(
        description="Blender's file format id (PNG, OPEN_EXR, OPEN_EXR_MULTILAYER, JPEG, ...),"
        " or imtype:<n> for one this check does not name."
    )
    output_path: str = Field(description="Render output path (the farm sets its own).")
    camera: str | None = Field(description="Active camera object; null when none.")
    samples: int | None = Field(
        description="Render samples of the engine (Cycles: 4096, Blender's default, when the"
        " file stores none); null for another engine."
    )
    blender_version: str = Field(description="Blender version that saved the file, e.g. 4.5.")


class SceneCheckResult(_Model):
    """What the scene check found. Findings of severity error must stop the job."""

    scene_key: str = Field(description="The main .blend, relative to the farm's scene root.")
    findings: tuple[SceneFinding, ...] = Field(description="In the order found.")
    assets: tuple[SceneAsset, ...] = Field(
        description="Every file the scene uses, the linked libraries' too, in trace order."
    )
    settings: SceneSettings | None = Field(
        description="The scene's render settings; null when the file could not be read."
    )
    compressed: bool | None = Field(
        description="Whether the .blend is compressed (zstd or gzip); null when unreadable."
    )

    @property
    def errors(self) -> tuple[SceneFinding, ...]:
        return tuple(f for f in self.findings if f.severity is FindingSeverity.error)


class PathRewrite(_Model):
    """One asset path the prepared copy references differently from the uploaded .blend."""

    blend: str = Field(description="The .blend changed, relative to the prepared folder.")
    used_by: str = Field(description="The datablock whose path changed.")
    before: str = Field(description="The path as uploaded.")
    after: str = Field(description="The path in the prepared copy (always // relative).")
    matched_by: AssetMatch = Field(
        description="How its file was found; none: missing, pointed inside the prepared folder"
        " (//_missing/...) so the render never reads a file outside it."
    )


class RepathResult(_Model):
    """The prepared copy of a scene: every path in it relative and inside its folder."""

    job_id: str = Field(description="The job the copy was prepared for.")
    prepared_key: str = Field(
        description="The prepared main .blend, relative to the farm's scene root"
        " (prepared/<job id>/<main file>): what the settings step and the render open."
    )
    files: int = Field(description="Files in the prepared folder (the .blend files included).")
    files_linked: int = Field(description="Of those, hard links to the staged files.")
    bytes_total: int = Field(description="Bytes of the prepared folder's files.")
    rewrites: tuple[PathRewrite, ...] = Field(description="Paths changed, per .blend.")
    missing: tuple[str, ...] = Field(
        description="Referenced paths with no file in the upload (as the .blend references"
        " them); the scene check reported each."
    )


class SettingChange(_Model):
    """One setting the settings step changed."""

    setting: str = Field(
        description="engine, resolution_x, resolution_y, resolution_percentage, frame_start,"
        " frame_end, frame_step, samples, camera or output_format."
    )
    before: str | int | None = Field(description="The scene's value.")
    after: str | int | None = Field(description="The job's value, now in the prepared .blend.")


class SettingsResult(_Model):
    """What the settings step did to the prepared .blend (read back by Blender)."""

    prepared_key: str = Field(description="The .blend changed, relative to the scene root.")
    saved: bool = Field(
        description="Whether the .blend was saved; false when a finding of severity error"
        " (camera_not_found) left it as it was."
    )
    changes: tuple[SettingChange, ...] = Field(description="Settings that changed.")
    findings: tuple[SceneFinding, ...] = Field(description="Only camera_not_found so far.")
    settings: SceneSettings = Field(description="The scene's settings after the step.")
    blender_version: str = Field(description="The Blender that applied them, e.g. 4.5.15 LTS.")
