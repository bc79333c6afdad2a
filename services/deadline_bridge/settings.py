from pydantic import Field, SecretStr

from libs.s3 import S3Settings

MiB = 1024 * 1024


class BridgeSettings(S3Settings):
    """The farm it drives, and the outputs bucket it stores every rendered frame in."""

    env_section = "bridge"
    service_name: str = "deadline-bridge"

    #: Deadline Web Service root, e.g. ``https://deadline.farm.internal:8081``.
    farm_url: str = "http://127.0.0.1:18081"
    #: HTTP Basic credentials when the Web Service requires authentication.
    farm_username: str | None = None
    farm_password: SecretStr | None = None
    #: TLS: verify the server's certificate, against this CA bundle when given.
    farm_tls_verify: bool = True
    farm_ca_cert: str | None = None
    farm_timeout_seconds: float = 15.0

    #: Seconds between poll cycles; each cycle lists every unfinished farm job in one request.
    poll_interval_seconds: float = 0.5
    #: Farm jobs whose tasks are fetched at once within one cycle.
    poll_concurrency: int = 8
    #: How often the bridge requeues a failed task before the render fails.
    max_task_retries: int = 2

    #: Where the farm's workers find scenes (``<scenes_root>/<scene key>``).
    scenes_root: str = "/mnt/scenes"
    #: Where the farm's workers write frames (``<farm_outputs_root>/<owner>/<job>/<render>``).
    farm_outputs_root: str = "/mnt/renders"
    #: The same folder as mounted where the bridge runs (to read, size and checksum frames
    #: and store them in the outputs bucket); None when it is the same path.
    outputs_root: str | None = None
    #: Frames up to this size are stored with one PutObject (read whole); bigger ones by a
    #: multipart upload, one part in memory at a time. S3 takes parts of 5 MiB or more.
    outputs_multipart_threshold_bytes: int = Field(default=16 * MiB, ge=5 * MiB)
    outputs_part_size_bytes: int = Field(default=16 * MiB, ge=5 * MiB, le=5 * 1024 * MiB)
    #: Frames stored at once, across the renders of a poll cycle.
    outputs_store_concurrency: int = Field(default=4, ge=1)

    #: Farm job settings.
    farm_plugin: str = "Blender"
    farm_user_name: str = "renderfarm"
    farm_pool: str = "none"
    farm_group: str = "none"
    task_timeout_minutes: int = 60
    #: Full renders are submitted ``Interruptible``: a worker gives a task of theirs up
    #: (requeued) for a test render or any other job of higher priority it could take.
    full_render_interruptible: bool = True

    #: Test renders: their farm jobs' pool (standby workers serve it; the full renders' pool
    #: ``farm_pool`` is their secondary pool, so other workers take them too) and priority.
    test_pool: str = "test"
    test_priority: int = Field(default=100, ge=0, le=100)

    #: Thumbnails of PNG and JPEG frames: the long side in pixels, and the largest frame (in
    #: pixels) one is made of (decoding a frame takes 4 bytes a pixel).
    thumbnail_size: int = Field(default=256, ge=16, le=2048)
    thumbnail_max_pixels: int = Field(default=40_000_000, ge=1)

    @property
    def local_outputs_root(self) -> str:
        return self.outputs_root or self.farm_outputs_root
