"""The local farm answers what Thinkbox's Standalone Python API (``Deadline/*.py``) sends.

Each request body below is built the way that client builds it (string concatenation for the
single-task commands, ``json.dumps`` elsewhere); the comment names the client method and file
it is taken from (public copies of the Standalone API, e.g. found with ``find_string
"setjobmachinelimit"``). Every test talks HTTP to a real ``python -m deploy.farm serve``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.farm.conftest import Farm, wait_for
from tests.farm.test_deadline_protocol import (
    blender_job,
    get_job,
    get_tasks,
    submit,
    wait_stat,
)


def put(farm: Farm, path: str, body: str) -> None:
    """A PUT with a raw body, as ``ConnectionProperty.__put__`` sends it; Deadline says
    ``Success``."""
    response = farm.client.put(path, content=body)
    assert (response.status_code, response.text) == (200, "Success"), response.text


def stats(farm: Farm, job_id: str) -> list[int]:
    return [t["Stat"] for t in get_tasks(farm, job_id)]


def spans_do_not_overlap(tasks: list[dict[str, Any]]) -> bool:
    spans = sorted((t["StartRen"], t["Comp"]) for t in tasks)
    return all(end <= nxt for (_, end), (nxt, _) in itertools.pairwise(spans))


# -- Deadline/Tasks.py: one task by a bare integer TaskList ----------------------------


def single_task(command: str, job_id: str, task_id: int) -> str:
    # Deadline/Tasks.py, e.g. SuspendJobTask / ResumeJobTask / PendJobTask:
    # body = '{"Command":"suspend", "JobID":"'+jobId+'", "TaskList":'+str(taskId)+'}'
    return (
        '{"Command":"' + command + '", "JobID":"' + job_id + '", "TaskList":' + str(task_id) + "}"
    )


def test_single_task_commands_with_a_bare_task_id(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("one-task", "1-4", tmp_path, InitialStatus="Suspended"))
    steps = [
        ("complete", 0, [5, 3, 3, 3]),  # CompleteJobTask
        ("fail", 1, [5, 6, 3, 3]),  # FailJobTask
        ("pend", 2, [5, 6, 8, 3]),  # PendJobTask
        ("releasepending", 2, [5, 6, 2, 3]),  # ReleasePendingJobTask
        ("resumefailed", 1, [5, 2, 2, 3]),  # ResumeFailedJobTask
        ("requeue", 0, [2, 2, 2, 3]),  # RequeueJobTask
        ("suspend", 0, [3, 2, 2, 3]),  # SuspendJobTask
    ]
    for command, task_id, expected in steps:
        put(farm, "/api/tasks", single_task(command, job_id, task_id))
        assert stats(farm, job_id) == expected, command
    assert get_job(farm, job_id)["Stat"] == 2  # the job itself is still suspended

    # ResumeJobTask: resuming a task of a suspended job makes the job Active; the queued
    # tasks render, the suspended one waits.
    put(farm, "/api/tasks", single_task("resume", job_id, 3))
    wait_for(lambda: stats(farm, job_id) == [3, 5, 5, 5])
    assert get_job(farm, job_id)["Stat"] == 1
    assert not (tmp_path / "frame_0001.png").exists()
    put(farm, "/api/tasks", single_task("resume", job_id, 0))
    wait_stat(farm, job_id, 3)
    assert (tmp_path / "frame_0001.png").exists()


def test_task_list_commands_and_a_bad_task_list(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("task-lists", "1-3", tmp_path, InitialStatus="Suspended"))
    # Deadline/Tasks.py ResumeJobTasks: json.dumps({"Command":"resume", "JobID":jobId,
    # "TaskList":taskIds})
    put(farm, "/api/tasks", json.dumps({"Command": "resume", "JobID": job_id, "TaskList": [2]}))
    wait_for(lambda: stats(farm, job_id) == [3, 3, 5])
    # ResumeJobTasks without ids: '{"Command":"resume","JobID":"'+jobId+'"}'
    put(farm, "/api/tasks", '{"Command":"resume","JobID":"' + job_id + '"}')
    wait_stat(farm, job_id, 3)
    for bad in ('"x"', "true", "[1.5]", '{"a": 1}'):
        response = farm.client.put(
            "/api/tasks", content=f'{{"Command":"suspend","JobID":"{job_id}","TaskList":{bad}}}'
        )
        assert response.status_code == 400 and "TaskList" in response.text, bad
    missing = farm.client.put("/api/tasks", content=single_task("suspend", job_id, 7))
    assert missing.status_code == 500 and "no task 7" in missing.text


# -- Deadline/Jobs.py: machine limits and save ------------------------------------------


def test_setjobmachinelimitmaximum_keeps_a_job_on_one_worker_at_a_time(
    farm: Farm, tmp_path: Path
) -> None:
    job_id = submit(farm, blender_job("max-one", "1-6", tmp_path, InitialStatus="Suspended"))
    # Deadline/Jobs.py SetJobMachineLimitMaximum:
    # json.dumps({"Command":"setjobmachinelimitmaximum","JobID":id, "Limit":limit})
    put(
        farm,
        "/api/jobs",
        json.dumps({"Command": "setjobmachinelimitmaximum", "JobID": job_id, "Limit": 1}),
    )
    assert get_job(farm, job_id)["Props"]["MachLmt"] == 1
    put(farm, "/api/jobs", '{"Command":"resume", "JobID":"' + job_id + '"}')
    wait_stat(farm, job_id, 3)
    tasks = get_tasks(farm, job_id)
    assert spans_do_not_overlap(tasks)  # three workers, yet never two on the job at once

    bad = json.dumps({"Command": "setjobmachinelimitmaximum", "JobID": job_id, "Limit": "many"})
    assert farm.client.put("/api/jobs", content=bad).status_code == 400


def test_setjobmachinelimit_with_a_whitelist_and_a_blacklist(farm: Farm, tmp_path: Path) -> None:
    only = submit(farm, blender_job("white", "1-6", tmp_path / "w", InitialStatus="Suspended"))
    # Deadline/Jobs.py SetJobMachineLimit: json.dumps({"Command":"setjobmachinelimit",
    # "JobID":id, "Limit":limit, "SlaveList":slaveList,"WhiteListFlag":whiteListFlag})
    body = {
        "Command": "setjobmachinelimit",
        "JobID": only,
        "Limit": 0,
        "SlaveList": ["farm-w02"],
        "WhiteListFlag": True,
    }
    put(farm, "/api/jobs", json.dumps(body))
    props = get_job(farm, only)["Props"]
    assert (props["ListedSlaves"], props["White"], props["MachLmt"]) == (["farm-w02"], True, 0)
    put(farm, "/api/jobs", '{"Command":"resume", "JobID":"' + only + '"}')
    wait_stat(farm, only, 3)
    assert {t["Slave"] for t in get_tasks(farm, only)} == {"farm-w02"}

    never = submit(farm, blender_job("black", "1-6", tmp_path / "b", InitialStatus="Suspended"))
    body = {**body, "JobID": never, "SlaveList": ["farm-w01"], "WhiteListFlag": False}
    put(farm, "/api/jobs", json.dumps(body))
    # Deadline/Jobs.py AddSlavesToJobMachineLimitList: json.dumps({"Command":
    # "addslavestojobmachinelimitlist","JobID":id, "SlaveList":slaveList})
    add = {"Command": "addslavestojobmachinelimitlist", "JobID": never, "SlaveList": ["farm-w03"]}
    put(farm, "/api/jobs", json.dumps(add))
    assert get_job(farm, never)["Props"]["ListedSlaves"] == ["farm-w01", "farm-w03"]
    put(farm, "/api/jobs", '{"Command":"resume", "JobID":"' + never + '"}')
    wait_stat(farm, never, 3)
    assert {t["Slave"] for t in get_tasks(farm, never)} == {"farm-w02"}


def test_save_changes_priority_and_the_farm_obeys_it(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=0)
    first = submit(farm, blender_job("first", "1", tmp_path / "a", Priority=60))
    second = submit(farm, blender_job("second", "1", tmp_path / "b", Priority=40))
    job = get_job(farm, second)
    job["Props"]["Pri"] = 95
    job["Props"]["Cmmt"] = "rush: client review"
    # Deadline/Jobs.py SaveJob: body = '{"Command":"save", "Job":'+json.dumps(jobData)+'}'
    put(farm, "/api/jobs", '{"Command":"save", "Job":' + json.dumps(job) + "}")
    saved = get_job(farm, second)["Props"]
    assert (saved["Pri"], saved["Cmmt"], saved["Name"]) == (95, "rush: client review", "second")

    assert farm.client.put("/_farm/workers", json={"count": 1}).status_code == 200
    wait_stat(farm, first, 3)
    wait_stat(farm, second, 3)
    start = {j: get_tasks(farm, j)[0]["StartRen"] for j in (first, second)}
    assert start[second] < start[first]

    job["Props"]["Pri"] = 101
    too_high = farm.client.put("/api/jobs", content=json.dumps({"Command": "save", "Job": job}))
    assert too_high.status_code == 400 and "Pri" in too_high.text
    no_job = farm.client.put("/api/jobs", content='{"Command":"save"}')
    assert no_job.status_code == 400
    job["_id"] = "0123456789abcdef01234567"
    job["Props"]["Pri"] = 50
    unknown = farm.client.put("/api/jobs", content=json.dumps({"Command": "save", "Job": job}))
    assert unknown.status_code == 500


# -- Deadline/Jobs.py details and statistics; JobReports.py, TaskReports.py -------------


def test_statistics_and_details_of_a_finished_job(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("stats", "1-4", tmp_path, ChunkSize=2))
    wait_stat(farm, job_id, 3)
    # Deadline/Jobs.py CalculateJobStatistics: "/api/jobs?JobID=" + jobID + "&Statistics=true"
    response = farm.client.get(f"/api/jobs?JobID={job_id}&Statistics=true")
    assert response.status_code == 200
    statistics = response.json()
    assert statistics["JobID"] == job_id and statistics["Status"] == "Completed"
    assert (statistics["Tasks"], statistics["CompletedTasks"], statistics["FailedTasks"]) == (
        2,
        2,
        0,
    )
    assert statistics["Errors"] == 0 and statistics["Frames"] == "1-4"
    assert statistics["CompletedDate"] == get_job(farm, job_id)["DateComp"]

    # Deadline/Jobs.py GetJobDetails: "/api/jobs?JobID=" + ids + "&Details=true"
    other = submit(farm, blender_job("details", "1", tmp_path / "o", InitialStatus="Suspended"))
    details = farm.client.get(f"/api/jobs?JobID={job_id},{other}&Details=true").json()
    assert details.keys() == {job_id, other}
    assert details[job_id]["Job"]["_id"] == job_id
    assert details[other]["Statistics"]["SuspendedTasks"] == 1
    missing = farm.client.get("/api/jobs?JobID=0123456789abcdef01234567&Statistics=true")
    assert missing.status_code == 500


def test_job_and_task_report_data_variants(farm: Farm, tmp_path: Path) -> None:
    rule = {"match": "report-kinds", "frames": [2], "times": 1, "message": "texture missing"}
    assert farm.client.post("/_farm/faults", json=rule).status_code == 201
    job_id = submit(farm, blender_job("report-kinds", "1-3", tmp_path))
    wait_stat(farm, job_id, 3)

    def job_reports(data: str, extra: str = "") -> Any:
        # Deadline/JobReports.py: "/api/jobreports?JobID="+id+"&Data=<data>"
        response = farm.client.get(f"/api/jobreports?JobID={job_id}&Data={data}{extra}")
        assert response.status_code == 200, (data, response.text)
        return response.json()

    logs = job_reports("alllogcontents")  # GetAllJobLogReportsContents
    assert len(logs) == 3 and all(isinstance(text, str) for text in logs)
    [error] = job_reports("allerrorcontents")  # GetAllJobErrorReportsContents
    assert "texture missing" in error
    assert job_reports("allrequeuecontents") == []  # GetAllJobRequeueReportsContents
    assert len(job_reports("allcontents")) == 4  # GetAllJobReportsContents
    [report] = job_reports("error")
    # GetJobErrorReportContents: "&ReportID="+reportId+"&Data=errorcontents"
    one = job_reports("errorcontents", f"&ReportID={report['_id']}")
    assert one == error
    history = job_reports("history")  # GetJobHistoryEntries
    assert history[0]["Title"] == "Submitted"
    assert history[-1]["Title"] == "Completed"
    gone = farm.client.get(f"/api/jobreports?JobID={job_id}&Data=logcontents&ReportID=nope")
    assert gone.status_code == 500

    def task_reports(data: str) -> Any:
        # Deadline/TaskReports.py: "/api/taskreports?JobID="+jobId+"&TaskID="+str(taskId)
        # +"&Data=<data>"
        response = farm.client.get(f"/api/taskreports?JobID={job_id}&TaskID=1&Data={data}")
        assert response.status_code == 200
        return response.json()

    assert len(task_reports("alllogcontents")) == 1  # GetAllTaskLogReportsContents
    assert task_reports("allrequeuecontents") == []  # GetAllTaskRequeueReportsContents
    assert [r["Type"] for r in task_reports("all")] == [1, 0]  # GetAllTaskReports


# -- Deadline/Slaves.py, Pools.py, Groups.py ---------------------------------------------


def test_worker_info_settings_and_reports(farm: Farm, tmp_path: Path) -> None:
    job_id = submit(farm, blender_job("worker-reports", "1", tmp_path))
    wait_stat(farm, job_id, 3)
    [task] = get_tasks(farm, job_id)
    name = task["Slave"]
    # Deadline/Slaves.py GetSlaveInfo: "/api/slaves?Name="+name+"&Data=info" (then [0])
    [info] = farm.client.get(f"/api/slaves?Name={name}&Data=info").json()
    assert info["Name"] == name and "Info" not in info and info["CompletedTasks"] >= 1
    # GetSlavesSettings: "/api/slaves?Data=settings&Name=..."
    [settings] = farm.client.get(f"/api/slaves?Data=settings&Name={name}").json()
    assert settings["Name"] == name and isinstance(settings["Pools"], list)
    # GetSlaveInfoSettings: "/api/slaves?Data=infosettings&Name="+name
    [both] = farm.client.get(f"/api/slaves?Data=infosettings&Name={name}").json()
    assert (both["Info"]["Name"], both["Settings"]["Name"]) == (name, name)
    # GetSlaveReports / GetSlaveReportsContents: "/api/slaves?Name="+name+"&Data=reports"
    mine = farm.client.get(f"/api/slaves?Name={name}&Data=reports").json()
    assert job_id in {r["Job"] for r in mine} and {r["Slave"] for r in mine} == {name}
    texts = farm.client.get(f"/api/slaves?Name={name}&Data=reportcontents").json()
    assert len(texts) == len(mine) and all(isinstance(t, str) for t in texts)
    assert farm.client.get("/api/slaves?Data=nonsense").status_code == 400


def test_pools_and_groups_are_listed_added_assigned_and_removed(
    make_farm: Callable[..., Farm],
) -> None:
    farm = make_farm(workers=2)
    wait_for(lambda: len(farm.client.get("/api/slaves?NamesOnly=true").json()) == 2)
    for kind, field in (("pools", "Pool"), ("groups", "Group")):
        assert farm.client.get(f"/api/{kind}").json() == ["none"]  # GetPoolNames
        # Deadline/Pools.py AddPools: body = '{"Pool":'+json.dumps(names)+'}' (POST)
        added = farm.client.post(f"/api/{kind}", content=json.dumps({field: ["test", "Full"]}))
        assert (added.status_code, added.text) == (200, "Success")
        assert farm.client.get(f"/api/{kind}").json() == ["none", "full", "test"]
        # Deadline/Slaves.py AddPoolToSlave: '{"Slave":'+json.dumps(slave)+', "Pool":'+...+'}'
        put(farm, f"/api/{kind}", '{"Slave":"farm-w01", "' + field + '":"test"}')
        # GetSlaveNamesInPool: "/api/pools?Pool="+names
        assert farm.client.get(f"/api/{kind}?{field}=test").json() == ["farm-w01"]
        assert farm.client.get(f"/api/{kind}?{field}=none").json() == ["farm-w01", "farm-w02"]
        # SetPoolsForSlave: '{"OverWrite":true, "Slave":'+...+',"Pool":'+...+'}'
        put(
            farm,
            f"/api/{kind}",
            json.dumps({"OverWrite": True, "Slave": ["farm-w02"], field: ["full", "test"]}),
        )
        [settings] = farm.client.get("/api/slaves?Data=settings&Name=farm-w02").json()
        assert settings["Pools" if field == "Pool" else "Grps"] == ["full", "test"]
        [info] = farm.client.get("/api/slaves?Data=info&Name=farm-w02").json()
        assert info["Pools" if field == "Pool" else "Grps"] == "full,test"
        # RemovePoolFromSlave: DELETE "/api/pools?Slaves="+slaves+"&Pool="+pools
        assert farm.client.delete(f"/api/{kind}?Slaves=farm-w02&{field}=full").text == "Success"
        assert farm.client.get(f"/api/{kind}?{field}=full").json() == []
        # DeletePool: DELETE "/api/pools?Pool="+name: gone from the farm and its workers
        assert farm.client.delete(f"/api/{kind}?{field}=test").text == "Success"
        assert farm.client.get(f"/api/{kind}?{field}=test").json() == []
        assert farm.client.get(f"/api/{kind}").json() == ["none", "full"]
        # PurgePools: '{"ReplacementPool":"none", "Pool":[...], "OverWrite":true}' (PUT)
        purge = {"ReplacementPool": "none", field: ["gpu"], "OverWrite": True}
        put(farm, f"/api/{kind}", json.dumps(purge))
        assert farm.client.get(f"/api/{kind}").json() == ["none", "gpu"]
        assert farm.client.post(f"/api/{kind}", content=json.dumps({field: 3})).status_code == 400
        assert farm.client.delete(f"/api/{kind}").status_code == 400


def test_a_worker_serves_its_pools_in_order_and_only_its_groups(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=0)
    # Deadline/Slaves.py SetPoolsForSlave / SetGroupsForSlave (before the worker first runs)
    put(
        farm,
        "/api/pools",
        json.dumps({"OverWrite": True, "Slave": "farm-w01", "Pool": ["test", "full"]}),
    )
    put(farm, "/api/groups", json.dumps({"OverWrite": True, "Slave": "farm-w01", "Group": ["cpu"]}))
    jobs = {
        "any": submit(farm, blender_job("any", "1", tmp_path / "any", Priority=100)),
        "full": submit(farm, blender_job("full", "1", tmp_path / "full", Priority=90, Pool="full")),
        "test": submit(farm, blender_job("test", "1", tmp_path / "test", Priority=10, Pool="test")),
        "cpu": submit(farm, blender_job("cpu", "1", tmp_path / "cpu", Pool="test", Group="cpu")),
        "other": submit(farm, blender_job("other", "1", tmp_path / "other", Pool="other")),
        "gpu": submit(farm, blender_job("gpu", "1", tmp_path / "gpu", Group="gpu")),
    }
    assert farm.client.put("/_farm/workers", json={"count": 1}).status_code == 200
    for name in ("any", "full", "test", "cpu"):
        wait_stat(farm, jobs[name], 3)
    order = sorted(
        ("test", "cpu", "full", "any"), key=lambda n: get_tasks(farm, jobs[n])[0]["StartRen"]
    )
    # its first pool (higher priority first inside it), its second pool, then pool "none"
    assert order == ["cpu", "test", "full", "any"]
    # a pool and a group the worker does not have: never rendered
    assert [stats(farm, jobs[n]) for n in ("other", "gpu")] == [[2], [2]]

    put(farm, "/api/pools", json.dumps({"Slave": "farm-w01", "Pool": "other"}))
    put(farm, "/api/groups", json.dumps({"Slave": "farm-w01", "Group": "gpu"}))
    wait_stat(farm, jobs["other"], 3)
    wait_stat(farm, jobs["gpu"], 3)


def test_a_secondary_pool_comes_after_the_worker_s_pools_and_none(
    make_farm: Callable[..., Farm], tmp_path: Path
) -> None:
    farm = make_farm(workers=0)
    put(farm, "/api/pools", json.dumps({"OverWrite": True, "Slave": "farm-w01", "Pool": ["test"]}))
    second = submit(
        farm,
        blender_job("second", "1", tmp_path / "s", Priority=100, Pool="full", SecondaryPool="test"),
    )
    plain = submit(farm, blender_job("plain", "1", tmp_path / "p", Priority=1))
    assert farm.client.put("/_farm/workers", json={"count": 1}).status_code == 200
    wait_stat(farm, second, 3)
    wait_stat(farm, plain, 3)
    assert get_tasks(farm, plain)[0]["StartRen"] < get_tasks(farm, second)[0]["StartRen"]
