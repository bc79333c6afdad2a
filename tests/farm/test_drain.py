"""Draining the Deadline way: a worker disabled in its settings (``Slaves.SaveSlaveSettings``,
``PUT /api/slaves {"Command": "savesettings"}``) finishes its task and takes no other."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.farm.conftest import Farm, wait_for
from tests.farm.test_deadline_protocol import blender_job, get_tasks, reports, submit, wait_stat


def settings(farm: Farm, name: str) -> dict[str, Any]:
    [found] = farm.client.get("/api/slaves", params={"Name": name, "Data": "settings"}).json()
    result: dict[str, Any] = found
    return result


def enable(farm: Farm, name: str, enabled: bool) -> None:
    """What ``Slaves.SaveSlaveSettings`` sends: the settings object from GET, changed."""
    body = {"Command": "savesettings", "SlaveSettings": {**settings(farm, name), "Enable": enabled}}
    response = farm.client.put("/api/slaves", json=body)
    assert (response.status_code, response.text) == (200, "Success")


def test_a_disabled_worker_finishes_its_task_takes_no_other_and_resumes_when_enabled(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm("--frame-seconds", "0.2", workers=1)
    job_id = submit(farm, blender_job("drain", "1-8", tmp_path / "drain", ChunkSize=2))
    wait_for(lambda: any(t["Stat"] == 4 for t in get_tasks(farm, job_id)))
    enable(farm, "farm-w01", False)
    assert settings(farm, "farm-w01")["Enable"] is False
    # Another worker renders the rest; the disabled one only finishes the task it had.
    farm.client.put("/_farm/workers", json={"count": 2})
    wait_stat(farm, job_id, 3, timeout=30)
    by_worker = [t["Slave"] for t in get_tasks(farm, job_id)]
    assert by_worker.count("farm-w01") == 1 and by_worker.count("farm-w02") == 3
    assert reports(farm, job_id, "requeue") == []

    enable(farm, "farm-w02", False)
    enable(farm, "farm-w01", True)
    again = submit(farm, blender_job("again", "1-4", tmp_path / "again", ChunkSize=2))
    wait_stat(farm, again, 3)
    assert {t["Slave"] for t in get_tasks(farm, again)} == {"farm-w01"}


def test_bad_savesettings_requests(make_farm: Callable[..., Farm]) -> None:
    farm = make_farm(workers=1)
    wait_for(lambda: farm.client.get("/api/slaves", params={"NamesOnly": "true"}).json())
    good = settings(farm, "farm-w01")
    cases: list[tuple[dict[str, Any], int]] = [
        ({"SlaveSettings": good}, 400),
        ({"Command": "saveeverything", "SlaveSettings": good}, 500),
        ({"Command": "savesettings"}, 400),
        ({"Command": "savesettings", "SlaveSettings": {"Enable": False}}, 400),
        ({"Command": "savesettings", "SlaveSettings": {**good, "Enable": "no"}}, 400),
        ({"Command": "savesettings", "SlaveSettings": {**good, "Pools": [3]}}, 400),
        ({"Command": "savesettings", "SlaveSettings": {**good, "Name": "nobody"}}, 404),
    ]
    for body, status in cases:
        response = farm.client.put("/api/slaves", json=body)
        assert response.status_code == status, (body, response.text)
    assert settings(farm, "farm-w01")["Enable"] is True
