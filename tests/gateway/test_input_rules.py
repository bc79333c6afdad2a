"""Bad input never reaches a database or a path: it answers 422 with the error shape.

Each case here answered 500 (PostgreSQL refusing NUL, an int4 overflow) or was accepted
(path traversal in scene keys, ``true`` as an integer) before the input rules.
"""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from contracts.errors import ErrorCode
from services.gateway.service import Gateway
from tests.fixtures import Scenes, Users, job_spec

ERROR_FIELDS = {"code", "message", "retryable", "details", "trace_id"}


def refused(r: httpx.Response, code: str = "validation_failed") -> dict[str, object]:
    """The answer is a 422 with ``code`` in the one error shape; returns the body."""
    assert r.status_code == 422, r.text
    body: dict[str, object] = r.json()
    assert set(body) == ERROR_FIELDS
    assert body["code"] == code and body["retryable"] is False
    assert ErrorCode(body["code"])
    return body


async def post_raw(
    api: httpx.AsyncClient, url: str, text: str, headers: dict[str, str] | None = None
) -> httpx.Response:
    """POST ``text`` as the JSON body, exactly as written (escapes and all)."""
    headers = {**(headers or {}), "content-type": "application/json"}
    return await api.post(url, content=text.encode(), headers=headers)


async def new_job(api: httpx.AsyncClient, scenes: Scenes, me: dict[str, str]) -> str:
    r = await api.post("/v1/jobs", json=await scenes.spec(me), headers=me)
    assert r.status_code == 201, r.text
    return str(r.json()["job_id"])


def cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


# --- text ----------------------------------------------------------------------------------


async def test_a_nul_in_the_login_email_is_refused_without_credentials(
    api: httpx.AsyncClient,
) -> None:
    r = await api.post("/v1/auth/login", json={"email": "ada\x00@studio.test", "password": "x"})
    body = refused(r)
    assert "body.email" in str(body["message"]) and "U+0000" in str(body["message"])


async def test_a_nul_in_the_display_name_is_refused_at_registration(
    api: httpx.AsyncClient,
) -> None:
    r = await api.post(
        "/v1/auth/register",
        json={"email": "nul@studio.test", "password": "long-enough-1", "display_name": "A\x00"},
    )
    refused(r)


