"""CPU accounting over a measurement window (Linux ``/proc``; zeros elsewhere).

Shares are of one core (1.0 = one core busy). ``others`` is what the rest of the machine
used meanwhile: on a shared 2-core box it shows when a figure was measured under foreign
load and should be read with care.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from bench.infra import Child

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat_fields(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def tree_seconds(root: int | None = None) -> float:
    """CPU seconds of ``root`` (default: this process) and all its descendants.

    Counts reaped children too (cutime/cstime), so processes ending inside a window are
    not lost: their time moves to their parent, which is in the tree.
    """
    root = os.getpid() if root is None else root
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0.0
    for name in entries:
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is None or len(f) < 15:
            continue
        pid = int(name)
        parents[pid] = int(f[1])
        times[pid] = int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    children: dict[int, list[int]] = {}
    for pid, ppid in parents.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += times.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total / _TICK


def _tree(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return [root]
    for name in entries:
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f is not None and len(f) > 1:
            parents.setdefault(int(f[1]), []).append(int(name))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(parents.get(pid, ()))
    return out


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (0 where /proc is missing)."""
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    total = 0
    for pid in _tree(root):
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * page
        except (OSError, IndexError, ValueError):
            continue
    return total


def tree_run_seconds(root: int) -> float:
    """CPU seconds of every live thread of ``root`` and its descendants, from the scheduler's
    nanosecond counters (``/proc/<pid>/task/<tid>/schedstat``): finer than :func:`tree_seconds`'s
    clock ticks, for processes that use very little. Threads that ended are not counted."""
    total = 0
    for pid in _tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
    return total / 1e9


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot."""
    try:
        first = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        fields = [int(x) for x in first]
    except (OSError, ValueError):
        return (0, 0)
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


class CpuMeter:
    """Per-child shares, this process, this run's whole process tree, and everyone else."""

    def __init__(self, children: Sequence[Child] = ()) -> None:
        self.children = list(children)
        self._t0 = 0.0
        self._child0: list[float] = []
        self._self0 = 0.0
        self._tree0 = 0.0
        self._machine0 = (0, 0)

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._child0 = [c.cpu_seconds() for c in self.children]
        self._self0 = time.process_time()
        self._tree0 = tree_seconds()
        self._machine0 = machine_ticks()

    def stop(self) -> dict[str, float]:
        wall = time.perf_counter() - self._t0
        if wall <= 0:
            return {}
        out = {
            f"cpu_{c.name}": (c.cpu_seconds() - c0) / wall
            for c, c0 in zip(self.children, self._child0, strict=True)
        }
        out["cpu_bench_client"] = (time.process_time() - self._self0) / wall
        busy, total = machine_ticks()
        d_total = total - self._machine0[1]
        if d_total > 0:
            cores = os.cpu_count() or 1
            machine = (busy - self._machine0[0]) / d_total * cores
            mine = (tree_seconds() - self._tree0) / wall
            out["machine_cores_busy"] = machine
            out["this_run_cores"] = mine
            out["others_cores"] = max(0.0, machine - mine)
        return out


def cpu_text(cpu: dict[str, float]) -> str:
    """One line: per-process shares, then machine / this run / others (100% = one core)."""
    parts = [f"{k[4:]} {v * 100:.0f}%" for k, v in cpu.items() if k.startswith("cpu_")]
    text = "CPU (100% = one core): " + ", ".join(parts)
    if "machine_cores_busy" in cpu:
        text += (
            f"; machine {cpu['machine_cores_busy'] * 100:.0f}% of {os.cpu_count()} cores:"
            f" this run {cpu['this_run_cores'] * 100:.0f}%,"
            f" other processes {cpu['others_cores'] * 100:.0f}%"
        )
    return text


def background_load(seconds: float = 1.0) -> float:
    """Cores busy with other processes right now (sampled over ``seconds``)."""
    meter = CpuMeter()
    meter.start()
    time.sleep(seconds)
    return meter.stop().get("others_cores", 0.0)
