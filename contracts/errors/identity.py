"""Errors of the identity context: credentials, tokens, API keys, users."""

from __future__ import annotations

from pydantic import Field

from contracts.errors.base import DomainError, ErrorDetails


class EmailRef(ErrorDetails):
    email: str = Field(description="The e-mail address, normalised.")


class UserRef(ErrorDetails):
    user_id: str = Field(description="The user's id.")


class InvalidToken(DomainError[None]):
    """The JWT is forged, uses an unknown key, or has a wrong type, audience, issuer or claims."""

    code = "invalid_token"
    http_status = 401
    retryable = False
    Details = None


class TokenExpired(DomainError[None]):
    """The access token has expired: refresh it."""

    code = "token_expired"
    http_status = 401
    retryable = False
    Details = None


class InvalidApiKey(DomainError[None]):
    """The API key is malformed or unknown."""

    code = "invalid_api_key"
    http_status = 401
    retryable = False
    Details = None


class ApiKeyRevoked(DomainError[None]):
    """The API key was revoked."""

    code = "api_key_revoked"
    http_status = 401
    retryable = False
    Details = None


class ApiKeyExpired(DomainError[None]):
    """The API key is past its expires_at."""

    code = "api_key_expired"
    http_status = 401
    retryable = False
    Details = None


class InvalidCredentials(DomainError[None]):
    """Wrong e-mail or password."""

    code = "invalid_credentials"
    http_status = 401
    retryable = False
    Details = None


class UserNotApproved(DomainError[None]):
    """The account waits for an admin's approval."""

    code = "user_not_approved"
    http_status = 403
    retryable = False
    Details = None


class RefreshTokenInvalid(DomainError[None]):
    """The refresh token is unknown, expired or revoked."""

    code = "refresh_token_invalid"
    http_status = 401
    retryable = False
    Details = None


class RefreshTokenReused(DomainError[None]):
    """A used refresh token came back: its session is now revoked."""

    code = "refresh_token_reused"
    http_status = 401
    retryable = False
    Details = None


class EmailTaken(DomainError[EmailRef]):
    """The e-mail address is already registered."""

    code = "email_taken"
    http_status = 409
    retryable = False
    Details = EmailRef


class UserNotFound(DomainError[None]):
    """No such user."""

    code = "user_not_found"
    http_status = 404
    retryable = False
    Details = None


class UserAlreadyApproved(DomainError[UserRef]):
    """The user is already active."""

    code = "user_already_approved"
    http_status = 409
    retryable = False
    Details = UserRef


class ApiKeyNotFound(DomainError[None]):
    """No such key among the caller's keys."""

    code = "api_key_not_found"
    http_status = 404
    retryable = False
    Details = None


class AccountSuspended(DomainError[None]):
    """An administrator suspended the account: its sessions and API keys are refused."""

    code = "user_suspended"
    http_status = 403
    retryable = False
    Details = None


class CannotSuspendSelf(DomainError[None]):
    """An administrator cannot suspend their own account."""

    code = "cannot_suspend_self"
    http_status = 409
    retryable = False
    Details = None
