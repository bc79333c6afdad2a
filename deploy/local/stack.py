"""Run the whole stack locally, without Docker: ``python -m deploy.local.stack up|down|status``.

``up`` reuses the servers named by ``RF_DATABASE_URL`` / ``RF_NATS_URL`` / ``RF_REDIS_URL`` /
``RF_S3_ENDPOINT_URL`` when set, else starts its own PostgreSQL, NATS, Valkey and S3
(MiniStack) (detached, state in ``.run/``);
creates the ``renderfarm`` database, generates secrets once,
then starts every service in :data:`SERVICES` and waits until each is ready.
``RF_STACK_SERVICES`` (comma-separated; empty means none) overrides the list.
``down`` stops the services, then the servers ``up`` started. ``status`` shows them all.
``secrets`` only writes ``.run/secrets.env`` (usable as ``docker compose --env-file``).
"""

from __future__ import annotations

import argparse
import base64
import importlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from deploy.local import servers

REPO_ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = REPO_ROOT / ".run"
LOG_DIR = RUN_DIR / "logs"
PID_DIR = RUN_DIR / "pids"
SECRETS_FILE = RUN_DIR / "secrets.env"
STACK_ENV_FILE = RUN_DIR / "stack.env"

#: Services started by ``up``, in order; service i gets ``RF_HEALTH_PORT`` 8701 + i.
SERVICES = [
    "identity",
    "job",
    "scheduler",
    "deadline_bridge",
    "gateway",
    "upload",
    "scene",
    "wallet",
    "billing",
    "payments",
    "scaler",
    "notifier",
]

GATEWAY_PORT = 8700
#: The local Deadline-compatible farm (``deploy.farm``): port, workers, folders. With the
#: scaler in the stack the farm starts with no workers of its own: the scaler's local
#: provider starts and stops them as named workers (a warm test-render one among them).
FARM_PORT = 18081
FARM_WORKERS = 3
#: Of those, the first serve only the test pool: a warm worker for test renders.
FARM_STANDBY_WORKERS = 1
FARM_DIR = RUN_DIR / "farm"
SCENES_DIR = RUN_DIR / "scenes"
RENDERS_DIR = RUN_DIR / "renders"
#: The local Razorpay stand-in (``deploy.razorpay``), unless RF_RAZORPAY_URL names another.
RAZORPAY_PORT = 18090
RAZORPAY_DIR = RUN_DIR / "razorpay"
RAZORPAY_KEY_ID = "rzp_test_localstack0001"
#: The local SMTP sink (aiosmtpd) the notifier e-mails to, unless RF_SMTP_HOST names a
#: server: every message lands in the Maildir MAIL_DIR.
SMTP_PORT = 18025
MAIL_DIR = RUN_DIR / "mail"
HEALTH_PORT_BASE = 8701
#: The scaler with ``RF_SCALER_PROVIDER=skypilot`` runs from the venv that has SkyPilot
#: (``make venv``; SkyPilot's pins do not resolve with ours: docs/scaling.md, "Install").
SKY_PYTHON = REPO_ROOT / ".venv-sky" / "bin" / "python"
DATABASE_NAME = "renderfarm"
READY_TIMEOUT = 30.0
SERVICE_STOP_TIMEOUT = 15.0


@dataclass(frozen=True)
class Server:
    """A backing server of the stack."""

    name: str
    env_var: str
    port: int
    marker: str

    @property
    def pidfile(self) -> Path:
        return PID_DIR / f"{self.name}.pid"

    @property
    def data_dir(self) -> Path:
        return (
            RUN_DIR / {"postgres": "pg", "nats": "nats", "redis": "valkey", "s3": "s3"}[self.name]
        )

    @property
    def own_url(self) -> str:
        """The URL the services use when this server is ours."""
        return {
            "postgres": f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}",
            "nats": f"nats://127.0.0.1:{self.port}",
            "redis": f"redis://127.0.0.1:{self.port}/0",
            "s3": f"http://127.0.0.1:{self.port}",
        }[self.name]

    def attach(self) -> servers.ServerHandle | None:
        """A handle on our running server, from its pidfile (None if not running)."""
        if self.name == "postgres":
            return servers.attach_postgres(self.data_dir, self.port, self.pidfile)
        return servers.attach(self.name, self.pidfile, self.own_url, self.marker)


