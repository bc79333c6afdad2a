"""Peak memory per task: a task object's ``RamPeak`` (bytes), its log report's ``PeakRam``
and the job statistics' ``PeakRamUsage``. A render process is measured by its own peak RSS
(``wait4``); the built-in renderer, which runs in the worker, by its allocations' peak."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.farm.conftest import Farm
from tests.farm.test_deadline_protocol import blender_job, get_tasks, reports, submit, wait_stat

MiB = 1024 * 1024


def test_a_render_process_peak_rss_is_the_tasks_ram_peak(farm: Farm) -> None:
    allocate = "b = bytearray(<STARTFRAME> * 1048576); b[::4096] = b'x' * len(b[::4096])"
    job_id = submit(
        farm,
        {
            "JobInfo": {"Plugin": "CommandLine", "Name": "memory", "Frames": "64,16"},
            "PluginInfo": {"Executable": sys.executable, "Arguments": f'-c "{allocate}"'},
            "AuxFiles": [],
            "IdOnly": True,
        },
    )
    wait_stat(farm, job_id, 3)
    peaks = {t["Frames"]: t["RamPeak"] for t in get_tasks(farm, job_id)}
    # The interpreter itself is ~10 MiB; each task touched its frame number in MiB.
    assert 64 * MiB < peaks["64-64"] < 64 * MiB + 100 * MiB
    assert 16 * MiB < peaks["16-16"] < peaks["64-64"]
    assert all(0 <= t["RamPeakPer"] <= 100 for t in get_tasks(farm, job_id))  # of machine RAM
    logged = {r["Frames"]: r["PeakRam"] for r in reports(farm, job_id, "log")}
    assert logged == peaks
    stats = farm.client.get("/api/jobs", params={"JobID": job_id, "Statistics": "true"}).json()
    assert stats["PeakRamUsage"] == peaks["64-64"]
    assert stats["AverageRamUsage"] == (peaks["64-64"] + peaks["16-16"]) // 2


def test_the_builtin_renderer_reports_what_its_render_allocated(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("builtin", "1-2", tmp_path / "out", ChunkSize=2))
    wait_stat(farm, job_id, 3)
    [task] = get_tasks(farm, job_id)
    # A 320x180 frame's rows and its PNG: some hundreds of KiB, far below a process's RSS.
    assert 100 * 1024 < task["RamPeak"] < 20 * MiB
    assert task["Prog"] == "100 %"
