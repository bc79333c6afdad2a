"""Wiring and start-up of the identity service."""

from __future__ import annotations

from pathlib import Path

from libs.runtime import ServiceRuntime, run
from libs.service import Service
from services.identity.commands import IdentityCommands
from services.identity.projections import ApiKeysProjection, UsersProjection
from services.identity.settings import IdentitySettings


async def build(settings: IdentitySettings) -> ServiceRuntime:
    settings.check_secrets()  # an empty signing key or pepper would be an auth bypass
    rt = ServiceRuntime(settings, schema="identity")
    await rt.start()
    users = await rt.projector(UsersProjection())
    keys = await rt.projector(ApiKeysProjection())
    IdentityCommands(settings, rt.store).register(rt.command_server(read_your_writes=[users, keys]))
    return rt


SERVICE = Service(
    name="identity",
    schema="identity",
    settings=IdentitySettings,
    migrations=Path(__file__).parent / "migrations",
    projections=(UsersProjection(), ApiKeysProjection()),
    secrets=frozenset({"jwt_keys", "token_pepper"}),
)


async def main() -> None:
    rt = await build(IdentitySettings())
    await rt.serve()


if __name__ == "__main__":
    run(main)