POSTGRES = Server("postgres", "RF_DATABASE_URL", 15432, "postgres")
NATS = Server("nats", "RF_NATS_URL", 14222, "nats-server")
REDIS = Server("redis", "RF_REDIS_URL", 16379, "valkey-server")
#: With RF_S3_ENDPOINT_URL set, also set RF_S3_ACCESS_KEY_ID / RF_S3_SECRET_ACCESS_KEY.
S3 = Server("s3", "RF_S3_ENDPOINT_URL", 14570, "ministack")
SERVERS = [POSTGRES, NATS, REDIS, S3]


class StackError(Exception):
    """``up`` cannot go on; the message says why."""


# -- helpers ----------------------------------------------------------------------------


def service_names() -> list[str]:
    """:data:`SERVICES`, or the comma-separated ``RF_STACK_SERVICES`` when set."""
    raw = os.environ.get("RF_STACK_SERVICES")
    if raw is None:
        return list(SERVICES)
    return [name.strip() for name in raw.split(",") if name.strip()]


def health_port(name: str, names: list[str]) -> int:
    """8701 + position in :data:`SERVICES`; services not in it come after."""
    if name in SERVICES:
        return HEALTH_PORT_BASE + SERVICES.index(name)
    extras = [n for n in names if n not in SERVICES]
    return HEALTH_PORT_BASE + len(SERVICES) + extras.index(name)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (blank lines and ``#`` comments skipped)."""
    env: dict[str, str] = {}
    if not path.exists():
        return env
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            env[key.strip()] = value
    return env


def write_env_file(path: Path, env: dict[str, str]) -> None:
    """Write KEY=VALUE lines, readable by the owner only (they hold secrets)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.writelines(f"{key}={value}\n" for key, value in env.items())
    tmp.replace(path)


def ensure_secrets() -> dict[str, str]:
    """Generate ``.run/secrets.env`` the first time (and any secret added since); return its
    values. The Razorpay ones are the local stand-in's: with RF_RAZORPAY_URL set (a real
    Razorpay), give RF_RAZORPAY_KEY_SECRET and RF_RAZORPAY_WEBHOOK_SECRET in the environment
    (they win over this file)."""
    wanted: dict[str, Callable[[], str]] = {
        "RF_JWT_KEYS": lambda: json.dumps({"k1": secrets.token_hex(32)}),
        "RF_JWT_ACTIVE_KID": lambda: "k1",
        "RF_TOKEN_PEPPER": lambda: secrets.token_hex(32),
        "RF_RAZORPAY_KEY_SECRET": lambda: secrets.token_hex(24),
        "RF_RAZORPAY_WEBHOOK_SECRET": lambda: secrets.token_hex(24),
        # The notifier's key for webhook signing secrets at rest (docs/notifications.md).
        "RF_NOTIFIER_WEBHOOK_SECRETS_KEY": lambda: base64.b64encode(
            secrets.token_bytes(32)
        ).decode(),
    }
    current = read_env_file(SECRETS_FILE)
    missing = {k: make() for k, make in wanted.items() if k not in current}
    if missing:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        write_env_file(SECRETS_FILE, {**current, **missing})
    return read_env_file(SECRETS_FILE)


def reachable(url: str) -> bool:
    """Whether the host:port of ``url`` accepts TCP connections."""
    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        return False
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=1):
            return True
    except OSError:
        return False


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """Whether GET ``url`` answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _service_marker(name: str) -> str:
    return f"services.{name}"


def _service_pidfile(name: str) -> Path:
    return PID_DIR / f"{name}.pid"


def _ready_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/readyz"


