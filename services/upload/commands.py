"""Command handlers of the upload service."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from contracts.staging import CancelStaging, StageScene, StagingAccepted
from libs.bus.commands import CommandServer
from libs.eventstore.uow import UnitOfWork
from services.upload.domain import SceneStaging

# --- upload sessions and manifests -------------------------------------------------------

# --- staging scenes to the farm ----------------------------------------------------------


class StagingCommands:
    """``StageScene`` records the request and answers at once; the stager
    (:mod:`services.upload.stager`) copies the scene in the background."""

    def __init__(self, cancel_asked: Callable[[str], None]) -> None:
        #: Tells this process's stager to look at a job's staging before its next chunk
        #: (a stager on another replica sees the cancel when it next records progress).
        self.cancel_asked = cancel_asked

    def register(self, server: CommandServer) -> None:
        server.register(StageScene, self.stage)
        server.register(CancelStaging, self.cancel)

    async def stage(self, cmd: StageScene, uow: UnitOfWork) -> StagingAccepted:
        staging = await uow.get(SceneStaging, cmd.job_id)
        staging.request(cmd.job_id, cmd.owner_id, cmd.scene, datetime.now(UTC))
        return _accepted(cmd.job_id, staging)

    async def cancel(self, cmd: CancelStaging, uow: UnitOfWork) -> StagingAccepted:
        staging = await uow.get(SceneStaging, cmd.job_id)
        if staging.cancel(cmd.reason, datetime.now(UTC)):
            self.cancel_asked(cmd.job_id)
        return _accepted(cmd.job_id, staging)


def _accepted(job_id: str, staging: SceneStaging) -> StagingAccepted:
    return StagingAccepted(
        job_id=job_id,
        status=staging.status,
        staged_key=staging.staged_key or None,
        version=staging.version,
    )


# --- outputs ------------------------------------------------------------------------------
