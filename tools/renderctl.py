"""``renderctl``: the operators' tool.

  renderctl events STREAM                 print one stream's events (any service)
  renderctl events --all [--from N] [--schema S]
                                          print the global feed of each service after N
  renderctl verify                        check every stream: versions gap-free, all decodable
  renderctl migrate                       apply every service's pending migrations
  renderctl rebuild [--projection NAME] [--verify]
                                          rebuild read models blue/green from the events
                                          (--verify: compare with the live ones, no swap)
  renderctl quarantine [--retry] [--projection P] [--stream S]
                                          list the events projections could not apply;
                                          --retry re-applies each stream's held events
  renderctl reconcile payments --from DATE --to DATE [--json]
                                          Razorpay's payments against our credits: every
                                          difference one per line, exit 1 if any
  renderctl create-admin --email E        create the first admin (password from RF_ADMIN_PASSWORD
                                          or a prompt); needs the identity service running
  renderctl audit job ID [--json]         a job explained from every service's events, in time
                                          order: API calls, steps, farm tasks, cost lines, holds
                                          and captures, VM time; totals = its cost answer
  renderctl audit user ID [--json]        a user's wallet: deposits, top-ups, holds, captures,
                                          releases, per job; balance = the wallet's answer
  renderctl export user ID [--output F]   everything held on a user as JSON (no secrets)
  renderctl erase user ID                 erase a user's personal data (ADR 0018): e-mail, name,
                                          the action log's IPs; the ledger stays; needs identity

The users' commands talk to the gateway's HTTP API (``--api-url``, else ``RF_API_URL``, else
``make up``'s http://127.0.0.1:8700) as the user whose JWT or API key is in ``--token`` or
``RF_API_TOKEN``:

  renderctl upload PATH [--main FILE] [--parallel N] [--limit-rate RATE] [--json]
                                          upload a scene file, or a folder as a manifest
                                          (--main: the file to render); resumes a killed run;
                                          prints the upload (or manifest) id
  renderctl download JOB_ID DIR [--archive] [--parallel N] [--limit-rate RATE] [--json]
                                          download a job's frames (or its zip), resumably,
                                          every file checked against its SHA-256

The operators' connection settings come from ``RF_*`` variables, else from ``.run/stack.env``
(``make up``).
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

import asyncpg

import contracts.all  # noqa: F401  (registers every event type)
from contracts.base import UnknownEventType
from libs.config import BaseServiceSettings
from libs.eventstore.projection import ReadModel, quarantined
from libs.eventstore.rebuild import Difference, rebuild
from libs.eventstore.store import EventStore, RecordedEvent, create_pool
from libs.migrations import migrate, service_plan
from libs.readmodels import read_only_pool
from libs.service import declared


def read_models(only: str | None = None) -> list[tuple[str, ReadModel]]:
    """(schema, read model) of every declared service; ``only`` is a name or schema.name."""
    found = [
        (service.schema, p)
        for service in declared()
        for p in service.projections
        if isinstance(p, ReadModel)
    ]
    if only:
        found = [(s, p) for s, p in found if only in (p.name, f"{s}.{p.name}")]
    return found


def load_stack_env(path: Path = Path(".run/stack.env"), only: str = "") -> None:
    if not path.exists():
        return
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#") and key.startswith(only):
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


async def migrate_all(pool: asyncpg.Pool) -> None:
    for service in declared():
        for label in await migrate(pool, service.schema, service_plan(service)):
            print(f"{service.schema}: applied {label}")


def _difference(table: str, d: Difference) -> str:
    key = ", ".join(str(k) for k in d.key)
    if d.kind != "changed":
        return f"{table} {d.kind} ({key})"
    cols = "; ".join(
        f"{c}: live {_short(a)} rebuilt {_short(b)}" for c, (a, b) in d.columns.items()
    )
    return f"{table} changed ({key}): {cols}"


def _short(value: object, limit: int = 120) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def rebuild_all(pool: asyncpg.Pool, only: str | None, verify: bool) -> int:
    """Rebuild (or with ``verify`` compare) each read model; 1 if any differs or is unknown."""
    models = read_models(only)
    if not models:
        print(f"no projection {only}", file=sys.stderr)
        return 1
    await migrate_all(pool)
    differs = 0
    for schema, model in models:
        result = await rebuild(EventStore(pool, schema), model, verify=verify)
        held = f", {result.quarantined} stream(s) quarantined" if result.quarantined else ""
        if result.path != "bulk":
            held += f" (by the {result.path} path: the bulk load was refused, see the log)"
        if not verify:
            print(f"rebuilt {result.table} from {result.events} events{held}")
            continue
        for d in result.differences:
            print(_difference(result.table, d))
        differs += len(result.differences)
        print(f"verified {result.table}: {len(result.differences)} difference(s){held}")
    return 1 if differs else 0


async def quarantine(
    pool: asyncpg.Pool, retry: bool, projection: str | None, stream: str | None
) -> int:
    """List quarantined events, or retry their streams; 1 if a retry fails again."""
    models = {(s, p.name): p for s, p in read_models()}
    failed = 0
    for schema in sorted({s for s, _ in models}):
        async with pool.acquire() as conn:
            if await conn.fetchval("SELECT to_regclass($1)", f"{schema}.quarantine") is None:
                continue  # not migrated yet: nothing can be quarantined
            entries = await quarantined(conn, schema)
        entries = [
            e
            for e in entries
            if (projection is None or projection in (e.projection, f"{schema}.{e.projection}"))
            and (stream is None or e.stream_id == stream)
        ]
        if not retry:
            for e in entries:
                state = e.error if e.error is not None else "held (behind an earlier event)"
                print(
                    f"{schema}.{e.projection} {e.stream_id} v{e.version} {e.event_type}"
                    f" {e.event_id} at {e.position}: {state}"
                )
            continue
        for name, stream_id in dict.fromkeys((e.projection, e.stream_id) for e in entries):
            model = models.get((schema, name))
            if model is None:
                print(f"{schema}.{name} {stream_id}: no such projection declared", file=sys.stderr)
                failed += 1
                continue
            applied, error = await model.retry(EventStore(pool, schema), stream_id)
            if error is None:
                print(f"{schema}.{name} {stream_id}: applied {applied} event(s)")
            else:
                failed += 1
                print(f"{schema}.{name} {stream_id}: applied {applied}, still failing: {error}")
    return 1 if failed else 0


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


async def audit(args: argparse.Namespace, database_url: str) -> int:
    """``audit job|user ID`` and ``export user ID``, on a read-only connection."""
    from tools import audit as explain

    pool = await read_only_pool(database_url, max_size=2)
    try:
        reader = explain.Reader(pool)
        if args.command == "export":
            text = json.dumps(await explain.export_user(reader, args.id), indent=2, sort_keys=True)
            if args.output:
                await asyncio.to_thread(Path(args.output).write_text, text + "\n")
            else:
                print(text)
            return 0
        if args.what == "user":
            user = await explain.audit_user(reader, args.id)
            user_json = json.dumps(user.to_json(), sort_keys=True)
            print(user_json if args.json else explain.user_text(user))
            return 0
        job = await explain.audit_job(reader, args.id)
        if job is None:
            print(f"no job {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(job.to_json(), sort_keys=True) if args.json else explain.job_text(job))
        return 0
    finally:
        await pool.close()


async def erase_user(settings: BaseServiceSettings, user_id: str) -> int:
    """identity's ``EraseUser`` (its events overwritten in place, then ``UserErased``; the
    services holding copies of the person's data, the notifier, shred their own on that
    event), then the gateway's action log: the user's calls keep everything but the
    client IP."""
    from contracts.errors import DomainError
    from contracts.identity import ERASED, EraseUser, UserProfile
    from libs.bus.commands import Actor, CommandClient
    from libs.bus.nats import connect

    nc = await connect(settings, "renderctl")
    try:
        profile = await CommandClient(nc, settings).send(
            EraseUser(user_id=user_id),
            UserProfile,
            command_id=f"erase-user:{user_id}",
            actor=Actor(kind="cli", id=getpass.getuser()),
        )
    except DomainError as e:
        print(f"{e.code}: {e.message}", file=sys.stderr)
        return 1
    finally:
        await nc.close()
    conn = await asyncpg.connect(settings.database_url)
    try:
        if await conn.fetchval("SELECT to_regclass('gateway.action_log')") is None:
            calls = "UPDATE 0"
        else:
            calls = await conn.execute(
                "UPDATE gateway.action_log SET client_ip = $2"
                " WHERE (user_id = $1 OR (user_id IS NULL AND target_ids->>'user_id' = $1))"
                " AND client_ip IS DISTINCT FROM $2",
                user_id,
                ERASED,
            )
    finally:
        await conn.close()
    print(
        json.dumps(
            {"user": profile.model_dump(mode="json"), "api_calls_erased": int(calls.split()[-1])},
            sort_keys=True,
        )
    )
    return 0


def rate(text: str) -> float:
    """``--limit-rate``: bytes per second, with an optional K, M or G (powers of 1000)."""
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1:].upper(), 1.0)
    value = float(text[:-1] if scale != 1.0 else text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value * scale


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


async def user_command(args: argparse.Namespace) -> int:
    """upload or download, over the API; errors are one line on stderr and exit code 1."""
    from tools.client import DEFAULT_API_URL, Api, ApiError
    from tools.downloads import DownloadFailed, DownloadOptions, download
    from tools.uploads import UploadFailed, UploadOptions, upload_file, upload_folder

    url = args.api_url or os.environ.get("RF_API_URL") or DEFAULT_API_URL
    token = args.token or os.environ.get("RF_API_TOKEN")
    if not token:
        print("renderctl: set RF_API_TOKEN (a JWT or an API key) or pass --token", file=sys.stderr)
        return 2
    result: dict[str, object]
    try:
        async with Api(url, token) as api:
            # A wrong token fails now, not after hashing a big file.
            await api.call("GET", "/v1/uploads", params={"limit": 1})
            if args.command == "upload":
                opts = UploadOptions(
                    parallel=args.parallel,
                    limit_rate=args.limit_rate,
                    show_progress=not args.no_progress,
                )
                path = Path(args.path)
                kind = await asyncio.to_thread(
                    lambda: "folder" if path.is_dir() else "file" if path.is_file() else ""
                )
                if kind == "folder":
                    if not args.main:
                        print("renderctl: a folder needs --main FILE", file=sys.stderr)
                        return 2
                    result = await upload_folder(api, path, args.main, opts)
                elif kind == "file":
                    result = await upload_file(api, path, opts, args.content_type)
                else:
                    print(f"renderctl: {path}: no such file or folder", file=sys.stderr)
                    return 2
                line = str(result.get("manifest_id") or result["upload_id"])
            else:
                result = await download(
                    api,
                    args.job_id,
                    Path(args.dir),
                    DownloadOptions(
                        parallel=args.parallel,
                        show_progress=not args.no_progress,
                        limit_rate=args.limit_rate,
                    ),
                    archive=args.archive,
                )
                line = str(result["directory"])
    except (ApiError, UploadFailed, DownloadFailed) as e:
        print(f"renderctl: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True) if args.json else line)
    return 0


def add_user_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, text in (
        ("upload", "upload a scene file, or a folder as a manifest of its files"),
        ("download", "download a job's frames (or its archive) into a folder"),
    ):
        p = sub.add_parser(name, help=text, description=text)
        if name == "upload":
            p.add_argument("path", help="a file, or a folder (then --main is needed)")
            p.add_argument("--main", help="a folder's file to render, relative to it")
            p.add_argument("--content-type", help="a file's media type, if known")
        else:
            p.add_argument("job_id")
            p.add_argument("dir", help="folder to write the files into (created if missing)")
            p.add_argument("--archive", action="store_true", help="the job's zip instead")
        p.add_argument("--parallel", type=positive, default=4, help="transfers at once (default 4)")
        p.add_argument("--limit-rate", type=rate, help="most bytes a second in all, e.g. 20M")
        p.add_argument("--json", action="store_true", help="print the final answer as JSON")
        p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
        p.add_argument("--api-url", help="the gateway (default RF_API_URL or :8700)")
        p.add_argument("--token", help="a JWT or an API key (default RF_API_TOKEN)")


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
    sub.add_parser("migrate", help="apply pending migrations of every service")
    rb = sub.add_parser("rebuild", help="rebuild read models blue/green from the events")
    rb.add_argument("--projection", help="name (jobs) or schema.name (job.jobs)")
    rb.add_argument("--verify", action="store_true", help="compare with the live model only")
    qu = sub.add_parser("quarantine", help="list (or --retry) events projections could not apply")
    qu.add_argument("--retry", action="store_true")
    qu.add_argument("--projection")
    qu.add_argument("--stream")
    ad = sub.add_parser("create-admin", help="create an approved admin user")
    ad.add_argument("--email", required=True)
    ad.add_argument("--name", default="Administrator")
    au = sub.add_parser("audit", help="explain a job or a user's wallet from the events")
    au.add_argument("what", choices=["job", "user"])
    au.add_argument("id")
    au.add_argument("--json", action="store_true", help="one JSON object with every section")
    ex = sub.add_parser("export", help="write everything held on a user as JSON")
    ex.add_argument("what", choices=["user"])
    ex.add_argument("id")
    ex.add_argument("--output", help="a file to write (default: standard output)")
    er = sub.add_parser("erase", help="erase a user's personal data (the ledger stays)")
    er.add_argument("what", choices=["user"])
    er.add_argument("id")
    rc = sub.add_parser("reconcile", help="compare Razorpay's payments with our credits")
    rc.add_argument("what", choices=["payments"])
    rc.add_argument("--from", dest="start", required=True, help="a date (UTC) or date-time")
    rc.add_argument("--to", dest="end", required=True, help="a date (included) or date-time")
    rc.add_argument("--json", action="store_true", help="one JSON object per difference")
    add_user_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("upload", "download"):
        return await user_command(args)

    if settings is None:
        load_stack_env()
        settings = BaseServiceSettings(service_name="renderctl")
    if args.command == "create-admin":
        return await create_admin(settings, args.email, args.name)
    if args.command == "reconcile":
        return await reconcile_payments(args, settings.database_url)
    if args.command in ("audit", "export"):
        return await audit(args, settings.database_url)
    if args.command == "erase":
        return await erase_user(settings, args.id)
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
        if args.command == "migrate":
            await migrate_all(pool)
            return 0
        if args.command == "quarantine":
            return await quarantine(pool, args.retry, args.projection, args.stream)
        return await rebuild_all(pool, args.projection, args.verify)
    finally:
        await pool.close()


async def reconcile_payments(args: argparse.Namespace, database_url: str) -> int:
    """Razorpay's payments in the window against the payments read model (read-only); the
    Razorpay key comes from ``RF_RAZORPAY_*`` (``make up``: ``.run/secrets.env``)."""
    from services.payments.settings import PaymentsSettings
    from tools import reconcile

    load_stack_env(Path(".run/secrets.env"), only="RF_RAZORPAY_")
    settings = PaymentsSettings(service_name="renderctl", database_url=database_url)
    pool = await read_only_pool(database_url, max_size=2)
    try:
        start, end = reconcile.day_start(args.start), reconcile.window_end(args.end)
        found = await reconcile.reconcile(settings, pool, start, end)
    finally:
        await pool.close()
    return reconcile.report(found, args.json)


def main() -> None:
    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