async def test_a_nul_in_a_job_name_is_refused_on_create_and_update(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    refused(await api.post("/v1/jobs", json=job_spec(name="shot\x00010"), headers=me))
    job_id = await new_job(api, scenes, me)
    refused(await api.patch(f"/v1/jobs/{job_id}", json={"name": "x\x00"}, headers=me))


async def test_a_nul_in_the_camera_name_is_refused(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    spec = job_spec(render_settings={"camera": "Cam\x00"})
    body = refused(await api.post("/v1/jobs", json=spec, headers=me))
    assert "camera" in str(body["message"])
    job_id = await new_job(api, scenes, me)
    changes = {"render_settings": {"camera": "Cam\x1b[2J"}}
    refused(await api.patch(f"/v1/jobs/{job_id}", json=changes, headers=me))


async def test_a_nul_in_a_cancel_reason_is_refused_but_tabs_and_newlines_are_kept(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job_id = await new_job(api, scenes, me)
    refused(await api.post(f"/v1/jobs/{job_id}/cancel", json={"reason": "oops\x00"}, headers=me))
    r = await api.post(
        f"/v1/jobs/{job_id}/cancel", json={"reason": "wrong camera\n\tsee notes"}, headers=me
    )
    assert r.status_code == 200, r.text


async def test_a_nul_in_an_api_key_name_is_refused(api: httpx.AsyncClient, users: Users) -> None:
    r = await api.post(
        "/v1/api-keys", json={"name": "mcp\x00", "scopes": ["jobs:read"]}, headers=users.new()
    )
    refused(r)


@pytest.mark.parametrize("char", ["\x01", "\x08", "\x0b", "\x1b", "\x7f", "\x85", "\r", "\n"])
async def test_other_control_characters_are_refused_in_names(
    api: httpx.AsyncClient, users: Users, char: str
) -> None:
    refused(await api.post("/v1/jobs", json=job_spec(name=f"a{char}b"), headers=users.new()))


async def test_a_lone_surrogate_escaped_in_json_is_refused(
    api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    spec = json.dumps(job_spec(name="PLACEHOLDER")).replace("PLACEHOLDER", "\\ud800")
    refused(await post_raw(api, "/v1/jobs", spec, me))
    login = '{"email": "a\\udfff@studio.test", "password": "whatever"}'
    refused(await post_raw(api, "/v1/auth/login", login))


async def test_a_too_long_name_is_refused(api: httpx.AsyncClient, users: Users) -> None:
    refused(await api.post("/v1/jobs", json=job_spec(name="n" * 201), headers=users.new()))


async def test_unicode_text_that_is_not_a_control_character_is_accepted(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    spec = await scenes.spec(
        me, name="Szene 10 — Ünïcödé 😀", render_settings={"camera": "Kamera ✓"}
    )
    r = await api.post("/v1/jobs", json=spec, headers=me)
    assert r.status_code == 201, r.text
    assert r.json()["name"] == "Szene 10 — Ünïcödé 😀"


async def test_a_nul_in_a_path_parameter_is_refused_and_still_logged(
    api: httpx.AsyncClient, users: Users, gateway: Gateway
) -> None:
    me = users.new()
    refused(await api.get("/v1/jobs/job_x%00", headers=me))
    refused(await api.post("/v1/api-keys/key_x%00/revoke", headers=me))
    await gateway.action_log.flush()
    calls = [c.model_dump(mode="json") for c in await gateway.action_log.calls(None, None, 1000)]
    [call] = [c for c in calls if c["operation_id"] == "get_job"]
    assert call["path"] == "/v1/jobs/job_x\\x00"
    assert call["target_ids"] == {"job_id": "job_x\\x00"}


# --- integers bound to int4 columns --------------------------------------------------------


@pytest.mark.parametrize("value", [str(2**31), str(2**31 + 5), "9" * 30, "-1", "1e3"])
async def test_an_events_or_frames_cursor_beyond_int4_is_an_invalid_cursor(
    api: httpx.AsyncClient, users: Users, scenes: Scenes, value: str
) -> None:
    me = users.new()
    job_id = await new_job(api, scenes, me)
    for route in ("events", "frames"):
        r = await api.get(
            f"/v1/jobs/{job_id}/{route}", params={"cursor": cursor(value)}, headers=me
        )
        refused(r, "invalid_cursor")


async def test_the_largest_int4_cursor_is_a_valid_empty_page(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    job_id = await new_job(api, scenes, me)
    for route in ("events", "frames"):
        r = await api.get(
            f"/v1/jobs/{job_id}/{route}", params={"cursor": cursor(str(2**31 - 1))}, headers=me
        )
        assert r.status_code == 200, r.text
        page = r.json()
        assert (page["items"], page["next_cursor"]) == ([], None)


@pytest.mark.parametrize("limit", [str(2**31), "0", "201", "-1", "true", "1.5"])
async def test_a_limit_out_of_bounds_is_refused(
    api: httpx.AsyncClient, users: Users, limit: str
) -> None:
    refused(await api.get("/v1/jobs", params={"limit": limit}, headers=users.new()))


# --- scene ids -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scene_id",
    [
        "scenes/shot_010/main.blend",  # a key: jobs name uploads now, not paths
        "../../etc/passwd",
        "job_01M81S2PVRHA9QXWSPM9N7M3BT",  # an id, but not of an upload or a manifest
        "upl_01M81S2PVRHA9QXWSPM9N7M3B",  # one character short
        "upl_01m81s2pvrha9qxwspm9n7m3bt",  # lower case
        "upl_01M81S2PVRHA9QXWSPM9N7M3BI",  # I is not Crockford base32
        "upl_01M81S2PVRHA9QXWSPM9N7M3B\x00",
        "",
    ],
)
async def test_a_scene_id_that_is_not_an_upload_or_manifest_id_is_refused(
    api: httpx.AsyncClient, users: Users, scene_id: str
) -> None:
    r = await api.post("/v1/jobs", json=job_spec(scene_id=scene_id), headers=users.new())
    body = refused(r)
    assert "body.scene_id" in str(body["message"])


async def test_a_well_formed_scene_id_nobody_uploaded_is_not_found_not_a_500(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    r = await api.post("/v1/jobs", json=job_spec(scene_id="man_" + "Z" * 26), headers=users.new())
    assert r.status_code == 404 and r.json()["code"] == "scene_not_found"


# --- strict JSON types ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"chunk_size": True},
        {"chunk_size": "4"},
        {"chunk_size": 4.0},
        {"frame_range": {"start": "1", "end": 24}},
        {"frame_range": {"start": 1, "end": True}},
        {"resolution": {"width": "1920", "height": 1080}},
        {"render_settings": {"samples": False}},
    ],
)
async def test_an_integer_field_refuses_booleans_strings_and_floats(
    api: httpx.AsyncClient, users: Users, overrides: dict[str, object]
) -> None:
    refused(await api.post("/v1/jobs", json=job_spec(**overrides), headers=users.new()))


@pytest.mark.parametrize("value", ["true", 1, 0, "false", None])
async def test_a_boolean_field_refuses_strings_numbers_and_null(
    api: httpx.AsyncClient, users: Users, scenes: Scenes, value: object
) -> None:
    me = users.new()
    job_id = await new_job(api, scenes, me)
    refused(await api.patch(f"/v1/jobs/{job_id}", json={"clear_cost_cap": value}, headers=me))
    r = await api.patch(f"/v1/jobs/{job_id}", json={"clear_cost_cap": True}, headers=me)
    assert r.status_code == 200, r.text


async def test_a_date_time_must_be_a_string(api: httpx.AsyncClient, users: Users) -> None:
    body = {"name": "mcp", "scopes": ["jobs:read"], "expires_at": 1_900_000_000}
    refused(await api.post("/v1/api-keys", json=body, headers=users.new()))


async def test_credits_stay_decimal_strings(
    api: httpx.AsyncClient, users: Users, scenes: Scenes
) -> None:
    me = users.new()
    r = await api.post("/v1/jobs", json=await scenes.spec(me, cost_cap_credits="99.5"), headers=me)
    assert r.status_code == 201, r.text
    assert r.json()["cost"]["cap_credits"] == "99.5"


@pytest.mark.parametrize(
    "quality",
    [
        {"resolution_percent": 5},
        {"resolution_percent": 101},
        {"resolution_percent": "50"},
        {"samples": 0},
        {"samples": True},
        {"denoise": True},
    ],
)
async def test_a_test_renders_quality_out_of_bounds_is_refused_and_nothing_is_started(
    api: httpx.AsyncClient, users: Users, scenes: Scenes, quality: dict[str, object]
) -> None:
    me = users.new()
    job_id = await new_job(api, scenes, me)
    body = refused(
        await api.post(f"/v1/jobs/{job_id}/test-render", json={"quality": quality}, headers=me)
    )
    assert "quality" in str(body["message"])
    job = (await api.get(f"/v1/jobs/{job_id}", headers=me)).json()
    assert job["test_render"] is None
