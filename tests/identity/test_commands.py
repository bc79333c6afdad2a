"""Identity's handlers on the in-memory unit of work (no servers): logging in finds the user
through the e-mail claim stream, on the write side, with no read model."""

from __future__ import annotations

import json
import secrets
from typing import Any

import pytest

from contracts.errors import DomainError, InvalidCredentials, UserNotApproved
from contracts.identity import ApproveUser, Login, RegisterUser, TokenPair, UserProfile
from libs.auth import verify_access_token
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.uow import UnitOfWork
from services.identity.commands import IdentityCommands
from services.identity.settings import IdentitySettings

PASSWORD = "lighting-lead-1"


@pytest.fixture
def settings() -> IdentitySettings:
    return IdentitySettings(
        jwt_keys=json.dumps({"k1": secrets.token_hex(32)}),
        jwt_active_kid="k1",
        token_pepper=secrets.token_hex(32),
        password_scrypt_n=2**10,
    )


@pytest.fixture
def store() -> InMemoryEventStore:
    return InMemoryEventStore("identity")


async def run(store: InMemoryEventStore, handler: Any, cmd: Any) -> Any:
    uow = UnitOfWork(store, metadata={"actor": {"kind": "user", "id": "usr_admin"}})
    reply = await handler(cmd, uow)
    await uow.commit()
    return reply


async def registered(
    store: InMemoryEventStore, commands: IdentityCommands, approve: bool
) -> UserProfile:
    cmd = RegisterUser(email="Lead@Studio.test", password=PASSWORD, display_name="Lead")
    profile: UserProfile = await run(store, commands.register_user, cmd)
    if approve:
        await run(store, commands.approve_user, ApproveUser(user_id=profile.user_id))
    return profile


async def test_an_approved_user_logs_in_with_any_case_of_the_address(
    store: InMemoryEventStore, settings: IdentitySettings
) -> None:
    commands = IdentityCommands(settings)
    profile = await registered(store, commands, approve=True)
    pair = await run(store, commands.login, Login(email=" lead@STUDIO.test", password=PASSWORD))
    assert isinstance(pair, TokenPair)
    claims = verify_access_token(settings, pair.access_token)
    assert (claims.user_id, claims.role) == (profile.user_id, "user")


@pytest.mark.parametrize(
    ("email", "password", "approve", "error"),
    [
        ("lead@studio.test", "wrong-password-1", True, InvalidCredentials),
        ("nobody@studio.test", PASSWORD, True, InvalidCredentials),
        ("lead@studio.test", PASSWORD, False, UserNotApproved),
    ],
)
async def test_a_login_is_refused_and_records_nothing(
    store: InMemoryEventStore,
    settings: IdentitySettings,
    email: str,
    password: str,
    approve: bool,
    error: type[DomainError[Any]],
) -> None:
    commands = IdentityCommands(settings)
    await registered(store, commands, approve)
    before = len(await store.read_by_position(0))
    with pytest.raises(error):
        await run(store, commands.login, Login(email=email, password=password))
    assert len(await store.read_by_position(0)) == before
