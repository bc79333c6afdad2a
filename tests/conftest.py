"""Real servers for the tests, and a fresh, isolated environment for each test.

A run uses the servers named by ``RF_TEST_DATABASE_URL`` (an admin DSN), ``RF_TEST_NATS_URL``,
``RF_TEST_REDIS_URL`` and ``RF_TEST_S3_URL`` (credentials ``test``/``test``) if set; otherwise
it starts its own PostgreSQL, NATS (JetStream), Valkey and S3 (MiniStack) on free ports in a
temporary directory. Each test then gets its own database, NATS subject/stream prefix, Redis
key prefix and S3 buckets, so nothing depends on earlier runs.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest

from libs.config import BaseServiceSettings

S = TypeVar("S", bound=BaseServiceSettings)


@dataclass(frozen=True)
class Servers:
    admin_dsn: str
    nats_url: str
    redis_url: str
    s3_url: str


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    import importlib

    started: list[Any] = []
    local: Any = None
    if not all(os.environ.get(f"RF_TEST_{n}_URL") for n in ("DATABASE", "NATS", "REDIS", "S3")):
        local = importlib.import_module("deploy.local.servers")
    root: Path = tmp_path_factory.mktemp("servers")
    admin_dsn = os.environ.get("RF_TEST_DATABASE_URL")
    if not admin_dsn:
        pg = local.start_postgres(root / "pg", local.free_port())
        started.append(pg)
        admin_dsn = pg.dsn
    nats_url = os.environ.get("RF_TEST_NATS_URL")
    if not nats_url:
        nats = local.start_nats(root / "nats", local.free_port())
        started.append(nats)
        nats_url = nats.url
    redis_url = os.environ.get("RF_TEST_REDIS_URL")
    if not redis_url:
        valkey = local.start_valkey(local.free_port(), root / "valkey")
        started.append(valkey)
        redis_url = valkey.url
    s3_url = os.environ.get("RF_TEST_S3_URL")
    if not s3_url:
        s3 = local.start_s3(root / "s3", local.free_port())
        started.append(s3)
        s3_url = s3.url
    yield Servers(admin_dsn, nats_url, redis_url, s3_url)
    for handle in reversed(started):
        handle.stop()


class Env(dict[str, str]):
    """``RF_*`` environment of one isolated test environment."""

    def settings(self, cls: type[S], **overrides: Any) -> S:
        values: dict[str, Any] = {k[3:].lower(): v for k, v in self.items()}
        values.update(overrides)
        return cls(**values)


@pytest.fixture
async def env(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tag = secrets.token_hex(4)
    db = f"rf_test_{tag}"
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        await admin.execute(f"CREATE DATABASE {db}")
    finally:
        await admin.close()
    dsn = servers.admin_dsn.rsplit("/", 1)[0] + f"/{db}"
    yield Env(
        RF_DATABASE_URL=dsn,
        RF_NATS_URL=servers.nats_url,
        RF_NATS_PREFIX=f"t{tag}",
        RF_REDIS_URL=servers.redis_url,
        RF_REDIS_PREFIX=f"t{tag}",
        RF_JWT_KEYS=json.dumps({"k1": secrets.token_hex(32), "k0": secrets.token_hex(32)}),
        RF_JWT_ACTIVE_KID="k1",
        RF_TOKEN_PEPPER=secrets.token_hex(32),
        # The notifier's key for webhook secrets at rest (base64 of 32 bytes).
        RF_WEBHOOK_SECRETS_KEY=base64.b64encode(secrets.token_bytes(32)).decode(),
        RF_S3_ENDPOINT_URL=servers.s3_url,
        RF_S3_ACCESS_KEY_ID="test",
        RF_S3_SECRET_ACCESS_KEY="test",
        RF_S3_SCENES_BUCKET=f"t{tag}-scenes",
        RF_S3_OUTPUTS_BUCKET=f"t{tag}-outputs",
        # The farm's scene root (the upload service stages manifest files there as they
        # are uploaded); tests that look at it set their own.
        RF_STAGE_ROOT=str(tmp_path_factory.mktemp("stage-root")),
    )
    admin = await asyncpg.connect(servers.admin_dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    finally:
        await admin.close()


pytest_plugins = ["tests.fixtures"]
