"""The baseline server: a bare FastAPI endpoint answering a fixed JSON body.

``python -m bench.bare PORT BODY_FILE`` serves ``GET /v1/jobs/{job_id}`` (the same route shape
as the gateway's) with the bytes of ``BODY_FILE``, and ``GET /healthz``. Same uvicorn set-up
as the gateway: uvloop, httptools, no access log, one worker.
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
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


def main() -> None:
    port = int(sys.argv[1])
    body = Path(sys.argv[2]).read_bytes()
    uvicorn.run(
        create_app(body),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        workers=1,
    )


if __name__ == "__main__":
    main()
