"""Process managers: a policy from (event, state) to commands; the kit does the rest.

A process manager declares the events it follows, how its per-instance state evolves from
them, and a pure policy: for an event and the state before it, the commands to send
(:class:`Send`), what to send next with each reply (``then``) and what to send instead when
a command is refused for good (``if_refused``). :class:`ProcessRunner` owns everything else:

- **Inbox**: an event already handled (same event id) is skipped, so redelivery is harmless.
- **Command ids** derive from the causing event and the command's place in the policy's
  answer (``<manager>:<event id>:<path>``): a redelivered event sends the same ids, and the
  receiver answers a repeated id with its first reply instead of acting twice.
- **Retries**: a retryable refusal (the receiver is away, a race) raises :class:`Retry`, so
  the consumer redelivers with back-off; commands that succeeded are not repeated.
- **Refusals**: a command refused for good becomes a ``process.CommandRefused`` event in the
  service's store (published on the bus like any event) and an error-level ``alert`` log
  line, and its ``if_refused`` fallback runs (e.g. fail the job with the reason, where
  nothing else could end it). Refusals the policy expects (``tolerate``) are recorded too,
  with ``expected=True``, and logged at info level.
- **State**: updated in the same transaction that marks the event handled and records the
  refusals, so each event changes it exactly once.
"""

from __future__ import annotations

import abc
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import asyncpg
from pydantic import BaseModel

from contracts.base import Command, Event
from contracts.errors import DomainError
from contracts.process import CommandRefused
from libs.bus.commands import Actor
from libs.bus.consumer import BusEvent, Retry
from libs.eventstore.memory import InMemoryEventStore
from libs.eventstore.store import ConcurrencyError, EventStore, NewEvent, StreamWrite
from libs.logging import get_logger

log = get_logger(__name__)

