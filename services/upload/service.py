"""The upload service: upload sessions into S3, scene assets, staging and output delivery.

File bytes never pass through this service or the gateway: clients send parts straight to
the store through presigned URLs, and download frames the same way. The one exception is
staging: the pre-stager copies each manifest file to the farm's scene root as soon as its
upload completes, and the stager each job's scene (linking what the pre-stager copied).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from libs.bus.commands import CommandClient
from libs.runtime import ServiceRuntime
from libs.s3 import S3Client, ensure_buckets, open_s3
from libs.service import Service
from services.upload.commands import (
    OutputCommands,
    OutputEvents,
    StagingCommands,
    UploadSessions,
)
from services.upload.completer import Completer
from services.upload.delivery import ArchiveBuilder, RetentionSweeper
from services.upload.multipart import Multipart
from services.upload.prestager import ContentPrestager
from services.upload.projections import (
    AssetsProjection,
    ManifestsProjection,
    OutputsProjection,
    StagingsProjection,
    UploadsProjection,
)
from services.upload.settings import UploadSettings
from services.upload.stager import SceneStager
from services.upload.sweeper import Sweeper

#: Redelivery back-off of job events: an outage of a few minutes delays, never loses.
BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0)
MAX_DELIVER = 20


@dataclass(frozen=True)
class Upload:
    s3: S3Client
    sessions: UploadSessions
    completer: Completer
    sweeper: Sweeper
    stager: SceneStager
    #: None when ``stage_on_upload`` is off.
    prestager: ContentPrestager | None
    archives: ArchiveBuilder
    retention: RetentionSweeper


async def wire(rt: ServiceRuntime[Upload]) -> Upload:
    settings = rt.settings
    assert isinstance(settings, UploadSettings)
    opened = open_s3(settings)
    s3 = await opened.__aenter__()

    async def close_s3() -> None:
        await opened.__aexit__(None, None, None)

    rt.on_close(close_s3)
    if settings.s3_create_buckets:
        await ensure_buckets(s3, settings)
    # Upload sessions and manifests: part URLs name the store as clients reach it.
    signer = s3
    if settings.s3_public_endpoint_url:
        public = open_s3(settings, public=True)
        signer = await public.__aenter__()

        async def close_signer() -> None:
            await public.__aexit__(None, None, None)

        rt.on_close(close_signer)
    multipart = Multipart(s3, signer)
    sessions = UploadSessions(settings, multipart)
    sessions.register(rt.commands)
    to_itself = CommandClient(rt.nc, settings, timeout=15)
    completer = Completer(settings, rt.store, to_itself, multipart)
    rt.background("upload-completer", completer.run)
    sweeper = Sweeper(settings, rt.store, to_itself, multipart)
    rt.background("upload-sweeper", sweeper.run)

    # Staging scenes to the farm; and, unless turned off, each manifest file once its
    # upload completes (led by the stager, under its lock: no connection of its own). Its
    # failures are logged as alerts, not readiness: a job's staging copies what it missed.
    prestager = None
    if settings.stage_on_upload:
        prestager = ContentPrestager(settings, rt.store, s3, rt.projectors["assets"])
    stager = SceneStager(settings, rt.store, s3, rt.projectors, prestager)
    StagingCommands(stager.ask_cancel).register(rt.commands)
    rt.background("scene-stager", stager.run)

    async def stager_healthy() -> str | None:
        return f"scene stager: {stager.last_error!r}" if stager.last_error is not None else None

    rt.readiness_checks.append(stager_healthy)

    # Outputs: download URLs are signed by the same client as part URLs.
    OutputCommands(settings, signer).register(rt.commands)
    archives = ArchiveBuilder(settings, rt.store, s3)
    retention = RetentionSweeper(settings, rt.store, s3)
    events = OutputEvents(settings, rt.store, archives.asked)
    rt.consumer(
        events.durable, events.subjects, events.handle, max_deliver=MAX_DELIVER, backoff=BACKOFF
    )
    rt.background("outputs-archiver", archives.run)
    rt.background("outputs-retention", retention.run)

    async def outputs_delivered() -> str | None:
        for name, task in (("archives", archives), ("retention", retention)):
            if task.last_error is not None:
                return f"outputs {name}: {task.last_error}"
        return None

    rt.readiness_checks.append(outputs_delivered)
    return Upload(s3, sessions, completer, sweeper, stager, prestager, archives, retention)


SERVICE = Service(
    name="upload",
    schema="upload",
    settings=UploadSettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(
        UploadsProjection(),
        AssetsProjection(),
        ManifestsProjection(),
        OutputsProjection(),
        StagingsProjection(),
    ),
    wire=wire,
    secrets=frozenset({"s3_secret_access_key"}),
)
