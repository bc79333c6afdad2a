"""Services running in-process on the isolated environment of each test, and API helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from contracts.staging import SceneKind, SceneRef
from libs.auth import issue_access_token
from libs.ids import new_id
from libs.runtime import ServiceRuntime, build
from libs.s3 import S3Client, S3Settings, ensure_buckets, open_s3
from services.billing.service import SERVICE as BILLING
from services.billing.settings import BillingSettings
from services.gateway import service as gateway_service
from services.gateway.service import Gateway
from services.gateway.settings import GatewaySettings
from services.identity import service as identity_service_
from services.identity.settings import IdentitySettings
from services.job import service as job_service_
from services.job.settings import JobSettings
from services.notifier.service import SERVICE as NOTIFIER
from services.notifier.settings import NotifierSettings
from services.upload import service as upload_service_
from services.upload.settings import UploadSettings
from services.wallet.service import SERVICE as WALLET
from services.wallet.settings import WalletSettings
from tests.conftest import Env
from tests.prices import TEST_PRICES


@pytest.fixture
def gateway_settings(env: Env) -> GatewaySettings:
    return env.settings(GatewaySettings)


@pytest.fixture
async def job_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(job_service_.SERVICE, env.settings(JobSettings, active_job_limit=3))
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def gateway(gateway_settings: GatewaySettings) -> AsyncIterator[Gateway]:
    rt = await build(gateway_service.SERVICE, gateway_settings)
    await rt.launch()
    yield rt.wired
    await rt.stop()


@pytest.fixture
async def client(
    gateway: Gateway, job_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


class Users:
    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings

    def headers(
        self, user_id: str, role: str = "user", now: datetime | None = None
    ) -> dict[str, str]:
        token = issue_access_token(self.settings, user_id, role, now or datetime.now(UTC))
        return {"Authorization": f"Bearer {token}"}

    def new(self, role: str = "user") -> dict[str, str]:
        return self.headers(new_id("usr"), role)


@pytest.fixture
def users(gateway_settings: GatewaySettings) -> Users:
    return Users(gateway_settings)


#: A scene upload id, for job service tests that need no real upload behind it.
SCENE_ID = "upl_01JSCENE0000000000000000SH"


def scene_ref(scene_id: str = SCENE_ID, **overrides: Any) -> SceneRef:
    """A resolved scene upload, as the gateway puts it into ``SubmitJob``."""
    fields: dict[str, Any] = {
        "scene_id": scene_id,
        "kind": SceneKind.upload,
        "main_file": "shot_010.blend",
        "file_count": 1,
        "size_bytes": 4_200_000,
        "content_sha256": "5c" * 32,
        "bucket": "rf-scenes",
        "object_key": f"uploads/usr_1/{scene_id}/shot_010.blend",
    }
    fields.update(overrides)
    return SceneRef(**fields)


def job_spec(**overrides: object) -> dict[str, object]:
    """A create_job body; give it the ``scene_id`` of a completed upload of the caller's."""
    spec: dict[str, object] = {
        "name": "shot_010 lighting",
        "scene_id": SCENE_ID,
        "renderer": "blender_cycles",
        "frame_range": {"start": 1, "end": 24},
        "chunk_size": 4,
        "resolution": {"width": 1920, "height": 1080},
        "priority": "normal",
        "cost_cap_credits": "150.50",
    }
    spec.update(overrides)
    return spec


