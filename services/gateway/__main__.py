"""gateway: the public HTTP API."""

from libs.runtime import run
from services.gateway.service import SERVICE

run(SERVICE)
