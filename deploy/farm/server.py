"""The farm's web service: Deadline 10's REST subset plus the ``/_farm/`` control endpoints.

The service also supervises the worker processes: it starts ``--workers`` of them, restarts any
that die, changes their number on ``PUT /_farm/workers`` and marks silent ones Stalled. Named
workers (``PUT``/``DELETE /_farm/workers/{name}``, one per machine of the scaler's local
provider) are supervised apart from the counted ones.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from deploy.farm import VERSION
from deploy.farm.store import (
    JOB_COMMANDS,
    JOB_STATES,
    LISTS,
    REPORT_DATA,
    REPORT_ERROR,
    REPORT_LOG,
    REPORT_REQUEUE,
    TASK_COMMANDS,
    WORKER_IDLE,
    FarmError,
    Store,
)

log = logging.getLogger("deploy.farm")

#: Upper bound for ``PUT /_farm/workers``, and for the named workers.
MAX_WORKERS = 64
#: A named worker's name: a letter or digit, then letters, digits, ``.``, ``_`` or ``-``.
WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: Seconds a stopping worker gets before it is killed.
WORKER_STOP_SECONDS = 10.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class FarmConfig:
    """Settings of the web service and of the workers it starts."""

    data_dir: Path
    outputs_root: Path
    workers: int = 2
    frame_seconds: float = 0.05
    blender: str = "auto"
    poll_interval: float = 0.05
    stall_seconds: float = 10.0
    task_error_limit: int = 5
    job_error_limit: int = 100
    user: str | None = None
    password: str | None = None
    worker_prefix: str = "farm-w"
    #: The first ``standby_workers`` workers serve only ``standby_pools`` (warm workers).
    standby_workers: int = 0
    standby_pools: tuple[str, ...] = ("test",)


@dataclass
class NamedWorker:
    """A worker started by name (one machine): its process, pools and start time."""

    proc: subprocess.Popen[bytes]
    pools: list[str] | None
    launched: float
    #: Serves only its pools (a warm worker for test renders), not pool ``none`` too.
    standby: bool = False


class Supervisor:
    """Starts, restarts and stops worker processes, and detects stalled workers.

    The counted workers (``procs``, named ``{worker_prefix}NN``) follow :meth:`set_count`;
    the named workers (``named``) are started and stopped one by one and never counted, so
    :meth:`set_count` leaves them alone. Housekeeping restarts a worker of either kind that
    exits by itself; a stopped one is no longer supervised, so it stays stopped.
    """

    def __init__(self, config: FarmConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.named: dict[str, NamedWorker] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._housekeeping, name="farm-house", daemon=True)

    @property
    def standby_names(self) -> set[str]:
        """The standby workers' names: the first ``standby_workers``."""
        prefix = self.config.worker_prefix
        return {f"{prefix}{i:02d}" for i in range(1, self.config.standby_workers + 1)}

    def start(self) -> None:
        """Start the configured number of workers and the housekeeping thread."""
        self.set_count(self.config.workers)
        self._thread.start()

    def _spawn(self, name: str, standby_pools: list[str] | None = None) -> subprocess.Popen[bytes]:
        logs = self.config.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        args = [
            sys.executable,
            "-m",
            "deploy.farm",
            "worker",
            "--data-dir",
            str(self.config.data_dir),
            "--name",
            name,
            "--outputs-root",
            str(self.config.outputs_root),
            "--frame-seconds",
            str(self.config.frame_seconds),
            "--blender",
            self.config.blender,
            "--poll-interval",
            str(self.config.poll_interval),
            "--parent-pid",
            str(os.getpid()),
        ]
        if name in self.standby_names:
            standby_pools = list(self.config.standby_pools)
        if standby_pools:
            args += ["--standby-pools", ",".join(standby_pools)]
        with (logs / f"{name}.log").open("ab") as out:
            return subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    def set_count(self, count: int) -> None:
        """Run exactly ``count`` workers: start new ones or stop (idle ones first) the rest."""
        with self._lock:
            index = 1
            while len(self.procs) < count:
                name = f"{self.config.worker_prefix}{index:02d}"
                if name not in self.procs:
                    self.procs[name] = self._spawn(name)
                index += 1
            if len(self.procs) > count:
                idle = {w["Name"] for w in self.store.workers() if w["Stat"] == WORKER_IDLE}
                order = sorted(self.procs, key=lambda n: (n in idle, n), reverse=True)
                self._stop_workers(order[: len(self.procs) - count])

    def _stop_workers(self, names: list[str]) -> None:
        self._stop_procs([(name, self.procs.pop(name)) for name in names])

    def _stop_procs(self, procs: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
        for _, proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for name, proc in procs:
            try:
                proc.wait(WORKER_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.store.worker_offline(name)

    def is_counted(self, name: str) -> bool:
        """Whether ``name`` has the counted workers' form (``{worker_prefix}NN``)."""
        return re.fullmatch(re.escape(self.config.worker_prefix) + r"\d+", name) is not None

    def start_named(self, name: str, pools: list[str] | None, standby: bool = False) -> None:
        """Start the named worker with ``pools`` (enabled; with ``standby``, serving only
        those); one already running is left as is."""
        with self._lock:
            if name in self.named:
                return
            if len(self.named) >= MAX_WORKERS:
                raise FarmError(f"Error: the farm runs {MAX_WORKERS} named workers already.", 409)
            self.store.prepare_worker(name, pools)
            proc = self._spawn(name, pools if standby else None)
            self.named[name] = NamedWorker(proc, pools, time.time(), standby)

    def stop_named(self, name: str) -> bool:
        """Stop the named worker (its task is requeued) and stop supervising it; False when
        no such worker runs."""
        with self._lock:
            worker = self.named.pop(name, None)
            if worker is None:
                return False
            self._stop_procs([(name, worker.proc)])
            return True

    def describe(self) -> dict[str, Any]:
        """The ``/_farm/workers`` answer: the counted workers (count, process and Stat of
        each) and the named ones."""
        with self._lock:
            pids = {name: proc.pid for name, proc in self.procs.items()}
        stats = {w["Name"]: w["Stat"] for w in self.store.workers(list(pids) or None)}
        return {
            "count": len(pids),
            "workers": [
                {"name": name, "pid": pid, "Stat": stats.get(name, 0)}
                for name, pid in sorted(pids.items())
            ],
            "named": self.describe_named(),
        }

    def describe_named(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """The named workers (or those of ``names`` that run): process, Stat, settings."""
        with self._lock:
            named = {n: w for n, w in self.named.items() if names is None or n in names}
        if not named:
            return []
        stats = {w["Name"]: w["Stat"] for w in self.store.workers(list(named))}
        settings = {s["Name"]: s for s in self.store.worker_settings(list(named))}
        return [
            {
                "name": name,
                "pid": worker.proc.pid,
                "Stat": stats.get(name, 0),
                "Pools": settings[name]["Pools"] if name in settings else worker.pools or [],
                "Enable": settings[name]["Enable"] if name in settings else True,
                "launched": datetime.fromtimestamp(worker.launched, UTC).isoformat(),
            }
            for name, worker in sorted(named.items())
        ]

    def _housekeeping(self) -> None:
        while not self._stop.wait(1.0):
            try:
                for name in self.store.mark_stalled(self.config.stall_seconds):
                    log.warning("worker %s stalled; its tasks were requeued", name)
                with self._lock:
                    for name, proc in list(self.procs.items()):
                        if proc.poll() is not None:
                            log.warning("worker %s exited (%s); restarting", name, proc.returncode)
                            self.procs[name] = self._spawn(name)
                    for name, worker in self.named.items():
                        if worker.proc.poll() is not None:
                            code = worker.proc.returncode
                            log.warning("worker %s exited (%s); restarting", name, code)
                            worker.proc = self._spawn(
                                name, worker.pools if worker.standby else None
                            )
            except Exception:
                log.exception("farm housekeeping failed")

    def shutdown(self) -> None:
        """Stop housekeeping and every worker (their tasks are requeued)."""
        self._stop.set()
        with self._lock:
            named = [(name, self.named.pop(name).proc) for name in list(self.named)]
            self._stop_procs([(name, self.procs.pop(name)) for name in list(self.procs)] + named)


# -- HTTP helpers ------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def _text(body: str, status: int = 200) -> PlainTextResponse:
    return PlainTextResponse(body, status_code=status)


def _flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "").strip().lower() == "true"


def _list_param(request: Request, name: str) -> list[str] | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    return [part.strip() for part in raw.split(",") if part.strip()]


def _required(request: Request, name: str) -> str:
    value = request.query_params.get(name, "").strip()
    if not value:
        raise FarmError(f"Error: the {name} parameter is required.", 400)
    return value


def _int_param(request: Request, name: str) -> int:
    value = _required(request, name)
    try:
        return int(value)
    except ValueError as exc:
        raise FarmError(f"Error: {name} must be an integer, got {value!r}.", 400) from exc


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        raise FarmError("Error: the request has no body.", 400)
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise FarmError(f"Error: the body is not valid JSON: {exc}", 400) from exc
    if not isinstance(body, dict):
        raise FarmError("Error: the body must be a JSON object.", 400)
    return body


def _command(body: dict[str, Any], known: frozenset[str]) -> tuple[str, str]:
    command = body.get("Command")
    if not isinstance(command, str) or not command.strip():
        raise FarmError("Error: the body must contain a Command.", 400)
    job_id = body.get("JobID")
    if not isinstance(job_id, str) or not job_id.strip():
        raise FarmError("Error: the body must contain a JobID.", 400)
    name = command.strip().lower()
    if name not in known:
        raise FarmError(f"Error: {command!r} is not a valid command.", 500)
    return name, job_id.strip()


#: ``PUT /api/jobs`` commands that take arguments besides ``JobID`` (Deadline/Jobs.py).
MACHINE_LIMIT_COMMANDS = frozenset(
    {
        "setjobmachinelimit",
        "setjobmachinelimitmaximum",
        "setjobmachinelimitlistedslaves",
        "setjobmachinelimitwhitelistflag",
        "addslavestojobmachinelimitlist",
        "removeslavesfromjobmachinelimitlist",
    }
)
#: ``Data=`` of job and task reports whose answer is the reports' texts.
CONTENTS_DATA = {
    "allcontents": (REPORT_LOG, REPORT_ERROR, REPORT_REQUEUE),
    "allerrorcontents": (REPORT_ERROR,),
    "alllogcontents": (REPORT_LOG,),
    "allrequeuecontents": (REPORT_REQUEUE,),
}
#: ``Data=`` of job reports answering one report's text (with ``ReportID``).
ONE_CONTENTS_DATA = {
    "errorcontents": (REPORT_ERROR,),
    "logcontents": (REPORT_LOG,),
    "requeuecontents": (REPORT_REQUEUE,),
}


def _names(value: Any, field: str) -> list[str]:
    """A name or a list of names (clients send either), lower-cased for pools and groups."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(i, str) and i.strip() for i in items):
        raise FarmError(f"Error: {field} must be a name or a list of names.", 400)
    return [i.strip() for i in items]


def _limit(body: dict[str, Any]) -> int:
    raw = body.get("Limit")
    try:
        limit = int(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise FarmError("Error: Limit must be a whole number.", 400) from exc
    if limit < 0:
        raise FarmError("Error: Limit must not be negative.", 400)
    return limit


def _task_id(value: Any) -> int:
    """One entry of a ``TaskList``: a whole number, or its text (``"3"``)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise FarmError(f"Error: TaskList must be a list of task ids, not {value!r}.", 400)


def _is_true(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


class FarmApp:
    """The request handlers over one store and one supervisor."""

    def __init__(self, config: FarmConfig) -> None:
        self.config = config
        self.store = Store(config.data_dir / "farm.db")
        self.supervisor = Supervisor(config, self.store)

    # -- auth and dispatch ---------------------------------------------------------------

    def _authorized(self, request: Request) -> bool:
        if self.config.user is None or self.config.password is None:
            return True
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(encoded).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return secrets.compare_digest(user, self.config.user) and secrets.compare_digest(
            password, self.config.password
        )

    def resource(self, **handlers: Handler) -> Callable[[Request], Awaitable[Response]]:
        """One URL: auth, method dispatch (501 for others) and FarmError → text reply."""

        async def endpoint(request: Request) -> Response:
            if not self._authorized(request):
                return PlainTextResponse(
                    "Error: authentication required.",
                    status_code=401,
                    headers={"WWW-Authenticate": 'Basic realm="Deadline Web Service"'},
                )
            handler = handlers.get(request.method.lower())
            if handler is None:
                return _text(f"Error: {request.method} is not supported by this resource.", 501)
            try:
                return await handler(request)
            except FarmError as exc:
                return _text(str(exc), exc.status)

        return endpoint

    # -- /api/jobs -----------------------------------------------------------------------

    async def get_jobs(self, request: Request) -> Response:
        """``GET /api/jobs``: all jobs, by ``JobID`` or ``States``, or ids only; with ``JobID``
        also ``Statistics=true`` (one statistics object) or ``Details=true`` (by job id)."""
        if _flag(request, "Statistics"):
            job_id = _required(request, "JobID")
            return JSONResponse(await run_in_threadpool(self.store.statistics, job_id))
        if _flag(request, "Details"):
            ids = _list_param(request, "JobID")
            if not ids:
                raise FarmError("Error: the JobID parameter is required.", 400)
            return JSONResponse(await run_in_threadpool(self._details, ids))
        states: set[int] | None = None
        names = _list_param(request, "States")
        if names is not None:
            try:
                states = {JOB_STATES[n.lower()] for n in names}
            except KeyError as exc:
                raise FarmError(f"Error: {exc.args[0]!r} is not a valid job state.", 400) from exc
        ids = _list_param(request, "JobID")
        jobs = await run_in_threadpool(self.store.jobs, ids, states, _flag(request, "Deleted"))
        if _flag(request, "IdOnly"):
            return JSONResponse([j["_id"] for j in jobs])
        return JSONResponse(jobs)

    def _details(self, ids: list[str]) -> dict[str, Any]:
        """Job details: for each existing job its object, statistics and rendering workers."""
        return {
            job["_id"]: {
                "Job": job,
                "Statistics": self.store.statistics(job["_id"]),
                "RenderingWorkers": self.store.rendering_workers(job["_id"]),
            }
            for job in self.store.jobs(ids)
        }

    async def post_jobs(self, request: Request) -> Response:
        """``POST /api/jobs``: submit one job or a batch (``{"Jobs": [...]}``)."""
        body = await _body(request)
        if "Jobs" in body:
            entries = body["Jobs"]
            if not isinstance(entries, list) or not entries:
                raise FarmError("Error: Jobs must be a non-empty list.", 400)
            dependent = _is_true(body.get("Dependent"))
            results: list[dict[str, Any]] = []
            previous: str | None = None
            for entry in entries:
                if not isinstance(entry, dict):
                    raise FarmError("Error: each entry of Jobs must be an object.", 400)
                follows = entry.get("DependsOnPrevious", dependent)
                deps = [previous] if previous is not None and _is_true(follows) else []
                result = await self._submit(entry, deps, _is_true(body.get("IdOnly")))
                previous = result["_id"]
                results.append(result)
            return JSONResponse(results)
        return JSONResponse(await self._submit(body, [], False))

    async def _submit(self, entry: dict[str, Any], deps: list[str], id_only: bool) -> Any:
        job_info = entry.get("JobInfo")
        plugin_info = entry.get("PluginInfo", {})
        aux = entry.get("AuxFiles", [])
        if not isinstance(job_info, dict):
            raise FarmError("Error: JobInfo must be an object.", 400)
        if not isinstance(plugin_info, dict):
            raise FarmError("Error: PluginInfo must be an object.", 400)
        if not isinstance(aux, list) or not all(isinstance(a, str) for a in aux):
            raise FarmError("Error: AuxFiles must be a list of paths.", 400)
        job_id = await run_in_threadpool(
            lambda: self.store.submit_job(
                job_info,
                plugin_info,
                aux,
                deps,
                task_error_limit=self.config.task_error_limit,
                job_error_limit=self.config.job_error_limit,
            )
        )
        if id_only or _is_true(entry.get("IdOnly")):
            return {"_id": job_id}
        return (await run_in_threadpool(self.store.jobs, [job_id]))[0]

    async def put_jobs(self, request: Request) -> Response:
        """``PUT /api/jobs``: a job command (suspend, resume, requeue, save, machine limits...)."""
        body = await _body(request)
        if str(body.get("Command", "")).strip().lower() == "save":
            job = body.get("Job")
            if not isinstance(job, dict):
                raise FarmError("Error: the save command needs the Job object.", 400)
            await run_in_threadpool(self.store.save_job, job)
            return _text("Success")
        command, job_id = _command(body, JOB_COMMANDS | MACHINE_LIMIT_COMMANDS)
        if command in MACHINE_LIMIT_COMMANDS:
            await run_in_threadpool(self._machine_limit, job_id, command, body)
        else:
            await run_in_threadpool(self.store.job_command, job_id, command)
        return _text("Success")

    def _machine_limit(self, job_id: str, command: str, body: dict[str, Any]) -> None:
        store = self.store
        if command == "setjobmachinelimit":
            store.set_machine_limit(
                job_id,
                limit=_limit(body),
                listed=_names(body.get("SlaveList", []), "SlaveList"),
                whitelist=_is_true(body.get("WhiteListFlag")),
            )
        elif command == "setjobmachinelimitmaximum":
            store.set_machine_limit(job_id, limit=_limit(body))
        elif command == "setjobmachinelimitlistedslaves":
            store.set_machine_limit(job_id, listed=_names(body.get("SlaveList"), "SlaveList"))
        elif command == "setjobmachinelimitwhitelistflag":
            store.set_machine_limit(job_id, whitelist=_is_true(body.get("WhiteListFlag")))
        elif command == "addslavestojobmachinelimitlist":
            store.set_machine_limit(job_id, add=_names(body.get("SlaveList"), "SlaveList"))
        else:
            store.set_machine_limit(job_id, remove=_names(body.get("SlaveList"), "SlaveList"))

    async def delete_jobs(self, request: Request) -> Response:
        """``DELETE /api/jobs?JobID=a,b``."""
        ids = _list_param(request, "JobID")
        if not ids:
            raise FarmError("Error: the JobID parameter is required.", 400)
        await run_in_threadpool(self.store.delete_jobs, ids)
        return _text("Success")

    # -- /api/tasks ----------------------------------------------------------------------

    async def get_tasks(self, request: Request) -> Response:
        """``GET /api/tasks?JobID=``: the task collection, one task, or task ids."""
        job_id = _required(request, "JobID")
        tasks = await run_in_threadpool(self.store.tasks, job_id)
        if "TaskID" in request.query_params:
            task_id = _int_param(request, "TaskID")
            if not 0 <= task_id < len(tasks):
                raise FarmError(f"Error: Job {job_id} has no task {task_id}.", 500)
            return JSONResponse(tasks[task_id])
        if _flag(request, "IdOnly"):
            return JSONResponse([t["TaskID"] for t in tasks])
        return JSONResponse({"ID": job_id, "PreTask": None, "PostTask": None, "Tasks": tasks})

    async def put_tasks(self, request: Request) -> Response:
        """``PUT /api/tasks``: a task command for ``TaskList`` (or every task)."""
        body = await _body(request)
        command, job_id = _command(body, TASK_COMMANDS)
        raw = body.get("TaskList")
        task_ids: list[int] | None = None
        if raw is not None:
            # Deadline/Tasks.py sends one task as a bare number ("TaskList":3).
            items = raw.split(",") if isinstance(raw, str) else raw
            if isinstance(items, int) and not isinstance(items, bool):
                items = [items]
            if not isinstance(items, list):
                raise FarmError("Error: TaskList must be a list of task ids.", 400)
            task_ids = [_task_id(t) for t in items]
        await run_in_threadpool(self.store.task_command, job_id, command, task_ids)
        return _text("Success")

    # -- reports -------------------------------------------------------------------------

    async def get_job_reports(self, request: Request) -> Response:
        """``GET /api/jobreports?JobID=&Data=...``: reports, their texts, or the history."""
        job_id = _required(request, "JobID")
        data = request.query_params.get("Data", "all").strip().lower()
        store = self.store
        if data == "history":
            return JSONResponse(await run_in_threadpool(store.history, job_id))
        if data in CONTENTS_DATA:
            types = CONTENTS_DATA[data]
            return JSONResponse(await run_in_threadpool(store.report_contents, job_id, None, types))
        if data in ONE_CONTENTS_DATA:
            report_id = _required(request, "ReportID")
            texts = await run_in_threadpool(
                store.report_contents, job_id, None, ONE_CONTENTS_DATA[data], report_id
            )
            if not texts:
                raise FarmError(f"Error: Job {job_id} has no {data[:-8]} report {report_id}.", 500)
            return JSONResponse(texts[0])
        types = _report_types(request)
        return JSONResponse(await run_in_threadpool(store.reports, job_id, None, types))

    async def get_task_reports(self, request: Request) -> Response:
        """``GET /api/taskreports?JobID=&TaskID=&Data=...`` (also all*contents: the texts)."""
        job_id = _required(request, "JobID")
        task_id = _int_param(request, "TaskID")
        data = request.query_params.get("Data", "all").strip().lower()
        if data in CONTENTS_DATA:
            types = CONTENTS_DATA[data]
            contents = await run_in_threadpool(self.store.report_contents, job_id, task_id, types)
            return JSONResponse(contents)
        types = _report_types(request)
        return JSONResponse(await run_in_threadpool(self.store.reports, job_id, task_id, types))

    # -- workers -------------------------------------------------------------------------

    async def get_slaves(self, request: Request) -> Response:
        """``GET /api/slaves``: names; info or settings objects (flat), both
        (``{"Info","Settings"}``), or one worker's reports (Deadline/Slaves.py)."""
        if _flag(request, "NamesOnly"):
            return JSONResponse(await run_in_threadpool(self.store.worker_names))
        data = request.query_params.get("Data", "infosettings").strip().lower()
        names = _list_param(request, "Name")
        if data in ("reports", "reportcontents"):
            if not names or len(names) != 1:
                raise FarmError("Error: reports need exactly one worker Name.", 400)
            reports = self.store.worker_reports
            return JSONResponse(
                await run_in_threadpool(reports, names[0], data == "reportcontents")
            )
        if data not in ("info", "settings", "infosettings"):
            raise FarmError(f"Error: Data={data!r} is not valid here.", 400)
        infos = await run_in_threadpool(self.store.workers, names)
        if data == "info":
            return JSONResponse(infos)
        settings = await run_in_threadpool(self.store.worker_settings, names)
        if data == "settings":
            return JSONResponse(settings)
        by_name = {s["Name"]: s for s in settings}
        return JSONResponse([{"Info": info, "Settings": by_name[info["Name"]]} for info in infos])

    async def put_slaves(self, request: Request) -> Response:
        """``PUT /api/slaves {"Command": "savesettings", "SlaveSettings": {...}}``
        (``Slaves.SaveSlaveSettings``): writes back ``Enable``, ``Pools`` and ``Grps``."""
        body = await _body(request)
        command = body.get("Command")
        if not isinstance(command, str) or not command.strip():
            raise FarmError("Error: the body must contain a Command.", 400)
        if command.strip().lower() != "savesettings":
            raise FarmError(f"Error: {command!r} is not a valid command.", 500)
        settings = body.get("SlaveSettings")
        if not isinstance(settings, dict):
            raise FarmError("Error: savesettings needs the SlaveSettings object.", 400)
        name = settings.get("Name")
        if not isinstance(name, str) or not name.strip():
            raise FarmError("Error: SlaveSettings must contain the worker's Name.", 400)
        enable = settings.get("Enable", True)
        if not isinstance(enable, bool):
            raise FarmError("Error: Enable must be true or false.", 400)
        pools = [p.lower() for p in _names(settings.get("Pools", []), "Pools")]
        groups = [g.lower() for g in _names(settings.get("Grps", []), "Grps")]
        await run_in_threadpool(
            self.store.save_worker_settings, name.strip(), enable, pools, groups
        )
        return _text("Success")

    async def get_slaves_rendering_job(self, request: Request) -> Response:
        """``GET /api/slavesrenderingjob?JobID=``: names of the workers on the job."""
        job_id = _required(request, "JobID")
        await run_in_threadpool(self.store.tasks, job_id)
        return JSONResponse(await run_in_threadpool(self.store.rendering_workers, job_id))

    # -- /api/pools and /api/groups ------------------------------------------------------

    def lists(self, kind: str) -> dict[str, Handler]:
        """Handlers of ``/api/pools`` (kind ``pool``) or ``/api/groups`` (``group``)."""
        field = kind.capitalize()
        store = self.store

        async def get(request: Request) -> Response:
            wanted = _list_param(request, field)
            if wanted is None:
                return JSONResponse(await run_in_threadpool(store.list_names, kind))
            names = [n.lower() for n in wanted]
            return JSONResponse(await run_in_threadpool(store.workers_in, kind, names))

        async def post(request: Request) -> Response:
            names = [n.lower() for n in _names((await _body(request)).get(field), field)]
            await run_in_threadpool(store.add_names, kind, names)
            return _text("Success")

        async def put(request: Request) -> Response:
            body = await _body(request)
            names = [n.lower() for n in _names(body.get(field, []), field)]
            overwrite = _is_true(body.get("OverWrite"))
            if "Slave" in body:
                workers = _names(body["Slave"], "Slave")
                await run_in_threadpool(store.assign, kind, workers, names, overwrite)
            else:
                await run_in_threadpool(store.set_names, kind, names, overwrite)
            return _text("Success")

        async def delete(request: Request) -> Response:
            names = [n.lower() for n in _list_param(request, field) or []]
            if not names:
                raise FarmError(f"Error: the {field} parameter is required.", 400)
            workers = _list_param(request, "Slaves")
            if workers:
                await run_in_threadpool(store.unassign, kind, workers, names)
            else:
                await run_in_threadpool(store.delete_names, kind, names)
            return _text("Success")

        return {"get": get, "post": post, "put": put, "delete": delete}

    # -- /_farm extensions ---------------------------------------------------------------

    async def get_farm_workers(self, _request: Request) -> Response:
        """``GET /_farm/workers``: the worker processes the service runs."""
        return JSONResponse(await run_in_threadpool(self.supervisor.describe))

    async def put_farm_workers(self, request: Request) -> Response:
        """``PUT /_farm/workers {"count": N}``: start or stop worker processes."""
        count = (await _body(request)).get("count")
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_WORKERS:
            raise FarmError(f"Error: count must be an integer from 0 to {MAX_WORKERS}.", 400)
        await run_in_threadpool(self.supervisor.set_count, count)
        return JSONResponse(await run_in_threadpool(self.supervisor.describe))

    def _named_worker(self, request: Request) -> str:
        """The ``{name}`` of ``/_farm/workers/{name}``: a valid name, not a counted worker's."""
        name: str = request.path_params["name"]
        if WORKER_NAME.fullmatch(name) is None:
            raise FarmError(
                f"Error: {name!r} is not a worker name (a letter or digit, then letters,"
                " digits, '.', '_' or '-'; at most 63).",
                400,
            )
        if self.supervisor.is_counted(name):
            raise FarmError(
                f"Error: {name!r} is a counted worker's name; PUT /_farm/workers sets those.",
                400,
            )
        return name

    async def _one_named(self, name: str) -> Response:
        found = await run_in_threadpool(self.supervisor.describe_named, [name])
        if not found:
            raise FarmError(f"Error: no named worker {name!r} runs.", 404)
        return JSONResponse(found[0])

    async def get_named_worker(self, request: Request) -> Response:
        """``GET /_farm/workers/{name}``: the named worker, 404 when it does not run."""
        return await self._one_named(self._named_worker(request))

    async def put_named_worker(self, request: Request) -> Response:
        """``PUT /_farm/workers/{name} {"pools": [...], "standby": false}``: start the named
        worker (enabled, with these pools; a standby one serves only them); one already
        running is left as it is."""
        name = self._named_worker(request)
        raw = await request.body()
        body = await _body(request) if raw.strip() else {}
        unknown = set(body) - {"pools", "standby"}
        if unknown:
            raise FarmError(f"Error: unknown fields {sorted(unknown)}; only pools, standby.", 400)
        pools = None
        if "pools" in body:
            if not isinstance(body["pools"], list):
                raise FarmError("Error: pools must be a list of pool names.", 400)
            pools = [p.lower() for p in _names(body["pools"], "pools")]
        standby = body.get("standby", False)
        if not isinstance(standby, bool) or (standby and not pools):
            raise FarmError(
                "Error: standby must be true or false; a standby worker needs pools.", 400
            )
        await run_in_threadpool(self.supervisor.start_named, name, pools, standby)
        return await self._one_named(name)

    async def delete_named_worker(self, request: Request) -> Response:
        """``DELETE /_farm/workers/{name}``: stop the named worker (its task is requeued);
        404 when it does not run."""
        name = self._named_worker(request)
        if not await run_in_threadpool(self.supervisor.stop_named, name):
            raise FarmError(f"Error: no named worker {name!r} runs.", 404)
        return _text("Success")

    async def get_faults(self, _request: Request) -> Response:
        """``GET /_farm/faults``: the injected failure rules."""
        return JSONResponse(await run_in_threadpool(self.store.faults))

    async def post_faults(self, request: Request) -> Response:
        """``POST /_farm/faults``: fail matching frames with a message."""
        body = await _body(request)
        match, frames, times = body.get("match"), body.get("frames"), body.get("times")
        message = body.get("message", "Error: injected render failure")
        if not isinstance(match, str) or not match:
            raise FarmError("Error: match must be a non-empty string.", 400)
        if frames is not None and not (
            isinstance(frames, list) and all(isinstance(f, int) for f in frames)
        ):
            raise FarmError("Error: frames must be a list of integers or null.", 400)
        if times is not None and (not isinstance(times, int) or times < 1):
            raise FarmError("Error: times must be a positive integer or null.", 400)
        if not isinstance(message, str):
            raise FarmError("Error: message must be a string.", 400)
        fault_id = await run_in_threadpool(self.store.add_fault, match, frames, times, message)
        return JSONResponse({"id": fault_id}, status_code=201)

    async def delete_faults(self, _request: Request) -> Response:
        """``DELETE /_farm/faults``: remove every rule."""
        await run_in_threadpool(self.store.clear_faults)
        return _text("Success")


def _report_types(request: Request) -> tuple[int, ...]:
    data = request.query_params.get("Data", "all").strip().lower()
    if data not in REPORT_DATA:
        raise FarmError(f"Error: Data={data!r} is not valid here.", 400)
    return REPORT_DATA[data]


async def _ping(_request: Request) -> Response:
    return _text(f"Deadline Web Service {VERSION} (local farm stand-in)")


def create_app(config: FarmConfig) -> Starlette:
    """The ASGI app; its lifespan starts and stops the workers."""
    farm = FarmApp(config)
    r = farm.resource

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(farm.supervisor.start)
        try:
            yield
        finally:
            await run_in_threadpool(farm.supervisor.shutdown)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    routes = [
        Route("/", _ping, methods=["GET"]),
        Route(
            "/api/jobs",
            r(get=farm.get_jobs, post=farm.post_jobs, put=farm.put_jobs, delete=farm.delete_jobs),
            methods=methods,
        ),
        Route("/api/tasks", r(get=farm.get_tasks, put=farm.put_tasks), methods=methods),
        Route("/api/jobreports", r(get=farm.get_job_reports), methods=methods),
        Route("/api/taskreports", r(get=farm.get_task_reports), methods=methods),
        Route("/api/slaves", r(get=farm.get_slaves, put=farm.put_slaves), methods=methods),
        Route("/api/slavesrenderingjob", r(get=farm.get_slaves_rendering_job), methods=methods),
        *(Route(f"/api/{kind}s", r(**farm.lists(kind)), methods=methods) for kind in LISTS),
        Route(
            "/_farm/workers",
            r(get=farm.get_farm_workers, put=farm.put_farm_workers),
            methods=methods,
        ),
        Route(
            "/_farm/workers/{name}",
            r(
                get=farm.get_named_worker,
                put=farm.put_named_worker,
                delete=farm.delete_named_worker,
            ),
            methods=methods,
        ),
        Route(
            "/_farm/faults",
            r(get=farm.get_faults, post=farm.post_faults, delete=farm.delete_faults),
            methods=methods,
        ),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
