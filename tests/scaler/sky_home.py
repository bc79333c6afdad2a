"""SkyPilot without a cloud, for the tests: the venv that has it (``.venv-sky``), a scratch
``HOME`` holding our AWS catalog (``skypilot_driver.CATALOG``) and a port of its own for
SkyPilot's local API server."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from tests.scaler.skypilot_driver import write_catalog

ROOT = Path(__file__).resolve().parents[2]


def sky_python() -> Path:
    """The interpreter of the venv with SkyPilot (``RF_SKYPILOT_PYTHON``, else ``.venv-sky``)."""
    given = os.environ.get("RF_SKYPILOT_PYTHON")
    return Path(given) if given else ROOT / ".venv-sky" / "bin" / "python"


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def server_port() -> int:
    """A port for SkyPilot's local API server whose request queue's port is free as well
    (SkyPilot moves that one with it: ``sky/server/requests/queues/mp_queue.py``)."""
    for port in range(46590, 46990):
        if free(port) and free(50011 + port - 46580):
            return port
    raise RuntimeError("no free ports for SkyPilot's API server")


def sky_env(home: Path) -> dict[str, str]:
    """The environment of a SkyPilot client in the scratch ``home`` (catalog written there),
    its local API server on a free port."""
    write_catalog(home)
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "SKYPILOT_API_SERVER_LOCAL_PORT": str(server_port()),
        "SKYPILOT_DISABLE_USAGE_COLLECTION": "1",
    }
