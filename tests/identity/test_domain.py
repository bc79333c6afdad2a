"""The identity aggregates, without I/O: users, e-mail claims, refresh families, API keys."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from contracts.errors import (
    AccountSuspended,
    CannotSuspendSelf,
    DomainError,
    EmailTaken,
    InternalError,
    RefreshTokenInvalid,
    UserAlreadyApproved,
    UserNotFound,
    ValidationFailed,
)
from contracts.identity import (
    ApiKeyRevoked,
    ApiKeyUsed,
    EmailClaimed,
    RefreshFamilyRevoked,
    RefreshTokenRotated,
    Role,
    Scope,
    UserApproved,
    UserReactivated,
    UserStatus,
    UserSuspended,
)
from services.identity.domain import (
    ApiKey,
    EmailClaim,
    RefreshFamily,
    User,
    is_reuse,
    normalise_email,
)
from services.identity.passwords import hash_password, verify_password
from tests.aggregates import evolve

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def registered_user(approved_by: str | None = None) -> User:
    user = User()
    return evolve(
        user,
        user.register(
            "usr_1", "Ada@Example.com", "Ada", Role.user, "hash", NOW, approved_by=approved_by
        ),
    )


# -- users -----------------------------------------------------------------------------


def test_a_new_user_waits_for_approval() -> None:
    user = registered_user()
    assert user.status is UserStatus.pending_approval
    assert user.profile().approved_at is None
    assert user.profile().email == "Ada@Example.com"


def test_approving_activates_the_user_once() -> None:
    user = registered_user()
    evolve(user, user.approve("usr_admin", NOW + DAY))
    assert user.status is UserStatus.active
    assert user.approved_at == NOW + DAY
    with pytest.raises(DomainError) as e:
        user.approve("usr_admin", NOW + 2 * DAY)
    assert type(e.value) is UserAlreadyApproved


def test_suspending_and_reactivating_go_back_to_the_status_before() -> None:
    user = registered_user(approved_by="cli")
    [suspended] = user.suspend("chargebacks", "usr_admin", NOW)
    assert suspended == UserSuspended(
        user_id="usr_1", reason="chargebacks", suspended_by="usr_admin", suspended_at=NOW
    )
    assert user.suspended and user.profile().status is UserStatus.suspended
    assert user.suspend("again", "usr_admin", NOW) == []  # suspended already: nothing
    with pytest.raises(AccountSuspended):  # approval waits for the reactivation
        user.approve("usr_admin", NOW)
    [back] = user.reactivate("usr_admin", NOW + DAY)
    assert isinstance(back, UserReactivated) and back.status is UserStatus.active
    assert user.status is UserStatus.active and user.reactivate("usr_admin", NOW) == []

    pending = registered_user()
    evolve(pending, pending.suspend("spam", "usr_admin", NOW))
    evolve(pending, pending.reactivate("usr_admin", NOW))
    assert pending.status is UserStatus.pending_approval


def test_nobody_suspends_themself_or_a_user_that_does_not_exist() -> None:
    user = registered_user(approved_by="cli")
    with pytest.raises(CannotSuspendSelf):
        user.suspend("oops", "usr_1", NOW)
    with pytest.raises(UserNotFound):
        User().suspend("gone", "usr_admin", NOW)
    with pytest.raises(UserNotFound):
        User().reactivate("usr_admin", NOW)


def test_approving_a_user_that_does_not_exist_is_user_not_found() -> None:
    with pytest.raises(DomainError) as e:
        User().approve("usr_admin", NOW)
    assert type(e.value) is UserNotFound


def test_a_user_registered_already_approved_is_active_at_once() -> None:
    user = registered_user(approved_by="cli")
    assert user.status is UserStatus.active
    assert user.approved_at == NOW


# -- e-mail claims ---------------------------------------------------------------------


def test_an_email_is_claimed_in_lower_case() -> None:
    assert EmailClaim().claim("Ada@Example.COM", "usr_1") == [
        EmailClaimed(email="ada@example.com", user_id="usr_1")
    ]
    assert normalise_email(" Ada@Example.COM ") == "ada@example.com"


def test_a_claimed_email_cannot_be_claimed_again() -> None:
    claim = EmailClaim()
    evolve(claim, claim.claim("ada@example.com", "usr_1"))
    with pytest.raises(DomainError) as e:
        claim.claim("ADA@example.com", "usr_2")
    assert type(e.value) is EmailTaken


# -- refresh families ------------------------------------------------------------------


def new_family() -> RefreshFamily:
    family = RefreshFamily()
    return evolve(family, family.issue("rtf_1", "usr_1", "h1", NOW + DAY))


def test_the_current_refresh_token_rotates_to_a_new_one() -> None:
    family = new_family()
    events = family.rotate("h1", "h2", NOW, NOW + 2 * DAY)
    assert events == [
        RefreshTokenRotated(
            family_id="rtf_1", used_token_hash="h1", token_hash="h2", expires_at=NOW + 2 * DAY
        )
    ]
    assert not is_reuse(events)
    evolve(family, events)
    assert family.current_hash == "h2"
    assert family.used_hashes == ["h1"]
    assert family.expires_at == NOW + 2 * DAY


def test_presenting_a_used_refresh_token_revokes_the_family() -> None:
    family = new_family()
    evolve(family, family.rotate("h1", "h2", NOW, NOW + DAY))
    events = family.rotate("h1", "h3", NOW, NOW + DAY)
    assert events == [
        RefreshFamilyRevoked(family_id="rtf_1", reason="reuse detected", revoked_at=NOW)
    ]
    assert is_reuse(events)
    evolve(family, events)
    # Afterwards even the token that was current is refused.
    with pytest.raises(DomainError) as e:
        family.rotate("h2", "h4", NOW, NOW + DAY)
    assert type(e.value) is RefreshTokenInvalid


@pytest.mark.parametrize(
    ("family", "presented", "now"),
    [
        pytest.param(RefreshFamily(), "h1", NOW, id="unknown family"),
        pytest.param(new_family(), "never-issued", NOW, id="unknown token"),
        pytest.param(new_family(), "h1", NOW + DAY, id="expired"),
    ],
)
def test_other_refresh_tokens_are_invalid(
    family: RefreshFamily, presented: str, now: datetime
) -> None:
    with pytest.raises(DomainError) as e:
        family.rotate(presented, "new", now, now + DAY)
    assert type(e.value) is RefreshTokenInvalid


# -- API keys --------------------------------------------------------------------------


def new_key(expires_at: datetime | None = None) -> ApiKey:
    key = ApiKey()
    return evolve(
        key,
        key.create(
            "key_1",
            "usr_1",
            "ci",
            [Scope.jobs_write, Scope.jobs_read, Scope.jobs_read],
            "keyhash",
            Decimal("10.5"),
            expires_at,
            NOW,
        ),
    )


def test_a_new_api_key_has_its_scopes_once_and_no_use_yet() -> None:
    info = new_key().info()
    assert info.scopes == [Scope.jobs_read, Scope.jobs_write]
    assert info.spend_cap_credits == Decimal("10.5")
    assert info.last_used_at is None and info.revoked_at is None


def test_an_api_key_cannot_be_created_already_expired() -> None:
    with pytest.raises(DomainError) as e:
        new_key(expires_at=NOW)
    assert type(e.value) is ValidationFailed


def test_revoking_an_api_key_twice_changes_nothing_the_second_time() -> None:
    key = new_key()
    first = key.revoke("usr_1", NOW)
    assert first == [ApiKeyRevoked(key_id="key_1", revoked_by="usr_1", revoked_at=NOW)]
    evolve(key, first)
    assert key.revoke("usr_1", NOW + DAY) == []
    assert key.info().revoked_at == NOW


def test_api_key_use_is_recorded_at_most_once_a_minute() -> None:
    key = new_key()
    evolve(key, key.record_use(NOW))
    assert key.last_used_at == NOW
    assert key.record_use(NOW + timedelta(seconds=59)) == []
    assert key.record_use(NOW + timedelta(seconds=60)) == [
        ApiKeyUsed(key_id="key_1", used_at=NOW + timedelta(seconds=60))
    ]


def test_use_of_a_revoked_api_key_is_not_recorded() -> None:
    key = new_key()
    evolve(key, key.revoke("usr_1", NOW))
    assert key.record_use(NOW + DAY) == []


# -- passwords -------------------------------------------------------------------------


def test_a_password_hash_verifies_only_its_password() -> None:
    encoded = hash_password("correct horse battery", n=2**10)
    assert encoded.startswith("scrypt$1024$8$1$")
    assert "correct horse" not in encoded
    assert verify_password("correct horse battery", encoded)
    assert not verify_password("correct horse battery!", encoded)
    assert hash_password("correct horse battery", n=2**10) != encoded  # salted


@pytest.mark.parametrize("encoded", ["", "bcrypt$x", "scrypt$1024$8$1$not base64!$AAAA"])
def test_a_malformed_password_hash_never_verifies(encoded: str) -> None:
    assert not verify_password("anything at all", encoded)


def test_events_of_approval_name_the_approver() -> None:
    user = registered_user()
    (event,) = user.approve("usr_admin", NOW)
    assert event == UserApproved(user_id="usr_1", approved_by="usr_admin", approved_at=NOW)


def test_a_generated_id_that_is_taken_is_an_internal_error_a_retry_fixes() -> None:
    """The handler picks user, family and key ids; a retry picks new ones. Nobody raced."""
    user, family, key = registered_user(), new_family(), new_key()
    attempts: list[Callable[[], object]] = [
        lambda: user.register("usr_1", "b@example.com", "B", Role.user, "hash", NOW),
        lambda: family.issue("rtf_1", "usr_2", "h9", NOW + DAY),
        lambda: key.create("key_1", "usr_2", "ci", [Scope.jobs_read], "h", None, None, NOW),
    ]
    for attempt in attempts:
        with pytest.raises(DomainError) as e:
            attempt()
        assert type(e.value) is InternalError
        assert (e.value.code, e.value.http_status, e.value.retryable) == (
            "internal_error",
            500,
            True,
        )
