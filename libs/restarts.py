"""When to restart something that failed, and when to give up: the one rule the runtime's
supervised tasks and the gateway's worker processes share."""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RestartBudget:
    """Restart after ``delay`` seconds, doubling up to ``delay_max``; give up once more than
    ``max_restarts`` failures fall within ``window`` seconds."""

    delay: float = 0.5
    delay_max: float = 30.0
    max_restarts: int = 5
    window: float = 60.0
    restarts: int = 0
    gave_up: bool = False
    _failures: list[float] = field(default_factory=list)
    _next_delay: float | None = None

    def failed(self) -> float | None:
        """Note a failure: the seconds to wait before restarting, or None to give up."""
        now = time.monotonic()
        self._failures = [t for t in self._failures if now - t < self.window] + [now]
        if len(self._failures) > self.max_restarts:
            self.gave_up = True
            return None
        wait = self.delay if self._next_delay is None else self._next_delay
        self._next_delay = min(wait * 2, self.delay_max)
        self.restarts += 1
        return wait

    @property
    def recent_failures(self) -> int:
        return len(self._failures)
