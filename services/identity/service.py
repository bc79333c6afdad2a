"""The identity service: users, sessions and API keys."""

from __future__ import annotations

from pathlib import Path

from libs.runtime import ServiceRuntime
from libs.service import Service
from services.identity.commands import IdentityCommands
from services.identity.projections import ApiKeysProjection, UsersProjection
from services.identity.settings import IdentitySettings


async def wire(rt: ServiceRuntime[IdentityCommands]) -> IdentityCommands:
    assert isinstance(rt.settings, IdentitySettings)
    commands = IdentityCommands(rt.settings)
    commands.register(rt.commands)
    return commands


SERVICE = Service(
    name="identity",
    schema="identity",
    settings=IdentitySettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(UsersProjection(), ApiKeysProjection()),
    wire=wire,
    secrets=frozenset({"jwt_keys", "token_pepper"}),
)
