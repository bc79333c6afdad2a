from pydantic import SecretStr

from libs.config import BaseServiceSettings


class BridgeSettings(BaseServiceSettings):
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
    #: The same folder as mounted where the bridge runs (to size and checksum frames);
    #: None when it is the same path.
    outputs_root: str | None = None

    #: Farm job settings.
    farm_plugin: str = "Blender"
    farm_user_name: str = "renderfarm"
    farm_pool: str = "none"
    farm_group: str = "none"
    task_timeout_minutes: int = 60

    @property
    def local_outputs_root(self) -> str:
        return self.outputs_root or self.farm_outputs_root
