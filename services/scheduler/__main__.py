"""scheduler: the process manager that takes a job from submission to its render's end."""

from libs.runtime import run
from services.scheduler.service import SERVICE

run(SERVICE)
