"""gateway: the public HTTP API; with ``RF_GATEWAY_WORKERS`` > 1 (0: one per core), that
many worker processes on one port under a supervising parent (``workers.py``)."""

import sys

from libs.runtime import run
from services.gateway.service import SERVICE
from services.gateway.settings import GatewaySettings
from services.gateway.workers import run_workers, worker_count

settings = GatewaySettings()
if worker_count(settings) > 1:
    sys.exit(run_workers(settings))
run(SERVICE, settings)
