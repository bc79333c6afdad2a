from typing import Self

from pydantic import Field, model_validator

from contracts.uploads import MAX_OBJECT_BYTES, MAX_PART_BYTES, MiB, TiB
from libs.s3 import MAX_PRESIGN_SECONDS, S3Settings


class UploadSettings(S3Settings):
    env_section = "upload"
    service_name: str = "upload"

    # --- upload sessions and manifests ---------------------------------------------------

    #: The largest file a session takes (S3's own limit is 10,000 parts of 5 GiB).
    upload_max_bytes: int = Field(default=5 * TiB, ge=1, le=MAX_OBJECT_BYTES)
    #: The smallest part of a part plan (S3 wants at least 5 MiB for every part but the
    #: last); larger files get larger parts, so none needs more than 10,000.
    upload_min_part_bytes: int = Field(default=64 * MiB, ge=5 * MiB, le=MAX_PART_BYTES)
    #: How long a part URL works (never past its session's expiry, never over 7 days).
    upload_part_url_ttl_seconds: int = Field(default=3600, ge=1, le=MAX_PRESIGN_SECONDS)
    #: How long a session stays open; then the sweeper aborts it and its parts are deleted.
    upload_session_ttl_seconds: int = Field(default=3 * 24 * 3600, ge=1)
    #: Per user: open scene upload sessions, open asset sessions (a manifest's files) and
    #: bytes declared by all open sessions together.
    upload_max_open_sessions: int = Field(default=20, ge=1)
    upload_max_open_asset_sessions: int = Field(default=10_000, ge=1)
    upload_max_bytes_in_flight: int = Field(default=10 * TiB, ge=1)
    #: How often the sweeper looks for expired sessions and orphaned multipart uploads.
    upload_sweep_interval_seconds: float = Field(default=300.0, gt=0)
    #: A multipart upload no open session owns is aborted once it is this old (one being
    #: created right now has no session yet).
    upload_orphan_grace_seconds: int = Field(default=3600, ge=0)
    #: How often the completer looks for sessions whose parts the store should join (it
    #: is also woken by each of the service's own commits).
    upload_completer_poll_seconds: float = Field(default=0.25, gt=0)
    #: Store calls made at once: a manifest's (one per file it lacks), the sweeper's, the
    #: completer's joins.
    upload_store_concurrency: int = Field(default=32, ge=1)

    # --- staging scenes to the farm -----------------------------------------------------
    #: The farm's scene root as mounted where this service runs: scenes are staged under
    #: ``<stage_root>/staged/`` (the bridge's ``scenes_root`` as the farm's workers see it).
    stage_root: str = "/mnt/scenes"
    #: Scenes copied at once.
    stage_concurrency: int = Field(default=2, ge=1)
    #: Bytes read from the store and written at a time.
    stage_chunk_bytes: int = Field(default=8 * 2**20, ge=4096)
    #: At most this many bytes a second for each scene being copied (None: as fast as the
    #: store and the disk go), leaving room on a link that uploads share.
    stage_max_bytes_per_second: int | None = Field(default=None, gt=0)
    #: A needed file (one the test frames need) of at least ``stage_range_min_bytes`` that
    #: is fetched from the store comes as ``stage_range_streams`` ranged GETs at once, of
    #: ``stage_range_bytes`` each (S3 serves about 85-90 MB/s a request: one stream cannot
    #: fill a fast link). 1 stream: one GET a file, as every other file.
    stage_range_streams: int = Field(default=8, ge=1, le=64)
    stage_range_bytes: int = Field(default=16 * 2**20, ge=64 * 1024)
    stage_range_min_bytes: int = Field(default=64 * 2**20, ge=1)
    #: A staging's progress is recorded at most this often, and only after this many bytes.
    stage_progress_seconds: float = Field(default=0.5, ge=0)
    stage_progress_bytes: int = Field(default=8 * 2**20, ge=0)
    #: Seconds before a staging that failed for a passing reason (the store away) is tried
    #: again, and between looks for stagings when nothing wakes the stager.
    stage_retry_seconds: float = Field(default=5.0, gt=0)
    stage_poll_seconds: float = Field(default=2.0, gt=0)
    #: Stage each manifest file as soon as its upload completes, before any job asks
    #: (``RF_STAGE_ON_UPLOAD``): to ``<stage_root>/staged/.content/<owner>/<sha256>``, which
    #: a job's staging hard-links instead of fetching. Files copied at once for that, each
    #: held to ``stage_max_bytes_per_second`` too.
    stage_on_upload: bool = True
    stage_on_upload_concurrency: int = Field(default=2, ge=1)
    #: Assets never expire from the bucket, so content staged as uploaded is removed from
    #: the farm this many days after it was staged (and assets stored longer ago than this
    #: are not staged as uploaded); a job's staging then fetches it as it always did.
    stage_content_retention_days: float = Field(default=7.0, gt=0)
    #: How often the pre-stager looks for content whose retention ended.
    stage_content_sweep_seconds: float = Field(default=300.0, gt=0)

    @model_validator(mode="after")
    def _a_whole_file_fits_in_flight(self) -> Self:
        if self.upload_max_bytes > self.upload_max_bytes_in_flight:
            raise ValueError("upload_max_bytes must not exceed upload_max_bytes_in_flight")
        return self

    # --- outputs -------------------------------------------------------------------------

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
    download_url_seconds: int = Field(default=3600, ge=1, le=MAX_PRESIGN_SECONDS)
