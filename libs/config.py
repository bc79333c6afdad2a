"""Settings from environment variables: ``RF_<SETTING>`` for every service, and
``RF_<SERVICE>_<SETTING>`` for one service only, which wins (``RF_GATEWAY_COMMAND_TIMEOUT_SECONDS``
and ``RF_SCHEDULER_COMMAND_TIMEOUT_SECONDS`` set the two services' timeouts apart)."""

from __future__ import annotations

import json
from typing import ClassVar

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class BaseServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RF_", extra="ignore")

    #: The service's own prefix is ``RF_<env_section>_``; empty for shared settings only.
    env_section: ClassVar[str] = ""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: tuple[PydanticBaseSettingsSource, ...] = (init_settings,)
        if cls.env_section:
            own = EnvSettingsSource(settings_cls, env_prefix=f"RF_{cls.env_section.upper()}_")
            sources += (own,)
        return (*sources, env_settings, dotenv_settings, file_secret_settings)

    service_name: str = "service"
    database_url: str = "postgresql://postgres@127.0.0.1:15432/renderfarm"
    nats_url: str = "nats://127.0.0.1:14222"
    redis_url: str = "redis://127.0.0.1:16379/0"
    # Subject prefix and stream names, so test runs and environments can share one server.
    nats_prefix: str = ""
    # Key prefix in Redis, for the same reason.
    redis_prefix: str = "rf"
    #: JetStream: replicas of the EVENTS stream (3 in production) and how long it keeps them.
    events_stream_replicas: int = 1
    events_max_age_days: float = 7.0
    health_port: int = 0
    log_level: str = "INFO"
    otel_exporter: str = Field(default="none", description="none | console")
    #: Share of root spans recorded; a span with a parent keeps its parent's decision.
    otel_sample_ratio: float = 0.01
    db_pool_size: int = 10
    #: How often a process asks whether its event store's feed moved (one query each).
    feed_poll_seconds: float = 0.02

    @property
    def events_stream(self) -> str:
        return f"{self.nats_prefix.upper()}EVENTS" if self.nats_prefix else "EVENTS"

    @property
    def dlq_stream(self) -> str:
        return f"{self.nats_prefix.upper()}DLQ" if self.nats_prefix else "DLQ"

    def subject(self, name: str) -> str:
        return f"{self.nats_prefix}.{name}" if self.nats_prefix else name


class TokenSettings(BaseServiceSettings):
    """Keys shared by identity (which signs) and the gateway (which verifies)."""

    jwt_keys: dict[str, str] = Field(default_factory=dict, description='{"kid": "secret"}')
    jwt_active_kid: str = "k1"
    jwt_issuer: str = "renderfarm-identity"
    jwt_audience: str = "renderfarm-api"
    access_token_ttl_seconds: int = 900
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    token_pepper: str = ""

    @field_validator("jwt_keys", mode="before")
    @classmethod
    def _parse_keys(cls, value: object) -> object:
        return json.loads(value) if isinstance(value, str) else value

    def check_secrets(self) -> None:
        """Refuse to start with missing or short secrets (an empty HMAC key is an auth bypass)."""
        if self.jwt_active_kid not in self.jwt_keys:
            raise ValueError(f"RF_JWT_ACTIVE_KID {self.jwt_active_kid!r} not in RF_JWT_KEYS")
        for kid, secret in self.jwt_keys.items():
            if len(secret) < 32:
                raise ValueError(f"JWT key {kid!r} is shorter than 32 characters")
        if len(self.token_pepper) < 32:
            raise ValueError("RF_TOKEN_PEPPER must be at least 32 characters")
