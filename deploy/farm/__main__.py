"""Command line: ``python -m deploy.farm serve ...`` (web service) and ``... worker ...``."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from deploy.farm.store import DEFAULT_JOB_ERROR_LIMIT, DEFAULT_TASK_ERROR_LIMIT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.farm", description="The local Deadline-compatible farm."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the web service and its worker processes")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8081, help="Deadline 10's default: 8081")
    serve.add_argument("--data-dir", type=Path, required=True, help="holds farm.db and logs/")
    serve.add_argument("--workers", type=int, default=2, help="worker processes to start")
    serve.add_argument(
        "--outputs-root",
        type=Path,
        default=None,
        help="base of relative output/scene paths (default: DATA_DIR/outputs)",
    )
    serve.add_argument("--frame-seconds", type=float, default=0.05, help="built-in render time")
    serve.add_argument(
        "--blender", default="auto", help="'auto' (blender on PATH), 'builtin', or a path"
    )
    serve.add_argument("--poll-interval", type=float, default=0.05, help="worker poll seconds")
    serve.add_argument("--stall-seconds", type=float, default=10.0, help="heartbeat age limit")
    serve.add_argument("--task-error-limit", type=int, default=DEFAULT_TASK_ERROR_LIMIT)
    serve.add_argument("--job-error-limit", type=int, default=DEFAULT_JOB_ERROR_LIMIT)
    serve.add_argument("--worker-prefix", default="farm-w", help="worker names: PREFIX01, ...")
    serve.add_argument(
        "--standby-workers",
        type=int,
        default=0,
        help="the first N workers are standby workers: they serve only --standby-pools",
    )
    serve.add_argument(
        "--standby-pools",
        default="test",
        help="comma-separated pools of the standby workers, in their order (default: test)",
    )
    serve.add_argument(
        "--user", default=os.environ.get("RF_FARM_USER"), help="Basic auth user (RF_FARM_USER)"
    )
    serve.add_argument(
        "--password",
        default=os.environ.get("RF_FARM_PASSWORD"),
        help="Basic auth password (RF_FARM_PASSWORD)",
    )

    worker = sub.add_parser("worker", help="one worker process (started by serve)")
    worker.add_argument("--data-dir", type=Path, required=True)
    worker.add_argument("--name", required=True)
    worker.add_argument("--outputs-root", type=Path, required=True)
    worker.add_argument("--frame-seconds", type=float, default=0.05)
    worker.add_argument("--blender", default="auto")
    worker.add_argument("--poll-interval", type=float, default=0.05)
    worker.add_argument("--parent-pid", type=int, default=None)
    worker.add_argument(
        "--standby-pools", default="", help="a standby worker: the only pools it serves"
    )
    return parser


def pool_names(text: str) -> list[str]:
    """A comma-separated pool list, lower-cased as the farm keeps pool names."""
    return [p.strip().lower() for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> None:
    """Run the sub-command."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data_dir: Path = args.data_dir.resolve()
    if args.command == "worker":
        from deploy.farm.worker import WorkerConfig, run_worker

        run_worker(
            WorkerConfig(
                data_dir=data_dir,
                name=args.name,
                outputs_root=args.outputs_root.resolve(),
                frame_seconds=args.frame_seconds,
                blender=args.blender,
                poll_interval=args.poll_interval,
                parent_pid=args.parent_pid,
                standby_pools=pool_names(args.standby_pools),
            )
        )
        return
    if args.standby_workers < 0 or (args.standby_workers and not pool_names(args.standby_pools)):
        parser.error("--standby-workers must be >= 0 and needs at least one --standby-pools")
    import uvicorn

    from deploy.farm.server import FarmConfig, create_app

    config = FarmConfig(
        data_dir=data_dir,
        outputs_root=(args.outputs_root or data_dir / "outputs").resolve(),
        workers=args.workers,
        frame_seconds=args.frame_seconds,
        blender=args.blender,
        poll_interval=args.poll_interval,
        stall_seconds=args.stall_seconds,
        task_error_limit=args.task_error_limit,
        job_error_limit=args.job_error_limit,
        user=args.user or None,
        password=args.password or None,
        worker_prefix=args.worker_prefix,
        standby_workers=args.standby_workers,
        standby_pools=tuple(pool_names(args.standby_pools)),
    )
    uvicorn.run(create_app(config), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
