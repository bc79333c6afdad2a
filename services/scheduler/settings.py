from libs.config import BaseServiceSettings


class SchedulerSettings(BaseServiceSettings):
    env_section = "scheduler"
    service_name: str = "scheduler"
    #: Why the steps before the render are skipped, until scene processing exists.
    skip_reason: str = "not enabled yet: the scene is rendered as uploaded"
    #: Seconds to wait for a command's reply (a farm submission included).
    command_timeout_seconds: float = 30.0
