"""Command handlers of the deadline-bridge: order a render on the farm, cancel, suspend or
resume one.

A submission never creates a second farm job for the same render: the order is recorded
(``RenderOrdered``) in its own transaction before the farm is called, and the farm job is
tagged with the render id. If the process dies between the farm's answer and recording
``RenderSubmitted``, the retried command finds the order and looks the job up on the farm
by its tag before submitting anything.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from contracts.errors import FarmUnavailable, FieldProblem, RenderNotFound, ValidationFailed
from contracts.jobs import JobPriority, OutputFormat, Renderer
from contracts.render import (
    CancelRender,
    RenderAccepted,
    RenderKind,
    RenderOrdered,
    RenderStatus,
    ResumeRender,
    SubmitRender,
    SuspendRender,
)
from contracts.text import printable
from libs.bus.commands import CommandServer
from libs.eventstore.uow import UnitOfWork
from libs.keys import KeyRefused, confined_path
from libs.logging import get_logger
from services.deadline_bridge.client import DeadlineClient, FarmError, JobStat, frame_list_text
from services.deadline_bridge.domain import FarmRender
from services.deadline_bridge.settings import BridgeSettings

log = get_logger(__name__)

#: Deadline priorities (0-100) for ours.
FARM_PRIORITY = {
    JobPriority.low: 25,
    JobPriority.normal: 50,
    JobPriority.high: 75,
    JobPriority.urgent: 90,
}
#: Extra-info key tagging farm jobs with our render id.
RENDER_TAG = "rf_render_id"
#: The output file name, ``{ext}`` following the job's output format.
OUTPUT_PATTERN = "frame_####.{ext}"
#: File extension per output format (Blender's: ``.jpg`` for JPEG).
FORMAT_EXTENSIONS = {
    OutputFormat.png: "png",
    OutputFormat.exr: "exr",
    OutputFormat.jpeg: "jpg",
}
#: PluginInfo ``OutputFormat`` values: Blender's image format names (``blender -F``).
FARM_FORMATS = {
    OutputFormat.png: "PNG",
    OutputFormat.exr: "OPEN_EXR",
    OutputFormat.jpeg: "JPEG",
}
#: PluginInfo ``Renderer`` values: Blender's render engine names (``blender -E``).
FARM_ENGINES = {
    Renderer.blender_cycles: "CYCLES",
    Renderer.blender_eevee: "BLENDER_EEVEE",
}
ALL_STATES = ("Active", "Suspended", "Completed", "Failed", "Pending")


def _accepted(render: FarmRender) -> RenderAccepted:
    assert render.status is not None
    return RenderAccepted(
        render_id=render.render_id,
        status=render.status,
        farm_job_id=render.farm_job_id,
        version=render.version,
    )


def _unavailable(e: FarmError) -> FarmUnavailable:
    return FarmUnavailable(f"the render farm did not answer as expected: {e}", farm_status=e.status)


def tagged(job: dict[str, Any], render_id: str) -> bool:
    props = job.get("Props") or {}
    extra = props.get("ExDic") or {}
    return bool(extra.get(RENDER_TAG) == render_id)


class RenderCommands:
    def __init__(self, settings: BridgeSettings, farm: DeadlineClient) -> None:
        self.settings = settings
        self.farm = farm

    def register(self, server: CommandServer) -> None:
        server.register(SubmitRender, self.submit)
        server.register(CancelRender, self.cancel)
        server.register(SuspendRender, self.suspend)
        server.register(ResumeRender, self.resume)

    def job_info(self, cmd: SubmitRender, render: FarmRender) -> dict[str, Any]:
        """The farm job's JobInfo. A test render goes to the test pool at the test priority,
        with the full renders' pool as its secondary pool (so it also runs where no standby
        worker serves the test pool), one frame a task, its frames listed one by one, and is
        never interrupted; a full render is interruptible (``full_render_interruptible``)
        and takes its priority from the job's."""
        s = self.settings
        test = cmd.kind is RenderKind.test
        placement: dict[str, Any] = (
            {
                "Priority": s.test_priority,
                "Pool": s.test_pool,
                "SecondaryPool": s.farm_pool,
                "Interruptible": False,
            }
            if test
            else {
                "Priority": FARM_PRIORITY[cmd.priority],
                "Pool": s.farm_pool,
                "Interruptible": s.full_render_interruptible,
            }
        )
        frames = (
            ",".join(map(str, render.frames))
            if cmd.frames is not None
            else frame_list_text(render.frames)
        )
        return {
            "Plugin": s.farm_plugin,
            "Name": f"{cmd.name} [{cmd.render_id}]",
            "BatchName": cmd.job_id,
            "UserName": s.farm_user_name,
            "Comment": f"renderfarm {cmd.kind.value} render of job {cmd.job_id}",
            "Frames": frames,
            "ChunkSize": render.chunk_size,
            **placement,
            "Group": s.farm_group,
            "TaskTimeoutMinutes": s.task_timeout_minutes,
            "OnTaskTimeout": "Error",
            # The bridge decides about retries: a task fails on its first error, and the
            # job is never failed by the farm's own job-level detection.
            "OverrideTaskFailureDetection": True,
            "FailureDetectionTaskErrors": 1,
            "OverrideJobFailureDetection": True,
            "FailureDetectionJobErrors": 100_000,
            "OutputDirectory0": render.output_dir,
            "OutputFilename0": render.output_pattern,
            "InitialStatus": "Active",
            "OnJobComplete": "Nothing",
            "ExtraInfoKeyValue0": f"{RENDER_TAG}={cmd.render_id}",
            "ExtraInfoKeyValue1": f"rf_job_id={cmd.job_id}",
            "ExtraInfoKeyValue2": f"rf_owner_id={cmd.owner_id}",
        }

    def scene_file(self, cmd: SubmitRender) -> str:
        """Where the farm's workers open the scene: the key confined to ``scenes_root``.

        The API refuses bad keys already; this is checked again here, where the path is
        built, so a key that got past it (older history, another client) is refused for good
        (the render fails) instead of a worker opening a file outside the scenes root.
        """
        try:
            return str(confined_path(self.settings.scenes_root, cmd.scene_key, "scene_key"))
        except KeyRefused as e:
            problem = FieldProblem(
                loc=["scene_key"], message=printable(str(e), 300), type="scene_key_refused"
            )
            raise ValidationFailed(
                f"refusing to render job {cmd.job_id}: {e}", errors=[problem]
            ) from e

    def plugin_info(self, cmd: SubmitRender, render: FarmRender) -> dict[str, Any]:
        """The Blender plugin's settings: scene, output and the job's render settings.

        ``SceneFile``, ``OutputFile``, ``Threads`` and ``Build`` are the Deadline Blender
        plugin's keys; ``Renderer``, ``OutputFormat``, ``Samples``, ``Camera`` and
        ``ResolutionX``/``ResolutionY`` carry the job's render settings (Blender's names for
        engine and format). ``Samples`` and ``Camera`` are left out when the job keeps the
        scene's. The output file name ends in the format's extension.
        """
        scene = self.scene_file(cmd)
        settings = cmd.render_settings
        info: dict[str, Any] = {
            "SceneFile": scene,
            "OutputFile": f"{render.output_dir}/{render.output_pattern}",
            "Threads": 0,
            "Build": "None",
            "Renderer": FARM_ENGINES[cmd.renderer],
            "OutputFormat": FARM_FORMATS[settings.output_format],
            "ResolutionX": cmd.resolution.width,
            "ResolutionY": cmd.resolution.height,
        }
        if settings.samples is not None:
            info["Samples"] = settings.samples
        if settings.camera is not None:
            info["Camera"] = settings.camera
        return info

    async def find_on_farm(self, render_id: str) -> str | None:
        """The farm job tagged with ``render_id``, if an earlier try created one."""
        for job in await self.farm.jobs_in_states(ALL_STATES):
            if tagged(job, render_id):
                return str(job["_id"])
        return None

    async def submit(self, cmd: SubmitRender, uow: UnitOfWork) -> RenderAccepted:
        render_id = cmd.render_id
        self.scene_file(cmd)  # refuse a key escaping the scenes root before ordering anything
        render = await uow.get(FarmRender, render_id)
        if render.exists and render.status is not RenderStatus.ordered:
            return _accepted(render)  # already on the farm, or over
        farm_job_id: str | None = None
        try:
            if not render.exists:
                root = self.settings.farm_outputs_root.rstrip("/")
                render.order(
                    RenderOrdered(
                        render_id=render_id,
                        job_id=cmd.job_id,
                        owner_id=cmd.owner_id,
                        kind=cmd.kind,
                        attempt=cmd.attempt,
                        frames=cmd.frames_to_render(),
                        # A test render's frames are spread out: one a task, each on the
                        # first worker free.
                        chunk_size=1 if cmd.kind is RenderKind.test else cmd.chunk_size,
                        output_dir=f"{root}/{cmd.owner_id}/{cmd.job_id}/{render_id}",
                        output_pattern=OUTPUT_PATTERN.format(
                            ext=FORMAT_EXTENSIONS[cmd.render_settings.output_format]
                        ),
                        at=datetime.now(UTC),
                    )
                )
                # Committed on its own, before the farm is called: see the module docstring.
                await uow.commit_alone()
            else:
                farm_job_id = await self.find_on_farm(render_id)
                if farm_job_id is not None:
                    log.warning("render_found_on_farm", render_id=render_id, farm_job=farm_job_id)
            if farm_job_id is None:
                farm_job_id = await self.farm.submit_job(
                    self.job_info(cmd, render), self.plugin_info(cmd, render)
                )
        except FarmError as e:
            raise _unavailable(e) from e
        render.submitted(farm_job_id, datetime.now(UTC))
        return _accepted(render)

    async def cancel(self, cmd: CancelRender, uow: UnitOfWork) -> RenderAccepted:
        render = await uow.get(FarmRender, cmd.render_id)
        if not render.exists:
            raise RenderNotFound(f"no render {cmd.render_id}", render_id=cmd.render_id)
        if render.finished:
            return _accepted(render)
        try:
            farm_job_id = render.farm_job_id or await self.find_on_farm(cmd.render_id)
            if farm_job_id is not None:
                found = await self.farm.jobs_by_id([farm_job_id])
                if found and int(found[0].get("Stat", 0)) == JobStat.completed:
                    # Every frame is there: the poller reports the render completed, and
                    # the job completes rather than being cancelled.
                    return _accepted(render)
                if found:
                    await self.farm.delete_job(farm_job_id)
        except FarmError as e:
            raise _unavailable(e) from e
        render.cancel(cmd.reason, datetime.now(UTC))
        return _accepted(render)

    async def _on_farm(self, render_id: str, uow: UnitOfWork) -> FarmRender:
        render = await uow.get(FarmRender, render_id)
        if not render.exists:
            raise RenderNotFound(f"no render {render_id}", render_id=render_id)
        return render

    async def suspend(self, cmd: SuspendRender, uow: UnitOfWork) -> RenderAccepted:
        """Suspend the farm job: its tasks stop and wait. A render that is suspended or
        finished, or whose farm job completed already (the poller reports it), changes
        nothing; one still being submitted is refused as retryable."""
        render = await self._on_farm(cmd.render_id, uow)
        if render.status is RenderStatus.ordered:
            raise FarmUnavailable(
                f"render {cmd.render_id} is being submitted to the farm; retry shortly",
                farm_status=None,
            )
        if render.status is not RenderStatus.submitted or render.farm_job_id is None:
            return _accepted(render)
        try:
            found = await self.farm.jobs_by_id([render.farm_job_id])
            if not found or int(found[0].get("Stat", 0)) == JobStat.completed:
                return _accepted(render)  # the poller reports it completed or gone
            await self.farm.job_command(render.farm_job_id, "suspend")
        except FarmError as e:
            raise _unavailable(e) from e
        render.suspend(cmd.reason, datetime.now(UTC))
        return _accepted(render)

    async def resume(self, cmd: ResumeRender, uow: UnitOfWork) -> RenderAccepted:
        """Resume a suspended farm job; a render that is not suspended changes nothing."""
        render = await self._on_farm(cmd.render_id, uow)
        if not render.suspended or render.farm_job_id is None:
            return _accepted(render)
        try:
            await self.farm.job_command(render.farm_job_id, "resume")
        except FarmError as e:
            raise _unavailable(e) from e
        render.resume(datetime.now(UTC))
        return _accepted(render)