@pytest.fixture
async def identity_service(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(
        identity_service_.SERVICE, env.settings(IdentitySettings, password_scrypt_n=2**10)
    )
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def billing(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    """The wallet and billing services (on the test price list); yields billing."""
    started = [
        await build(WALLET, env.settings(WalletSettings)),
        await build(
            BILLING,
            env.settings(BillingSettings, default_prices=TEST_PRICES, command_timeout_seconds=2),
        ),
    ]
    for rt in started:
        await rt.launch()
    yield started[1]
    for rt in reversed(started):
        await rt.stop()


@pytest.fixture
async def notifier(env: Env) -> AsyncIterator[ServiceRuntime[Any]]:
    """The notifier in the test's process, on its default settings."""
    rt = await build(NOTIFIER, env.settings(NotifierSettings))
    await rt.launch()
    yield rt
    await rt.stop()


@pytest.fixture
async def api(
    gateway: Gateway, job_service: ServiceRuntime[Any], identity_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with identity and job services behind it."""
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


async def admin_session(api: httpx.AsyncClient, identity: ServiceRuntime[Any]) -> dict[str, str]:
    """The first admin, created as the command line does, logged in."""
    from contracts.identity import RegisterUser, Role, UserProfile
    from libs.bus.commands import Actor, CommandClient

    await CommandClient(identity.nc, identity.settings).send(
        RegisterUser(
            email="admin@studio.test",
            password="admin-password-1",
            display_name="Admin",
            role=Role.admin,
            approved=True,
        ),
        UserProfile,
        command_id="create-admin",
        actor=Actor(kind="cli", id="renderctl"),
    )
    r = await api.post(
        "/v1/auth/login", json={"email": "admin@studio.test", "password": "admin-password-1"}
    )
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def upload_settings(env: Env) -> UploadSettings:
    """The upload service's settings: 5 MiB parts (S3's smallest) keep test objects small.
    A test module overrides this fixture for other quotas or times."""
    return env.settings(UploadSettings, upload_min_part_bytes=5 * 2**20)


@pytest.fixture
async def upload_service(upload_settings: UploadSettings) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(upload_service_.SERVICE, upload_settings)
    await rt.launch()
    yield rt
    await rt.stop()


StartUpload = Callable[..., Awaitable[ServiceRuntime[Any]]]


@pytest.fixture
async def start_upload(env: Env) -> AsyncIterator[StartUpload]:
    """Starts upload services (settings as overrides; outputs' background work looks every
    0.1 s), for tests that restart one or need other settings; all stop at the end."""
    started: list[ServiceRuntime[Any]] = []

    async def start(**overrides: Any) -> ServiceRuntime[Any]:
        settings = env.settings(
            UploadSettings,
            **{"outputs_archive_poll_seconds": 0.1, "outputs_sweep_seconds": 0.1, **overrides},
        )
        rt = await build(upload_service_.SERVICE, settings)
        await rt.launch()
        started.append(rt)
        return rt

    yield start
    for rt in reversed(started):
        await rt.stop()


@pytest.fixture
async def upload_api(
    gateway: Gateway, upload_service: ServiceRuntime[Any]
) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway with the upload service behind it."""
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as c:
        yield c


@pytest.fixture
def s3_settings(env: Env) -> S3Settings:
    return env.settings(S3Settings)


@pytest.fixture
async def s3(s3_settings: S3Settings) -> AsyncIterator[S3Client]:
    """A client on the test's own S3 buckets (created, with their lifecycle rule)."""
    async with open_s3(s3_settings) as client:
        await ensure_buckets(client, s3_settings)
        yield client


class Scenes:
    """Completed scene uploads of test users, made as a client makes them: create_upload,
    part URLs, the parts PUT straight to the store, complete_upload. One per user, made when
    first asked for; ``new`` makes another."""

    def __init__(self, api: httpx.AsyncClient) -> None:
        self.api = api
        self._made: dict[str, str] = {}

    async def new(self, headers: dict[str, str], data: bytes = b"", name: str = "") -> str:
        """The id of a new completed scene upload of the caller's."""
        from tests.upload.protocol import Uploader

        data = data or b"RFSCENE-v1 " + new_id("scene").encode() * 1000
        caller = {k: v for k, v in headers.items() if k in ("Authorization", "X-API-Key")}
        done = await Uploader(self.api, caller).upload(name or "shot_010.blend", data)
        upload_id: str = done["upload_id"]
        return upload_id

    async def of(self, headers: dict[str, str]) -> str:
        """The caller's scene upload (the same one every time)."""
        user = headers.get("Authorization") or headers["X-API-Key"]
        if user not in self._made:
            self._made[user] = await self.new(headers)
        return self._made[user]

    async def spec(self, headers: dict[str, str], **overrides: object) -> dict[str, object]:
        """A create_job body for the caller's scene upload."""
        return job_spec(scene_id=await self.of(headers), **overrides)


@pytest.fixture
def scenes(upload_api: httpx.AsyncClient) -> Scenes:
    """Scene uploads through the gateway, with the upload service behind it."""
    return Scenes(upload_api)
