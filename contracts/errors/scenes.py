"""Errors of scenes: the upload or manifest a job renders, and staging it to the farm.

The first three answer ``create_job``. The staging ones are the codes a job fails with when
its scene cannot be staged (``failure_code`` in the job envelope, ``error_code`` of its
``stage_scene`` step); they are never an HTTP answer of their own, but for
``scene_upload_ended``, which ``create_job`` answers too. So are the last two, of the
``repath`` and ``render_settings`` steps (``services/scene/steps.py``).
"""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails


class SceneIdRef(ErrorDetails):
    scene_id: str = Field(description="The upload or manifest id given as scene_id.")


class SceneState(ErrorDetails):
    scene_id: str = Field(description="The upload or manifest id given as scene_id.")
    status: str = Field(
        description="Its status: uploading, aborted or expired (an upload), or"
        " waiting_for_files (a manifest)."
    )


class SceneFileRef(ErrorDetails):
    path: str = Field(description="The scene file, relative to the scene's root.")


class SceneChecksums(ErrorDetails):
    path: str = Field(description="The scene file, relative to the scene's root.")
    expected_sha256: str = Field(description="The SHA-256 declared for the file.")
    actual_sha256: str = Field(description="The SHA-256 of the bytes in the store.")


class SceneSizes(ErrorDetails):
    path: str = Field(description="The scene file, relative to the scene's root.")
    expected_bytes: int = Field(description="The size declared for the file.")
    actual_bytes: int = Field(description="The size of the object in the store.")


class SceneNotFound(DomainError[SceneIdRef]):
    """No such upload or manifest among the caller's."""

    code = "scene_not_found"
    http_status = 404
    retryable = False
    Details = SceneIdRef


class SceneNotReady(DomainError[SceneState]):
    """The upload is not completed, or the manifest still waits for files: complete it
    first (an aborted or expired upload never will be)."""

    code = "scene_not_ready"
    http_status = 409
    retryable = False
    Details = SceneState


class UploadNotAScene(DomainError[SceneIdRef]):
    """The upload is an asset of a manifest, not a scene: create the job on the manifest."""

    code = "upload_not_a_scene"
    http_status = 422
    retryable = False
    Details = SceneIdRef


class SceneChecksumMismatch(DomainError[SceneChecksums]):
    """A scene file's bytes in the store do not have the SHA-256 declared for them."""

    code = "scene_checksum_mismatch"
    http_status = 422
    retryable = False
    Details = SceneChecksums


class SceneSizeMismatch(DomainError[SceneSizes]):
    """A scene file in the store does not have the size declared for it."""

    code = "scene_size_mismatch"
    http_status = 422
    retryable = False
    Details = SceneSizes


class SceneFileMissing(DomainError[SceneFileRef]):
    """A scene file is not in the store (or no longer)."""

    code = "scene_file_missing"
    http_status = 422
    retryable = False
    Details = SceneFileRef


class ScenePathRefused(DomainError[SceneFileRef]):
    """A scene file's path cannot be placed under the farm's scene root."""

    code = "scene_path_refused"
    http_status = 422
    retryable = False
    Details = SceneFileRef


class SceneUploadRef(ErrorDetails):
    path: str = Field(description="A file of the manifest that was never uploaded.")
    sha256: str = Field(description="Its SHA-256, as the manifest declares it.")
    status: str = Field(
        description="How its last upload session ended: aborted or expired (none: it never"
        " had one)."
    )


class SceneUploadEnded(DomainError[SceneUploadRef]):
    """A file of the manifest is not uploaded and no upload session for it is open any more
    (aborted, or expired): the scene can never be complete. Submit the manifest again (it
    opens new sessions for the files you lack), upload them, and create the job again."""

    code = "scene_upload_ended"
    http_status = 409
    retryable = False
    Details = SceneUploadRef


class SceneStepRef(ErrorDetails):
    scene_key: str = Field(description="The .blend the step worked on, relative to the scene root.")
    reason: str = Field(description="What went wrong, e.g. the tail of Blender's output.")


class SceneRepathFailed(DomainError[SceneStepRef]):
    """The prepared copy of a scene could not be made (BAT could not trace or rewrite it)."""

    code = "scene_repath_failed"
    http_status = 422
    retryable = False
    Details = SceneStepRef


class SceneSettingsFailed(DomainError[SceneStepRef]):
    """Blender could not apply the job's render settings to the prepared scene (it exited
    with an error or printed no result)."""

    code = "scene_settings_failed"
    http_status = 422
    retryable = False
    Details = SceneStepRef
