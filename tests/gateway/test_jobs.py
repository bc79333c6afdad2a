"""Jobs through the public API: envelope, ownership, validation, idempotency, limits."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import httpx

from contracts.jobs import JobQueued, JobSceneStaged, JobStepStarted, JobStepSucceeded, StepName
from libs.eventstore.store import NewEvent
from libs.runtime import ServiceRuntime
from tests.fixtures import Scenes, Users, job_spec


async def create(
    client: httpx.AsyncClient, scenes: Scenes, headers: dict[str, str], **spec: object
) -> dict[str, Any]:
    r = await client.post("/v1/jobs", json=await scenes.spec(headers, **spec), headers=headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_a_new_job_answers_with_the_full_envelope_and_is_readable_at_once(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job = await create(client, scenes, me)
    assert job["job_id"].startswith("job_")
    assert job["status"] == "submitted"
    assert job["frames_total"] == 24 and job["frames_done"] == 0
    assert job["cost"] == {
        "status": "pending",
        "estimate_credits": None,
        "estimate_low_credits": None,
        "estimate_high_credits": None,
        "estimate_unknown_reason": "not_estimated_yet",
        "held_credits": "0",
        "so_far_credits": "0",
        "captured_credits": "0",
        "cap_credits": "150.50",
        "awaiting_reason": None,
        "currency": "credits",
    }
    assert job["eta"] == {"eta_seconds": None, "eta_at": None, "reason": "not_started"}
    assert (job["scene_id"], job["scene_file"]) == (await scenes.of(me), "shot_010.blend")
    assert job["failure_code"] is None
    assert [s["name"] for s in job["steps"]] == [
        "stage_scene",
        "scene_check",
        "repath",
        "render_settings",
        "test_render",
        "render",
    ]
    assert job["allowed_actions"] == ["update", "update_render_settings", "test_render", "cancel"]
    got = await client.get(f"/v1/jobs/{job['job_id']}", headers=me)
    assert got.status_code == 200
    assert got.json() == job
    again = await client.get(f"/v1/jobs/{job['job_id']}", headers=me)
    assert again.content == got.content  # same state, same bytes


async def test_another_users_job_is_not_found(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    job = await create(client, scenes, users.new())
    r = await client.get(f"/v1/jobs/{job['job_id']}", headers=users.new())
    assert r.status_code == 404
    assert r.json()["code"] == "job_not_found"
    r = await client.post(f"/v1/jobs/{job['job_id']}/cancel", headers=users.new())
    assert r.status_code == 404


async def test_a_bad_frame_range_is_a_422_with_a_code_and_creates_nothing(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    r = await client.post(
        "/v1/jobs", json=job_spec(frame_range={"start": 50, "end": 10}), headers=me
    )
    assert r.status_code == 422
    body = r.json()
    assert body["code"] == "invalid_frame_range"
    assert body["retryable"] is False
    assert "before start" in body["message"]
    assert (await client.get("/v1/jobs", headers=me)).json()["items"] == []


async def test_bad_input_of_other_kinds_is_a_422_validation_failed(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    for bad in (
        job_spec(chunk_size=0),
        job_spec(resolution={"width": 1, "height": 1080}),
        job_spec(cost_cap_credits="-5"),
        job_spec(priority="whenever"),
        job_spec(unknown_field=1),
    ):
        r = await client.post("/v1/jobs", json=bad, headers=me)
        assert r.status_code == 422, bad
        assert r.json()["code"] == "validation_failed"
    r = await client.post(
        "/v1/jobs", content=b"{not json", headers={**me, "content-type": "application/json"}
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_failed"


async def test_repeating_a_post_with_the_same_idempotency_key_returns_the_same_job(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = {**users.new(), "Idempotency-Key": "create-shot-010"}
    spec = await scenes.spec(me)
    first = await client.post("/v1/jobs", json=spec, headers=me)
    second = await client.post("/v1/jobs", json=spec, headers=me)
    assert first.status_code == second.status_code == 201
    assert second.content == first.content
    assert second.headers["Idempotent-Replayed"] == "true"
    assert len((await client.get("/v1/jobs", headers=me)).json()["items"]) == 1
    other_body = await client.post("/v1/jobs", json={**spec, "name": "other"}, headers=me)
    assert other_body.status_code == 422
    assert other_body.json()["code"] == "idempotency_key_reused"


async def test_concurrent_repeats_with_one_idempotency_key_create_one_job(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = {**users.new(), "Idempotency-Key": "burst"}
    spec = await scenes.spec(me)
    answers = await asyncio.gather(
        *(client.post("/v1/jobs", json=spec, headers=me) for _ in range(5))
    )
    created = {r.json()["job_id"] for r in answers if r.status_code == 201}
    assert len(created) == 1
    assert all(
        r.status_code == 201 or r.json()["code"] == "idempotency_in_progress" for r in answers
    )
    assert len((await client.get("/v1/jobs", headers=me)).json()["items"]) == 1


async def test_the_active_job_limit_refuses_a_new_job_until_one_is_cancelled(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    jobs = [await create(client, scenes, me) for _ in range(3)]
    r = await client.post("/v1/jobs", json=await scenes.spec(me), headers=me)
    assert r.status_code == 409
    assert r.json()["code"] == "job_limit_reached"
    assert r.json()["details"] == {"active_jobs": 3, "limit": 3}
    cancelled = await client.post(f"/v1/jobs/{jobs[0]['job_id']}/cancel", headers=me)
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["allowed_actions"] == []
    await create(client, scenes, me)


async def test_cancelling_twice_is_harmless_and_a_finished_job_cannot_change(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job = await create(client, scenes, me)
    url = f"/v1/jobs/{job['job_id']}"
    assert (
        await client.post(f"{url}/cancel", json={"reason": "wrong camera"}, headers=me)
    ).status_code == 200
    again = await client.post(f"{url}/cancel", headers=me)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert again.json()["version"] == 3  # submitted, cancellation requested, cancelled
    r = await client.patch(url, json={"name": "x"}, headers=me)
    assert r.status_code == 409 and r.json()["code"] == "job_finished"


async def test_name_priority_and_cap_change_any_time_but_frames_only_before_rendering(
    client: httpx.AsyncClient,
    users: Users,
    scenes: Scenes,
    job_service: ServiceRuntime[Any],
) -> None:
    me = users.new()
    job = await create(client, scenes, me)
    url = f"/v1/jobs/{job['job_id']}"
    r = await client.patch(
        url, json={"frame_range": {"start": 1, "end": 48}, "chunk_size": 8}, headers=me
    )
    assert r.status_code == 200 and r.json()["frames_total"] == 48
    # The scheduler (a later service) drives the job into rendering; here we append its events.
    now = datetime.now(UTC)
    jid = job["job_id"]
    stream = f"job-{jid}"
    version = r.json()["version"]
    prep = (StepName.scene_check, StepName.repath, StepName.render_settings)
    events = [
        JobStepStarted(job_id=jid, step=StepName.stage_scene, at=now),
        JobSceneStaged(job_id=jid, scene_key="staged/x/main.blend", reused=False, at=now),
        JobStepSucceeded(job_id=jid, step=StepName.stage_scene, at=now),
        *[
            e
            for step in prep
            for e in (
                JobStepStarted(job_id=jid, step=step, at=now),
                JobStepSucceeded(job_id=jid, step=step, at=now),
            )
        ],
        JobQueued(job_id=jid, at=now),
        JobStepStarted(job_id=jid, step=StepName.render, at=now),
    ]
    [*_, last] = await job_service.store.append(stream, [NewEvent(e) for e in events], version)
    await asyncio.wait_for(job_service.tailers[1].wait_for(last.cursor), 5)
    r = await client.patch(
        url, json={"name": "final", "priority": "urgent", "cost_cap_credits": "99"}, headers=me
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["name"], body["priority"], body["cost"]["cap_credits"]) == (
        "final",
        "urgent",
        "99",
    )
    assert body["status"] == "rendering" and body["current_step"] == "render"
    assert body["progress_percent"] == 20.0  # staging and three preparation steps, 5 % each
    r = await client.patch(url, json={"frame_range": {"start": 1, "end": 10}}, headers=me)
    assert r.status_code == 409
    assert r.json()["code"] == "job_not_editable"
    r = await client.patch(url, json={"clear_cost_cap": True}, headers=me)
    assert r.json()["cost"]["cap_credits"] is None


async def test_jobs_are_listed_newest_first_by_cursor_pages_and_by_status(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    ids = [(await create(client, scenes, me, name=f"job {i}"))["job_id"] for i in range(3)]
    await client.post(f"/v1/jobs/{ids[1]}/cancel", headers=me)
    page1 = (await client.get("/v1/jobs?limit=2", headers=me)).json()
    page2 = (await client.get(f"/v1/jobs?limit=2&cursor={page1['next_cursor']}", headers=me)).json()
    assert [j["job_id"] for j in page1["items"] + page2["items"]] == ids[::-1]
    assert page2["next_cursor"] is None
    cancelled = (await client.get("/v1/jobs?status=cancelled", headers=me)).json()
    assert [j["job_id"] for j in cancelled["items"]] == [ids[1]]
    r = await client.get("/v1/jobs?cursor=%%%", headers=me)
    assert r.status_code == 422 and r.json()["code"] == "invalid_cursor"


async def test_a_jobs_history_lists_its_events_in_order_with_the_actor(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job = await create(client, scenes, me)
    await client.patch(f"/v1/jobs/{job['job_id']}", json={"name": "renamed"}, headers=me)
    await client.post(f"/v1/jobs/{job['job_id']}/cancel", headers=me)
    page = (await client.get(f"/v1/jobs/{job['job_id']}/events", headers=me)).json()
    assert [e["type"] for e in page["items"]] == [
        "job.JobSubmitted",
        "job.JobRenamed",
        "job.JobCancellationRequested",
        "job.JobCancelled",
    ]
    assert [e["version"] for e in page["items"]] == [1, 2, 3, 4]
    assert page["items"][0]["data"]["frame_range"] == {"start": 1, "end": 24, "step": 1}
    assert page["items"][1]["actor_id"] == page["items"][0]["actor_id"] is not None


async def test_a_callers_trace_continues_through_the_command_into_the_stored_events(
    client: httpx.AsyncClient,
    users: Users,
    scenes: Scenes,
    job_service: ServiceRuntime[Any],
) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {**users.new(), "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
    r = await client.post("/v1/jobs", json=await scenes.spec(headers), headers=headers)
    assert r.headers["x-trace-id"] == trace_id
    [submitted] = await job_service.store.read_stream(f"job-{r.json()['job_id']}")
    assert submitted.metadata["traceparent"].split("-")[1] == trace_id
    assert submitted.metadata["correlation_id"] == r.headers["x-request-id"]


async def test_a_clients_request_id_cannot_make_two_updates_look_like_one(
    client: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = {**users.new(), "X-Request-Id": "same-every-time"}
    job = await create(client, scenes, me)
    url = f"/v1/jobs/{job['job_id']}"
    await client.patch(url, json={"name": "first"}, headers=me)
    second = await client.patch(url, json={"name": "second"}, headers=me)
    assert second.json()["name"] == "second"
    assert second.headers["x-request-id"] != "same-every-time"
