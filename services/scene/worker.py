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

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from contracts.base import Command
from contracts.errors import DomainError, SceneSettingsFailed
from contracts.jobs import (
    FailJob,
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
from contracts.preparation import PrepareScene
from contracts.scenes import FindingCode, FindingSeverity, SceneFinding
from libs.bus.commands import Actor, CommandClient
from libs.workqueue import Item
from services.scene import steps
from services.scene.settings import MissingAssets, OpaqueScenes, SceneServiceSettings

ACTOR = Actor(kind="service", id="scene-worker")
#: Progress is reported at most once per this many percent.
PROGRESS_STEP = 10.0
#: Findings a job records at most (``RecordSceneChecked`` takes 1,000): the rest are
#: counted in the step log.
MAX_FINDINGS = 500
#: Why the settings step is skipped where the workers have no Blender.
NO_BLENDER_SKIP = (
    "no Blender on the scene workers: the farm applies the job's frames, resolution and"
    " format when it renders"
)
#: Why a main file that is not a ``.blend`` skips the repath and settings steps.
OPAQUE_SKIP = "not a .blend file: the farm renders it as staged"


class Reporter:
    """Sends one item's step reports to the job service with derived command ids."""

    def __init__(self, commands: CommandClient, item_id: str, job_id: str) -> None:
        self.commands, self.item_id, self.job_id = commands, item_id, job_id
        self._reported: dict[StepName, float] = {}

    async def send(self, cmd: Command, what: str) -> None:
        await self.commands.send(cmd, JobAccepted, command_id=f"{self.item_id}:{what}", actor=ACTOR)

    async def start(self, step: StepName) -> None:
        await self.send(StartJobStep(job_id=self.job_id, step=step, at=now()), f"{step}:start")

    def progress(self, step: StepName) -> steps.Progress:
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

    def log(self, step: StepName) -> steps.Log:
        """A callback writing the step's log lines, numbered in the order they come."""
        count = 0

        async def write(level: LogLevel, message: str) -> None:
            nonlocal count
            count += 1
            await self.line(step, level, message, f"log:{count}")

        return write

    async def findings(self, step: StepName, findings: Sequence[SceneFinding]) -> None:
        """One log line per finding, at its severity's level (at most MAX_FINDINGS)."""
        for n, f in enumerate(findings[:MAX_FINDINGS]):
            where = f" ({f.path})" if f.path else ""
            text = f"{f.code}: {f.message}{where}"
            await self.line(step, LogLevel(f.severity.value), text, f"finding:{n}")
        if len(findings) > MAX_FINDINGS:
            more = f"{len(findings) - MAX_FINDINGS} more findings are not listed"
            await self.line(step, LogLevel.warning, more, "finding:more")

    async def line(self, step: StepName, level: LogLevel, message: str, what: str) -> None:
        text = message[:2000]
        cmd = LogJobStep(job_id=self.job_id, step=step, level=level, message=text, at=now())
        await self.send(cmd, f"{step}:{what}")


def now() -> datetime:
    return datetime.now(UTC)


def _opaque(findings: tuple[SceneFinding, ...], policy: OpaqueScenes) -> bool:
    """The main file is not a ``.blend`` and the farm may render it as staged."""
    return policy is OpaqueScenes.allow and any(
        f.code is FindingCode.scene_not_blend for f in findings
    )


def with_policy(
    finding: SceneFinding, settings: SceneServiceSettings, opaque: bool
) -> SceneFinding:
    """A finding at the severity this farm's settings give it: a missing file stops the job
    (``missing_assets=stop``); a main file that is not a ``.blend`` renders as staged where
    ``opaque_scenes=allow``."""
    if finding.code is FindingCode.scene_not_blend and opaque:
        message = f"{finding.message}; rendered as staged, without the scene steps"
        severity = FindingSeverity.warning
    elif (
        finding.code is FindingCode.asset_missing and settings.missing_assets is MissingAssets.stop
    ):
        message = finding.message.removesuffix("; it renders without it")
        message += "; upload it with the scene and submit the job again"
        severity = FindingSeverity.error
    else:
        return finding
    return finding.model_copy(update={"severity": severity, "message": message})


class ScenePreparer:
    """The queue handler: one item is one job's scene, prepared in three steps."""

    def __init__(
        self, settings: SceneServiceSettings, commands: CommandClient, blender: str | None
    ) -> None:
        self.settings = settings
        self.commands = commands
        self.blender = blender
        self.root = Path(settings.stage_root)

    async def handle(self, item: Item) -> None:
        order = PrepareScene.model_validate(item.payload)
        reporter = Reporter(self.commands, item.item_id, order.job_id)
        try:
            await self.prepare(order, reporter)
        except DomainError as e:
            if e.retryable:
                raise
            # The scene cannot be prepared (a path refused, a repath or Blender failure):
            # the job fails with the step's code; the item is dead-lettered for operators.
            await self.fail(order.job_id, e.code, e.message, item.item_id)
            raise

    async def fail(self, job_id: str, code: str, message: str, item_id: str) -> None:
        reason = f"the scene could not be prepared: {message}"
        cmd = FailJob(job_id=job_id, reason=reason[:4000], code=code, at=now())
        try:
            await self.commands.send(cmd, JobAccepted, command_id=f"{item_id}:failed", actor=ACTOR)
        except DomainError as e:
            if e.retryable:
                raise
            # The job ended meanwhile (cancelled, or failed by an earlier delivery).

    async def prepare(self, order: PrepareScene, reporter: Reporter) -> None:
        """Run the three steps of ``order``'s scene, reporting each on the job."""
        step = StepName.scene_check
        await reporter.start(step)
        checked = await steps.check_scene(
            self.root,
            order.staged_key,
            order.settings,
            progress=reporter.progress(step),
            log=reporter.log(step),
        )
        opaque = _opaque(checked.findings, self.settings.opaque_scenes)
        findings = tuple(with_policy(f, self.settings, opaque) for f in checked.findings)
        await reporter.findings(step, findings)
        missing = sum(1 for a in checked.assets if not a.present)
        await reporter.send(
            RecordSceneChecked(
                job_id=order.job_id,
                findings=list(findings[:MAX_FINDINGS]),
                assets_total=len(checked.assets),
                assets_missing=missing,
                at=now(),
            ),
            f"{step}:checked",
        )
        if any(f.severity is FindingSeverity.error for f in findings):
            return  # the job failed with its findings; nothing more to prepare
        if opaque:
            cmd = RecordScenePrepared(
                job_id=order.job_id, scene_key=order.staged_key, skip_reason=OPAQUE_SKIP, at=now()
            )
            await reporter.send(cmd, "prepared")
            return

        step = StepName.repath
        await reporter.start(step)
        repathed = await steps.repath_scene(
            self.root,
            order.staged_key,
            order.job_id,
            progress=reporter.progress(step),
            log=reporter.log(step),
        )
        for n, rewrite in enumerate(repathed.rewrites[:MAX_FINDINGS]):
            text = f"{rewrite.used_by}: {rewrite.before} -> {rewrite.after}"
            await reporter.line(step, LogLevel.info, text, f"rewrite:{n}")
        rewritten = RecordSceneRepathed(
            job_id=order.job_id, rewritten=len(repathed.rewrites), at=now()
        )
        await reporter.send(rewritten, f"{step}:done")

        step = StepName.render_settings
        if self.blender is None:
            cmd = RecordScenePrepared(
                job_id=order.job_id,
                scene_key=repathed.prepared_key,
                skip_reason=NO_BLENDER_SKIP,
                at=now(),
            )
            await reporter.send(cmd, "prepared")
            return
        await reporter.start(step)
        applied = await steps.apply_render_settings(
            self.root,
            repathed.prepared_key,
            order.settings,
            blender=self.blender,
            timeout_seconds=self.settings.blender_timeout_seconds,
            progress=reporter.progress(step),
            log=reporter.log(step),
        )
        for n, change in enumerate(applied.changes):
            text = f"{change.setting}: {change.before} -> {change.after}"
            await reporter.line(step, LogLevel.info, text, f"change:{n}")
        await reporter.findings(step, applied.findings)
        errors = [f for f in applied.findings if f.severity is FindingSeverity.error]
        if errors:
            raise SceneSettingsFailed(
                f"{errors[0].code}: {errors[0].message}",
                scene_key=repathed.prepared_key,
                reason=str(errors[0].code),
            )
        prepared = RecordScenePrepared(
            job_id=order.job_id, scene_key=repathed.prepared_key, at=now()
        )
        await reporter.send(prepared, "prepared")
