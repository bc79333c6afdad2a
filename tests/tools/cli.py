"""Reading what ``renderctl`` printed when it ran in the test's own process."""

from __future__ import annotations

import json


def printed(stdout: str) -> str:
    """renderctl's lines of ``stdout``: the services running in the test's process write
    their JSON log lines (each with an ``event`` field) there too, and those are left out."""
    mine = []
    for line in stdout.splitlines():
        try:
            logged = "event" in json.loads(line)
        except (ValueError, TypeError):
            logged = False
        if not logged:
            mine.append(line)
    return "\n".join(mine)
