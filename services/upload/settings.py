from pydantic import Field

from libs.s3 import S3Settings


class UploadSettings(S3Settings):
    env_section = "upload"
    service_name: str = "upload"

    # -- staging scenes to the farm ------------------------------------------------------
    #: The farm's scene root as mounted where this service runs: scenes are staged under
    #: ``<stage_root>/staged/`` (the bridge's ``scenes_root`` as the farm's workers see it).
    stage_root: str = "/mnt/scenes"
    #: Scenes copied at once.
    stage_concurrency: int = Field(default=2, ge=1)
    #: Bytes read from the store and written at a time.
    stage_chunk_bytes: int = Field(default=8 * 2**20, ge=4096)
    #: A staging's progress is recorded at most this often, and only after this many bytes.
    stage_progress_seconds: float = Field(default=0.5, ge=0)
    stage_progress_bytes: int = Field(default=8 * 2**20, ge=0)
    #: Seconds before a staging that failed for a passing reason (the store away) is tried
    #: again, and between looks for stagings when nothing wakes the stager.
    stage_retry_seconds: float = Field(default=5.0, gt=0)
    stage_poll_seconds: float = Field(default=2.0, gt=0)