def _running_service_names() -> list[str]:
    """Services with a pidfile: those listed first (in order), then any others."""
    server_names = {s.name for s in SERVERS} | {"farm", "razorpay", "smtp"}
    found = sorted(p.stem for p in PID_DIR.glob("*.pid") if p.stem not in server_names)
    return [n for n in SERVICES if n in found] + [n for n in found if n not in SERVICES]


# -- up ---------------------------------------------------------------------------------


def _start_server(server: Server) -> servers.ServerHandle:
    handle = server.attach()
    if handle is not None:
        print(f"{server.name}: already running (pid {handle.pid})")
        return handle
    if servers.port_in_use(server.port):
        raise StackError(
            f"{server.name}: port {server.port} is in use by a process this stack did not "
            f"start; stop it, or set {server.env_var} to use that server"
        )
    log_file = LOG_DIR / f"{server.name}.log"
    started = time.monotonic()
    try:
        if server is POSTGRES:
            handle = servers.start_postgres(
                server.data_dir, server.port, detach=True, pidfile=server.pidfile, log_file=log_file
            )
        elif server is NATS:
            handle = servers.start_nats(
                server.data_dir, server.port, detach=True, pidfile=server.pidfile, log_file=log_file
            )
        elif server is REDIS:
            handle = servers.start_valkey(
                server.port, server.data_dir, detach=True, pidfile=server.pidfile, log_file=log_file
            )
        else:
            handle = servers.start_s3(
                server.data_dir, server.port, detach=True, pidfile=server.pidfile, log_file=log_file
            )
    except servers.ServerError as e:
        raise StackError(f"{server.name}: {e}") from e
    took = time.monotonic() - started
    print(f"{server.name}: started (pid {handle.pid}, {took:.1f} s), {handle.url}")
    return handle


def _database_url() -> str:
    """Our PostgreSQL or the one in ``RF_DATABASE_URL``, with the database created."""
    given = os.environ.get(POSTGRES.env_var)
    if given:
        name = urlsplit(given).path.lstrip("/")
        url = given if name else servers.database_dsn(given, DATABASE_NAME)
        print(f"postgres: using {POSTGRES.env_var}")
        try:
            admin = servers.database_dsn(given, "postgres")
            servers.create_database(admin, name or DATABASE_NAME, exist_ok=True)
        except Exception as e:
            print(f"postgres: warning: could not make sure the database exists: {e!r}")
        return url
    handle = _start_server(POSTGRES)
    assert isinstance(handle, servers.PostgresHandle)
    return servers.create_database(handle.dsn, DATABASE_NAME, exist_ok=True)


def _server_url(server: Server) -> str:
    given = os.environ.get(server.env_var)
    if given:
        print(f"{server.name}: using {server.env_var}")
        return given
    return _start_server(server).url


def service_python(name: str, env: dict[str, str]) -> str:
    """The interpreter that runs service ``name``: ours, or for the scaler on SkyPilot
    (``RF_SCALER_PROVIDER``, else the shared ``RF_PROVIDER``) the one of ``.venv-sky``."""
    provider = env.get("RF_SCALER_PROVIDER", env.get("RF_PROVIDER"))
    if name != "scaler" or provider != "skypilot":
        return sys.executable
    if not SKY_PYTHON.is_file():
        raise StackError(f"RF_SCALER_PROVIDER=skypilot needs {SKY_PYTHON}: run `make venv`")
    return str(SKY_PYTHON)


