"""Deadline frame lists (``1-100``, ``1-100x5``, ``1,5,9``) and their split into task chunks."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"^(-?\d+)(?:-(-?\d+)(?:[x:](\d+))?)?$")
#: Refuse frame lists that would create absurd numbers of tasks.
MAX_FRAMES = 100_000


def parse_frames(spec: str) -> list[int]:
    """Frames of a Deadline frame list, in order and without repeats.

    Tokens are separated by commas or spaces: ``7``, ``1-10``, ``1-100x5`` (or ``1-100:5``) and
    descending ranges ``10-1``. Raises ``ValueError`` on anything else or on an empty list.
    """
    frames: list[int] = []
    seen: set[int] = set()
    for token in re.split(r"[,\s]+", spec.strip()):
        if not token:
            continue
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"invalid frame token {token!r}")
        start = int(match.group(1))
        end = int(match.group(2)) if match.group(2) is not None else start
        step = int(match.group(3)) if match.group(3) is not None else 1
        if step < 1:
            raise ValueError(f"invalid frame step in {token!r}")
        direction = 1 if end >= start else -1
        for frame in range(start, end + direction, step * direction):
            if frame not in seen:
                seen.add(frame)
                frames.append(frame)
            if len(frames) > MAX_FRAMES:
                raise ValueError(f"more than {MAX_FRAMES} frames")
    if not frames:
        raise ValueError("empty frame list")
    return frames


def chunk_frames(frames: list[int], chunk_size: int) -> list[list[int]]:
    """Consecutive groups of ``chunk_size`` frames of the frame list: one group per task."""
    size = max(1, chunk_size)
    return [frames[i : i + size] for i in range(0, len(frames), size)]


def format_task_frames(frames: list[int]) -> str:
    """A task's ``Frames`` text as Deadline shows it: ``21-21``, ``1-5``, or ``1,5,9`` otherwise."""
    if frames == list(range(frames[0], frames[0] + len(frames))):
        return f"{frames[0]}-{frames[-1]}"
    return ",".join(str(f) for f in frames)
