"""Who is calling: a JWT session or an API key, resolved to a principal."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from contracts.errors import (
    AccountSuspended,
    ApiKeyExpired,
    ApiKeyRevoked,
    Forbidden,
    InsufficientScope,
    InvalidApiKey,
    InvalidToken,
    Unauthenticated,
)
from contracts.identity import Role, Scope
from libs.auth import (
    LEEWAY_SECONDS,
    AccessClaims,
    constant_time_equal,
    keyed_hash,
    split_api_key,
    verify_access_token,
)
from libs.bus.commands import Actor
from libs.readmodels.identity import ApiKeyCredential, IdentityQuery
from services.gateway.settings import GatewaySettings

ALL_SCOPES = frozenset(Scope)


@dataclass(frozen=True, slots=True)
class Principal:
    user_id: str
    role: Role
    api_key_id: str | None = None
    scopes: frozenset[Scope] = field(default=ALL_SCOPES)

    @property
    def is_admin(self) -> bool:
        # Admin powers need an interactive session; an admin's API key acts as a user.
        return self.role is Role.admin and self.api_key_id is None

    @property
    def idempotency_scope(self) -> str:
        return self.user_id

    def actor(self) -> Actor:
        return Actor(kind="user", id=self.user_id, api_key_id=self.api_key_id, role=self.role)

    def require(self, scope: Scope) -> None:
        if scope not in self.scopes:
            raise InsufficientScope(
                f"this API key lacks the {scope.value} scope", required_scope=scope
            )

    def require_session(self) -> None:
        if self.api_key_id is not None:
            raise Forbidden("this operation needs a user session (JWT), not an API key")

    def require_admin(self) -> None:
        if not self.is_admin:
            raise Forbidden("this operation is for administrators")


#: Verified access tokens kept, so a client's repeated token is checked once, not per call.
VERIFIED_CACHE_SIZE = 10_000
#: API keys kept per process (their credential row, not their secret).
KEY_CACHE_SIZE = 10_000
#: Revocations remembered (a revoked key is refused even if a stale read model still
#: shows it active), well beyond any replication delay of identity's read model.
REVOKED_KEEP_SECONDS = 3600.0


class Authenticator:
    """Verifies credentials, keeping verdicts per process.

    An API key's credential row is cached for ``api_key_cache_seconds``; identity's
    ``ApiKeyRevoked`` event (on the bus, :meth:`revoked`) drops it at once and marks the key
    revoked, and :meth:`forget` (after a NATS reconnect, when events may have been missed)
    drops every cached key.

    Suspended users are a per-process set, loaded from identity's read model at start-up
    and after a reconnect (:meth:`load_suspended`) and kept current by identity's
    ``UserSuspended`` and ``UserReactivated`` events (:meth:`suspended`,
    :meth:`reactivated`): every JWT and API key of a suspended user is refused
    (``user_suspended``) on every request, whatever the token's lifetime.
    """

    def __init__(self, settings: GatewaySettings, identity: IdentityQuery) -> None:
        self.settings = settings
        self.identity = identity
        self._verified: dict[str, AccessClaims] = {}
        self._keys: dict[str, tuple[ApiKeyCredential, float]] = {}
        self._revoked: dict[str, float] = {}
        self._suspended: set[str] = set()

    async def load_suspended(self) -> None:
        """Take the suspended users from identity's read model (subscribe to the events
        first, so none is missed between the read and the subscription)."""
        self._suspended |= await self.identity.suspended_users()

    def suspended(self, user_id: str) -> None:
        """A user was suspended: refuse their sessions and keys from now on."""
        self._suspended.add(user_id)

    def reactivated(self, user_id: str) -> None:
        """A suspension was lifted: accept the user again, with fresh key rows."""
        self._suspended.discard(user_id)
        for key_id in [k for k, (c, _) in self._keys.items() if c.user_id == user_id]:
            del self._keys[key_id]

    def revoked(self, key_id: str) -> None:
        """A key was revoked: refuse it from now on, whatever a cache or read model says."""
        self._keys.pop(key_id, None)
        now = time.monotonic()
        if len(self._revoked) >= KEY_CACHE_SIZE:
            self._revoked = {
                k: t for k, t in self._revoked.items() if now - t < REVOKED_KEEP_SECONDS
            }
        self._revoked[key_id] = now

    def forget(self) -> None:
        self._keys.clear()

    async def _credential(self, key_id: str) -> ApiKeyCredential | None:
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is not None and now - hit[1] < self.settings.api_key_cache_seconds:
            return hit[0]
        key = await self.identity.api_key_credential(key_id)
        if key is not None:
            if len(self._keys) >= KEY_CACHE_SIZE:
                self._keys.clear()
            self._keys[key_id] = (key, now)
        return key

    def _claims(self, token: str) -> AccessClaims:
        """Verify a JWT, or reuse the verdict on the same token while it has not expired."""
        claims = self._verified.get(token)
        now = datetime.now(UTC).timestamp()
        if claims is not None and now <= claims.expires_at.timestamp() + LEEWAY_SECONDS:
            return claims
        claims = verify_access_token(self.settings, token)  # raises when bad or expired
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    async def authenticate(self, authorization: str | None, api_key: str | None) -> Principal:
        token = api_key
        if token is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() != "bearer" or not value:
                raise Unauthenticated("use 'Authorization: Bearer <token or API key>'")
            token = value.strip()
        if not token:
            raise Unauthenticated(
                "authentication required: a Bearer JWT or an API key (X-API-Key header)",
            )
        if token.startswith("rfk_"):
            return await self._api_key(token)
        claims = self._claims(token)
        try:
            role = Role(claims.role)
        except ValueError:
            raise InvalidToken("unknown role in token") from None
        self._refuse_suspended(claims.user_id)
        return Principal(user_id=claims.user_id, role=role)

    def _refuse_suspended(self, user_id: str, read_model_says: bool = False) -> None:
        if read_model_says or user_id in self._suspended:
            raise AccountSuspended("this account is suspended by an administrator")

    async def _api_key(self, full: str) -> Principal:
        parts = split_api_key(full)
        if parts is None:
            raise InvalidApiKey("malformed API key")
        key_id, secret = parts
        key = await self._credential(key_id)
        if key is None or not constant_time_equal(key.key_hash, keyed_hash(self.settings, secret)):
            raise InvalidApiKey("unknown API key")
        if key.revoked_at is not None or key_id in self._revoked:
            raise ApiKeyRevoked("this API key has been revoked")
        self._refuse_suspended(key.user_id, key.owner_suspended)
        if key.expires_at is not None and key.expires_at <= datetime.now(UTC):
            raise ApiKeyExpired("this API key has expired")
        return Principal(user_id=key.user_id, role=key.role, api_key_id=key_id, scopes=key.scopes)
