"""A one-line progress bar on stderr: bytes done, percent, rate (MB/s) and ETA.

On a terminal the line is redrawn in place a few times a second; elsewhere (a log, a CI job)
a full line is written every few seconds, so the output stays readable. Safe to feed from
several threads (hashing runs in worker threads).
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from typing import TextIO

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")


def size_text(n: float) -> str:
    """``1.5 GiB``: bytes in binary units."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def duration_text(seconds: float) -> str:
    """``1:02:03`` or ``2:03``."""
    s = int(seconds + 0.5)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """Progress of one phase (``hashing``, ``uploading``, ``downloading``) over ``total``
    bytes. :meth:`add` may be given a negative count when a failed transfer is retried."""

    #: Seconds of history the rate is measured over.
    WINDOW = 5.0

    def __init__(
        self,
        label: str,
        total: int,
        *,
        stream: TextIO | None = None,
        enabled: bool = True,
        done: int = 0,
        line_every: float = 5.0,
    ) -> None:
        self.label = label
        self.total = total
        self.done = done
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.redraw_every = 0.2 if self.tty else line_every
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._start_done = done
        self._samples: deque[tuple[float, int]] = deque([(self._started, done)])
        self._last_draw = 0.0
        self._width = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            self._samples.append((now, self.done))
            while len(self._samples) > 2 and now - self._samples[1][0] > self.WINDOW:
                self._samples.popleft()
            if self.enabled and now - self._last_draw >= self.redraw_every:
                self._last_draw = now
                self._draw(self.line(now))

    def rate(self, now: float | None = None) -> float:
        """Bytes per second over the last :attr:`WINDOW` seconds."""
        now = time.monotonic() if now is None else now
        t0, d0 = self._samples[0]
        return (self.done - d0) / (now - t0) if now > t0 else 0.0

    def line(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        rate = self.rate(now)
        share = self.done / self.total if self.total else 1.0
        filled = int(24 * min(1.0, max(0.0, share)))
        left = self.total - self.done
        eta = duration_text(left / rate) if rate > 0 and left > 0 else "-"
        return (
            f"{self.label} [{'#' * filled}{'.' * (24 - filled)}] {share * 100:5.1f}%"
            f"  {size_text(self.done)} / {size_text(self.total)}"
            f"  {rate / 1e6:.1f} MB/s  ETA {eta}"
        )

    def finish(self, note: str = "") -> None:
        """The last line: totals and the mean rate of the whole phase."""
        if not self.enabled:
            return
        with self._lock:
            seconds = time.monotonic() - self._started
            moved = self.done - self._start_done
            mean = moved / seconds if seconds > 0 else 0.0
            text = (
                f"{self.label}: {size_text(self.done)} in {duration_text(seconds)}"
                f" ({mean / 1e6:.1f} MB/s){f'; {note}' if note else ''}"
            )
            self._draw(text, final=True)

    def _draw(self, text: str, final: bool = False) -> None:
        if self.tty:
            pad = " " * max(0, self._width - len(text))
            self.stream.write(f"\r{text}{pad}" + ("\n" if final else ""))
            self._width = 0 if final else len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
