from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import asyncpg
import pytest
from pydantic import BaseModel

from contracts.base import Command
from contracts.identity import Login, RegisterUser, TokenPair, UserProfile
from libs.bus.commands import Actor, CommandClient
from libs.runtime import ServiceRuntime, build
from services.identity.service import SERVICE
from services.identity.settings import IdentitySettings
from tests.conftest import Env

R = TypeVar("R", bound=BaseModel)

PASSWORD = "correct horse battery staple"
ADMIN = Actor(kind="user", id="usr_admin", role="admin")
ANONYMOUS = Actor(kind="user", id="anonymous")


@pytest.fixture
def settings(env: Env) -> IdentitySettings:
    return env.settings(IdentitySettings)


@pytest.fixture
async def service(settings: IdentitySettings) -> AsyncIterator[ServiceRuntime[Any]]:
    rt = await build(SERVICE, settings)
    await rt.launch()
    yield rt
    await rt.stop()


class Identity:
    """Sends commands to the running identity service, as the gateway would."""

    def __init__(self, rt: ServiceRuntime[Any], settings: IdentitySettings) -> None:
        self.client = CommandClient(rt.nc, settings, timeout=10)
        self.pool: asyncpg.Pool = rt.pool

    async def send(
        self,
        cmd: Command,
        result_type: type[R],
        *,
        command_id: str | None = None,
        actor: Actor = ANONYMOUS,
    ) -> R:
        return await self.client.send(
            cmd, result_type, command_id=command_id or uuid.uuid4().hex, actor=actor
        )

    async def register(
        self, email: str, *, approved: bool = False, command_id: str | None = None
    ) -> UserProfile:
        cmd = RegisterUser(email=email, password=PASSWORD, display_name="Ada", approved=approved)
        return await self.send(cmd, UserProfile, command_id=command_id)

    async def login(self, email: str, password: str = PASSWORD) -> TokenPair:
        return await self.send(Login(email=email, password=password), TokenPair)


@pytest.fixture
def identity(service: ServiceRuntime[Any], settings: IdentitySettings) -> Identity:
    return Identity(service, settings)
