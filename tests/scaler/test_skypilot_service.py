"""The scaler service itself on SkyPilot: ``python -m services.scaler`` started from the venv
that has SkyPilot (``.venv-sky``, as ``make up`` starts it with ``RF_SCALER_PROVIDER=skypilot``)
on the real servers and a local farm with a queued job. Its launch reaches SkyPilot's local
API server (a real request id in the machine's events) and, without a cloud, the machine
fails with SkyPilot's ``NoCloudAccessError``, recorded as the machine's failure reason, and
backs off its placement."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from deploy.local.servers import free_port
from libs.eventstore.store import create_pool
from tests.conftest import Env
from tests.farm.conftest import Farm
from tests.farm.test_deadline_protocol import blender_job, submit
from tests.processes import service
from tests.scaler.sky_home import sky_env, sky_python
from tests.waiting import until

POOLS = [
    {
        "name": "render",
        "instance_types": [
            {"name": "c6i.16xlarge", "hourly_price_usd": "2.72", "region": "us-east-1"}
        ],
        "max_workers": 1,
        "boot_seconds": 3.0,
        "drain_target_seconds": 1.0,
        "task_seconds": 1.0,
    }
]
NO_CLOUD = "NoCloudAccessError: Cloud access is not set up. Run: sky check"


@pytest.fixture
def python() -> Path:
    python = sky_python()
    if not python.is_file():
        pytest.fail(f"no {python}: run `make venv` (it builds .venv-sky)")
    return python


@pytest.fixture
def sky(python: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """SkyPilot's local API server in a scratch ``HOME``: the environment to reach it."""
    env = sky_env(tmp_path / "sky-home")
    skypilot(python, env, "sky.api_start()")
    yield env
    skypilot(python, env, "sky.api_stop()")


def skypilot(python: Path, env: dict[str, str], code: str) -> Any:
    """Run ``code`` with SkyPilot's SDK (``sky``) in its venv; what it printed, as JSON."""
    script = f"import json, sky\nresult = {code}\nprint(json.dumps(result, default=str))"
    done = subprocess.run(
        [str(python), "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    instance = Farm(tmp_path / "farm", workers=0).start()
    yield instance
    instance.stop()
    instance.client.close()


@pytest.fixture
async def db(env: Env) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(env["RF_DATABASE_URL"], min_size=1, max_size=2)
    yield pool
    await pool.close()


async def test_the_scaler_process_launches_through_skypilot_and_records_its_failure(
    python: Path,
    sky: dict[str, str],
    env: Env,
    farm: Farm,
    db: asyncpg.Pool,
    tmp_path: Path,
) -> None:
    submit(farm, blender_job("queued", "1-4", tmp_path / "out", Pool="render"))
    scaler_env = {
        **env,
        **sky,
        "RF_HEALTH_PORT": str(free_port()),
        "RF_SCALER_PROVIDER": "skypilot",
        "RF_SCALER_FARM_URL": farm.url,
        "RF_SCALER_TICK_SECONDS": "0.5",
        "RF_SCALER_POOLS": json.dumps(POOLS),
    }
    scaler = service("scaler", scaler_env, tmp_path, python=str(python))
    scaler.start()
    try:
        await scaler.ready(timeout=90)  # SkyPilot's import takes seconds

        async def failed() -> asyncpg.Record | None:
            row: asyncpg.Record | None = await db.fetchrow(
                "SELECT * FROM scaler.fleet_vms ORDER BY requested_at LIMIT 1"
            )
            return row if row is not None and row["phase"] == "failed" else None

        vm = await until(failed, "the first machine failed", timeout=120)
        assert vm["provider"] == "skypilot" and vm["instance_type"] == "c6i.16xlarge"
        assert vm["region"] == "us-east-1" and vm["request_id"]
        assert vm["reason"] == NO_CLOUD
        rows = await db.fetch(
            "SELECT type, data FROM scaler.events WHERE stream_id = $1 ORDER BY version",
            f"vm-{vm['vm_id']}",
        )
        assert [r["type"] for r in rows] == [
            "fleet.VmRequested",
            "fleet.VmLaunchAccepted",
            "fleet.VmLaunchFailed",
        ]
        requested, accepted, launch_failed = (r["data"] for r in rows)
        assert requested["reason"] == "backlog" and requested["provider"] == "skypilot"
        assert accepted["request_id"] == vm["request_id"]
        assert launch_failed["reason"] == NO_CLOUD
        # The request id is SkyPilot's: its API server ran that launch, of our cluster.
        [request] = skypilot(
            python,
            sky,
            f"[(p.name, p.cluster_name, p.status) for p in sky.api_status([{vm['request_id']!r}])]",
        )
        assert request == ["sky.launch", f"rf-{vm['vm_id']}", "FAILED"]

        # A failure after the launch was accepted backs off its placement, as a refusal does:
        # the next round holds instead of launching another machine into the same failure.
        async def held() -> dict[str, Any] | None:
            row = await db.fetchrow(
                "SELECT data FROM scaler.events WHERE stream_id = 'scaling-render'"
                " ORDER BY version DESC LIMIT 1"
            )
            data: dict[str, Any] | None = row["data"] if row else None
            return data if data and {"count": 1, "reason": "backed_off"} in data["held"] else None

        decision = await until(held, "the next launch held: backed off", timeout=30)
        assert decision["inputs"]["backed_off"] == "c6i.16xlarge@us-east-1"
        assert await db.fetchval("SELECT count(*) FROM scaler.fleet_vms") == 1
    finally:
        scaler.stop()