St = TypeVar("St", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Send:
    """A command to send because of an event."""

    command: Command
    reply: type[BaseModel]
    #: The commands to send next, from the reply.
    then: Callable[[Any], list[Send]] | None = None
    #: The commands to send instead when the receiver refuses this one for good.
    if_refused: Callable[[DomainError[Any]], list[Send]] | None = None
    #: Refusals the policy expects, by error class (recorded, not alerted).
    tolerate: tuple[type[DomainError[Any]], ...] = ()


@dataclass(frozen=True)
class Cause:
    """The event a policy answers, with where and when it was recorded."""

    event: Event
    event_id: uuid.UUID
    recorded_at: datetime
    correlation_id: str | None
    #: The event's version in its stream (grows with each event of the stream).
    stream_version: int = 0


class ProcessManager(abc.ABC, Generic[St]):
    """What a process manager declares. Pure: no I/O."""

    #: Durable consumer name, inbox name and command-id prefix.
    name: ClassVar[str]
    #: Bus subjects it follows (``events.<type>`` patterns).
    subjects: ClassVar[tuple[str, ...]]
    #: Its per-instance state.
    state_type: type[St]

    @abc.abstractmethod
    def key(self, event: Event) -> str | None:
        """The process instance an event belongs to (None: no state)."""

    @abc.abstractmethod
    def evolve(self, state: St, event: Event) -> St:
        """The state after ``event``."""

    @abc.abstractmethod
    def policy(self, cause: Cause, state: St) -> list[Send]:
        """The commands to send for ``cause``, given the state before it."""


class CommandSender(Protocol):
    """Sends a command and returns its typed reply, or raises its :class:`DomainError`
    (:class:`~libs.bus.commands.CommandClient`, or a scripted twin in tests)."""

    async def send(
        self,
        cmd: Command,
        result_type: type[R],
        *,
        command_id: str,
        actor: Actor,
        correlation_id: str | None = None,
    ) -> R: ...


class ProcessStore(Protocol):
    """Inbox, per-instance state and refusal events of one service's process managers."""

    async def seen(self, manager: str, event_id: uuid.UUID) -> bool: ...

    async def state(self, manager: str, key: str) -> dict[str, Any] | None: ...

    async def finish(
        self,
        manager: str,
        event_id: uuid.UUID,
        key: str | None,
        state: dict[str, Any] | None,
        refusals: Sequence[NewEvent],
    ) -> None:
        """In one transaction: record the refusals, mark the event handled, save the state.
        Does nothing if the event was marked handled meanwhile."""
        ...


def refusal_stream(command_id: str) -> str:
    return f"refusal-{command_id}"


class PostgresProcessStore:
    """:class:`ProcessStore` in the service's schema: the ``inbox`` and ``process_state``
    tables of the event store's migrations."""

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.schema = store.schema

    async def seen(self, manager: str, event_id: uuid.UUID) -> bool:
        async with self.store.pool.acquire() as conn:
            found = await conn.fetchval(
                f"SELECT 1 FROM {self.schema}.inbox WHERE consumer = $1 AND event_id = $2",
                manager,
                event_id,
            )
        return bool(found)

    async def state(self, manager: str, key: str) -> dict[str, Any] | None:
        async with self.store.pool.acquire() as conn:
            state: dict[str, Any] | None = await conn.fetchval(
                f"SELECT state FROM {self.schema}.process_state WHERE manager = $1 AND key = $2",
                manager,
                key,
            )
        return state

    async def finish(
        self,
        manager: str,
        event_id: uuid.UUID,
        key: str | None,
        state: dict[str, Any] | None,
        refusals: Sequence[NewEvent],
    ) -> None:
        try:
            async with self.store.pool.acquire() as conn, conn.transaction():
                if refusals:  # the events insert is the transaction's first write
                    await self.store.append_streams(_refusal_writes(refusals), conn)
                claimed = await conn.execute(
                    f"INSERT INTO {self.schema}.inbox (consumer, event_id) VALUES ($1, $2)"
                    " ON CONFLICT DO NOTHING",
                    manager,
                    event_id,
                )
                if claimed != "INSERT 0 1":
                    raise _AlreadyHandled
                if key is not None and state is not None:
                    await _save_state(conn, self.schema, manager, key, state)
        except (_AlreadyHandled, ConcurrencyError):
            return  # handled meanwhile by another delivery: its effects stand
        if refusals:
            self.store.notify_appended()


async def _save_state(
    conn: asyncpg.Connection, schema: str, manager: str, key: str, state: dict[str, Any]
) -> None:
    await conn.execute(
        f"INSERT INTO {schema}.process_state (manager, key, state) VALUES ($1, $2, $3)"
        " ON CONFLICT (manager, key) DO UPDATE SET state = EXCLUDED.state, updated_at = now()",
        manager,
        key,
        state,
    )


class _AlreadyHandled(Exception):
    pass


def _refusal_writes(refusals: Sequence[NewEvent]) -> list[StreamWrite]:
    writes = []
    for ne in refusals:
        assert isinstance(ne.event, CommandRefused)
        writes.append(StreamWrite(refusal_stream(ne.event.command_id), 0, [ne]))
    return writes


@dataclass
class InMemoryProcessStore:
    """The in-memory twin of :class:`PostgresProcessStore`, for fast policy tests."""

    events: InMemoryEventStore = field(default_factory=InMemoryEventStore)
    inbox: set[tuple[str, uuid.UUID]] = field(default_factory=set)
    states: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    async def seen(self, manager: str, event_id: uuid.UUID) -> bool:
        return (manager, event_id) in self.inbox

    async def state(self, manager: str, key: str) -> dict[str, Any] | None:
        return self.states.get((manager, key))

    async def finish(
        self,
        manager: str,
        event_id: uuid.UUID,
        key: str | None,
        state: dict[str, Any] | None,
        refusals: Sequence[NewEvent],
    ) -> None:
        if (manager, event_id) in self.inbox:
            return
        if refusals:
            await self.events.append_streams(_refusal_writes(refusals))
        self.inbox.add((manager, event_id))
        if key is not None and state is not None:
            self.states[(manager, key)] = state


class ProcessRunner(Generic[St]):
    """Runs a :class:`ProcessManager`: the handler of its durable consumer."""

    def __init__(
        self,
        manager: ProcessManager[St],
        sender: CommandSender,
        store: ProcessStore,
        actor: Actor,
    ) -> None:
        self.manager = manager
        self.sender = sender
        self.store = store
        self.actor = actor
        #: Counters for readiness details and tests.
        self.handled = 0
        self.refused = 0

    async def handle(self, bus_event: BusEvent) -> None:
        m = self.manager
        if await self.store.seen(m.name, bus_event.event_id):
            return
        event = bus_event.decode()
        key = m.key(event)
        stored = await self.store.state(m.name, key) if key is not None else None
        state = m.state_type.model_validate(stored) if stored else m.state_type()
        cause = Cause(
            event=event,
            event_id=bus_event.event_id,
            recorded_at=bus_event.recorded_at,
            correlation_id=bus_event.metadata.get("correlation_id"),
            stream_version=bus_event.version,
        )
        refusals: list[NewEvent] = []
        await self._send_all(m.policy(cause, state), str(bus_event.event_id), cause, key, refusals)
        after = m.evolve(state, event).model_dump(mode="json") if key is not None else None
        await self.store.finish(m.name, bus_event.event_id, key, after, refusals)
        self.handled += 1

    async def _send_all(
        self,
        sends: Sequence[Send],
        path: str,
        cause: Cause,
        key: str | None,
        refusals: list[NewEvent],
    ) -> None:
        for n, send in enumerate(sends):
            here = f"{path}:{n}"
            command_id = f"{self.manager.name}:{here}"
            try:
                reply = await self.sender.send(
                    send.command,
                    send.reply,
                    command_id=command_id,
                    actor=self.actor,
                    correlation_id=cause.correlation_id,
                )
            except DomainError as e:
                if e.retryable:
                    raise Retry(f"{send.command.command_type}: {e.code}: {e}") from e
                fallback = send.if_refused(e) if send.if_refused is not None else []
                refusals.append(self._refused(send, command_id, cause, key, e, fallback))
                await self._send_all(fallback, f"{here}!", cause, key, refusals)
                continue
            if send.then is not None:
                await self._send_all(send.then(reply), f"{here}>", cause, key, refusals)

    def _refused(
        self,
        send: Send,
        command_id: str,
        cause: Cause,
        key: str | None,
        error: DomainError[Any],
        fallback: Sequence[Send],
    ) -> NewEvent:
        expected = isinstance(error, send.tolerate)
        refused = CommandRefused(
            manager=self.manager.name,
            key=key,
            command_type=send.command.command_type,
            command_id=command_id,
            cause_event_id=cause.event_id,
            cause_event_type=cause.event.event_type,
            code=str(error.code),
            message=error.message,
            expected=expected,
            then=[f.command.command_type for f in fallback],
        )
        self.refused += 1
        fields = refused.model_dump(mode="json")
        if expected:
            log.info("command_refused", **fields)
        else:
            log.error("command_refused", alert=True, **fields)
        metadata = {
            "actor": self.actor.model_dump(exclude_none=True),
            "correlation_id": cause.correlation_id or command_id,
            "causation_id": str(cause.event_id),
        }
        return NewEvent(refused, metadata=metadata)
