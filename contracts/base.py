"""Base classes and the registry that maps wire names and schema versions to models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

JsonDict = dict[str, Any]
Upcaster = Callable[[JsonDict], JsonDict]


class Event(BaseModel):
    """A domain event: something that happened, named in the past tense.

    ``event_type`` is ``<context>.<Name>`` and is what is stored; ``schema_version`` is bumped
    whenever the payload changes shape, with an upcaster from the previous version.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    #: Fields kept in the owner's store but masked on the bus (hashes of secrets).
    private_fields: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def context(cls) -> str:
        return cls.event_type.split(".", 1)[0]


REDACTED = "redacted"


class Command(BaseModel):
    """A request to change state, sent to the owning service over NATS request/reply."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    command_type: ClassVar[str]

    @classmethod
    def context(cls) -> str:
        return cls.command_type.split(".", 1)[0]


E = TypeVar("E", bound=type[Event])
C = TypeVar("C", bound=type[Command])


class UnknownEventType(LookupError):
    pass


class EventRegistry:
    """Wire name -> event class, plus the upcaster chain for old schema versions."""

    def __init__(self) -> None:
        self._events: dict[str, type[Event]] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: E) -> E:
        existing = self._events.get(cls.event_type)
        if existing is not None and existing is not cls:
            raise ValueError(f"event type {cls.event_type!r} registered twice")
        self._events[cls.event_type] = cls
        return cls

    def upcaster(self, event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
        """Register ``fn(data_at_v) -> data_at_v_plus_1``."""

        def decorate(fn: Upcaster) -> Upcaster:
            self._upcasters[(event_type, from_version)] = fn
            return fn

        return decorate

    def cls_for(self, event_type: str) -> type[Event]:
        try:
            return self._events[event_type]
        except KeyError:
            raise UnknownEventType(event_type) from None

    def upcast(self, event_type: str, version: int, data: JsonDict) -> JsonDict:
        target = self.cls_for(event_type).schema_version
        while version < target:
            data = self._upcasters[(event_type, version)](data)
            version += 1
        return data

    def decode(self, event_type: str, version: int, data: JsonDict) -> Event:
        cls = self.cls_for(event_type)
        if version != cls.schema_version:
            data = self.upcast(event_type, version, data)
        return cls.model_validate(data)

    def public_data(self, event_type: str, data: JsonDict) -> JsonDict | None:
        """``data`` with the type's private fields masked as :data:`REDACTED` (as on the bus).

        None for an unknown type: which of its fields are secret is unknown, so none of its
        data may leave the owner's store (fail closed).
        """
        cls = self._events.get(event_type)
        if cls is None:
            return None
        return {k: (REDACTED if k in cls.private_fields else v) for k, v in data.items()}

    def types(self) -> dict[str, type[Event]]:
        return dict(self._events)

    def copy(self) -> EventRegistry:
        """A registry that knows what this one knows, to extend without changing this one."""
        other = EventRegistry()
        other._events, other._upcasters = dict(self._events), dict(self._upcasters)
        return other


class CommandRegistry:
    def __init__(self) -> None:
        self._commands: dict[str, type[Command]] = {}

    def register(self, cls: C) -> C:
        existing = self._commands.get(cls.command_type)
        if existing is not None and existing is not cls:
            raise ValueError(f"command type {cls.command_type!r} registered twice")
        self._commands[cls.command_type] = cls
        return cls

    def types(self) -> dict[str, type[Command]]:
        return dict(self._commands)


EVENTS = EventRegistry()
COMMANDS = CommandRegistry()