def _start_service(name: str, port: int, env: dict[str, str]) -> servers.ServerHandle:
    pidfile = _service_pidfile(name)
    url = _ready_url(port)
    handle = servers.attach(name, pidfile, url, _service_marker(name))
    if handle is not None:
        print(f"{name}: already running (pid {handle.pid})")
        return handle
    ports = [port] + ([GATEWAY_PORT] if name == "gateway" else [])
    for p in ports:
        if servers.port_in_use(p):
            raise StackError(f"{name}: port {p} is already in use")
    log_file = LOG_DIR / f"{name}.log"
    if log_file.exists():
        log_file.replace(log_file.with_name(f"{name}.log.1"))
    service_env = {
        **only_its_secrets(name, {**os.environ, **env}),
        "PYTHONUNBUFFERED": "1",
        "RF_HEALTH_PORT": str(port),
    }
    if name == "gateway":
        service_env["RF_GATEWAY_PORT"] = str(GATEWAY_PORT)
        # Worker processes on the one port (services/gateway/workers.py): one per core.
        service_env.setdefault("RF_GATEWAY_WORKERS", str(os.cpu_count() or 1))
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [service_python(name, service_env), "-m", f"services.{name}"],
            cwd=REPO_ROOT,
            env=service_env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    print(f"{name}: started (pid {proc.pid}), health {url}")
    return servers.ServerHandle(
        name,
        proc.pid,
        url,
        marker=_service_marker(name),
        proc=proc,
        detached=True,
        log_file=log_file,
        pidfile=pidfile,
    )


def only_its_secrets(name: str, env: dict[str, str]) -> dict[str, str]:
    """``env`` without the secrets that the service ``services.<name>`` does not declare
    (``RF_<SECRET>`` and ``RF_<SERVICE>_<SECRET>`` alike)."""
    from libs.service import declared

    mine = importlib.import_module(f"services.{name}.service").SERVICE.secrets
    others = {f.upper() for s in declared() for f in s.secrets} - {f.upper() for f in mine}

    def banned(key: str) -> bool:
        return key.startswith("RF_") and any(key.endswith(f"_{f}") for f in others)

    return {k: v for k, v in env.items() if not banned(k)}


def _farm_url() -> str:
    return os.environ.get("RF_FARM_URL") or f"http://127.0.0.1:{FARM_PORT}"


def _start_farm() -> servers.ServerHandle | None:
    """The local farm, unless ``RF_FARM_URL`` points the bridge at another (a real one)."""
    if os.environ.get("RF_FARM_URL"):
        print("farm: using RF_FARM_URL")
        return None
    pidfile = PID_DIR / "farm.pid"
    url = f"http://127.0.0.1:{FARM_PORT}/"
    handle = servers.attach("farm", pidfile, url, "deploy.farm")
    if handle is not None:
        print(f"farm: already running (pid {handle.pid})")
        return handle
    if servers.port_in_use(FARM_PORT):
        raise StackError(f"farm: port {FARM_PORT} is in use; set RF_FARM_URL to use that farm")
    for d in (FARM_DIR, SCENES_DIR, RENDERS_DIR):
        d.mkdir(parents=True, exist_ok=True)
    log_file = LOG_DIR / "farm.log"
    scaled = "scaler" in service_names()
    workers = os.environ.get("RF_FARM_WORKERS", "0" if scaled else str(FARM_WORKERS))
    args = ["serve", "--port", str(FARM_PORT), "--data-dir", str(FARM_DIR)]
    args += ["--workers", workers, "--outputs-root", str(RENDERS_DIR)]
    default_standby = "0" if scaled else str(FARM_STANDBY_WORKERS)
    standby = os.environ.get("RF_FARM_STANDBY_WORKERS", default_standby)
    args += ["--standby-workers", standby, "--standby-pools", "test"]
    # auto: blender on PATH, else .venv-blender (make venv), else the built-in renderer.
    args += ["--blender", os.environ.get("RF_FARM_BLENDER", "auto")]
    with log_file.open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deploy.farm", *args],
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pidfile.write_text(f"{proc.pid}\n")
    print(f"farm: started (pid {proc.pid}, {workers} workers), {url}")
    return servers.ServerHandle(
        "farm",
        proc.pid,
        url,
        marker="deploy.farm",
        proc=proc,
        detached=True,
        log_file=log_file,
        pidfile=pidfile,
    )


