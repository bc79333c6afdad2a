"""``python -m bench``: performance figures of the render-farm backend, see :mod:`bench`."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvloop

from bench.api_bench import (
    ApiOptions,
    GatewayGet,
    Stack,
    _first_job,
    measure_bare_get,
    measure_gateway_get,
    run_memory,
    run_post_benchmark,
)
from bench.cost_bench import CostBenchOptions, run_estimates
from bench.costlag_bench import CostLagOptions, run_cost_lag
from bench.cpu import background_load
from bench.http import LoadResult
from bench.infra import REPO_ROOT, Infra, Servers
from bench.notifier_bench import NotifierBenchOptions, run_notifier
from bench.projection_lag import LagOptions, run_projection_lag
from bench.rebuild import RebuildOptions, run_rebuild
from bench.render_bench import RenderOptions, run_poll_cost, run_render_overhead
from bench.report import Figure, table, write_json
from bench.scaler_bench import measure_scaler_week
from bench.scene_check import scene_check_figures
from bench.store_bench import StoreOptions, run_appends, run_relay_lag
from bench.testrender_bench import TestRenderBenchOptions, run_test_render_overhead
from bench.testrender_sim import measure_testrender_sim
from bench.upload_bench import UploadBenchOptions, run_uploads
from bench.wallet_bench import WalletBenchOptions, run_wallet
from libs.ids import new_id

SECTIONS = {
    "1": "GET /v1/jobs/{id}: gateway vs bare FastAPI",
    "2": "POST /v1/jobs end to end, read-your-writes",
    "3": "event store appends vs plain INSERT",
    "4": "relay lag (append -> JetStream -> subscriber)",
    "5": "projection rebuild from zero",
    "6": "render path overhead: POST -> farm job, last task -> job completed",
    "7": "deadline-bridge polling cost with 1,000 active farm jobs",
    "8": "live projection lag (append -> jobs read model row)",
    "9": "gateway memory: RSS after 1 minute of GET load vs after --memory-minutes",
    "10": "uploads: presigned parts vs direct to the same S3, gateway CPU, staging a scene",
    "11": "wallet holds/s over NATS: one contended wallet vs 1,000 wallets, ledger exact",
    "12": "estimate latency: POST /v1/cost/estimate through the gateway and billing",
    "13": "live cost lag: farm task completed -> the job's cost so far",
    "14": "test render at 200 GB: simulated time-to-ready",
    "15": "test render overhead: POST test-render -> ready, minus the render, warm worker",
    "16": "scene check time per 1,000 assets (and repathing), Blender-built scene",
    "17": "scaler over a simulated week: test-render SLA, deadlines, fleet cost vs a bound",
    "18": "notifier: event -> webhook latency at 500 events/s, SSE fan-out to 1,000 clients,"
    " CPU per 1,000 notifications",
}

#: Sections that need no servers: with only these selected, none are started.
SERVERLESS = {"14", "16", "17"}

#: ``--quick``: a subset with shorter runs, for use while developing (under two minutes);
#: options given on the command line win.
QUICK = {
    "only": "3,4,5,8,10,11,13,14,15,17",
    "append_seconds": 1.5,
    "relay_seconds": 2.0,
    "rebuild_events": 100_000,
    "rebuild_batch_sizes": "",
    "lag_seconds": 2.0,
    "get_duration": 3.0,
    "get_warmup": 1.0,
    "post_duration": 4.0,
    "render_jobs": 3,
    "poll_jobs": 200,
    "upload_mib": 256,
    "upload_rounds": 1,
    "wallet_seconds": 3.0,
    "costlag_jobs": 2,
    "costlag_frames": 10,
    "notifier_seconds": 5.0,
    "sse_seconds": 5.0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--only", default=",".join(SECTIONS), help="sections to run, e.g. 1,3")
    p.add_argument(
        "--quick",
        action="store_true",
        help="a subset (sections 3,4,5,8,10,11,13,14,15,17) with shorter runs, about two minutes",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / ".run" / "bench.json")
    p.add_argument("--get-duration", type=float, default=8.0)
    p.add_argument("--get-warmup", type=float, default=2.0)
    p.add_argument("--get-connections", type=int, default=50)
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="gateway worker processes, and bare FastAPI processes for its baseline",
    )
    p.add_argument(
        "--memory-minutes",
        type=float,
        default=10.0,
        help="section 9: minutes of GET load (RSS after 1 min vs at the end)",
    )
    p.add_argument("--post-duration", type=float, default=10.0)
    p.add_argument("--post-clients", type=int, default=32)
    p.add_argument("--post-users", type=int, default=2000)
    p.add_argument("--append-seconds", type=float, default=4.0)
    p.add_argument("--relay-seconds", type=float, default=5.0)
    p.add_argument("--relay-rate", type=float, default=2000.0)
    p.add_argument("--rebuild-events", type=int, default=1_000_000)
    p.add_argument("--rebuild-cohort", type=int, default=100, help="the easy layout's cohort")
    p.add_argument(
        "--rebuild-batch-sizes",
        default="5000",
        help="comma-separated batch sizes of the incremental (live projector) comparison",
    )
    p.add_argument(
        "--rebuild-max-seconds",
        type=float,
        default=30.0,
        help="time bound of each incremental catch-up (0: none); a partial run reports what it did",
    )
    p.add_argument("--lag-seconds", type=float, default=5.0)
    p.add_argument("--lag-rate", type=float, default=2000.0)
    p.add_argument("--render-jobs", type=int, default=10)
    p.add_argument("--stage-mib", type=int, default=64, help="size of the scene staged in 6")
    p.add_argument("--poll-jobs", type=int, default=1000)
    p.add_argument(
        "--upload-mib",
        type=int,
        default=2048,
        help="section 10: size of the sparse scene file (MiniStack holds ~3x that in RAM)",
    )
    p.add_argument("--upload-rounds", type=int, default=2, help="section 10: rounds each way")
    p.add_argument("--upload-parallel", type=int, default=4, help="section 10: parts at once")
    p.add_argument("--wallet-seconds", type=float, default=10.0, help="section 11: each run")
    p.add_argument("--wallet-clients", type=int, default=50, help="section 11: clients at once")
    p.add_argument("--wallet-wallets", type=int, default=1000, help="section 11: wallets of (b)")
    p.add_argument(
        "--estimate-clients", type=int, default=20, help="section 12: concurrent clients"
    )
    p.add_argument("--estimate-duration", type=float, default=10.0, help="section 12: seconds")
    p.add_argument("--costlag-jobs", type=int, default=5, help="section 13: jobs at once")
    p.add_argument("--costlag-frames", type=int, default=20, help="section 13: frames a job")
    p.add_argument(
        "--costlag-frame-seconds", type=float, default=0.2, help="section 13: the farm's frames"
    )
    p.add_argument("--notifier-rate", type=float, default=500.0, help="section 18: events/s")
    p.add_argument(
        "--notifier-seconds", type=float, default=20.0, help="section 18: seconds of webhooks"
    )
    p.add_argument(
        "--notifier-endpoints", type=int, default=100, help="section 18: users with an endpoint"
    )
    p.add_argument("--sse-clients", type=int, default=1000, help="section 18: SSE connections")
    p.add_argument("--sse-rate", type=float, default=20.0, help="section 18: SSE events/s")
    p.add_argument("--sse-seconds", type=float, default=15.0, help="section 18: seconds of SSE")
    p.add_argument("--keep-dir", action="store_true", help="keep the temp dir (logs) at the end")
    args = p.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    return args


def selected(args: argparse.Namespace) -> set[str]:
    return {s.strip() for s in args.only.split(",") if s.strip()}


def _failed(section: str, error: BaseException) -> Figure:
    return Figure(
        section, "FAILED", float("nan"), "", target=0.0, note=f"{type(error).__name__}: {error}"
    )


async def run_api(
    infra: Infra, servers: Servers, api: ApiOptions, only: set[str], figures: list[Figure]
) -> None:
    """Gateway GET, then POST, on one stack; then the bare baseline with the stack stopped."""
    stack = Stack(infra, servers, workers=api.workers)
    print("\n   starting the job service and the gateway ...", flush=True)
    gw: GatewayGet | None = None
    t0 = time.perf_counter()
    try:
        await stack.start()
        print(f"   ready in {time.perf_counter() - t0:.1f} s", flush=True)
        if "1" in only:
            print(f"\n== 1. {SECTIONS['1']}", flush=True)
            try:
                gw = await measure_gateway_get(stack, api)
            except Exception as e:
                traceback.print_exc()
                figures.append(_failed("1", e))
        if "2" in only:
            print(f"\n== 2. {SECTIONS['2']}", flush=True)
            try:
                post = await run_post_benchmark(stack, api)
            except Exception as e:
                traceback.print_exc()
                post = [_failed("2", e)]
        else:
            post = []
        if "9" in only:
            print(f"\n== 9. {SECTIONS['9']}", flush=True)
            try:
                if gw is None:
                    token = stack.token(new_id("usr"))
                    job_id, _, envelope = await _first_job(stack, token)
                    gw = GatewayGet(
                        LoadResult(0, 0.0, [], Counter(), 0, 0.0), {}, envelope, job_id, token
                    )
                    memory = await run_memory(stack, gw, api)
                    gw = None
                else:
                    memory = await run_memory(stack, gw, api)
                post.extend(memory)
            except Exception as e:
                traceback.print_exc()
                post.append(_failed("9", e))
    except Exception as e:
        traceback.print_exc()
        figures.append(_failed("1/2", e))
        return
    finally:
        stack.stop()
    if gw is not None:
        print("\n== 1. (baseline) bare FastAPI, gateway and job service stopped", flush=True)
        try:
            figures.extend(await measure_bare_get(infra, gw, api, infra.root))
        except Exception as e:
            traceback.print_exc()
            figures.append(_failed("1", e))
    figures.extend(post)


async def section(
    key: str, only: set[str], figures: list[Figure], fn: Callable[[], Awaitable[list[Figure]]]
) -> None:
    """Run one section if selected; a section that fails is a FAILED figure, not the end."""
    if key not in only:
        return
    print(f"\n== {key}. {SECTIONS[key]}", flush=True)
    t0 = time.perf_counter()
    try:
        figures.extend(await fn())
    except Exception as e:
        traceback.print_exc()
        figures.append(_failed(f"{key}", e))
    print(f"   ({time.perf_counter() - t0:.0f} s)", flush=True)


async def run(args: argparse.Namespace, infra: Infra, figures: list[Figure]) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    only = selected(args)
    try:
        if only - SERVERLESS:
            await run_with_servers(args, infra, only, figures)

        async def simulation() -> list[Figure]:
            return measure_testrender_sim(args.quick)

        await section("14", only, figures, simulation)

        async def scene_check() -> list[Figure]:
            with tempfile.TemporaryDirectory() as tmp:
                got = await scene_check_figures(Path(tmp), rounds=3 if args.quick else 5)
            return [
                Figure(
                    "16",
                    "scene check per 1,000 assets (median)",
                    got["check_seconds_per_1000_assets"],
                    unit="s",
                    note=f"{got['assets']} image textures, BAT 1.23, {got['rounds']} rounds",
                ),
                Figure(
                    "16",
                    "repath per 1,000 assets",
                    got["repath_seconds_per_1000_assets"],
                    unit="s",
                    note=f"{got['repath_files_linked']} files hard-linked",
                ),
            ]

        await section("16", only, figures, scene_check)
        await section("17", only, figures, lambda: measure_scaler_week(args.quick))
    finally:
        await infra.drop_databases()


async def run_with_servers(
    args: argparse.Namespace, infra: Infra, only: set[str], figures: list[Figure]
) -> None:
    """The sections that need servers, on the servers ``main`` started."""
    servers = infra.servers
    assert servers is not None
    api = ApiOptions(
        get_connections=args.get_connections,
        get_warmup=args.get_warmup,
        get_duration=args.get_duration,
        post_clients=args.post_clients,
        post_duration=args.post_duration,
        post_users=args.post_users,
        workers=args.workers,
        memory_minutes=args.memory_minutes,
    )
    store = StoreOptions(
        append_seconds=args.append_seconds,
        relay_seconds=args.relay_seconds,
        relay_rate=args.relay_rate,
    )
    rebuild = RebuildOptions(
        events=args.rebuild_events,
        cohort=args.rebuild_cohort,
        batch_sizes=[int(x) for x in args.rebuild_batch_sizes.split(",") if x.strip()],
        max_seconds=args.rebuild_max_seconds,
    )

    if only & {"1", "2", "9"}:
        await run_api(infra, servers, api, only, figures)
    await section("3", only, figures, lambda: run_appends(infra, store))
    await section("4", only, figures, lambda: run_relay_lag(infra, servers, store))
    await section("5", only, figures, lambda: run_rebuild(infra, rebuild))
    lag = LagOptions(rate=args.lag_rate, seconds=args.lag_seconds)
    await section("8", only, figures, lambda: run_projection_lag(infra, lag))
    render = RenderOptions(
        jobs=args.render_jobs, stage_mib=args.stage_mib, poll_jobs=args.poll_jobs
    )
    await section("6", only, figures, lambda: run_render_overhead(infra, servers, render))
    await section("7", only, figures, lambda: run_poll_cost(infra, servers, render))
    uploads = UploadBenchOptions(
        size_bytes=args.upload_mib * 1024 * 1024,
        parallel=args.upload_parallel,
        rounds=args.upload_rounds,
    )
    await section("10", only, figures, lambda: run_uploads(infra, servers, uploads))
    wallet = WalletBenchOptions(
        seconds=args.wallet_seconds, clients=args.wallet_clients, wallets=args.wallet_wallets
    )
    await section("11", only, figures, lambda: run_wallet(infra, servers, wallet))
    estimates = CostBenchOptions(
        clients=args.estimate_clients, duration=args.estimate_duration, workers=args.workers
    )
    await section("12", only, figures, lambda: run_estimates(infra, servers, estimates))
    costlag = CostLagOptions(
        jobs=args.costlag_jobs,
        frames=args.costlag_frames,
        frame_seconds=args.costlag_frame_seconds,
    )
    await section("13", only, figures, lambda: run_cost_lag(infra, servers, costlag))
    test_render = TestRenderBenchOptions(jobs=3 if args.quick else 8)
    await section(
        "15", only, figures, lambda: run_test_render_overhead(infra, servers, test_render)
    )
    notifier = NotifierBenchOptions(
        rate=args.notifier_rate,
        seconds=args.notifier_seconds,
        endpoints=args.notifier_endpoints,
        sse_clients=args.sse_clients,
        sse_rate=args.sse_rate,
        sse_seconds=args.sse_seconds,
        workers=args.workers,
    )
    await section("18", only, figures, lambda: run_notifier(infra, servers, notifier))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="rf-bench-"))
    infra = Infra(root)
    figures: list[Figure] = []
    code = 0
    background = 0.0
    try:
        background = background_load()
        print(
            f"bench: other processes are using {background * 100:.0f}% of a core before the start"
            + (
                "  (shared machine: figures may be lower than on an idle one)"
                if background > 0.1
                else ""
            ),
            flush=True,
        )
        t0 = time.perf_counter()
        if selected(args) - SERVERLESS:
            servers = infra.start_servers()
            own = ", ".join(servers.own) or "none (RF_TEST_*_URL)"
        else:
            own = "none (the sections selected need none)"
        print(
            f"bench: {os.cpu_count()} CPUs, Python {platform.python_version()};"
            f" servers started here: {own} ({time.perf_counter() - t0:.1f} s); dir {root}",
            flush=True,
        )
        uvloop.run(run(args, infra, figures))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("\nbench: interrupted; stopping everything", file=sys.stderr)
        code = 130
    finally:
        infra.close_processes()
        if not args.keep_dir:
            shutil.rmtree(root, ignore_errors=True)
    elapsed = time.perf_counter() - started
    if figures:
        print("\n== summary\n")
        print(table(figures))
        meta: dict[str, Any] = {
            "finished_at": datetime.now(UTC).isoformat(),
            "seconds": round(elapsed, 1),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "args": {k: str(v) for k, v in vars(args).items()},
            "interrupted": code != 0,
            "background_cores_at_start": round(background, 3),
        }
        write_json(args.out, figures, meta)
        print(f"\nwritten {args.out}")
    print(f"bench: {elapsed:.0f} s in all")
    return code


if __name__ == "__main__":
    sys.exit(main())
