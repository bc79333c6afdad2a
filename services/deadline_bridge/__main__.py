"""deadline-bridge: the Deadline Web Service client."""

from libs.runtime import run
from services.deadline_bridge.service import SERVICE

run(SERVICE)