def _start_razorpay(env: dict[str, str]) -> None:
    """The Razorpay stand-in, unless ``RF_RAZORPAY_URL`` names another (Razorpay itself);
    its webhooks go to the gateway's ``/v1/payments/webhook``."""
    if os.environ.get("RF_RAZORPAY_URL"):
        print("razorpay: using RF_RAZORPAY_URL")
        return
    pidfile = PID_DIR / "razorpay.pid"
    url = f"http://127.0.0.1:{RAZORPAY_PORT}"
    if servers.attach("razorpay", pidfile, url, "deploy.razorpay") is not None:
        print("razorpay: already running")
        return
    if servers.port_in_use(RAZORPAY_PORT):
        raise StackError(
            f"razorpay: port {RAZORPAY_PORT} is in use; set RF_RAZORPAY_URL to use that one"
        )
    try:
        handle = servers.start_razorpay(
            RAZORPAY_DIR / "razorpay.db",
            RAZORPAY_PORT,
            key_id=env["RF_RAZORPAY_KEY_ID"],
            key_secret=env["RF_RAZORPAY_KEY_SECRET"],
            webhook_secret=env["RF_RAZORPAY_WEBHOOK_SECRET"],
            webhook_url=f"http://127.0.0.1:{GATEWAY_PORT}/v1/payments/webhook",
            detach=True,
            pidfile=pidfile,
            log_file=LOG_DIR / "razorpay.log",
        )
    except servers.ServerError as e:
        raise StackError(f"razorpay: {e}") from e
    print(f"razorpay: started (pid {handle.pid}), {url} (stand-in; test controls under /_test/)")


def _start_smtp() -> None:
    """The SMTP sink, unless ``RF_SMTP_HOST`` names a server to e-mail through."""
    if os.environ.get("RF_SMTP_HOST"):
        print("smtp: using RF_SMTP_HOST")
        return
    pidfile = PID_DIR / "smtp.pid"
    url = f"smtp://127.0.0.1:{SMTP_PORT}"
    if servers.attach("smtp", pidfile, url, "aiosmtpd") is not None:
        print("smtp: already running")
        return
    if servers.port_in_use(SMTP_PORT):
        raise StackError(f"smtp: port {SMTP_PORT} is in use; set RF_SMTP_HOST to use that one")
    try:
        handle = servers.start_smtp(
            MAIL_DIR, SMTP_PORT, detach=True, pidfile=pidfile, log_file=LOG_DIR / "smtp.log"
        )
    except servers.ServerError as e:
        raise StackError(f"smtp: {e}") from e
    print(f"smtp: started (pid {handle.pid}), {url} (sink; messages in {MAIL_DIR})")


def _wait_ready(handles: list[servers.ServerHandle]) -> None:
    timeout = float(os.environ.get("RF_STACK_READY_TIMEOUT", READY_TIMEOUT))
    deadline = time.monotonic() + timeout
    pending = list(handles)
    while pending:
        for handle in list(pending):
            if not handle.alive():
                _fail(handle, "exited while starting")
            if http_ok(handle.url):
                print(f"{handle.name}: ready")
                pending.remove(handle)
        if pending and time.monotonic() > deadline:
            _fail(pending[0], f"not ready after {timeout:.0f} s ({pending[0].url})")
        if pending:
            time.sleep(0.2)


def _fail(handle: servers.ServerHandle, why: str) -> NoReturn:
    log_file = handle.log_file or LOG_DIR / f"{handle.name}.log"
    tail = servers.log_tail(log_file, 30)
    raise StackError(
        f"{handle.name}: {why}\n--- last 30 lines of {log_file} ---\n{tail}\n---\n"
        "Other components may still run: see `make status`, stop them with `make down`."
    )


