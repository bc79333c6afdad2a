"""The deadline-bridge: renders on a Deadline farm, through its Web Service REST API, and
stores the frames the farm writes in the outputs bucket."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, ensure_buckets, open_s3
from libs.service import Service
from services.deadline_bridge.client import DeadlineClient
from services.deadline_bridge.commands import RenderCommands
from services.deadline_bridge.outputs import FrameStore
from services.deadline_bridge.poller import FarmPoller
from services.deadline_bridge.projections import RendersProjection
from services.deadline_bridge.settings import BridgeSettings


@dataclass(frozen=True)
class Bridge:
    farm: DeadlineClient
    s3: S3Client
    commands: RenderCommands
    poller: FarmPoller


async def wire(rt: ServiceRuntime[Bridge]) -> Bridge:
    settings = rt.settings
    assert isinstance(settings, BridgeSettings)
    farm = DeadlineClient(settings)
    rt.on_close(farm.aclose)
    opened = open_s3(settings)
    s3 = await opened.__aenter__()

    async def close_s3() -> None:
        await opened.__aexit__(None, None, None)

    rt.on_close(close_s3)
    if settings.s3_create_buckets:
        await ensure_buckets(s3, settings)
    frames = FrameStore(
        s3,
        settings.s3_outputs_bucket,
        multipart_threshold=settings.outputs_multipart_threshold_bytes,
        part_size=settings.outputs_part_size_bytes,
        concurrency=settings.outputs_store_concurrency,
        thumbnail_size=settings.thumbnail_size,
        thumbnail_max_pixels=settings.thumbnail_max_pixels,
    )
    commands = RenderCommands(settings, farm)
    commands.register(rt.commands)
    poller = FarmPoller(settings, rt.store, farm, rt.projectors["renders"], frames)
    rt.background("farm-poller", poller.run)

    async def farm_reachable() -> str | None:
        return f"farm poller: {poller.last_error}" if poller.last_error is not None else None

    async def frames_stored() -> str | None:
        return f"frame storage: {poller.store_error}" if poller.store_error is not None else None

    rt.readiness_checks.append(farm_reachable)
    rt.readiness_checks.append(frames_stored)
    return Bridge(farm, s3, commands, poller)


SERVICE = Service(
    name="deadline-bridge",
    schema="bridge",
    settings=BridgeSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(RendersProjection(),),
    wire=wire,
    secrets=frozenset({"farm_password", "s3_secret_access_key"}),
)
