"""``renderctl``: the operators' tool.

  renderctl events STREAM                 print one stream's events (any service)
  renderctl events --all [--from N] [--schema S]
                                          print the global feed of each service after N
  renderctl verify                        check every stream: versions gap-free, all decodable
  renderctl rebuild [--projection NAME]   empty and rebuild projections from the events
  renderctl create-admin --email E        create the first admin (password from RF_ADMIN_PASSWORD
                                          or a prompt); needs the identity service running

Connection settings come from ``RF_*`` variables, else from ``.run/stack.env`` (``make up``).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import asyncpg

import contracts.all  # noqa: F401  (registers every event type)
from contracts.base import EVENTS, UnknownEventType
from libs.config import BaseServiceSettings
from libs.eventstore.processor import Projection, Projector
from libs.eventstore.store import EventStore, RecordedEvent, create_pool
from services.identity.projections import ApiKeysProjection, UsersProjection
from services.job.projections import FramesProjection, JobsProjection

#: Every projection, by the schema (service) that owns it.
PROJECTIONS: dict[str, Sequence[Projection]] = {
    "identity": (UsersProjection(), ApiKeysProjection()),
    "job": (JobsProjection(), FramesProjection()),
}


def load_stack_env(path: Path = Path(".run/stack.env")) -> None:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            os.environ.setdefault(key.strip(), value.strip())


async def event_schemas(pool: asyncpg.Pool) -> list[str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'events'"
            " AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1"
        )
    return [r["table_schema"] for r in rows]


def line(schema: str, e: RecordedEvent) -> str:
    return json.dumps(
        {
            "schema": schema,
            "position": e.position,
            "stream_id": e.stream_id,
            "version": e.version,
            "type": e.event_type,
            "schema_version": e.schema_version,
            "recorded_at": e.recorded_at.isoformat(),
            "event_id": str(e.event_id),
            "data": e.data,
            "metadata": e.metadata,
        },
        sort_keys=True,
    )


async def print_stream(pool: asyncpg.Pool, stream_id: str) -> int:
    found = 0
    for schema in await event_schemas(pool):
        for e in await EventStore(pool, schema).read_stream(stream_id):
            print(line(schema, e))
            found += 1
    if not found:
        print(f"no stream {stream_id}", file=sys.stderr)
        return 1
    return 0


async def print_all(pool: asyncpg.Pool, after: int, only: str | None) -> int:
    for schema in await event_schemas(pool):
        if only and schema != only:
            continue
        store, position = EventStore(pool, schema), after
        while batch := await store.read_by_position(position, 1000):
            for e in batch:
                print(line(schema, e))
            position = batch[-1].position
    return 0


async def verify(pool: asyncpg.Pool) -> int:
    problems = 0
    for schema in await event_schemas(pool):
        store, position, count = EventStore(pool, schema), 0, 0
        versions: dict[str, int] = {}
        while batch := await store.read_by_position(position, 5000):
            for e in batch:
                count += 1
                expected = versions.get(e.stream_id, 0) + 1
                if e.version != expected:
                    problems += 1
                    print(f"{schema} {e.stream_id}: version {e.version}, expected {expected}")
                versions[e.stream_id] = e.version
                try:
                    e.decode()
                except (UnknownEventType, ValueError) as err:
                    problems += 1
                    print(f"{schema} {e.stream_id} v{e.version}: cannot decode: {err}")
            position = batch[-1].position
        print(f"{schema}: {count} events in {len(versions)} streams checked")
    print("ok" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0


async def rebuild(pool: asyncpg.Pool, only: str | None = None) -> dict[str, int]:
    """Empty each projection and replay every event into it; returns events read per name."""
    done: dict[str, int] = {}
    for schema, projections in PROJECTIONS.items():
        store = EventStore(pool, schema, EVENTS)
        for projection in projections:
            if only and projection.name != only:
                continue
            async with pool.acquire() as conn:
                await projection.setup(conn)
            projector = Projector(store, projection, batch_size=2000)
            await projector.reset()
            done[f"{schema}.{projection.name}"] = await projector.catch_up()
    return done


async def create_admin(settings: BaseServiceSettings, email: str, name: str) -> int:
    from contracts.errors import DomainError
    from contracts.identity import RegisterUser, Role, UserProfile
    from libs.bus.commands import Actor, CommandClient
    from libs.bus.nats import connect

    password = os.environ.get("RF_ADMIN_PASSWORD") or getpass.getpass("admin password: ")
    nc = await connect(settings, "renderctl")
    try:
        profile = await CommandClient(nc, settings).send(
            RegisterUser(
                email=email, password=password, display_name=name, role=Role.admin, approved=True
            ),
            UserProfile,
            command_id=f"create-admin:{email.lower()}",
            actor=Actor(kind="cli", id=getpass.getuser()),
        )
    except DomainError as e:
        print(f"{e.code}: {e.message}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    print(profile.model_dump_json())
    return 0


async def run(
    argv: Sequence[str] | None = None, settings: BaseServiceSettings | None = None
) -> int:
    """Run one command; settings default to the environment (and ``.run/stack.env``)."""
    parser = argparse.ArgumentParser(
        prog="renderctl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("events", help="print a stream, or the global feed with --all")
    ev.add_argument("stream", nargs="?")
    ev.add_argument("--all", action="store_true")
    ev.add_argument("--from", dest="after", type=int, default=0, help="global position")
    ev.add_argument("--schema", help="only this service's feed (with --all)")
    sub.add_parser("verify", help="check every stream is gap-free and decodable")
    rb = sub.add_parser("rebuild", help="drop and rebuild projections")
    rb.add_argument("--projection")
    ad = sub.add_parser("create-admin", help="create an approved admin user")
    ad.add_argument("--email", required=True)
    ad.add_argument("--name", default="Administrator")
    args = parser.parse_args(argv)

    if settings is None:
        load_stack_env()
        settings = BaseServiceSettings(service_name="renderctl")
    if args.command == "create-admin":
        return await create_admin(settings, args.email, args.name)
    pool = await create_pool(settings.database_url, max_size=4)
    try:
        if args.command == "events":
            if args.all:
                return await print_all(pool, args.after, args.schema)
            if not args.stream:
                parser.error("events needs a STREAM or --all")
            return await print_stream(pool, args.stream)
        if args.command == "verify":
            return await verify(pool)
        counts: dict[str, Any] = await rebuild(pool, args.projection)
        for name, n in counts.items():
            print(f"rebuilt {name} from {n} events")
        return 0
    finally:
        await pool.close()


def main() -> None:
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