def up() -> None:
    """Start (or reuse) the servers, start the services (each applies its own schema at
    start, under an advisory lock) and wait until they are ready."""
    for d in (RUN_DIR, LOG_DIR, PID_DIR):
        d.mkdir(parents=True, exist_ok=True)
    env = {
        POSTGRES.env_var: _database_url(),
        NATS.env_var: _server_url(NATS),
        REDIS.env_var: _server_url(REDIS),
        S3.env_var: _server_url(S3),
    }
    env.setdefault("RF_FARM_URL", _farm_url())
    env["RF_RAZORPAY_URL"] = (
        os.environ.get("RF_RAZORPAY_URL") or f"http://127.0.0.1:{RAZORPAY_PORT}"
    )
    env["RF_RAZORPAY_KEY_ID"] = os.environ.get("RF_RAZORPAY_KEY_ID") or RAZORPAY_KEY_ID
    # Local receivers (127.0.0.1, the LAN) may take webhooks; production refuses them.
    env["RF_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES"] = (
        os.environ.get("RF_NOTIFIER_WEBHOOK_ALLOW_PRIVATE_ADDRESSES") or "true"
    )
    env["RF_SMTP_HOST"] = os.environ.get("RF_SMTP_HOST") or "127.0.0.1"
    env["RF_SMTP_PORT"] = os.environ.get("RF_SMTP_PORT") or str(SMTP_PORT)
    # The upload service stages scenes into the folder the farm reads them from.
    for key, folder in (
        ("RF_SCENES_ROOT", SCENES_DIR),
        ("RF_STAGE_ROOT", SCENES_DIR),
        ("RF_FARM_OUTPUTS_ROOT", RENDERS_DIR),
    ):
        env[key] = os.environ.get(key) or str(folder)
    write_env_file(STACK_ENV_FILE, env)  # for renderctl: no secrets
    env.update({k: v for k, v in ensure_secrets().items() if k not in os.environ})
    if not os.environ.get(S3.env_var):  # our MiniStack: its fixed local credentials
        env["RF_S3_ACCESS_KEY_ID"] = servers.S3_ACCESS_KEY_ID
        env["RF_S3_SECRET_ACCESS_KEY"] = servers.S3_SECRET_ACCESS_KEY
    farm = _start_farm()
    names = service_names()
    if "payments" in names:
        _start_razorpay(env)
    if "notifier" in names:
        _start_smtp()
    handles = [_start_service(n, health_port(n, names), env) for n in names]
    _wait_ready(([farm] if farm else []) + handles)
    print()
    print("Stack is up.")
    if "gateway" in names:
        print(f"  Gateway API: http://127.0.0.1:{GATEWAY_PORT}/v1")
        print(f"  API docs:    http://127.0.0.1:{GATEWAY_PORT}/docs")
    print(f"  Farm:        {env['RF_FARM_URL']} (Deadline Web Service API)")
    print(f"  S3:          {env[S3.env_var]} (buckets rf-scenes, rf-outputs)")
    print(f"  Razorpay:    {env['RF_RAZORPAY_URL']} (key id {env['RF_RAZORPAY_KEY_ID']})")
    print(f"  SMTP:        {env['RF_SMTP_HOST']}:{env['RF_SMTP_PORT']} (sink: Maildir {MAIL_DIR})")
    print(f"  Logs:        {LOG_DIR}/<name>.log")
    print(f"  Environment: {STACK_ENV_FILE}")
    print("  Stop with `make down`.")


# -- down / status ----------------------------------------------------------------------


