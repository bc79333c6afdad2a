"""Drives SkyPilot itself through ``SkyPilotProvider``, in the venv that has SkyPilot
(``.venv-sky``; ``tests/scaler/test_skypilot.py`` runs it). It needs no cloud: ``HOME`` is a
scratch folder holding an AWS catalog of our own (``CATALOG``) so that SkyPilot validates
and prices offline, and a local API server is started there on the port of
``SKYPILOT_API_SERVER_LOCAL_PORT``, then stopped. Prints one JSON object of what it saw.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from services.scaler.provider import LaunchRefused, LaunchSpec, VmInfo, VmStatus
from services.scaler.skypilot import SkyPilotProvider, import_sky

#: SkyPilot's AWS catalog columns (``sky/catalog/data_fetchers/fetch_aws.py``), our prices
#: (docs/scaling.md's assumed list prices); c5.large has no spot price.
CATALOG = """\
InstanceType,AcceleratorName,AcceleratorCount,vCPUs,MemoryGiB,GpuInfo,Price,SpotPrice,Region,AvailabilityZone,Arch,LocalDiskType,NVMeSupported,LocalDiskSize
c6i.16xlarge,,,64,128,,2.72,1.09,us-east-1,use1-az1,x86_64,,,
c6i.16xlarge,,,64,128,,2.72,1.15,us-east-1,use1-az2,x86_64,,,
c6i.8xlarge,,,32,64,,1.36,,us-east-1,use1-az1,x86_64,,,
"""
SPEC = LaunchSpec(
    vm_id="vm_01KDRIVER0000000000000000",
    pool="full",
    instance_type="c6i.16xlarge",
    spot=True,
    region="us-east-1",
)


def write_catalog(home: Path) -> None:
    folder = home / ".sky" / "catalogs" / "v8" / "aws"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vms.csv").write_text(CATALOG)


def provider(**changes: Any) -> SkyPilotProvider:
    return SkyPilotProvider(
        infra="aws",
        worker_command="deadlineworker -nogui -name {worker_name}",
        idle_minutes_to_autodown=15,
        prices={("c6i.8xlarge", True): Decimal("0.54")},
        setup="deadlinecommand -version",
        **changes,
    )


def vm(info: VmInfo) -> dict[str, Any]:
    return {
        "vm_id": info.vm_id,
        "status": info.status.value,
        "pool": info.pool,
        "instance_type": info.instance_type,
        "spot": info.spot,
        "price": str(info.hourly_price_usd),
        "request_id": info.request_id,
        "worker_name": info.worker_name,
        "reason": info.reason,
    }


async def until(
    check: Callable[[], Awaitable[Sequence[VmInfo]]],
    done: Callable[[Sequence[VmInfo]], bool],
    timeout: float = 30.0,
) -> list[dict[str, Any]]:
    """Poll ``check`` until ``done``; every distinct answer on the way."""
    seen: list[list[dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    while True:
        answer = await check()
        machines = [vm(m) for m in answer]
        if not seen or seen[-1] != machines:
            seen.append(machines)
        if done(answer) or time.monotonic() > deadline:
            return seen[-1]
        await asyncio.sleep(0.5)


def refused(spec: LaunchSpec) -> str:
    try:
        provider().task(spec)
    except LaunchRefused as e:
        return e.reason
    return "accepted"


async def main() -> dict[str, Any]:
    sky = import_sky()
    write_catalog(Path.home())
    report: dict[str, Any] = {}
    start = time.monotonic()
    p = provider()

    # What the provider builds, validated by SkyPilot (no server needed).
    task = p.task(SPEC)
    config = task.to_yaml_config()
    again = sky.Task.from_yaml_config(copy.deepcopy(config))  # it pops what it reads
    report["task"] = config
    kept = {k: v for k, v in again.to_yaml_config().items() if k != "_user_specified_yaml"}
    report["round_trip"] = kept == config
    resources = next(iter(task.resources))
    report["price_spot"] = str(p.hourly_price(resources, True))
    on_demand = sky.Resources(infra="aws/us-east-1", instance_type="c6i.16xlarge")
    report["price_on_demand"] = str(p.hourly_price(on_demand, False))
    no_spot_price = sky.Resources(infra="aws", instance_type="c6i.8xlarge", use_spot=True)
    report["price_from_table"] = str(p.hourly_price(no_spot_price, True))
    report["refused_type"] = refused(LaunchSpec("vm_1", "full", "nope.large", False))
    report["refused_region"] = refused(LaunchSpec("vm_1", "full", "c6i.16xlarge", False, "mars-1"))
    report["refused_name"] = refused(LaunchSpec("vm_!", "full", "c6i.16xlarge", False))

    # The local API server, a dry run and the provider's calls through it.
    t = time.monotonic()
    try:
        sky.api_start()
        report["api_start_seconds"] = round(time.monotonic() - t, 1)
        info = sky.api_info()
        report["api"] = {"status": info.status.value, "version": info.version}
        report["machines_before"] = [vm(m) for m in await p.machines()]
        try:
            sky.get(sky.launch(task, cluster_name="rf-dryrun", dryrun=True))
            report["dryrun"] = "ok"
        except Exception as e:  # what SkyPilot's optimizer says without a cloud
            report["dryrun"] = type(e).__name__

        launched = await p.launch(SPEC)
        report["launched"] = vm(launched)
        report["launched_again"] = vm(await p.launch(SPEC))
        payloads = sky.api_status([launched.request_id])
        report["request"] = {"name": payloads[0].name, "cluster": payloads[0].cluster_name}
        report["machines_after_launch"] = await until(
            p.machines, lambda ms: all(m.status is not VmStatus.launching for m in ms)
        )
        restarted = provider(launches=[launched])
        report["machines_restarted"] = [vm(m) for m in await restarted.machines()]
        report["machines_fresh"] = [vm(m) for m in await provider().machines()]
        await p.stop(SPEC.vm_id)
        # Stopping until SkyPilot's down request ends (it may end at once: no cluster).
        down = sky.api_status([p._stopping[SPEC.vm_id]])
        report["down_request"] = {"name": down[0].name, "cluster": down[0].cluster_name}
        report["machines_stopping"] = [vm(m) for m in await p.machines()]
        report["machines_stopped"] = await until(p.machines, lambda ms: not ms)
        await p.stop("vm_unknown")
        report["machines_unknown_stopped"] = [vm(m) for m in await p.machines()]
    finally:
        sky.api_stop()
    report["seconds"] = round(time.monotonic() - start, 1)
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
