"""deploy.local.servers starts real PostgreSQL, NATS, Valkey and S3, and stops them cleanly."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import asyncpg
import nats
import redis.asyncio as aioredis

from deploy.local import servers
from libs.s3 import S3Settings, open_s3


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_postgres_query_and_databases(tmp_path: Path) -> None:
    port = servers.free_port()
    pg = servers.start_postgres(tmp_path / "pg", port)
    try:
        assert pg.dsn == f"postgresql://postgres@127.0.0.1:{port}/postgres"
        dsn = servers.create_database(pg.dsn, "rf_local_test")
        assert dsn == f"postgresql://postgres@127.0.0.1:{port}/rf_local_test"
        assert servers.create_database(pg.dsn, "rf_local_test", exist_ok=True) == dsn

        async def query() -> tuple[str, int, str]:
            conn = await asyncpg.connect(dsn)
            try:
                row = await conn.fetchrow(
                    "SELECT current_database() AS db, current_setting('max_connections')::int"
                    " AS max_conn, pg_encoding_to_char(encoding) AS enc"
                    " FROM pg_database WHERE datname = current_database()"
                )
                assert row is not None
                return row["db"], row["max_conn"], row["enc"]
            finally:
                await conn.close()

        assert asyncio.run(query()) == ("rf_local_test", 300, "UTF8")
        servers.drop_database(pg.dsn, "rf_local_test")
    finally:
        pg.stop()
    assert not pg.alive()
    assert not _port_open(port)
    # A second start reuses the initialised data directory.
    pg = servers.start_postgres(tmp_path / "pg", port)
    pg.stop()


def test_nats_jetstream_publish(tmp_path: Path) -> None:
    port = servers.free_port()
    handle = servers.start_nats(tmp_path / "nats", port)
    try:
        assert handle.url == f"nats://127.0.0.1:{port}"

        async def publish() -> int:
            nc = await nats.connect(handle.url)
            try:
                js = nc.jetstream()
                await js.account_info()
                await js.add_stream(name="LOCALTEST", subjects=["localtest.>"])
                ack = await js.publish("localtest.hello", b"hi")
                return int(ack.seq)
            finally:
                await nc.close()

        assert asyncio.run(publish()) == 1
    finally:
        handle.stop()
    assert not handle.alive()
    assert not _port_open(port)


def test_valkey_ping_and_detached_attach(tmp_path: Path) -> None:
    port = servers.free_port()
    pidfile = tmp_path / "valkey.pid"
    handle = servers.start_valkey(port, tmp_path / "valkey", detach=True, pidfile=pidfile)
    try:
        assert handle.url == f"redis://127.0.0.1:{port}/0"
        assert servers.read_pidfile(pidfile) == handle.pid

        async def ping() -> bool:
            client = aioredis.from_url(handle.url)
            try:
                assert await client.ping()
                await client.set("k", "v")
                return bool(await client.get("k") == b"v")
            finally:
                await client.aclose()

        assert asyncio.run(ping())
        attached = servers.attach("valkey", pidfile, handle.url, "valkey-server")
        assert attached is not None
        assert attached.pid == handle.pid
        attached.stop()
        assert not pidfile.exists()
        assert servers.attach("valkey", pidfile, handle.url, "valkey-server") is None
    finally:
        handle.stop()
    assert not handle.alive()
    assert not _port_open(port)


def test_s3_keeps_objects_across_a_restart(tmp_path: Path) -> None:
    """``make down`` then ``make up`` finds the uploads and frames stored before."""
    port = servers.free_port()
    settings = S3Settings(s3_endpoint_url=f"http://127.0.0.1:{port}")

    async def put() -> None:
        async with open_s3(settings) as s3:
            await s3.create_bucket(Bucket="scenes")
            await s3.put_object(Bucket="scenes", Key="a/scene.blend", Body=b"blend")

    async def get() -> bytes:
        async with open_s3(settings) as s3:
            obj = await s3.get_object(Bucket="scenes", Key="a/scene.blend")
            return bytes(await obj["Body"].read())

    pidfile = tmp_path / "s3.pid"
    handle = servers.start_s3(tmp_path / "s3", port, detach=True, pidfile=pidfile)
    try:
        asyncio.run(put())
        attached = servers.attach("s3", pidfile, handle.url, "ministack")
        assert attached is not None
        attached.stop()
        assert not _port_open(port)
        handle = servers.start_s3(tmp_path / "s3", port)
        assert asyncio.run(get()) == b"blend"
    finally:
        handle.stop()
    assert not _port_open(port)


def test_make_up_hands_each_service_only_the_secrets_it_declares() -> None:
    from deploy.local.stack import only_its_secrets

    env = {
        "RF_DATABASE_URL": "postgresql://db",
        "RF_JWT_KEYS": '{"k1": "s"}',
        "RF_TOKEN_PEPPER": "p",
        "RF_FARM_PASSWORD": "f",
        "RF_GATEWAY_TOKEN_PEPPER": "gp",
        "RF_S3_SECRET_ACCESS_KEY": "s3",
    }
    assert only_its_secrets("job", env) == {"RF_DATABASE_URL": "postgresql://db"}
    assert only_its_secrets("scheduler", env) == {"RF_DATABASE_URL": "postgresql://db"}
    # the gateway never holds storage credentials: the upload service signs download URLs
    assert set(only_its_secrets("gateway", env)) == set(env) - {
        "RF_FARM_PASSWORD",
        "RF_S3_SECRET_ACCESS_KEY",
    }
    assert set(only_its_secrets("deadline_bridge", env)) == {
        "RF_DATABASE_URL",
        "RF_FARM_PASSWORD",
        "RF_S3_SECRET_ACCESS_KEY",
    }
    assert set(only_its_secrets("upload", env)) == {"RF_DATABASE_URL", "RF_S3_SECRET_ACCESS_KEY"}


def test_only_the_payments_service_gets_the_razorpay_secrets() -> None:
    from deploy.local.stack import only_its_secrets

    env = {
        "RF_DATABASE_URL": "postgresql://db",
        "RF_RAZORPAY_KEY_ID": "rzp_test_1",
        "RF_RAZORPAY_KEY_SECRET": "k",
        "RF_RAZORPAY_WEBHOOK_SECRET": "w",
        "RF_RAZORPAY_WEBHOOK_SECRET_PREVIOUS": "w0",
        "RF_PAYMENTS_RAZORPAY_KEY_SECRET": "k2",
    }
    assert only_its_secrets("payments", env) == env
    for other in ("gateway", "wallet", "job", "upload"):
        assert only_its_secrets(other, env) == {
            "RF_DATABASE_URL": "postgresql://db",
            "RF_RAZORPAY_KEY_ID": "rzp_test_1",
        }


def test_only_the_notifier_gets_the_key_of_webhook_secrets() -> None:
    from deploy.local.stack import only_its_secrets

    env = {
        "RF_DATABASE_URL": "postgresql://db",
        "RF_NOTIFIER_WEBHOOK_SECRETS_KEY": "k",
        "RF_NOTIFIER_WEBHOOK_SECRETS_PREVIOUS_KEYS": "k0",
        "RF_WEBHOOK_SECRETS_KEY": "k1",
        "RF_RAZORPAY_WEBHOOK_SECRET": "w",
    }
    assert only_its_secrets("notifier", env) == {
        k: v for k, v in env.items() if k != "RF_RAZORPAY_WEBHOOK_SECRET"
    }
    for other in ("gateway", "payments", "identity"):
        assert set(only_its_secrets(other, env)) <= {
            "RF_DATABASE_URL",
            "RF_RAZORPAY_WEBHOOK_SECRET",
        }
