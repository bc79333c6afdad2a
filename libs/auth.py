"""Token primitives shared by identity (issues) and the gateway (verifies).

Access tokens: JWT (PyJWT), HS256 only, ``kid`` header for key rotation, ``typ: at+jwt``;
``exp``, ``iat``, ``iss``, ``aud``, ``sub`` and ``jti`` are required.
API keys: ``rfk_live_<key id>_<secret>``; only ``HMAC-SHA256(pepper, secret)`` is stored.
Refresh tokens: ``rft_<family id>_<secret>``, stored the same way.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from contracts.errors import InvalidToken, TokenExpired
from libs.config import TokenSettings

ALGORITHM = "HS256"
API_KEY_PREFIX = "rfk_live_"
REFRESH_PREFIX = "rft_"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: str
    role: str
    token_id: str
    expires_at: datetime


def issue_access_token(
    settings: TokenSettings, user_id: str, role: str, now: datetime | None = None
) -> str:
    now = now or datetime.now(UTC)
    claims = {
        "sub": user_id,
        "role": role,
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": int(now.timestamp()),
        "nbf": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=settings.access_token_ttl_seconds)).timestamp()),
        "jti": uuid.uuid4().hex,
    }
    kid = settings.jwt_active_kid
    return jwt.encode(
        claims, settings.jwt_keys[kid], algorithm=ALGORITHM, headers={"kid": kid, "typ": "at+jwt"}
    )


#: Clock skew tolerated on exp, nbf and iat.
LEEWAY_SECONDS = 30


def verify_access_token(settings: TokenSettings, token: str) -> AccessClaims:
    """Verify signature, algorithm, key id, type and claims; raise a DomainError if bad."""
    try:
        header = jwt.get_unverified_header(token)
        key = settings.jwt_keys.get(str(header.get("kid")))
        if key is None or header.get("alg") != ALGORITHM or header.get("typ") != "at+jwt":
            raise InvalidToken("the access token is not one of ours")
        claims = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            leeway=LEEWAY_SECONDS,
            options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise TokenExpired("the access token has expired; refresh it") from None
    except jwt.PyJWTError as e:
        raise InvalidToken(f"invalid access token: {e}") from None
    return AccessClaims(
        user_id=str(claims["sub"]),
        role=str(claims.get("role", "user")),
        token_id=str(claims["jti"]),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
    )


def keyed_hash(settings: TokenSettings, secret: str) -> str:
    return hmac.new(settings.token_pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def new_api_key(key_id: str) -> tuple[str, str]:
    """Return (full key to show once, secret part to hash)."""
    secret = secrets.token_urlsafe(32)
    return f"{API_KEY_PREFIX}{key_id}_{secret}", secret


def split_api_key(full: str) -> tuple[str, str] | None:
    """``rfk_live_<key id>_<secret>`` -> (key id, secret); key ids are ``key_<26 chars>``."""
    if not full.startswith(API_KEY_PREFIX):
        return None
    rest = full[len(API_KEY_PREFIX) :]
    key_id, sep, secret = rest[:30], rest[30:31], rest[31:]
    if not key_id.startswith("key_") or sep != "_" or not secret:
        return None
    return key_id, secret


def new_refresh_token(family_id: str) -> tuple[str, str]:
    secret = secrets.token_urlsafe(32)
    return f"{REFRESH_PREFIX}{family_id}_{secret}", secret


def split_refresh_token(full: str) -> tuple[str, str] | None:
    """``rft_<family id>_<secret>`` -> (family id, secret); family ids are ``rtf_<26>``."""
    if not full.startswith(REFRESH_PREFIX):
        return None
    rest = full[len(REFRESH_PREFIX) :]
    family_id, sep, secret = rest[:30], rest[30:31], rest[31:]
    if not family_id.startswith("rtf_") or sep != "_" or not secret:
        return None
    return family_id, secret


def constant_time_equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