def down() -> None:
    """Stop the services, then the servers ``up`` started. Idempotent."""
    if not PID_DIR.exists():
        print("nothing to stop")
        return
    for name in reversed(_running_service_names()):
        pidfile = _service_pidfile(name)
        handle = servers.attach(name, pidfile, "", _service_marker(name))
        if handle is None:
            pidfile.unlink(missing_ok=True)
            continue
        print(f"{name}: stopping (pid {handle.pid})")
        handle.stop(timeout=SERVICE_STOP_TIMEOUT)
    farm = servers.attach("farm", PID_DIR / "farm.pid", "", "deploy.farm")
    if farm is not None:
        print(f"farm: stopping (pid {farm.pid})")
        farm.stop(timeout=SERVICE_STOP_TIMEOUT)
    (PID_DIR / "farm.pid").unlink(missing_ok=True)
    razorpay = servers.attach("razorpay", PID_DIR / "razorpay.pid", "", "deploy.razorpay")
    if razorpay is not None:
        print(f"razorpay: stopping (pid {razorpay.pid})")
        razorpay.stop(timeout=SERVICE_STOP_TIMEOUT)
    (PID_DIR / "razorpay.pid").unlink(missing_ok=True)
    smtp = servers.attach("smtp", PID_DIR / "smtp.pid", "", "aiosmtpd")
    if smtp is not None:
        print(f"smtp: stopping (pid {smtp.pid})")
        smtp.stop(timeout=SERVICE_STOP_TIMEOUT)
    (PID_DIR / "smtp.pid").unlink(missing_ok=True)
    for server in reversed(SERVERS):
        server_handle = server.attach()
        if server_handle is None:
            server.pidfile.unlink(missing_ok=True)
            continue
        print(f"{server.name}: stopping (pid {server_handle.pid})")
        server_handle.stop()
    print("stack is down")


def status() -> None:
    """One line per component: state, pid, URL."""
    stack_env = read_env_file(STACK_ENV_FILE)
    rows: list[tuple[str, str, str, str]] = []
    for server in SERVERS:
        handle = server.attach()
        url = stack_env.get(server.env_var, server.own_url)
        if handle is not None:
            rows.append((server.name, "running", str(handle.pid), url))
        elif server.pidfile.exists() or url == server.own_url:
            rows.append((server.name, "stopped", "-", url))
        else:
            state = "external" if reachable(url) else "external, unreachable"
            rows.append((server.name, state, "-", url))
    farm = servers.attach("farm", PID_DIR / "farm.pid", "", "deploy.farm")
    farm_url = stack_env.get("RF_FARM_URL", f"http://127.0.0.1:{FARM_PORT}")
    if farm is not None:
        rows.append(("farm", "running", str(farm.pid), farm_url))
    else:
        rows.append(
            ("farm", "stopped" if farm_url.endswith(f":{FARM_PORT}") else "external", "-", farm_url)
        )
    razorpay = servers.attach("razorpay", PID_DIR / "razorpay.pid", "", "deploy.razorpay")
    razorpay_url = stack_env.get("RF_RAZORPAY_URL", f"http://127.0.0.1:{RAZORPAY_PORT}")
    if razorpay is not None:
        rows.append(("razorpay", "running", str(razorpay.pid), razorpay_url))
    else:
        local = razorpay_url.endswith(f":{RAZORPAY_PORT}")
        rows.append(("razorpay", "stopped" if local else "external", "-", razorpay_url))
    smtp = servers.attach("smtp", PID_DIR / "smtp.pid", "", "aiosmtpd")
    smtp_url = f"smtp://{stack_env.get('RF_SMTP_HOST', '127.0.0.1')}:"
    smtp_url += stack_env.get("RF_SMTP_PORT", str(SMTP_PORT))
    if smtp is not None:
        rows.append(("smtp", "running", str(smtp.pid), smtp_url))
    else:
        local = smtp_url.endswith(f"127.0.0.1:{SMTP_PORT}")
        rows.append(("smtp", "stopped" if local else "external", "-", smtp_url))
    names = service_names()
    for name in names + [n for n in _running_service_names() if n not in names]:
        port = health_port(name, names) if name in names else 0
        handle = servers.attach(name, _service_pidfile(name), "", _service_marker(name))
        url = _ready_url(port) if port else "-"
        if handle is None:
            rows.append((name, "stopped", "-", url))
        else:
            ready = "ready" if port and http_ok(url) else "not ready"
            rows.append((name, f"running, {ready}", str(handle.pid), url))
    if "gateway" in names:
        rows.append(("gateway api", "", "", f"http://127.0.0.1:{GATEWAY_PORT}/v1"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=True)).rstrip())


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m deploy.local.stack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status", "secrets"])
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            up()
        elif args.command == "down":
            down()
        elif args.command == "status":
            status()
        else:
            ensure_secrets()
            print(SECRETS_FILE)
    except StackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
