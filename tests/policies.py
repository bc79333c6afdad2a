"""Twins for process-manager policy tests: a scripted command bus and bus deliveries."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.errors import DomainError
from libs.bus.commands import Actor
from libs.bus.consumer import BusEvent

R = TypeVar("R", bound=BaseModel)
Answer = BaseModel | DomainError[Any]


@dataclass
class ScriptedCommands:
    """The command bus's twin: records what is sent and answers from a script per type."""

    answers: dict[type[Command], Callable[[Command], Answer]] = field(default_factory=dict)
    sent: list[tuple[str, Command]] = field(default_factory=list)

    async def send(
        self,
        cmd: Command,
        result_type: type[R],
        *,
        command_id: str,
        actor: Actor,
        correlation_id: str | None = None,
    ) -> R:
        self.sent.append((command_id, cmd))
        answer = self.answers[type(cmd)](cmd)
        if isinstance(answer, DomainError):
            raise answer
        assert isinstance(answer, result_type)
        return answer

    def types(self) -> list[str]:
        return [type(cmd).__name__ for _, cmd in self.sent]

    def of(self, cls: type[Command]) -> list[Any]:
        return [cmd for _, cmd in self.sent if isinstance(cmd, cls)]


def delivery(
    event: Event,
    *,
    stream_id: str,
    recorded_at: datetime,
    version: int = 1,
    event_id: uuid.UUID | None = None,
) -> BusEvent:
    """``event`` as the bus delivers it the first time."""
    return BusEvent(
        event_id=event_id or uuid.uuid4(),
        stream_id=stream_id,
        version=version,
        event_type=event.event_type,
        schema_version=event.schema_version,
        position=1,
        recorded_at=recorded_at,
        data=orjson.loads(orjson.dumps(event.model_dump(mode="json"))),
        metadata={"correlation_id": "corr-1"},
        deliveries=1,
    )
