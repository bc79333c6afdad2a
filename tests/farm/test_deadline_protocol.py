"""The local farm answers like Deadline 10's Web Service (anchors §1) and really renders.

Every test talks HTTP to a real ``python -m deploy.farm serve`` process whose workers are
separate processes sharing its SQLite database.
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import signal
import struct
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.farm.conftest import Farm, wait_for

HEX24 = re.compile(r"^[0-9a-f]{24}$")
NO_DATE = "0001-01-01T00:00:00Z"
JOB_FIELDS = {
    "_id", "Props", "Plug", "Stat", "Mach", "Date", "DateStart", "DateComp", "OutDir", "OutFile",
    "Errs", "SnglTskPrg", "CompletedChunks", "QueuedChunks", "SuspendedChunks",
    "RenderingChunks", "FailedChunks", "PendingChunks",
}  # fmt: skip
PROPS_FIELDS = {
    "Name", "Batch", "User", "Cmmt", "Dept", "Frames", "Chunk", "Tasks", "Grp", "Pool", "Pri",
    "MachLmt", "PlugInfo", "Env", "ExDic", "OnComp", *(f"Ex{n}" for n in range(10)),
}  # fmt: skip
TASK_FIELDS = {
    "_id", "JobID", "TaskID", "Frames", "Slave", "Stat", "Prog", "RndStat", "Errs", "Start",
    "StartRen", "Comp", "WtgStrt", "Size", "RamPeak", "Cpu", "UsedClock", "TotalClock", "Props",
}  # fmt: skip
REPORT_FIELDS = {
    "_id", "Job", "Task", "Type", "Date", "Slave", "Title", "JobName", "JobUser", "Plugin",
    "Frames", "TaskStartTime", "TaskTime",
}  # fmt: skip
COUNTERS = {
    "CompletedChunks": 5,
    "QueuedChunks": 2,
    "SuspendedChunks": 3,
    "RenderingChunks": 4,
    "FailedChunks": 6,
    "PendingChunks": 8,
}


def blender_job(name: str, frames: str, out: Path, **extra: Any) -> dict[str, Any]:
    return {
        "JobInfo": {
            "Plugin": "Blender",
            "Name": name,
            "Frames": frames,
            "ChunkSize": 1,
            "OutputDirectory0": str(out),
            "OutputFilename0": "frame_####.png",
            **extra,
        },
        "PluginInfo": {"SceneFile": f"/scenes/{name}.blend"},
        "AuxFiles": [],
        "IdOnly": True,
    }


def submit(farm: Farm, body: dict[str, Any]) -> str:
    response = farm.client.post("/api/jobs", json=body)
    assert response.status_code == 200, response.text
    job_id: str = response.json()["_id"]
    return job_id


def get_job(farm: Farm, job_id: str) -> dict[str, Any]:
    jobs = farm.client.get("/api/jobs", params={"JobID": job_id}).json()
    assert len(jobs) == 1
    job: dict[str, Any] = jobs[0]
    return job


def get_tasks(farm: Farm, job_id: str) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = farm.client.get("/api/tasks", params={"JobID": job_id}).json()[
        "Tasks"
    ]
    return tasks


def command(farm: Farm, path: str, body: dict[str, Any]) -> None:
    response = farm.client.put(path, json=body)
    assert (response.status_code, response.text) == (200, "Success")


def assert_consistent(farm: Farm, job_id: str) -> dict[str, Any]:
    """The job's *Chunks counters equal the counts of its tasks' Stats (one snapshot race-free
    only when nothing renders, so callers use this on settled jobs)."""
    job = get_job(farm, job_id)
    tasks = get_tasks(farm, job_id)
    for counter, stat in COUNTERS.items():
        assert job[counter] == sum(t["Stat"] == stat for t in tasks), (counter, job, tasks)
    assert job["Props"]["Tasks"] == len(tasks)
    return job


def wait_stat(farm: Farm, job_id: str, stat: int, timeout: float = 15) -> dict[str, Any]:
    job: dict[str, Any] = wait_for(
        lambda: (j := get_job(farm, job_id))["Stat"] == stat and j, timeout=timeout
    )
    return job


def reports(farm: Farm, job_id: str, data: str = "all") -> list[dict[str, Any]]:
    response = farm.client.get("/api/jobreports", params={"JobID": job_id, "Data": data})
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()
    return result


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    header = data[16 : 16 + length]
    assert struct.unpack(">I", data[16 + length : 20 + length])[0] == zlib.crc32(kind + header)
    width, height = struct.unpack(">II", header[:8])
    return width, height


# -- ping, submit, list ------------------------------------------------------------------


def test_ping_returns_a_text_banner_with_a_version(farm: Farm) -> None:
    response = farm.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert re.search(r"\d+\.\d+\.\d+", response.text)


def test_submit_returns_the_job_or_its_id_and_accepts_string_or_native_values(
    farm: Farm, tmp_path: Path
) -> None:
    body = blender_job("submit-shape", "1-10", tmp_path, InitialStatus="Suspended")
    body["JobInfo"].update(ChunkSize="3", Priority="70", ExtraInfoKeyValue0="tenant=u123")
    job_id = submit(farm, body)
    assert HEX24.match(job_id)

    full = dict(body, IdOnly=False)
    full["JobInfo"] = dict(body["JobInfo"], ChunkSize=3, Priority=70)
    response = farm.client.post("/api/jobs", json=full)
    assert response.status_code == 200
    job = response.json()
    assert HEX24.match(job["_id"]) and job["_id"] != job_id
    assert job.keys() >= JOB_FIELDS and job["Props"].keys() >= PROPS_FIELDS
    for other in (job, get_job(farm, job_id)):
        props = other["Props"]
        assert (props["Chunk"], props["Tasks"], props["Pri"]) == (3, 4, 70)
        assert props["Frames"] == "1-10" and props["Name"] == "submit-shape"
        assert props["ExDic"] == {"tenant": "u123"}
        assert props["PlugInfo"] == {"SceneFile": "/scenes/submit-shape.blend"}
        assert other["Plug"] == "Blender" and other["Stat"] == 2
        assert other["OutDir"] == [str(tmp_path)] and other["OutFile"] == ["frame_####.png"]
        assert other["DateComp"] == NO_DATE and other["DateStart"] == NO_DATE
        assert other["SuspendedChunks"] == 4


@pytest.mark.parametrize(
    ("frames", "chunk", "expected"),
    [
        ("1-10", 3, ["1-3", "4-6", "7-9", "10-10"]),
        ("1-20x5", 1, ["1-1", "6-6", "11-11", "16-16"]),
        ("1,5,9", 2, ["1,5", "9-9"]),
        ("1-3,10,20-21", 2, ["1-2", "3,10", "20-21"]),
        ("0", 1, ["0-0"]),
    ],
)
def test_tasks_are_chunks_of_the_frame_list(
    farm: Farm, tmp_path: Path, frames: str, chunk: int, expected: list[str]
) -> None:
    body = blender_job("chunks", frames, tmp_path, ChunkSize=chunk, InitialStatus="Suspended")
    job_id = submit(farm, body)
    response = farm.client.get("/api/tasks", params={"JobID": job_id})
    assert response.status_code == 200
    collection = response.json()
    assert collection.keys() == {"ID", "PreTask", "PostTask", "Tasks"}
    assert (collection["ID"], collection["PreTask"], collection["PostTask"]) == (job_id, None, None)
    tasks = collection["Tasks"]
    assert [t["Frames"] for t in tasks] == expected
    for index, task in enumerate(tasks):
        assert task.keys() >= TASK_FIELDS
        assert task["_id"] == f"{job_id}_{index}" and task["TaskID"] == index
        assert (task["JobID"], task["Stat"], task["Prog"], task["Errs"]) == (job_id, 3, "0 %", 0)
        assert task["Comp"] == NO_DATE
    assert get_job(farm, job_id)["Props"]["Tasks"] == len(expected)


def test_one_task_by_task_id_and_ids_only(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("task-ids", "1-4", tmp_path, InitialStatus="Suspended"))
    one = farm.client.get("/api/tasks", params={"JobID": job_id, "TaskID": 2}).json()
    assert (one["_id"], one["TaskID"], one["Frames"]) == (f"{job_id}_2", 2, "3-3")
    ids = farm.client.get("/api/tasks", params={"JobID": job_id, "IdOnly": "true"}).json()
    assert ids == [0, 1, 2, 3]
    missing = farm.client.get("/api/tasks", params={"JobID": job_id, "TaskID": 9})
    assert missing.status_code == 500


def test_bad_submissions_are_400_text(farm: Farm, tmp_path: Path) -> None:
    cases: list[Any] = [
        b"",
        b"{not json",
        b"[1, 2]",
        b'{"PluginInfo": {}}',
        b'{"JobInfo": {"Name": "no plugin"}, "PluginInfo": {}}',
        b'{"JobInfo": {"Plugin": "Blender", "Frames": "1-x"}, "PluginInfo": {}}',
        b'{"JobInfo": {"Plugin": "Blender", "ChunkSize": "zero"}, "PluginInfo": {}}',
        b'{"Jobs": []}',
    ]
    for raw in cases:
        response = farm.client.post(
            "/api/jobs", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400, raw
        assert response.headers["content-type"].startswith("text/plain")
        assert response.text


def test_listing_by_ids_states_and_ids_only(farm: Farm, tmp_path: Path) -> None:
    suspended = submit(farm, blender_job("list-s", "1", tmp_path, InitialStatus="Suspended"))
    done = submit(farm, blender_job("list-c", "1", tmp_path / "c"))
    wait_stat(farm, done, 3)

    both = farm.client.get("/api/jobs", params={"JobID": f"{suspended},{done}"}).json()
    assert {j["_id"] for j in both} == {suspended, done}
    unknown = farm.client.get("/api/jobs", params={"JobID": "0123456789abcdef01234567"})
    assert (unknown.status_code, unknown.json()) == (200, [])

    ids = farm.client.get("/api/jobs", params={"IdOnly": "true"}).json()
    assert suspended in ids and done in ids and all(isinstance(i, str) for i in ids)
    everything = farm.client.get("/api/jobs").json()
    assert [j["_id"] for j in everything] == ids

    only_suspended = farm.client.get("/api/jobs", params={"States": "Suspended"}).json()
    assert suspended in {j["_id"] for j in only_suspended}
    assert all(j["Stat"] == 2 for j in only_suspended)
    mixed = farm.client.get("/api/jobs", params={"States": "Completed,Suspended"}).json()
    assert {suspended, done} <= {j["_id"] for j in mixed}
    assert {j["Stat"] for j in mixed} <= {2, 3}
    assert farm.client.get("/api/jobs", params={"States": "Sleeping"}).status_code == 400


# -- rendering ---------------------------------------------------------------------------


def test_a_job_renders_to_completed_with_one_png_per_frame(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "render"
    job_id = submit(farm, blender_job("shot010", "1-6", out, ChunkSize=2))
    job = wait_stat(farm, job_id, 3)
    assert job["CompletedChunks"] == 3 and job["Errs"] == 0
    assert job["DateComp"] != NO_DATE and job["DateStart"] != NO_DATE
    assert job["Date"] <= job["DateStart"] <= job["DateComp"]
    assert_consistent(farm, job_id)

    files = sorted(out.iterdir())
    assert [f.name for f in files] == [f"frame_{n:04d}.png" for n in range(1, 7)]
    blobs = [f.read_bytes() for f in files]
    assert all(png_size(b) == (320, 180) for b in blobs)
    assert len(set(blobs)) == 6

    for task in get_tasks(farm, job_id):
        assert (task["Stat"], task["Prog"]) == (5, "100 %")
        assert task["Slave"].startswith("farm-w") and task["Comp"] != NO_DATE
    logs = reports(farm, job_id, "log")
    assert sorted(r["Task"] for r in logs) == [0, 1, 2]
    assert all(r.keys() >= REPORT_FIELDS and r["Type"] == 0 for r in logs)
    assert reports(farm, job_id, "error") == []


def test_plugin_info_output_file_with_hashes(farm: Farm, tmp_path: Path) -> None:
    body = blender_job("outfile", "3-4", tmp_path / "ignored")
    body["PluginInfo"]["OutputFile"] = str(tmp_path / "pi" / "beauty_###")
    wait_stat(farm, submit(farm, body), 3)
    assert sorted(p.name for p in (tmp_path / "pi").iterdir()) == [
        "beauty_003.png",
        "beauty_004.png",
    ]


def exr_size(data: bytes) -> tuple[int, int]:
    """Width and height of a single-part scanline OpenEXR file, checking its layout."""
    magic, version = struct.unpack("<ii", data[:8])
    assert (magic, version & 0xFF, version >> 8) == (20000630, 2, 0)
    attributes: dict[str, bytes] = {}
    pos = 8
    while data[pos] != 0:
        name_end = data.index(b"\0", pos)
        kind_end = data.index(b"\0", name_end + 1)
        (size,) = struct.unpack("<i", data[kind_end + 1 : kind_end + 5])
        attributes[data[pos:name_end].decode()] = data[kind_end + 5 : kind_end + 5 + size]
        pos = kind_end + 5 + size
    assert attributes.keys() >= {
        "channels", "compression", "dataWindow", "displayWindow", "lineOrder",
        "pixelAspectRatio", "screenWindowCenter", "screenWindowWidth",
    }  # fmt: skip
    assert attributes["compression"] == b"\x00"  # none: one scan line per block
    x0, y0, x1, y1 = struct.unpack("<iiii", attributes["dataWindow"])
    width, height = x1 - x0 + 1, y1 - y0 + 1
    chlist, names = attributes["channels"], []
    while chlist[0] != 0:
        name, _, chlist = chlist.partition(b"\0")
        pixel_type, _linear, x_sampling, y_sampling = struct.unpack("<iB3xii", chlist[:16])
        assert (pixel_type, x_sampling, y_sampling) == (1, 1, 1)  # half float, 1x1
        names.append(name)
        chlist = chlist[16:]
    assert names == [b"B", b"G", b"R"], names
    offsets = struct.unpack(f"<{height}Q", data[pos + 1 : pos + 1 + 8 * height])
    for y, offset in enumerate(offsets):
        line, size = struct.unpack("<ii", data[offset : offset + 8])
        assert (line, size) == (y, width * 3 * 2)  # 3 half-float channels
    assert offsets[-1] + 8 + width * 6 == len(data)
    return width, height


def test_output_format_exr_writes_openexr_files(farm: Farm, tmp_path: Path) -> None:
    body = blender_job("exr", "1-2", tmp_path / "ignored")
    body["PluginInfo"] |= {
        "OutputFile": str(tmp_path / "exr" / "frame_####.exr"),
        "OutputFormat": "OPEN_EXR",
        "Samples": 64,
        "Camera": "CAM_main",
        "ResolutionX": 320,
        "ResolutionY": 180,
    }
    job_id = submit(farm, body)
    wait_stat(farm, job_id, 3)
    files = sorted((tmp_path / "exr").iterdir())
    assert [f.name for f in files] == ["frame_0001.exr", "frame_0002.exr"]
    assert all(exr_size(f.read_bytes()) == (320, 180) for f in files)
    # The built-in renderer has no scene to apply samples and camera to, and says so.
    response = farm.client.get(
        "/api/taskreports", params={"JobID": job_id, "TaskID": "0", "Data": "allcontents"}
    )
    [log] = response.json()
    assert "Samples=64" in log and "Camera=CAM_main" in log
    assert "Rendered frame 1 as EXR" in log


def test_a_format_the_builtin_renderer_cannot_write_fails_the_task(
    farm: Farm, tmp_path: Path
) -> None:
    body = blender_job(
        "jpeg", "1", tmp_path, OverrideTaskFailureDetection=True, FailureDetectionTaskErrors=1
    )
    body["PluginInfo"] |= {
        "OutputFile": str(tmp_path / "frame_####.jpg"),
        "OutputFormat": "JPEG",
    }
    job_id = submit(farm, body)
    wait_stat(farm, job_id, 4)
    [error] = reports(farm, job_id, "error")
    assert "cannot write JPEG" in error["Title"]
    assert list(tmp_path.iterdir()) == []  # no PNG under a .jpg name, nor anything else


def test_priority_orders_pickup(make_farm: Callable[..., Farm], tmp_path: Path) -> None:
    farm = make_farm(workers=0)
    low = submit(farm, blender_job("low", "1", tmp_path / "low", Priority=10))
    high = submit(farm, blender_job("high", "1", tmp_path / "high", Priority=90))
    response = farm.client.put("/_farm/workers", json={"count": 1})
    assert response.status_code == 200
    wait_stat(farm, low, 3)
    start = {j: get_tasks(farm, j)[0]["StartRen"] for j in (low, high)}
    assert start[high] < start[low]


def test_commandline_plugin_expands_tokens_and_reports_exit_codes(
    farm: Farm, tmp_path: Path
) -> None:
    script = "import pathlib,sys; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])"
    ok = submit(
        farm,
        {
            "JobInfo": {"Plugin": "CommandLine", "Name": "cmd", "Frames": "7-9", "ChunkSize": 3},
            "PluginInfo": {
                "Executable": sys.executable,
                "Arguments": f"-c <QUOTE>{script}<QUOTE> out_<STARTFRAME%4>.txt <ENDFRAME>",
                "StartupDirectory": str(tmp_path),
            },
            "IdOnly": True,
        },
    )
    wait_stat(farm, ok, 3)
    assert (tmp_path / "out_0007.txt").read_text() == "9"

    failing = submit(
        farm,
        {
            "JobInfo": {
                "Plugin": "CommandLine",
                "Name": "cmd-fail",
                "Frames": "1",
                "OverrideTaskFailureDetection": True,
                "FailureDetectionTaskErrors": 1,
            },
            "PluginInfo": {
                "Executable": sys.executable,
                "Arguments": "-c <QUOTE>import sys; sys.exit('scene is broken')<QUOTE>",
            },
            "IdOnly": True,
        },
    )
    job = wait_stat(farm, failing, 4)
    assert (job["FailedChunks"], job["Errs"]) == (1, 1)
    [error] = reports(farm, failing, "error")
    assert error["Type"] == 1 and "exit code 1" in error["Title"]
    assert "scene is broken" in error["Title"]


def test_unknown_plugin_is_accepted_and_fails_at_render_time(farm: Farm) -> None:
    job_id = submit(
        farm,
        {
            "JobInfo": {
                "Plugin": "Houdini",
                "Name": "no-such-plugin",
                "OverrideTaskFailureDetection": "true",
                "FailureDetectionTaskErrors": "2",
            },
            "PluginInfo": {},
            "IdOnly": True,
        },
    )
    job = wait_stat(farm, job_id, 4)
    assert job["Errs"] == 2 and job["Props"]["TskFailErr"] == 2
    errors = reports(farm, job_id, "error")
    assert len(errors) == 2 and all("Houdini" in e["Title"] for e in errors)
    assert [t["Stat"] for t in get_tasks(farm, job_id)] == [6]
    assert_consistent(farm, job_id)


# -- failures and faults -----------------------------------------------------------------


def test_injected_fault_once_is_retried_and_reported(farm: Farm, tmp_path: Path) -> None:
    rule = {"match": "fault-once", "frames": [3], "times": 1, "message": "GPU fell off the bus"}
    assert farm.client.post("/_farm/faults", json=rule).status_code == 201
    job_id = submit(farm, blender_job("fault-once", "1-4", tmp_path))
    job = wait_stat(farm, job_id, 3)
    assert job["Errs"] == 1
    [error] = reports(farm, job_id, "error")
    assert error.keys() >= REPORT_FIELDS
    assert (error["Type"], error["Title"], error["Task"], error["Frames"]) == (
        1,
        "GPU fell off the bus",
        2,
        "3-3",
    )
    assert (error["JobName"], error["Plugin"], error["Job"]) == ("fault-once", "Blender", job_id)
    assert error["Slave"].startswith("farm-w")
    assert [t["Errs"] for t in get_tasks(farm, job_id)] == [0, 0, 1, 0]
    task_errors = farm.client.get(
        "/api/taskreports", params={"JobID": job_id, "TaskID": 2, "Data": "error"}
    ).json()
    assert [r["_id"] for r in task_errors] == [error["_id"]]
    assert (
        farm.client.get(
            "/api/taskreports", params={"JobID": job_id, "TaskID": 1, "Data": "error"}
        ).json()
        == []
    )
    contents = farm.client.get(
        "/api/taskreports", params={"JobID": job_id, "TaskID": 2, "Data": "allerrorcontents"}
    ).json()
    assert len(contents) == 1 and "GPU fell off the bus" in contents[0]
    assert len(list(tmp_path.iterdir())) == 4


def test_task_error_limit_fails_task_and_job_then_resumefailed(farm: Farm, tmp_path: Path) -> None:
    rule = {"match": "fail-always", "frames": None, "times": None, "message": "boom"}
    assert farm.client.post("/_farm/faults", json=rule).status_code == 201
    body = blender_job(
        "limit",
        "1-2",
        tmp_path,
        OverrideTaskFailureDetection=True,
        FailureDetectionTaskErrors=3,
        ExtraInfoKeyValue0="tenant=fail-always",
    )
    job_id = submit(farm, body)
    job = wait_stat(farm, job_id, 4)
    wait_for(lambda: get_job(farm, job_id)["RenderingChunks"] == 0)
    job = assert_consistent(farm, job_id)
    tasks = get_tasks(farm, job_id)
    assert 6 in [t["Stat"] for t in tasks]
    assert max(t["Errs"] for t in tasks) == 3
    assert job["Errs"] == sum(t["Errs"] for t in tasks) == len(reports(farm, job_id, "error"))

    assert farm.client.delete("/_farm/faults").text == "Success"
    command(farm, "/api/jobs", {"Command": "resumefailed", "JobID": job_id})
    wait_stat(farm, job_id, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame_0001.png", "frame_0002.png"]


def test_fault_rules_are_validated(farm: Farm) -> None:
    for bad in ({"frames": [1]}, {"match": "x", "frames": "1"}, {"match": "x", "times": 0}):
        assert farm.client.post("/_farm/faults", json=bad).status_code == 400


# -- job and task commands ---------------------------------------------------------------


def test_job_commands_change_stat_and_counters(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("commands", "1-4", tmp_path, InitialStatus="Suspended"))
    steps = [
        ("pend", 6, "PendingChunks"),
        ("suspend", 2, "SuspendedChunks"),
        ("fail", 4, "FailedChunks"),
        ("complete", 3, "CompletedChunks"),
    ]
    for cmd, stat, counter in steps:
        command(farm, "/api/jobs", {"Command": cmd, "JobID": job_id})
        job = assert_consistent(farm, job_id)
        assert job["Stat"] == stat and job[counter] == 4, (cmd, job)
    assert get_job(farm, job_id)["DateComp"] != NO_DATE

    command(farm, "/api/jobs", {"Command": "requeue", "JobID": job_id})
    job = wait_stat(farm, job_id, 3)
    assert all(p.exists() for p in (tmp_path / f"frame_{n:04d}.png" for n in range(1, 5)))


def test_resume_and_releasepending_render_held_jobs(farm: Farm, tmp_path: Path) -> None:
    suspended = submit(farm, blender_job("resume", "1-2", tmp_path, InitialStatus="Suspended"))
    pending = submit(farm, blender_job("release", "3", tmp_path, InitialStatus="Suspended"))
    command(farm, "/api/jobs", {"Command": "pend", "JobID": pending})
    command(farm, "/api/jobs", {"Command": "resume", "JobID": suspended})
    command(farm, "/api/jobs", {"Command": "releasepending", "JobID": pending})
    wait_stat(farm, suspended, 3)
    wait_stat(farm, pending, 3)
    assert len(list(tmp_path.iterdir())) == 3


def test_command_errors(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("cmd-errors", "1", tmp_path, InitialStatus="Suspended"))
    for path in ("/api/jobs", "/api/tasks"):
        no_body = farm.client.put(path)
        assert no_body.status_code == 400 and no_body.text
        no_command = farm.client.put(path, json={"JobID": job_id})
        assert no_command.status_code == 400 and no_command.text
        unknown = farm.client.put(path, json={"Command": "explode", "JobID": job_id})
        assert unknown.status_code == 500 and "explode" in unknown.text
        missing = "0123456789abcdef01234567"
        no_job = farm.client.put(path, json={"Command": "suspend", "JobID": missing})
        assert no_job.status_code == 500 and missing in no_job.text
    tasks = farm.client.get("/api/tasks", params={"JobID": "0123456789abcdef01234567"})
    assert tasks.status_code == 500 and tasks.text
    assert farm.client.get("/api/tasks").status_code == 400
    assert farm.client.post("/api/tasks", json={}).status_code == 501
    bad_data = farm.client.get("/api/jobreports", params={"JobID": job_id, "Data": "nope"})
    assert bad_data.status_code == 400


def test_task_commands_on_a_task_list(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("task-cmds", "1-4", tmp_path, InitialStatus="Suspended"))
    command(farm, "/api/tasks", {"Command": "complete", "JobID": job_id, "TaskList": [0, 3]})
    assert [t["Stat"] for t in get_tasks(farm, job_id)] == [5, 3, 3, 5]
    command(farm, "/api/tasks", {"Command": "fail", "JobID": job_id, "TaskList": [1]})
    job = assert_consistent(farm, job_id)
    assert (job["CompletedChunks"], job["FailedChunks"], job["SuspendedChunks"]) == (2, 1, 1)
    command(farm, "/api/tasks", {"Command": "resumefailed", "JobID": job_id, "TaskList": [1]})
    command(farm, "/api/tasks", {"Command": "pend", "JobID": job_id})
    assert [t["Stat"] for t in get_tasks(farm, job_id)] == [5, 8, 8, 5]
    command(farm, "/api/tasks", {"Command": "releasepending", "JobID": job_id})
    command(farm, "/api/jobs", {"Command": "resume", "JobID": job_id})
    wait_stat(farm, job_id, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frame_0002.png", "frame_0003.png"]
    command(farm, "/api/tasks", {"Command": "requeue", "JobID": job_id, "TaskList": [0]})
    wait_stat(farm, job_id, 3)
    assert (tmp_path / "frame_0001.png").exists()


def test_batch_submit_with_dependent_jobs(farm: Farm, tmp_path: Path) -> None:
    first = blender_job("batch-a", "1-40", tmp_path / "a")
    second = blender_job("batch-b", "1", tmp_path / "b")
    third = blender_job("batch-c", "1", tmp_path / "c")
    third["DependsOnPrevious"] = False
    response = farm.client.post(
        "/api/jobs", json={"Jobs": [first, second, third], "Dependent": "true"}
    )
    assert response.status_code == 200
    ids = [entry["_id"] for entry in response.json()]
    assert len(ids) == 3 and all(HEX24.match(i) for i in ids)
    assert get_job(farm, ids[1])["Stat"] == 6
    assert get_job(farm, ids[1])["Props"]["Dep"] == [{"JobID": ids[0]}]
    wait_stat(farm, ids[2], 3)
    wait_stat(farm, ids[0], 3)
    wait_stat(farm, ids[1], 3)
    assert get_job(farm, ids[1])["DateStart"] >= get_job(farm, ids[0])["DateComp"]

    full = farm.client.post("/api/jobs", json={"Jobs": [blender_job("batch-d", "1", tmp_path)]})
    assert HEX24.match(full.json()[0]["_id"])


# -- delete, workers ---------------------------------------------------------------------


def test_delete_stops_the_worker_rendering_it(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("long", "1-300", tmp_path, ChunkSize=300))
    workers = wait_for(
        lambda: farm.client.get("/api/slavesrenderingjob", params={"JobID": job_id}).json()
    )
    assert len(workers) == 1
    [slave] = farm.client.get("/api/slaves", params={"Name": workers[0], "Data": "info"}).json()
    assert slave["Stat"] == 1 and slave["JobId"] == job_id
    [task] = get_tasks(farm, job_id)
    assert (task["Stat"], task["Slave"], task["RndStat"]) == (4, workers[0], "Rendering")

    response = farm.client.delete("/api/jobs", params={"JobID": job_id})
    assert (response.status_code, response.text) == (200, "Success")
    assert farm.client.get("/api/jobs", params={"JobID": job_id}).json() == []
    assert job_id not in farm.client.get("/api/jobs", params={"IdOnly": "true"}).json()
    deleted = farm.client.get("/api/jobs", params={"Deleted": "true", "JobID": job_id}).json()
    assert [j["_id"] for j in deleted] == [job_id]

    def idle() -> bool:
        info = farm.client.get("/api/slaves", params={"Name": workers[0], "Data": "info"})
        return bool(info.json()[0]["Stat"] == 2)

    wait_for(idle, timeout=5)
    written = len(list(tmp_path.iterdir()))
    assert written < 300
    again = farm.client.delete("/api/jobs", params={"JobID": job_id})
    assert again.status_code == 500 and job_id in again.text
    assert farm.client.delete("/api/jobs").status_code == 400


def test_workers_listing_shapes(farm: Farm) -> None:
    names = farm.client.get("/api/slaves", params={"NamesOnly": "true"}).json()
    assert {"farm-w01", "farm-w02", "farm-w03"} <= set(names)
    info = farm.client.get("/api/slaves", params={"Name": "farm-w01,farm-w02", "Data": "info"})
    entries = info.json()
    assert [e["Name"] for e in entries] == ["farm-w01", "farm-w02"]
    for entry in entries:
        fields = {"Name", "Stat", "JobId", "JobName", "Host", "Procs", "OS", "CompletedTasks"}
        assert fields <= entry.keys()
        assert entry["Stat"] in (1, 2)
    assert farm.client.get("/api/slaves", params={"Data": "reports"}).status_code == 400


def test_changing_the_worker_count(make_farm: Callable[..., Farm], tmp_path: Path) -> None:
    farm = make_farm(workers=1)
    assert farm.client.get("/_farm/workers").json()["count"] == 1
    grown = farm.client.put("/_farm/workers", json={"count": 3})
    assert grown.status_code == 200 and grown.json()["count"] == 3

    def registered() -> bool:
        names = farm.client.get("/api/slaves", params={"NamesOnly": "true"}).json()
        return bool(len(names) == 3)

    wait_for(registered)
    job_id = submit(farm, blender_job("three", "1-3", tmp_path, ChunkSize=1))
    wait_stat(farm, job_id, 3)

    shrunk = farm.client.put("/_farm/workers", json={"count": 1}).json()
    assert [w["name"] for w in shrunk["workers"]] == ["farm-w01"]
    stats = {
        e["Name"]: e["Stat"] for e in farm.client.get("/api/slaves", params={"Data": "info"}).json()
    }
    assert stats == {"farm-w01": 2, "farm-w02": 3, "farm-w03": 3}
    for bad in ({"count": -1}, {"count": "2"}, {}):
        assert farm.client.put("/_farm/workers", json=bad).status_code == 400


def test_a_killed_worker_task_is_requeued_and_finished(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=1)
    job_id = submit(farm, blender_job("crash", "1-60", tmp_path, ChunkSize=60))
    wait_for(lambda: get_job(farm, job_id)["RenderingChunks"] == 1)
    [worker] = farm.client.get("/_farm/workers").json()["workers"]
    os.kill(worker["pid"], signal.SIGKILL)
    wait_stat(farm, job_id, 3, timeout=30)
    [requeue] = reports(farm, job_id, "requeue")
    assert requeue["Type"] == 2 and requeue["Slave"] == worker["name"]
    assert len(list(tmp_path.glob("frame_*.png"))) == 60


# -- restart and auth --------------------------------------------------------------------


def test_restart_keeps_jobs_tasks_and_reports(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=1)
    farm.client.post("/_farm/faults", json={"match": "persist", "frames": [1], "times": 1})
    done = submit(farm, blender_job("persist", "1-2", tmp_path / "done"))
    wait_stat(farm, done, 3)
    running = submit(farm, blender_job("persist-long", "1-150", tmp_path / "run", ChunkSize=150))
    held = submit(farm, blender_job("persist-held", "1-3", tmp_path, InitialStatus="Suspended"))
    wait_for(lambda: get_job(farm, running)["RenderingChunks"] == 1)
    before = {j["_id"]: j for j in farm.client.get("/api/jobs").json()}
    errors_before = reports(farm, done, "all")
    farm.stop()

    again = make_farm(workers=1, data_dir=farm.data_dir)
    after = {j["_id"]: j for j in again.client.get("/api/jobs").json()}
    assert after.keys() == before.keys()
    for key in ("Props", "Date", "Plug"):
        assert after[done][key] == before[done][key]
    assert (after[done]["Stat"], after[held]["Stat"]) == (3, 2)
    assert reports(again, done, "all") == errors_before
    assert [r["Type"] for r in errors_before].count(1) == 1
    wait_stat(again, running, 3, timeout=30)
    assert len(reports(again, running, "requeue")) == 1
    assert "farm-w01" in again.client.get("/api/slaves", params={"NamesOnly": "true"}).json()


def test_basic_auth_when_configured(make_farm: Callable[..., Farm]) -> None:
    farm = make_farm("--user", "svc-render", "--password", "s3cret", workers=0)
    assert farm.client.get("/").status_code == 200
    anonymous = farm.client.get("/api/jobs")
    assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"].startswith(
        "Basic"
    )
    wrong = farm.client.get("/api/jobs", auth=("svc-render", "nope"))
    assert wrong.status_code == 401
    assert farm.client.get("/_farm/workers").status_code == 401
    token = base64.b64encode(b"svc-render:s3cret").decode()
    ok = farm.client.get("/api/jobs", headers={"Authorization": f"Basic {token}"})
    assert (ok.status_code, ok.json()) == (200, [])
    assert httpx.get(f"{farm.url}/api/slaves", auth=("svc-render", "s3cret")).status_code == 200


def test_machine_limit_keeps_a_job_on_one_worker_at_a_time(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("one-at-a-time", "1-6", tmp_path, MachineLimit=1))
    wait_stat(farm, job_id, 3)
    spans = sorted((t["StartRen"], t["Comp"]) for t in get_tasks(farm, job_id))
    assert all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))
    assert get_job(farm, job_id)["Props"]["MachLmt"] == 1


def test_task_timeout_stops_the_process_and_counts_an_error(farm: Farm) -> None:
    job_id = submit(
        farm,
        {
            "JobInfo": {
                "Plugin": "CommandLine",
                "Name": "too-slow",
                "TaskTimeoutSeconds": 1,
                "OverrideTaskFailureDetection": True,
                "FailureDetectionTaskErrors": 1,
            },
            "PluginInfo": {
                "Executable": sys.executable,
                "Arguments": "-c <QUOTE>import time; time.sleep(60)<QUOTE>",
            },
            "IdOnly": True,
        },
    )
    wait_stat(farm, job_id, 4, timeout=10)
    [error] = reports(farm, job_id, "error")
    assert "timeout" in error["Title"].lower()
