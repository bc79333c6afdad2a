"""The upload API's rules at the gateway: ownership, input, idempotency, pages, schemas."""

from __future__ import annotations

import base64
import os
from typing import Any

import httpx
import jsonschema  # type: ignore[import-untyped]

from contracts.errors import ErrorCode
from contracts.uploads import MAX_OBJECT_BYTES
from services.gateway.service import Gateway
from tests.fixtures import Users
from tests.upload.protocol import Uploader, sha256_hex

ERROR_FIELDS = {"code", "message", "retryable", "details", "trace_id"}
SHA = "0" * 64


def file(**overrides: object) -> dict[str, object]:
    return {"file_name": "shot_010.blend", "size_bytes": 1000, "sha256": SHA, **overrides}


def manifest(*files: dict[str, object], main_file: str = "a.blend") -> dict[str, object]:
    return {"main_file": main_file, "files": list(files)}


def entry(path: str = "a.blend", size: int = 10, sha: str = SHA) -> dict[str, object]:
    return {"path": path, "size_bytes": size, "sha256": sha}


def cursor(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=")


def refused(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body: dict[str, Any] = r.json()
    assert set(body) == ERROR_FIELDS and body["code"] == code
    assert ErrorCode(body["code"]) and body["retryable"] is False
    return body


async def test_another_users_upload_and_manifest_answer_exactly_like_missing_ones(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    owner = Uploader(upload_api, users.new())
    session = await owner.create("shot.blend", os.urandom(100))
    created = await upload_api.post("/v1/manifests", json=manifest(entry()), headers=owner.headers)
    theirs = {"upload": session["upload_id"], "manifest": created.json()["manifest_id"]}
    missing = {"upload": "upl_01MISSING", "manifest": "man_01MISSING"}
    stranger = users.new()
    parts = {"parts": [{"part_number": 1, "sha256": SHA}]}
    for ids in (theirs, missing):
        u, m = ids["upload"], ids["manifest"]
        calls = [
            ("GET", f"/v1/uploads/{u}", None, "upload"),
            ("GET", f"/v1/uploads/{u}/parts", None, "upload"),
            ("POST", f"/v1/uploads/{u}/part-urls", parts, "upload"),
            ("POST", f"/v1/uploads/{u}/complete", None, "upload"),
            ("POST", f"/v1/uploads/{u}/abort", None, "upload"),
            ("GET", f"/v1/manifests/{m}", None, "manifest"),
            ("POST", f"/v1/manifests/{m}/complete", None, "manifest"),
        ]
        for method, url, body, kind in calls:
            r = await upload_api.request(method, url, json=body, headers=stranger)
            answer = refused(r, 404, f"{kind}_not_found")
            assert answer["details"] == {f"{kind}_id": ids[kind]}
            assert answer["message"] == f"no {kind} {ids[kind]}"
    # The owner's session is untouched.
    assert (await owner.get(session["upload_id"]))["status"] == "uploading"


BAD_UPLOADS = {
    "empty file name": file(file_name=""),
    "a path, not a name": file(file_name="scenes/shot.blend"),
    "a backslash path": file(file_name="scenes\\shot.blend"),
    "a dot-dot name": file(file_name=".."),
    "a name over 255 characters": file(file_name="a" * 256),
    "a NUL in the name": file(file_name="shot\x00.blend"),
    "a newline in the name": file(file_name="shot\n.blend"),
    "no bytes": file(size_bytes=0),
    "negative size": file(size_bytes=-1),
    "size as text": file(size_bytes="1000"),
    "size as a boolean": file(size_bytes=True),
    "fractional size": file(size_bytes=1.5),
    "larger than any plan": file(size_bytes=MAX_OBJECT_BYTES + 1),
    "uppercase hex": file(sha256="A" * 64),
    "short hash": file(sha256="0" * 63),
    "not hex": file(sha256="g" * 64),
    "a media type with parameters": file(content_type="text/plain; charset=utf-8"),
    "not a media type": file(content_type="blender"),
    "an unknown field": file(bucket="someone-elses"),
    "missing size": {"file_name": "a.blend", "sha256": SHA},
}


async def test_every_bad_upload_is_refused_before_anything_is_created(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    for case, body in BAD_UPLOADS.items():
        r = await upload_api.post("/v1/uploads", json=body, headers=me)
        assert r.status_code == 422, case
        refused(r, 422, "validation_failed")
    assert (await upload_api.get("/v1/uploads", headers=me)).json()["items"] == []


BAD_PART_URLS = {
    "no parts": {"parts": []},
    "101 parts": {"parts": [{"part_number": n, "sha256": SHA} for n in range(1, 102)]},
    "a part twice": {"parts": [{"part_number": 1, "sha256": SHA}] * 2},
    "part zero": {"parts": [{"part_number": 0, "sha256": SHA}]},
    "past S3's last part": {"parts": [{"part_number": 10_001, "sha256": SHA}]},
    "a bad part hash": {"parts": [{"part_number": 1, "sha256": "xyz"}]},
    "no hash": {"parts": [{"part_number": 1}]},
}


async def test_every_bad_part_url_request_is_refused(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", os.urandom(100))
    for case, body in BAD_PART_URLS.items():
        r = await upload_api.post(
            f"/v1/uploads/{session['upload_id']}/part-urls", json=body, headers=me.headers
        )
        assert r.status_code == 422, case
        refused(r, 422, "validation_failed")


async def test_part_numbers_outside_the_sessions_plan_are_refused_with_their_numbers(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", os.urandom(100))  # one part
    r = await upload_api.post(
        f"/v1/uploads/{session['upload_id']}/part-urls",
        json={"parts": [{"part_number": n, "sha256": SHA} for n in (1, 2, 7)]},
        headers=me.headers,
    )
    body = refused(r, 422, "invalid_part_number")
    assert body["details"] == {
        "upload_id": session["upload_id"],
        "part_count": 1,
        "part_numbers": [2, 7],
    }


BAD_MANIFESTS = {
    "no files": manifest(),
    "a dot-dot path": manifest(entry(), entry("../../etc/passwd")),
    "an absolute path": manifest(entry(), entry("/etc/passwd")),
    "a backslash path": manifest(entry(), entry("tex\\wood.png")),
    "an empty segment": manifest(entry(), entry("tex//wood.png")),
    "a space in a path": manifest(entry(), entry("tex/old wood.png")),
    "a path twice": manifest(entry(), entry()),
    "main file not listed": manifest(entry(), main_file="b.blend"),
    "one content, two sizes": manifest(entry(), entry("b.png", size=11)),
    "an empty file": manifest(entry(size=0)),
    "a bad hash": manifest(entry(sha="nope")),
    "10,001 files": manifest(
        *(entry(f"f/{i}.png", sha=f"{i:064x}") for i in range(10_001)), main_file="f/0.png"
    ),
}


async def test_every_bad_manifest_is_refused_before_anything_is_created(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    for case, body in BAD_MANIFESTS.items():
        r = await upload_api.post("/v1/manifests", json=body, headers=me)
        assert r.status_code == 422, case
        refused(r, 422, "validation_failed")
    assert (await upload_api.get("/v1/uploads", headers=me)).json()["items"] == []


BAD_QUERIES = {
    "list: limit 0": ("/v1/uploads?limit=0", "validation_failed"),
    "list: limit 201": ("/v1/uploads?limit=201", "validation_failed"),
    "list: an unknown status": ("/v1/uploads?status=lost", "validation_failed"),
    "list: a forged cursor": ("/v1/uploads?cursor=!!", "invalid_cursor"),
    "parts: limit 1001": ("/v1/uploads/{u}/parts?limit=1001", "validation_failed"),
    "parts: a text cursor": (f"/v1/uploads/{{u}}/parts?cursor={cursor('x')}", "invalid_cursor"),
    "parts: past the last part": (
        f"/v1/uploads/{{u}}/parts?cursor={cursor('10001')}",
        "invalid_cursor",
    ),
    "an id with a slash": ("/v1/uploads/upl%2F1", "not_found"),
    "an id with a quote": ("/v1/uploads/upl'1", "validation_failed"),
    "a manifest id too long": ("/v1/manifests/" + "m" * 65, "validation_failed"),
}


async def test_bad_paths_and_query_parameters_are_refused_with_a_code(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    session = await me.create("shot.blend", os.urandom(100))
    for case, (url, code) in BAD_QUERIES.items():
        r = await upload_api.get(url.format(u=session["upload_id"]), headers=me.headers)
        assert 400 <= r.status_code < 500 and r.json()["code"] == code, (case, r.text)


async def test_a_repeated_create_with_the_same_key_opens_one_session(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = users.new()
    key = {"Idempotency-Key": "upload-shot-010"}
    first = await upload_api.post("/v1/uploads", json=file(), headers={**me, **key})
    again = await upload_api.post("/v1/uploads", json=file(), headers={**me, **key})
    assert first.status_code == again.status_code == 201
    assert again.content == first.content and again.headers["Idempotent-Replayed"] == "true"
    other = await upload_api.post("/v1/uploads", json=file(size_bytes=5), headers={**me, **key})
    refused(other, 422, "idempotency_key_reused")
    assert len((await upload_api.get("/v1/uploads", headers=me)).json()["items"]) == 1


async def test_uploads_are_listed_newest_first_by_status_with_a_cursor(
    upload_api: httpx.AsyncClient, users: Users
) -> None:
    me = Uploader(upload_api, users.new())
    ids = [(await me.create(f"{i}.blend", os.urandom(10)))["upload_id"] for i in range(3)]
    await me.abort(ids[1])
    page = (await upload_api.get("/v1/uploads?limit=2", headers=me.headers)).json()
    assert [u["upload_id"] for u in page["items"]] == [ids[2], ids[1]]
    rest = await upload_api.get(
        "/v1/uploads", params={"limit": 2, "cursor": page["next_cursor"]}, headers=me.headers
    )
    assert [u["upload_id"] for u in rest.json()["items"]] == [ids[0]]
    assert rest.json()["next_cursor"] is None
    aborted = (await upload_api.get("/v1/uploads?status=aborted", headers=me.headers)).json()
    assert [u["upload_id"] for u in aborted["items"]] == [ids[1]]
    again = await upload_api.get("/v1/uploads?limit=2", headers=me.headers)
    assert again.json() == page  # the same state gives the same answer


async def test_answers_validate_against_their_declared_openapi_schema(
    gateway: Gateway, upload_api: httpx.AsyncClient, users: Users
) -> None:
    spec = gateway.app.openapi()
    components = {"components": spec["components"]}
    me = Uploader(upload_api, users.new())
    data = os.urandom(100)
    session = await me.create("shot.blend", data)
    urls = await upload_api.post(
        f"/v1/uploads/{session['upload_id']}/part-urls",
        json={"parts": [{"part_number": 1, "sha256": sha256_hex(data)}]},
        headers=me.headers,
    )
    answers = {
        "UploadView": session,
        "UploadPartUrls": urls.json(),
        "UploadPartsPage": (
            await upload_api.get(f"/v1/uploads/{session['upload_id']}/parts", headers=me.headers)
        ).json(),
        "UploadPage": (await upload_api.get("/v1/uploads", headers=me.headers)).json(),
        "ManifestView": (
            await upload_api.post("/v1/manifests", json=manifest(entry()), headers=me.headers)
        ).json(),
    }
    for name, body in answers.items():
        jsonschema.validate(body, {**spec["components"]["schemas"][name], **components})
    operations = {
        op["operationId"]
        for path, item in spec["paths"].items()
        if path.startswith(("/v1/uploads", "/v1/manifests"))
        for op in item.values()
    }
    assert operations == {
        "create_upload",
        "list_uploads",
        "get_upload",
        "list_upload_parts",
        "create_upload_part_urls",
        "complete_upload",
        "abort_upload",
        "create_manifest",
        "get_manifest",
        "complete_manifest",
    }
