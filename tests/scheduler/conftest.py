"""The scheduler's service tests run the render path in this process against a real local
farm (``make_farm``, from the farm's suite): the job, scheduler, upload (which stages each
job's scene), scene (which prepares it) and deadline-bridge services on real PostgreSQL,
NATS, Redis and S3. The farm renders with its built-in renderer, so the scenes are not
``.blend`` files and the scene service lets them through as staged (``opaque_scenes``)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from contracts.jobs import FrameRange, JobAccepted, JobSpec, Resolution, SubmitJob
from contracts.staging import SceneRef
from libs.bus.commands import Actor, CommandClient
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from services.billing.service import SERVICE as BILLING
from services.billing.settings import BillingSettings
from services.deadline_bridge.service import SERVICE as BRIDGE
from services.deadline_bridge.settings import BridgeSettings
from services.job.service import SERVICE as JOB
from services.job.settings import JobSettings
from services.scene.service import SERVICE as SCENE
from services.scene.settings import OpaqueScenes, SceneServiceSettings
from services.scheduler.service import SERVICE as SCHEDULER
from services.scheduler.settings import SchedulerSettings
from services.upload.service import SERVICE as UPLOAD
from services.upload.settings import UploadSettings
from services.wallet.service import SERVICE as WALLET
from services.wallet.settings import WalletSettings
from tests.conftest import Env
from tests.farm.conftest import Farm, make_farm
from tests.money import fund

__all__ = ["make_farm"]

USER = Actor(kind="user", id="usr_studio1")


@pytest.fixture
def stage_root(tmp_path: Path) -> Path:
    """The farm's scene root: the upload service stages into it, the bridge names files in
    it to the farm."""
    root = tmp_path / "scenes"
    root.mkdir()
    return root


@pytest.fixture
def upload_settings(env: Env, stage_root: Path) -> UploadSettings:
    return env.settings(UploadSettings, stage_root=str(stage_root), stage_poll_seconds=0.2)


def scene_settings(env: Env, stage_root: Path) -> SceneServiceSettings:
    return env.settings(
        SceneServiceSettings,
        stage_root=str(stage_root),
        opaque_scenes=OpaqueScenes.allow,
        dead_letter_poll_seconds=0.2,
    )


@pytest.fixture
def billing_settings(env: Env) -> BillingSettings:
    """Billing as `make up` runs it (a test module may price the farm's machine otherwise)."""
    return env.settings(BillingSettings)


@pytest.fixture
def farm_args() -> tuple[str, ...]:
    """Extra options of the local farm (a test module may slow its frames down)."""
    return ()


@pytest.fixture
async def render_path(
    env: Env,
    tmp_path: Path,
    stage_root: Path,
    upload_settings: UploadSettings,
    billing_settings: BillingSettings,
    farm_args: tuple[str, ...],
    make_farm: Callable[..., Farm],
) -> AsyncIterator[dict[str, ServiceRuntime[Any]]]:
    """The services, built but not launched (a test may break one first)."""
    farm = make_farm(*farm_args, workers=1)
    started = {
        "job": await build(JOB, env.settings(JobSettings)),
        "scheduler": await build(SCHEDULER, env.settings(SchedulerSettings)),
        # No render starts without a hold: billing holds each job's estimate in the wallet.
        "wallet": await build(WALLET, env.settings(WalletSettings)),
        "billing": await build(BILLING, billing_settings),
        "upload": await build(UPLOAD, upload_settings),
        "scene": await build(SCENE, scene_settings(env, stage_root)),
        "bridge": await build(
            BRIDGE,
            env.settings(
                BridgeSettings,
                farm_url=farm.url,
                farm_outputs_root=str(tmp_path / "renders"),
                scenes_root=str(stage_root),
                poll_interval_seconds=0.2,
            ),
        ),
    }
    yield started
    for rt in started.values():
        await rt.stop()


async def submit(
    rt: ServiceRuntime[Any],
    scene: SceneRef,
    frames: int = 2,
    *,
    credits: Decimal | None = Decimal(1000),
    cost_cap_credits: Decimal | None = None,
) -> str:
    """Submit a job for ``scene`` as the gateway does once it resolved the scene id, after
    granting its owner ``credits`` (None: none)."""
    if credits is not None:
        await fund(rt.nc, rt.settings, USER.id, credits)
    job_id = new_id("job")
    spec = JobSpec(
        name="shot_050",
        scene_id=scene.scene_id,
        frame_range=FrameRange(start=1, end=frames),
        chunk_size=1,
        resolution=Resolution(width=320, height=180),
        cost_cap_credits=cost_cap_credits,
    )
    await CommandClient(rt.nc, rt.settings, timeout=10).send(
        SubmitJob(job_id=job_id, owner_id=USER.id, spec=spec, scene=scene),
        JobAccepted,
        command_id=uuid.uuid4().hex,
        actor=USER,
    )
    return job_id
