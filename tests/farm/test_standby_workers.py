"""Standby workers (``--standby-workers N --standby-pools test``): warm workers that render
only test renders, so a test render starts at once however busy the farm is; and a test
render's farm job (pool ``test``, secondary pool ``none``) goes first on ordinary workers
when the farm has no standby worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.farm.conftest import Farm, wait_for
from tests.farm.test_deadline_protocol import blender_job, get_job, get_tasks, submit, wait_stat


def test_a_standby_worker_serves_only_its_pools_and_takes_a_test_render_at_once(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(
        "--frame-seconds", "0.3", "--standby-workers", "1", "--standby-pools", "test", workers=2
    )
    wait_for(lambda: len(farm.client.get("/api/slaves", params={"NamesOnly": "true"}).json()) == 2)
    settings = farm.client.get(
        "/api/slaves", params={"Name": "farm-w01,farm-w02", "Data": "settings"}
    ).json()
    assert {s["Name"]: s["Pools"] for s in settings} == {"farm-w01": ["test"], "farm-w02": []}

    full = submit(farm, blender_job("full", "1-6", tmp_path / "full", Priority=90))
    wait_for(lambda: get_job(farm, full)["RenderingChunks"])
    test = submit(farm, blender_job("test", "1,3", tmp_path / "test", Priority=100, Pool="test"))
    wait_stat(farm, test, 3)
    wait_stat(farm, full, 3, timeout=30)
    assert {t["Slave"] for t in get_tasks(farm, test)} == {"farm-w01"}
    # The standby worker was idle all along: the full render never went to it.
    assert {t["Slave"] for t in get_tasks(farm, full)} == {"farm-w02"}


def test_without_standby_workers_a_test_render_goes_first_on_an_ordinary_worker(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm("--frame-seconds", "0.3", workers=1)
    full = submit(farm, blender_job("full", "1-4", tmp_path / "full", Priority=50))
    wait_for(lambda: get_job(farm, full)["RenderingChunks"])
    test = submit(
        farm,
        blender_job(
            "test", "1", tmp_path / "test", Priority=100, Pool="test", SecondaryPool="none"
        ),
    )
    wait_stat(farm, test, 3)
    # Taken by the one worker as soon as it finished its task: before the full render's
    # three queued tasks, which its pool order puts level with the test render.
    assert get_job(farm, full)["CompletedChunks"] <= 2


def test_a_job_in_a_pool_no_worker_lists_and_no_secondary_pool_waits(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=1)
    waiting = submit(farm, blender_job("test", "1", tmp_path / "test", Pool="test"))
    done = submit(farm, blender_job("other", "1", tmp_path / "other"))
    wait_stat(farm, done, 3)
    assert get_job(farm, waiting)["QueuedChunks"] == 1
