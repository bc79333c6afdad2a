from pydantic import Field

from contracts.outputs import MAX_DOWNLOAD_URL_SECONDS
from libs.s3 import S3Settings

MiB = 1024 * 1024


class UploadSettings(S3Settings):
    env_section = "upload"
    service_name: str = "upload"

    # -- outputs ----------------------------------------------------------------------------
    #: Days a job's outputs are kept after the job ends (completed, failed or cancelled);
    #: then the retention sweeper deletes them from the bucket. 0 deletes them at once.
    outputs_retention_days: float = Field(default=30, ge=0)
    #: Build a zip of every frame when a job completes.
    outputs_archive: bool = True
    #: Parts of the archive's multipart upload: S3 takes 5 MiB or more (but the last).
    outputs_archive_part_bytes: int = Field(default=16 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    #: How often the archive builder and the retention sweeper look for work (besides being
    #: woken when an archive is asked for).
    outputs_archive_poll_seconds: float = Field(default=5.0, gt=0)
    outputs_sweep_seconds: float = Field(default=300.0, gt=0)
    #: Life of a download URL when the client does not say (at most 7 days).
    download_url_seconds: int = Field(default=3600, ge=1, le=MAX_DOWNLOAD_URL_SECONDS)
