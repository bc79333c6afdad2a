"""Named workers (``/_farm/workers/{name}``): one worker process per machine of the scaler's
local provider, started and stopped one by one, apart from the counted workers."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.farm.conftest import Farm, wait_for
from tests.farm.test_deadline_protocol import blender_job, get_tasks, reports, submit, wait_stat


def named(farm: Farm, name: str) -> dict[str, Any] | None:
    """The named worker's description, or None when it does not run."""
    response = farm.client.get(f"/_farm/workers/{name}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    worker: dict[str, Any] = response.json()
    return worker


def start(farm: Farm, name: str, **body: Any) -> dict[str, Any]:
    response = farm.client.put(f"/_farm/workers/{name}", json=body)
    assert response.status_code == 200, response.text
    worker: dict[str, Any] = response.json()
    return worker


def stat(farm: Farm, name: str) -> int:
    """The worker's Deadline Stat; 0 before it first registers."""
    infos = farm.client.get("/api/slaves", params={"Name": name, "Data": "info"}).json()
    value: int = infos[0]["Stat"] if infos else 0
    return value


def test_start_is_idempotent_and_stop_takes_the_worker_offline(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(workers=0)
    first = start(farm, "vm-a", pools=["Render"])
    assert first["name"] == "vm-a" and first["Pools"] == ["render"] and first["Enable"]
    wait_for(lambda: (w := named(farm, "vm-a")) and w["Stat"] == 2)
    again = start(farm, "vm-a", pools=["other"])
    assert again["pid"] == first["pid"] and again["Pools"] == ["render"]
    listing = farm.client.get("/_farm/workers").json()
    assert listing["count"] == 0 and [w["name"] for w in listing["named"]] == ["vm-a"]
    [settings] = farm.client.get("/api/slaves", params={"Name": "vm-a", "Data": "settings"}).json()
    assert settings["Pools"] == ["render"]

    stopped = farm.client.delete("/_farm/workers/vm-a")
    assert (stopped.status_code, stopped.text) == (200, "Success")
    assert named(farm, "vm-a") is None
    assert stat(farm, "vm-a") == 3
    assert farm.client.delete("/_farm/workers/vm-a").status_code == 404
    assert farm.client.get("/_farm/workers").json()["named"] == []


def test_a_stopped_worker_task_is_requeued_and_finished_by_another(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=0)
    start(farm, "vm-a")
    job_id = submit(farm, blender_job("long", "1-60", tmp_path, ChunkSize=60))
    wait_for(lambda: get_tasks(farm, job_id)[0]["Slave"] == "vm-a")
    start(farm, "vm-b")
    assert farm.client.delete("/_farm/workers/vm-a").status_code == 200
    wait_stat(farm, job_id, 3, timeout=30)
    assert [t["Slave"] for t in get_tasks(farm, job_id)] == ["vm-b"]
    [requeue] = reports(farm, job_id, "requeue")
    assert requeue["Slave"] == "vm-a"
    assert len(list(tmp_path.glob("frame_*.png"))) == 60


def test_housekeeping_restarts_a_crashed_named_worker_but_not_a_stopped_one(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(workers=0)
    start(farm, "vm-a")
    crashed = start(farm, "vm-b")
    wait_for(lambda: stat(farm, "vm-a") == 2 and stat(farm, "vm-b") == 2)
    assert farm.client.delete("/_farm/workers/vm-a").status_code == 200
    os.kill(crashed["pid"], signal.SIGKILL)
    # A new vm-b process: housekeeping ran after vm-a was stopped.
    wait_for(lambda: (w := named(farm, "vm-b")) and w["pid"] != crashed["pid"])
    assert named(farm, "vm-a") is None
    assert stat(farm, "vm-a") == 3
    assert [w["name"] for w in farm.client.get("/_farm/workers").json()["named"]] == ["vm-b"]


def test_the_worker_count_leaves_named_workers_alone(make_farm: Callable[..., Farm]) -> None:
    farm = make_farm(workers=1)
    pid = start(farm, "vm-a")["pid"]
    assert farm.client.put("/_farm/workers", json={"count": 0}).json()["count"] == 0
    grown = farm.client.put("/_farm/workers", json={"count": 2}).json()
    assert [w["name"] for w in grown["workers"]] == ["farm-w01", "farm-w02"]
    assert [(w["name"], w["pid"]) for w in grown["named"]] == [("vm-a", pid)]


def test_bad_names_and_bodies_are_4xx(make_farm: Callable[..., Farm]) -> None:
    farm = make_farm(workers=1)
    for name in ("farm-w01", "farm-w07", "-vm", "bad%20name", "x" * 64):
        for method in ("GET", "PUT", "DELETE"):
            response = farm.client.request(method, f"/_farm/workers/{name}")
            assert response.status_code == 400, (name, method, response.text)
    bodies = (
        b"[]",
        b"{",
        b'{"pools": "render"}',
        b'{"pools": [1]}',
        b'{"count": 2}',
        b'{"standby": true}',  # a standby worker serves only its pools: it needs some
        b'{"pools": ["test"], "standby": "yes"}',
    )
    for body in bodies:
        response = farm.client.put("/_farm/workers/vm-a", content=body)
        assert response.status_code == 400, (body, response.text)
        assert response.text.startswith("Error:")
    assert farm.client.get("/_farm/workers/vm-a").status_code == 404
    assert farm.client.delete("/_farm/workers/vm-a").status_code == 404
    assert farm.client.put("/_farm/workers/vm-a").status_code == 200  # no body: no pools
