from libs.config import BaseServiceSettings
from services.job.suspensions import SuspendedUserJobs


class JobSettings(BaseServiceSettings):
    env_section = "job"
    service_name: str = "job"
    #: Jobs a user may have that are not yet completed, failed or cancelled.
    active_job_limit: int = 20
    #: How often the leader looks for test renders past their deadline.
    test_render_deadline_poll_seconds: float = 5.0
    #: A suspended user's active jobs: killed through the cancel path, paused until the
    #: reactivation, or kept running.
    suspended_user_jobs: SuspendedUserJobs = SuspendedUserJobs.cancel
