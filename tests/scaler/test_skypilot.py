"""SkyPilot itself, as far as it runs without a cloud: ``skypilot_driver`` runs in the venv
that has SkyPilot (``.venv-sky``, built by ``make venv``; it conflicts with our uvicorn pin)
against a local API server in a scratch ``HOME``, and reports what SkyPilot answered."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from decimal import Decimal
from typing import Any

import httpx
import pytest

from services.scaler.providers import provider_of
from services.scaler.settings import InstanceSetting, PoolSetting, ScalerSettings
from services.scaler.skypilot import SkyPilotUnavailable
from tests.scaler.sky_home import ROOT, sky_env, sky_python

VM = "vm_01KDRIVER0000000000000000"
CLUSTER = f"rf-{VM}"


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The driver's report (about 35 s: SkyPilot's import and its API server's start)."""
    python = sky_python()
    if not python.is_file():
        pytest.fail("no SkyPilot: run `make venv` (it builds .venv-sky) or set RF_SKYPILOT_PYTHON")
    env = {**sky_env(tmp_path_factory.mktemp("sky-home")), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [str(python), "-m", "tests.scaler.skypilot_driver"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_the_task_passes_skypilots_validation_and_yaml_round_trip(report: dict[str, Any]) -> None:
    assert report["task"] == {
        "name": "render-worker",
        "resources": {
            "infra": "aws/us-east-1",
            "instance_type": "c6i.16xlarge",
            "memory": "128.0",  # SkyPilot's catalog filled it in
            "use_spot": True,
            "labels": {"renderfarm-pool": "full"},
        },
        "num_nodes": 1,
        "setup": "deadlinecommand -version",
        "run": f"deadlineworker -nogui -name {CLUSTER}",
        "envs": {"RF_VM_ID": VM, "RF_POOL": "full", "RF_WORKER_NAME": CLUSTER},
        "file_mounts": {},
        "volumes": {},
    }
    assert report["round_trip"] is True


def test_prices_come_from_skypilots_catalog_else_the_table(report: dict[str, Any]) -> None:
    assert report["price_spot"] == "1.09"  # the cheaper of the two zones
    assert report["price_on_demand"] == "2.72"
    assert report["price_from_table"] == "0.54"  # the catalog has no spot price for it


def test_what_skypilot_rejects_is_a_refused_launch(report: dict[str, Any]) -> None:
    assert report["refused_type"] == "Invalid instance type 'nope.large' for cloud AWS."
    assert report["refused_region"].startswith("Invalid region 'mars-1'")
    assert "is no SkyPilot cluster name" in report["refused_name"]


def test_a_dry_run_needs_cloud_access(report: dict[str, Any]) -> None:
    assert report["api"] == {"status": "healthy", "version": "0.14.1"}
    assert report["dryrun"] == "NoCloudAccessError"


def test_a_launch_returns_its_request_at_once_and_fails_later_without_a_cloud(
    report: dict[str, Any],
) -> None:
    assert report["machines_before"] == []
    launched = report["launched"]
    assert launched["status"] == "launching"
    assert launched["request_id"]
    assert launched["worker_name"] == CLUSTER
    assert report["launched_again"] == launched  # idempotent by vm id: no second request
    assert report["request"] == {"name": "sky.launch", "cluster": CLUSTER}
    [failed] = report["machines_after_launch"]
    assert failed["status"] == "failed"
    assert failed["reason"] == "NoCloudAccessError: Cloud access is not set up. Run: sky check"
    assert failed["request_id"] == launched["request_id"]


def test_a_restarted_provider_finds_the_launch_by_its_request_id(report: dict[str, Any]) -> None:
    assert report["machines_restarted"] == report["machines_after_launch"]
    assert report["machines_fresh"] == []  # not told of the launch, no cluster: nothing


def test_stop_tears_down_through_skypilot(report: dict[str, Any]) -> None:
    assert report["down_request"] == {"name": "sky.down", "cluster": CLUSTER}
    # Listed as stopping while that request runs; it may have ended already (no cluster).
    assert [m["status"] for m in report["machines_stopping"]] in (["stopping"], [])
    assert report["machines_stopped"] == []
    assert report["machines_unknown_stopped"] == []


async def test_settings_build_the_skypilot_provider_only_where_skypilot_is() -> None:
    if importlib.util.find_spec("sky") is not None:
        pytest.skip("SkyPilot is installed in this venv")
    instance = InstanceSetting(
        name="c6i.16xlarge",
        hourly_price_usd=Decimal("2.72"),
        spot_hourly_price_usd=Decimal("1.09"),
    )
    settings = ScalerSettings(
        provider="skypilot", pools=(PoolSetting(name="full", instance_types=(instance,)),)
    )
    assert settings.prices() == {
        ("c6i.16xlarge", False): Decimal("2.72"),
        ("c6i.16xlarge", True): Decimal("1.09"),
    }
    async with httpx.AsyncClient() as client:
        with pytest.raises(SkyPilotUnavailable, match=r"skypilot==0\.14\.1"):
            provider_of(settings, client)
        local = provider_of(settings.model_copy(update={"provider": "local"}), client)
        assert local.name == "local"
