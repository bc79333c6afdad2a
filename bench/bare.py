"""The baseline server: a bare FastAPI endpoint answering a fixed JSON body.

``python -m bench.bare PORT BODY_FILE [WORKERS]`` serves ``GET /v1/jobs/{job_id}`` (the same
route shape as the gateway's) with the bytes of ``BODY_FILE``, and ``GET /healthz``. Same
uvicorn set-up as the gateway: uvloop, httptools, no access log; with WORKERS > 1 the same
process layout too: that many processes, each binding the port with SO_REUSEPORT.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import uvicorn
import uvloop
from fastapi import FastAPI
from fastapi.responses import Response


def create_app(body: bytes) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str) -> Response:
        return Response(content=body, status_code=200, media_type="application/json")

    return app


def serve(port: int, body: bytes, reuse_port: bool) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    config = uvicorn.Config(
        create_app(body),
        loop="none",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
    uvloop.run(uvicorn.Server(config).serve(sockets=[sock]))


def main() -> None:
    port = int(sys.argv[1])
    body_file = sys.argv[2]
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    if workers <= 1 or os.environ.get("BARE_WORKER"):
        serve(port, Path(body_file).read_bytes(), reuse_port=bool(os.environ.get("BARE_WORKER")))
        return
    env = {**os.environ, "BARE_WORKER": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.bare", str(port), body_file], env=env)
        for _ in range(workers)
    ]

    def stop(signum: int, frame: object) -> None:
        for p in procs:
            p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [p.wait() for p in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
