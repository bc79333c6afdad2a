"""A worker process: claims tasks from the farm database, renders them, reports the result.

Started by the web service (``python -m deploy.farm worker ...``). It stops (requeueing its
task) on SIGTERM/SIGINT or when the process that started it goes away. While it renders a
task of an interruptible job it gives the task up for a higher-priority one
(:meth:`Store.interrupt_for_higher_priority`).
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

from deploy.farm.plugins import (
    Cancelled,
    RenderContext,
    RenderError,
    TaskSpec,
    find_blender,
    run_plugin,
)
from deploy.farm.store import Claim, Store

#: Seconds between heartbeats written to the database (the stall limit is ~10 s).
HEARTBEAT_SECONDS = 0.5
#: Seconds between checks of the stop flag, of the parent process and for preemption.
WATCH_SECONDS = 0.1

log = logging.getLogger("deploy.farm.worker")


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of one worker process."""

    data_dir: Path
    name: str
    outputs_root: Path
    frame_seconds: float
    blender: str
    poll_interval: float
    parent_pid: int | None
    #: A standby worker's pools: it serves only these (empty: an ordinary worker).
    standby_pools: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Running:
    """The task being rendered: its claim, the event that cancels it, its render context."""

    claim: Claim
    cancel: threading.Event
    ctx: RenderContext

    @property
    def progress(self) -> int:
        """Percent of the task's frames rendered."""
        return min(100, self.ctx.frames_done * 100 // max(1, len(self.claim.frames)))


class Worker:
    """The claim → render → report loop of one worker."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir / "farm.db")
        self.blender = find_blender(config.blender)
        self.stop = threading.Event()
        self._signalled = False
        self._current: _Running | None = None

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        # Only a flag: Event.set() inside a signal handler can deadlock on the event's lock.
        self._signalled = True

    def _watch(self) -> None:
        """Heartbeat (with the task's progress), and cancel the current task when it is taken
        away, interrupted for a higher-priority one, or we must stop."""
        next_beat = 0.0
        name = self.config.name
        while not self.stop.is_set():
            parent_gone = (
                self.config.parent_pid is not None and os.getppid() != self.config.parent_pid
            )
            current = self._current
            if self._signalled or parent_gone:
                self.stop.set()
                if current is not None:
                    current.cancel.set()
                return
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_SECONDS
                claim, progress = (current.claim, current.progress) if current else (None, 0)
                try:
                    alive = self.store.heartbeat(name, claim, progress)
                except sqlite3.Error:
                    alive = True  # a busy database: try again at the next beat
                if not alive and current is not None:
                    current.cancel.set()
            if current is not None and not current.cancel.is_set():
                try:
                    reason = self.store.interrupt_for_higher_priority(
                        name, current.claim, current.progress
                    )
                except sqlite3.Error:
                    reason = None  # a busy database: look again at the next tick
                if reason is not None:
                    log.info("%s", reason)
                    current.cancel.set()
            time.sleep(WATCH_SECONDS)

    def run(self) -> None:
        """Register, then render tasks until asked to stop; go Offline on the way out."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        self.store.register_worker(self.config.name, os.getpid(), self.config.standby_pools)
        watcher = threading.Thread(target=self._watch, name="heartbeat", daemon=True)
        watcher.start()
        try:
            while not self.stop.is_set():
                if not self.store.has_work():
                    self.stop.wait(self.config.poll_interval)
                    continue
                claim = self.store.claim(self.config.name)
                if claim is None:  # work, but none this worker may take (pools, limits)
                    self.stop.wait(self.config.poll_interval)
                else:
                    self._render(claim)
        finally:
            self.stop.set()
            watcher.join(timeout=2)
            self.store.worker_offline(self.config.name)

    def _render(self, claim: Claim) -> None:
        """Render one claimed task and write its result (unless it was taken away)."""
        cancel = threading.Event()
        name = self.config.name
        ctx = RenderContext(
            cancel=cancel,
            deadline=time.monotonic() + claim.timeout_seconds if claim.timeout_seconds else None,
            outputs_root=self.config.outputs_root,
            frame_seconds=self.config.frame_seconds,
            blender=self.blender,
        )
        self._current = _Running(claim, cancel, ctx)
        if self.stop.is_set():
            cancel.set()
        env = {
            k: v
            for k, _, v in (
                e.partition("=")
                for key, e in claim.job_info.items()
                if key.startswith("EnvironmentKeyValue")
            )
        }
        spec = TaskSpec(
            plugin=claim.plugin,
            job_name=claim.job_name,
            frames=claim.frames,
            job_info=claim.job_info,
            plugin_info=claim.plugin_info,
            env=env,
            aux=claim.aux,
        )
        ctx.log(f"Worker {name} rendering {claim.job_name} task {claim.task_id} {claim.frames}")
        try:
            self._inject_faults(claim)
            run_plugin(spec, ctx)
        except Cancelled:
            if self.stop.is_set():
                self.store.requeue_claim(name, claim, f"Worker {name} stopped; task requeued.")
            else:
                self.store.discard(name)
        except RenderError as exc:
            lines = "\n".join(ctx.log_lines)
            self.store.finish_error(name, claim, str(exc), lines, ctx.ram_peak)
        except Exception as exc:
            message = f"Error: {type(exc).__name__}: {exc}"
            lines = "\n".join([*ctx.log_lines, traceback.format_exc()])
            self.store.finish_error(name, claim, message, lines, ctx.ram_peak)
        else:
            self.store.finish_ok(name, claim, "\n".join(ctx.log_lines), ctx.ram_peak)
        finally:
            self._current = None

    def _inject_faults(self, claim: Claim) -> None:
        """Fail the task if a ``/_farm/faults`` rule matches its job and one of its frames."""
        texts = [claim.job_name] + [
            v
            for k, v in claim.job_info.items()
            if k.startswith("ExtraInfo") and not k.startswith("ExtraInfoKeyValue")
        ]
        texts += [
            v.partition("=")[2]
            for k, v in claim.job_info.items()
            if k.startswith("ExtraInfoKeyValue")
        ]
        for frame in claim.frames:
            message = self.store.take_fault(texts, frame)
            if message is not None:
                raise RenderError(message)


def run_worker(config: WorkerConfig) -> None:
    """Entry point of ``python -m deploy.farm worker``."""
    Worker(config).run()
