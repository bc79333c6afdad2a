"""A scene worker: takes a job's scene from the queue and runs its three steps, reporting
each on the job through the job service's commands.

Steps, in order (``docs/pipeline.md``): the **scene check** (assets traced, findings), the
**repath** (a prepared copy whose asset paths all point inside it) and the **settings** (the
job's frames, resolution, samples, camera and format written into the prepared scene). A
check with an error finding ends the item: the job fails with ``scene_check_failed``.

Reports are idempotent: each command's id is derived from the queue item, the step and what
it reports, so a step taken over from a killed worker and run again is recorded once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from pydantic import BaseModel

from contracts.base import Command
from contracts.jobs import (
    JobAccepted,
    LogJobStep,
    LogLevel,
    RecordJobStepProgress,
    RecordSceneChecked,
    RecordScenePrepared,
    RecordSceneRepathed,
    StartJobStep,
    StepName,
)
from contracts.preparation import PrepareScene, SceneSettings
from contracts.scenes import FindingSeverity, SceneFinding
from libs.bus.commands import Actor, CommandClient

ACTOR = Actor(kind="service", id="scene-worker")
#: Progress is reported at most once per this many percent.
PROGRESS_STEP = 10.0

Progress = Callable[[int, int], Awaitable[None]]


@dataclass(frozen=True)
class Checked:
    findings: list[SceneFinding]
    assets_total: int
    assets_missing: int
    #: The main file is a ``.blend`` the next steps can rewrite.
    rewritable: bool


@dataclass(frozen=True)
class Repathed:
    prepared_dir: Path
    main_file: str
    rewritten: int


class SceneSteps(Protocol):
    """The three steps over files (``services/scene/steps.py``)."""

    async def check(
        self, scene_dir: Path, main_file: str, settings: SceneSettings, progress: Progress
    ) -> Checked: ...

    async def repath(
        self, scene_dir: Path, main_file: str, prepared_dir: Path, progress: Progress
    ) -> Repathed: ...

    async def apply_settings(self, blend: Path, settings: SceneSettings) -> list[str]: ...


class Reporter:
    """Sends one item's step reports to the job service with derived command ids."""

    def __init__(self, commands: CommandClient, item_id: str, job_id: str) -> None:
        self.commands, self.item_id, self.job_id = commands, item_id, job_id
        self._reported: dict[StepName, float] = {}

    async def send(self, cmd: Command, what: str) -> None:
        await self.commands.send(
            cmd, JobAccepted, command_id=f"{self.item_id}:{what}", actor=ACTOR
        )

    async def start(self, step: StepName) -> None:
        await self.send(StartJobStep(job_id=self.job_id, step=step, at=now()), f"{step}:start")

    def progress(self, step: StepName) -> Progress:
        """A callback reporting ``done`` of ``total`` for ``step`` every PROGRESS_STEP %."""

        async def report(done: int, total: int) -> None:
            percent = round(min(done / total, 1) * 100, 1) if total else 100.0
            if percent - self._reported.get(step, 0.0) < PROGRESS_STEP and percent < 100:
                return
            self._reported[step] = percent
            cmd = RecordJobStepProgress(
                job_id=self.job_id, step=step, progress_percent=percent, at=now()
            )
            await self.send(cmd, f"{step}:progress:{percent}")

        return report

    async def log(self, step: StepName, level: LogLevel, message: str, what: str) -> None:
        cmd = LogJobStep(job_id=self.job_id, step=step, level=level, message=message, at=now())
        await self.send(cmd, f"{step}:log:{what}")


def now() -> datetime:
    return datetime.now(UTC)


class Item(BaseModel):
    """A queue item's payload: the scheduler's order."""

    order: PrepareScene


async def prepare(
    order: PrepareScene, item_id: str, steps: SceneSteps, root: Path, reporter: Reporter
) -> None:
    """Run the three steps of ``order``'s scene, reporting each on the job."""
    staged = root / order.staged_key
    scene_dir, main_file = staged.parent, staged.name
    step = StepName.scene_check
    await reporter.start(step)
    checked = await steps.check(scene_dir, main_file, order.settings, reporter.progress(step))
    for n, f in enumerate(checked.findings):
        level = LogLevel.error if f.severity is FindingSeverity.error else LogLevel.info
        await reporter.log(step, level, f"{f.code}: {f.message}", f"finding:{n}")
    await reporter.send(
        RecordSceneChecked(
            job_id=order.job_id,
            findings=checked.findings,
            assets_total=checked.assets_total,
            assets_missing=checked.assets_missing,
            at=now(),
        ),
        f"{step}:checked",
    )
    if any(f.severity is FindingSeverity.error for f in checked.findings):
        return  # the job failed with its findings; nothing more to prepare
    if not checked.rewritable:
        reason = "not a .blend file: rendered as staged"
        cmd = RecordScenePrepared(
            job_id=order.job_id, scene_key=order.staged_key, skip_reason=reason, at=now()
        )
        await reporter.send(cmd, "prepared")
        return
    step = StepName.repath
    await reporter.start(step)
    prepared_dir = root / "prepared" / order.job_id
    repathed = await steps.repath(scene_dir, main_file, prepared_dir, reporter.progress(step))
    cmd_repathed = RecordSceneRepathed(job_id=order.job_id, rewritten=repathed.rewritten, at=now())
    await reporter.send(cmd_repathed, f"{step}:done")
    step = StepName.render_settings
    await reporter.start(step)
    blend = repathed.prepared_dir / repathed.main_file
    changes = await steps.apply_settings(blend, order.settings)
    for n, change in enumerate(changes):
        await reporter.log(step, LogLevel.info, change, f"change:{n}")
    key = blend.relative_to(root).as_posix()
    await reporter.send(RecordScenePrepared(job_id=order.job_id, scene_key=key, at=now()), "prepared")
