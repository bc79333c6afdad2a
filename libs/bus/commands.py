"""Commands over NATS request/reply.

Wire format. Request: ``{"command_id", "type", "payload", "metadata"}`` with trace context in
headers. Reply: ``{"ok": true, "result": {...}}`` or ``{"ok": false, "error": ErrorBody}``.

The server commits each handler's events together with a row in ``processed_commands``
holding the reply, in one statement, so a repeated ``command_id`` (a client retry after a
timeout) gets the stored reply and changes nothing. Domain errors are not stored: the same
command may succeed later. A version conflict re-runs the handler on fresh state.

Round trips of a command: the handler's loads (one query for each ``uow.get``, or one for
all with ``uow.prefetch``; the first also looks up a stored reply for the command id) and the
commit (one statement). No BEGIN and COMMIT: the commit statement is atomic by itself, and the
loads, in READ COMMITTED, saw no more together inside a transaction than they do apart.

A query registered ``read_only=True`` runs on a :class:`ReadOnlyUnitOfWork`: its loads and
nothing else, no commit, no stored reply, outside the writers' slots.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from opentelemetry import context as otel_context
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from contracts.base import Command, JsonDict
from contracts.errors import (
    ConcurrencyConflict,
    DomainError,
    ErrorBody,
    IdempotencyKeyReused,
    InternalError,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
    error_from_body,
    field_problems,
)
from libs.config import BaseServiceSettings
from libs.eventstore.processor import Tailer
from libs.eventstore.store import (
    CommandAlreadyProcessed,
    CommandRecord,
    ConcurrencyError,
    EventStore,
    RecordedEvent,
)
from libs.eventstore.uow import AlreadyProcessed, ReadOnlyUnitOfWork, UnitOfWork
from libs.logging import correlation_id_var, get_logger
from libs.tracing import current_trace_id, extract_context, inject_headers, tracer

log = get_logger(__name__)
_tracer = tracer(__name__)

R = TypeVar("R", bound=BaseModel)
C_ = TypeVar("C_", bound=Command)


class Actor(BaseModel):
    """Who asked: a user (through a JWT or an API key), an admin, or a service."""

    kind: str  # user | service | cli
    id: str
    api_key_id: str | None = None
    role: str | None = None


#: ``handler(command, unit_of_work) -> reply``; the server commits the unit of work.
CommandHandler = Callable[[Any, UnitOfWork], Awaitable[BaseModel]]
#: ``serialize(command) -> key``: commands with the same key run one at a time here.
SerializeKey = Callable[[Any], str]


@dataclass(frozen=True)
class _Registered:
    cmd_cls: type[Command]
    handler: CommandHandler
    store_reply: bool
    serialize: SerializeKey | None
    read_only: bool


class _KeyLock:
    """A lock shared by the commands in flight with one key (dropped with the last)."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class CommandServer:
    """Serves the commands of one service (queue group = service name)."""

    def __init__(
        self,
        nc: Client,
        store: EventStore,
        settings: BaseServiceSettings,
        *,
        read_your_writes: Sequence[Tailer] = (),
        max_attempts: int = 5,
    ) -> None:
        self.nc = nc
        self.store = store
        self.settings = settings
        self.read_your_writes = list(read_your_writes)
        self.max_attempts = max_attempts
        self._handlers: dict[str, _Registered] = {}
        self._locks: dict[str, _KeyLock] = {}
        self._subs: list[Subscription] = []
        self._inflight: set[asyncio.Task[None]] = set()
        # Each command runs on one connection; at most half the pool runs commands, so the
        # tailers, the feed watcher and group commits (commit_alone) always find one.
        self._slots = asyncio.Semaphore(max(1, settings.db_pool_size // 2))
        # Read-only commands hold no slot; their loads (one connection each, for one query)
        # take at most a quarter of the pool, so writers and tailers still find theirs.
        self._reads = asyncio.Semaphore(max(1, settings.db_pool_size // 4))

    def register(
        self,
        cmd_cls: type[C_],
        handler: Callable[[C_, UnitOfWork], Awaitable[BaseModel]],
        *,
        store_reply: bool = True,
        serialize: Callable[[C_], str] | None = None,
        read_only: bool = False,
    ) -> None:
        """Serve ``cmd_cls``. With ``store_reply=False`` (replies holding a secret shown once)
        only a tombstone is kept: a repeated command id is refused, never re-run.

        With ``serialize``, commands (of any type) whose ``serialize(cmd)`` keys are equal
        run one at a time in this process, load to commit: a hot aggregate (one wallet taking
        a hundred holds at once) is decided in turn instead of bouncing on optimistic
        concurrency; only replicas still race (and the version conflict re-runs the loser).

        With ``read_only=True`` (a query: an estimate, a listing, a URL signed on demand) the
        handler gets a :class:`ReadOnlyUnitOfWork`: it loads aggregates, and recording on one
        raises (an ``internal_error`` reply, logged); nothing is committed and no reply
        stored, so a repeated command id runs again and answers from the state then. It
        takes no writer's slot: only its loads are bounded, by a quarter of the pool."""
        if cmd_cls.command_type in self._handlers:
            raise ValueError(f"command {cmd_cls.command_type!r} has a handler already")
        if read_only and (not store_reply or serialize is not None):
            raise ValueError(
                f"{cmd_cls.command_type!r}: a read-only command stores no reply and decides"
                " nothing, so store_reply and serialize do not apply"
            )
        self._handlers[cmd_cls.command_type] = _Registered(
            cmd_cls, handler, store_reply, serialize, read_only
        )

    async def start(self) -> None:
        for command_type in self._handlers:
            subject = self.settings.subject(f"cmd.{command_type}")
            self._subs.append(
                await self.nc.subscribe(subject, queue=self.settings.service_name, cb=self._on_msg)
            )

    async def stop(self) -> None:
        """Stop taking commands and let the ones in flight finish."""
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()
        if self._inflight:
            await asyncio.wait(self._inflight, timeout=10)

    async def _on_msg(self, msg: Msg) -> None:
        # nats-py awaits a subscription's callback before delivering its next message, so
        # handling inline would run every command of a type one at a time.
        task = asyncio.create_task(self._respond(msg))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _respond(self, msg: Msg) -> None:
        recorded: list[RecordedEvent] = []
        reply = await self._handle(msg, recorded)
        if recorded:  # outside the slot: waiting for a read model holds no connection
            await self._read_your_writes(recorded)
        await msg.respond(orjson.dumps(reply))

    async def _read_your_writes(self, recorded: list[RecordedEvent]) -> None:
        last = recorded[-1].cursor
        try:
            async with asyncio.timeout(5):
                for tailer in self.read_your_writes:
                    # A read model none of these events touches is already current.
                    if any(tailer.wants(r) for r in recorded):
                        await tailer.wait_for(last)
        except TimeoutError:  # committed all the same; the read model will follow
            log.warning("read_your_writes_timeout", event_type=recorded[-1].event_type)

    async def _handle(self, msg: Msg, recorded: list[RecordedEvent]) -> JsonDict:
        token = otel_context.attach(extract_context(msg.headers))
        try:
            body = orjson.loads(msg.data)
            command_type = body["type"]
            with _tracer.start_as_current_span(
                f"handle {command_type}", kind=trace.SpanKind.SERVER
            ):
                cid = correlation_id_var.set(body.get("metadata", {}).get("correlation_id"))
                try:
                    return await self._execute(body, recorded)
                finally:
                    correlation_id_var.reset(cid)
        except DomainError as e:
            return {"ok": False, "error": _error_json(e)}
        except Exception:
            log.exception("command_failed")
            err = InternalError("the command failed unexpectedly")
            return {"ok": False, "error": _error_json(err)}
        finally:
            otel_context.detach(token)

    async def _execute(self, body: JsonDict, recorded: list[RecordedEvent]) -> JsonDict:
        command_type = body["type"]
        command_id = str(body["command_id"])
        registered = self._handlers[command_type]
        try:
            cmd = registered.cmd_cls.model_validate(body["payload"])
        except ValidationError as e:
            raise ValidationFailed(
                f"bad {command_type} payload", field_problems(e.errors(include_url=False))
            ) from e
        meta = dict(body.get("metadata", {}))
        actor = Actor.model_validate(meta.get("actor") or {"kind": "service", "id": "unknown"})
        span = trace.get_current_span().get_span_context()
        event_meta: JsonDict = {
            "actor": actor.model_dump(exclude_none=True),
            "command_id": command_id,
            "command_type": command_type,
            "correlation_id": meta.get("correlation_id") or command_id,
            "causation_id": command_id,
            **({"traceparent": inject_headers()["traceparent"]} if span.is_valid else {}),
        }
        if registered.read_only:
            uow = ReadOnlyUnitOfWork(self.store, metadata=event_meta, loads=self._reads)
            result = await registered.handler(cmd, uow)
            return {"ok": True, "result": result.model_dump(mode="json")}
        key = registered.serialize(cmd) if registered.serialize is not None else None
        # The key's turn first, then a connection: commands waiting for a hot aggregate
        # hold no connection the others need.
        async with self._turn(key), self._slots:
            return await self._attempts(cmd, command_id, registered, event_meta, recorded)

    @contextlib.asynccontextmanager
    async def _turn(self, key: str | None) -> AsyncIterator[None]:
        """Wait for the other commands in flight with ``key`` (none without a key)."""
        if key is None:
            yield
            return
        entry = self._locks.get(key)
        if entry is None:
            entry = self._locks[key] = _KeyLock()
        entry.users += 1
        try:
            async with entry.lock:
                yield
        finally:
            entry.users -= 1
            if not entry.users:
                del self._locks[key]

    async def _attempts(
        self,
        cmd: Command,
        command_id: str,
        registered: _Registered,
        event_meta: JsonDict,
        recorded: list[RecordedEvent],
    ) -> JsonDict:
        handler, store_reply = registered.handler, registered.store_reply
        command_type = registered.cmd_cls.command_type
        if not store_reply:
            # A secret-bearing reply: look before the handler runs at all (it may mint a
            # secret before its first load); a repeat gets the tombstone.
            stored = await self._stored_reply(command_id)
            if stored is not None:
                return stored
        for attempt in range(1, self.max_attempts + 1):
            uow: UnitOfWork | None = None
            try:
                async with self.store.session() as conn:
                    # The first load also looks the command id up: a repeat stops there.
                    uow = UnitOfWork(
                        self.store,
                        conn=conn,
                        metadata=event_meta,
                        replay_of=command_id if store_reply else None,
                    )
                    result = await handler(cmd, uow)
                    reply = {"ok": True, "result": result.model_dump(mode="json")}
                    row = reply if store_reply else _SECRET_TOMBSTONE
                    await uow.commit(CommandRecord(command_id, command_type, row))
            except AlreadyProcessed as e:
                return e.reply
            except ConcurrencyError:
                # The same command id, retried by its client while the first try was still
                # in flight (on another replica), may have won: answer what it answered.
                stored = await self._stored_reply(command_id)
                if stored is not None:
                    return stored
                if attempt == self.max_attempts:
                    raise ConcurrencyConflict("the resource kept changing; retry") from None
                continue
            except CommandAlreadyProcessed:
                stored = await self._stored_reply(command_id)
                if stored is not None:
                    return stored
                raise
            except DomainError:
                # Refused before its first load looked for a stored reply: look now, a repeat
                # gets the first answer, not a refusal of its replay.
                if store_reply and uow is not None and uow.replay_of is not None:
                    stored = await self._stored_reply(command_id)
                    if stored is not None:
                        return stored
                raise
            self.store.notify_appended()
            recorded.extend(uow.recorded)
            return reply
        raise AssertionError("unreachable")

    async def _stored_reply(self, command_id: str) -> JsonDict | None:
        async with self.store.session() as conn:
            reply: JsonDict | None = await conn.fetchval(
                f"SELECT reply FROM {self.store.schema}.processed_commands WHERE command_id = $1",
                command_id,
            )
        return reply


def _error_json(err: DomainError[Any]) -> JsonDict:
    return ErrorBody.of(err, current_trace_id()).model_dump(mode="json")


_SECRET_TOMBSTONE: JsonDict = {
    "ok": False,
    "error": ErrorBody.of(
        IdempotencyKeyReused(
            "this request already ran; its answer held a secret that is shown only once"
        )
    ).model_dump(mode="json"),
}


class CommandClient:
    """Sends commands and turns error replies back into :class:`DomainError` subclasses.

    A command larger than the bus takes (NATS ``max_payload``) is refused before it is
    sent, with ``payload_too_large``.

    An error reply becomes the class its code names, with typed details; a code this build
    does not know (a newer peer's) becomes an ``UnknownError`` keeping the code string, the
    message and the peer's retryable flag (see :func:`contracts.errors.error_from_body`).
    """

    def __init__(self, nc: Client, settings: BaseServiceSettings, timeout: float = 5.0) -> None:
        self.nc = nc
        self.settings = settings
        self.timeout = timeout

    async def send(
        self,
        cmd: Command,
        result_type: type[R],
        *,
        command_id: str,
        actor: Actor,
        correlation_id: str | None = None,
        timeout_seconds: float | None = None,
    ) -> R:
        """Send ``cmd`` and return its reply as ``result_type``; ``timeout_seconds``
        overrides the client's timeout for a command known to take longer."""
        body = {
            "command_id": command_id,
            "type": cmd.command_type,
            "payload": cmd.model_dump(mode="json"),
            "metadata": {
                "actor": actor.model_dump(exclude_none=True),
                "correlation_id": correlation_id or correlation_id_var.get(),
            },
        }
        payload = orjson.dumps(body)
        if len(payload) > self.nc.max_payload:
            raise PayloadTooLarge(
                f"the request makes a {cmd.command_type} of {len(payload)} bytes; the bus takes"
                f" at most {self.nc.max_payload}"
            )
        with _tracer.start_as_current_span(f"send {cmd.command_type}", kind=trace.SpanKind.CLIENT):
            try:
                msg = await self.nc.request(
                    self.settings.subject(f"cmd.{cmd.command_type}"),
                    payload,
                    timeout=self.timeout if timeout_seconds is None else timeout_seconds,
                    headers=inject_headers(),
                )
            except NoRespondersError:
                raise ServiceUnavailable(
                    f"no {cmd.context()} service is running; retry shortly"
                ) from None
            except NatsTimeout:
                raise ServiceUnavailable(
                    f"{cmd.command_type} timed out; retry with the same idempotency key"
                ) from None
        reply = orjson.loads(msg.data)
        if reply.get("ok"):
            return result_type.model_validate(reply["result"])
        raise error_from_body(reply["error"])
