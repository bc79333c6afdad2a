"""Uploads into object storage: upload sessions (a file sent in parts through presigned
URLs) and manifests (a scene as a list of files, each sent once per user).

The gateway never touches the store and never carries file bytes: it sends commands to the
upload service and reads its read models; clients PUT the parts straight to the store.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from contracts.errors import (
    AssetSizeConflict,
    ConcurrencyConflict,
    IdempotencyInProgress,
    IdempotencyKeyReused,
    InsufficientScope,
    InternalError,
    InvalidCursor,
    InvalidPartNumber,
    ManifestIncomplete,
    ManifestNotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StorageUnavailable,
    UploadBytesLimitReached,
    UploadIncomplete,
    UploadNotFound,
    UploadNotOpen,
    UploadSessionExpired,
    UploadSessionLimitReached,
    UploadTooLarge,
)
from contracts.identity import Scope
from contracts.text import ID_PATTERN
from contracts.uploads import (
    MAX_PARTS,
    MAX_PARTS_PAGE,
    AbortUpload,
    CompleteManifest,
    CompleteUpload,
    CreateManifestRequest,
    CreatePartUrlsRequest,
    CreateUploadRequest,
    ListUploadParts,
    ManifestAccepted,
    ManifestView,
    RefreshUpload,
    SignUploadParts,
    StartUpload,
    StoredParts,
    SubmitManifest,
    UploadAccepted,
    UploadKind,
    UploadPage,
    UploadPartsPage,
    UploadPartUrls,
    UploadStatus,
    UploadView,
)
from libs.ids import new_id
from services.gateway.access import requires
from services.gateway.api import (
    IdempotencyKey,
    errors,
    gateway,
    idempotent,
    json_response,
    principal,
    set_targets,
)
from services.gateway.readmodels import decode_cursor, encode_cursor, int_cursor

if TYPE_CHECKING:
    from services.gateway.service import Gateway

router = APIRouter(tags=["uploads"])

#: How long a command's answer waits for the read model to show the change (as for jobs).
_CATCH_UP_SECONDS = 5.0
#: A manifest lacking thousands of files opens as many sessions in one command: it may
#: take longer than other commands, and its sessions' views follow its own.
_MANIFEST_SECONDS = 60.0
#: How long complete_upload waits for the store to join the parts before it answers
#: ``completing`` (a big file takes the store longer: then the client polls get_upload).
_JOIN_WAIT_SECONDS = 10.0

UploadId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="Upload id returned by create_upload (or listed by create_manifest).",
    ),
]
ManifestId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=64,
        pattern=ID_PATTERN,
        description="Manifest id returned by create_manifest.",
    ),
]
Cursor = Annotated[
    str | None,
    Query(max_length=300, description="next_cursor from the previous page; omit for the first."),
]
#: What every operation on one session may answer besides its own errors.
SESSION_ERRORS = (UploadNotFound, InsufficientScope, StorageUnavailable, InternalError)


async def _upload(gw: Gateway, upload_id: str, owner_id: str, min_version: int = 0) -> UploadView:
    """The caller's session; with ``min_version``, once its view shows that version."""
    if min_version:
        found = await gw.uploads.wait_for_upload(
            upload_id, owner_id, min_version, _CATCH_UP_SECONDS
        )
    else:
        found = await gw.uploads.upload(upload_id, owner_id)
    if found is not None and found.version >= min_version:
        return found
    if min_version:
        raise ServiceUnavailable(
            f"upload {upload_id} was changed but its view is still catching up; retry the"
            " same request (with the same Idempotency-Key)"
        )
    raise UploadNotFound(f"no upload {upload_id}", upload_id=upload_id)


async def _manifest(
    gw: Gateway, manifest_id: str, owner_id: str, min_version: int = 0
) -> ManifestView:
    if min_version:
        found = await gw.uploads.wait_for_manifest(
            manifest_id, owner_id, min_version, _CATCH_UP_SECONDS
        )
    else:
        found = await gw.uploads.manifest(manifest_id, owner_id)
    if found is not None and found.version >= min_version:
        return found
    if min_version:
        raise ServiceUnavailable(
            f"manifest {manifest_id} was changed but its view is still catching up; retry"
            " the same request (with the same Idempotency-Key)"
        )
    raise ManifestNotFound(f"no manifest {manifest_id}", manifest_id=manifest_id)


# --- upload sessions -----------------------------------------------------------------------


@router.post(
    "/v1/uploads",
    operation_id="create_upload",
    dependencies=[requires(Scope.jobs_write)],
    summary="Start an upload",
    description=(
        "Open an upload session for one file: declare its name, exact size and SHA-256."
        " The server fixes the part plan (part_size_bytes, part_count: parts of at least"
        " 64 MiB, at most 10,000 of them) and answers 201 with the session (status"
        " uploading, expires_at). Then ask create_upload_part_urls for URLs, PUT the parts"
        " to them, and call complete_upload. Counts against your open sessions and bytes in"
        " flight (upload_session_limit_reached, upload_bytes_limit_reached)."
    ),
    status_code=201,
    response_model=UploadView,
    responses=errors(
        UploadTooLarge,
        UploadSessionLimitReached,
        UploadBytesLimitReached,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        StorageUnavailable,
    ),
)
async def create_upload(
    request: Request, body: CreateUploadRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = StartUpload(upload_id=new_id("upl"), owner_id=p.user_id, file=body)
        accepted = await gw.commands.send(
            cmd, UploadAccepted, command_id=command_id, actor=p.actor()
        )
        set_targets(request, upload_id=accepted.upload_id)
        view = await _upload(gw, accepted.upload_id, p.user_id, accepted.version)
        return 201, view.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "create_upload", run)


@router.get(
    "/v1/uploads",
    operation_id="list_uploads",
    dependencies=[requires(Scope.jobs_read)],
    summary="List uploads",
    description=(
        "Your upload sessions, newest first, optionally only those in one status. Returns a"
        " page of sessions (progress as last checked; get_upload checks again) and"
        " next_cursor (null on the last page)."
    ),
    response_model=UploadPage,
    responses=errors(InvalidCursor, InsufficientScope),
)
async def list_uploads(
    request: Request,
    status: Annotated[
        UploadStatus | None, Query(description="Only sessions in this status.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="Page size, 1-200.")] = 50,
    cursor: Cursor = None,
) -> UploadPage:
    gw, p = gateway(request), principal(request)
    rows = await gw.uploads.uploads(p.user_id, status, decode_cursor(cursor), limit + 1)
    items = rows[:limit]
    more = len(rows) > limit
    return UploadPage(items=items, next_cursor=encode_cursor(items[-1].upload_id) if more else None)


@router.get(
    "/v1/uploads/{upload_id}",
    operation_id="get_upload",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get an upload",
    description=(
        "The upload session, with its progress checked against the store now while it is"
        " open (parts_confirmed, bytes_confirmed, progress_percent: what the store holds)."
        " Another user's upload answers upload_not_found."
    ),
    response_model=UploadView,
    responses=errors(*SESSION_ERRORS, ConcurrencyConflict),
)
async def get_upload(request: Request, upload_id: UploadId) -> Response:
    gw, p = gateway(request), principal(request)
    view = await _upload(gw, upload_id, p.user_id)
    if view.status is UploadStatus.uploading:
        accepted = await gw.commands.send(
            RefreshUpload(upload_id=upload_id, owner_id=p.user_id),
            UploadAccepted,
            command_id=f"get_upload:{request.state.request_id}",
            actor=p.actor(),
        )
        if accepted.version > view.version:
            view = await _upload(gw, upload_id, p.user_id, accepted.version)
    return json_response(view.model_dump_json())


@router.get(
    "/v1/uploads/{upload_id}/parts",
    operation_id="list_upload_parts",
    dependencies=[requires(Scope.jobs_read)],
    summary="List an upload's stored parts",
    description=(
        "The parts the store holds for an open session, by part number, with each part's"
        " size and SHA-256 as the store checked them (never what a client claimed). To"
        " resume an interrupted upload, send only the parts missing here. Once the session"
        " is completed, aborted or expired, items is empty and status says which."
        " Paginated with next_cursor."
    ),
    response_model=UploadPartsPage,
    responses=errors(*SESSION_ERRORS, InvalidCursor),
)
async def list_upload_parts(
    request: Request,
    upload_id: UploadId,
    limit: Annotated[
        int,
        Query(ge=1, le=MAX_PARTS_PAGE, description=f"Page size, 1-{MAX_PARTS_PAGE}."),
    ] = MAX_PARTS_PAGE,
    cursor: Cursor = None,
) -> UploadPartsPage:
    gw, p = gateway(request), principal(request)
    after = int_cursor(cursor) or 0
    if after > MAX_PARTS:
        raise InvalidCursor("the cursor is not one we issued")
    page = await gw.commands.send(
        ListUploadParts(
            upload_id=upload_id, owner_id=p.user_id, after_part_number=after, limit=limit
        ),
        StoredParts,
        command_id=f"list_upload_parts:{request.state.request_id}",
        actor=p.actor(),
    )
    return UploadPartsPage(
        upload_id=page.upload_id,
        status=page.status,
        part_size_bytes=page.part_size_bytes,
        part_count=page.part_count,
        items=page.items,
        next_cursor=None
        if page.next_part_number is None
        else encode_cursor(str(page.next_part_number)),
    )


@router.post(
    "/v1/uploads/{upload_id}/part-urls",
    operation_id="create_upload_part_urls",
    dependencies=[requires(Scope.jobs_write)],
    summary="Get URLs to upload parts",
    description=(
        "Presigned URLs to PUT 1 to 100 parts straight to the object store. Give each"
        " part's number and the SHA-256 of its bytes; each URL is signed with that part's"
        " exact length (part_size_bytes, the last part the remainder) and SHA-256, so the"
        " store refuses other bytes (400 BadDigest) or another length (403). Send the bytes"
        " with the headers given. URLs expire at expires_at (at most an hour by default,"
        " never after the session): ask again, with a new Idempotency-Key, for fresh ones."
    ),
    response_model=UploadPartUrls,
    responses=errors(
        *SESSION_ERRORS,
        InvalidPartNumber,
        UploadNotOpen,
        UploadSessionExpired,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def create_upload_part_urls(
    request: Request,
    upload_id: UploadId,
    body: CreatePartUrlsRequest,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        urls = await gw.commands.send(
            SignUploadParts(upload_id=upload_id, owner_id=p.user_id, parts=body.parts),
            UploadPartUrls,
            command_id=command_id,
            actor=p.actor(),
        )
        return 200, urls.model_dump_json().encode()

    return await idempotent(
        request, p.idempotency_scope, idempotency_key, "create_upload_part_urls", run
    )


@router.post(
    "/v1/uploads/{upload_id}/complete",
    operation_id="complete_upload",
    dependencies=[requires(Scope.jobs_write)],
    summary="Complete an upload",
    description=(
        "Finish the upload once every part is sent. The server checks with the store that"
        " every part of the plan is there with its exact size (else upload_incomplete,"
        " listing the missing part numbers as ranges and any part of the wrong size), then"
        " the store joins them and the object's size is checked. Returns the session with"
        " status completed; for a big file the store may take longer than this answer waits,"
        " and the status is completing: poll get_upload until it is completed (or, if the"
        " store refused the parts, uploading again). The store checked each part's SHA-256"
        " when it was sent; the whole file's SHA-256 is checked when the scene is staged for"
        " the farm. Completing an upload that is completed or being completed answers the"
        " same."
    ),
    response_model=UploadView,
    responses=errors(
        *SESSION_ERRORS,
        UploadIncomplete,
        UploadNotOpen,
        UploadSessionExpired,
        ConcurrencyConflict,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def complete_upload(
    request: Request, upload_id: UploadId, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        accepted = await gw.commands.send(
            CompleteUpload(upload_id=upload_id, owner_id=p.user_id),
            UploadAccepted,
            command_id=command_id,
            actor=p.actor(),
        )
        view = await _upload(gw, upload_id, p.user_id, accepted.version)
        # The store is joining the parts; or an asset is joined, and shown as held next.
        if view.status is UploadStatus.completing or view.kind is UploadKind.asset:
            view = (
                await gw.uploads.wait_until_settled(upload_id, p.user_id, _JOIN_WAIT_SECONDS)
                or view
            )
        return 200, view.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "complete_upload", run)


@router.post(
    "/v1/uploads/{upload_id}/abort",
    operation_id="abort_upload",
    dependencies=[requires(Scope.jobs_write)],
    summary="Abort an upload",
    description=(
        "Give up an open upload: the store deletes its parts and the session no longer"
        " counts against your quotas. Returns the session, status aborted. Aborting an"
        " aborted or expired session changes nothing; a completed one answers"
        " upload_not_open."
    ),
    response_model=UploadView,
    responses=errors(
        *SESSION_ERRORS,
        UploadNotOpen,
        ConcurrencyConflict,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def abort_upload(
    request: Request, upload_id: UploadId, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        accepted = await gw.commands.send(
            AbortUpload(upload_id=upload_id, owner_id=p.user_id),
            UploadAccepted,
            command_id=command_id,
            actor=p.actor(),
        )
        view = await _upload(gw, upload_id, p.user_id, accepted.version)
        return 200, view.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "abort_upload", run)


# --- manifests -----------------------------------------------------------------------------


@router.post(
    "/v1/manifests",
    operation_id="create_manifest",
    dependencies=[requires(Scope.jobs_write)],
    summary="Send a scene as a manifest",
    description=(
        "Declare a scene as the list of its files (relative path, size, SHA-256; at most"
        " 10,000, each path once, main_file among them). Answers 201 with the manifest:"
        " files_present counts the files whose content you already hold (never sent"
        " twice), and missing lists each content you lack with the upload session to send"
        " it through (an open one is reused). Upload those like any session, then call"
        " complete_manifest. Only your own files count: another user's copy of a file is"
        " never used, nor revealed. A manifest whose paths are too long to pass on"
        " (8 MB as JSON) answers payload_too_large: split the scene."
    ),
    status_code=201,
    response_model=ManifestView,
    responses=errors(
        UploadTooLarge,
        AssetSizeConflict,
        UploadSessionLimitReached,
        UploadBytesLimitReached,
        PayloadTooLarge,
        InsufficientScope,
        IdempotencyKeyReused,
        IdempotencyInProgress,
        StorageUnavailable,
        InternalError,
    ),
)
async def create_manifest(
    request: Request, body: CreateManifestRequest, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        cmd = SubmitManifest(manifest_id=new_id("man"), owner_id=p.user_id, manifest=body)
        accepted = await gw.commands.send(
            cmd,
            ManifestAccepted,
            command_id=command_id,
            actor=p.actor(),
            timeout_seconds=_MANIFEST_SECONDS,
        )
        set_targets(request, manifest_id=accepted.manifest_id)
        view = await _manifest(gw, accepted.manifest_id, p.user_id, accepted.version)
        return 201, view.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "create_manifest", run)


@router.get(
    "/v1/manifests/{manifest_id}",
    operation_id="get_manifest",
    dependencies=[requires(Scope.jobs_read)],
    summary="Get a manifest",
    description=(
        "The manifest with which of its files you hold now (files_present) and which you"
        " still lack (missing, each with its upload session). Another user's manifest"
        " answers manifest_not_found."
    ),
    response_model=ManifestView,
    responses=errors(ManifestNotFound, InsufficientScope),
)
async def get_manifest(request: Request, manifest_id: ManifestId) -> Response:
    gw, p = gateway(request), principal(request)
    return json_response((await _manifest(gw, manifest_id, p.user_id)).model_dump_json())


@router.post(
    "/v1/manifests/{manifest_id}/complete",
    operation_id="complete_manifest",
    dependencies=[requires(Scope.jobs_write)],
    summary="Complete a manifest",
    description=(
        "Check that you hold every file of the manifest; returns it with status complete,"
        " or manifest_incomplete listing the contents still missing (with their upload"
        " sessions). Completing a complete manifest answers the same."
    ),
    response_model=ManifestView,
    responses=errors(
        ManifestNotFound,
        ManifestIncomplete,
        InsufficientScope,
        ConcurrencyConflict,
        IdempotencyKeyReused,
        IdempotencyInProgress,
    ),
)
async def complete_manifest(
    request: Request, manifest_id: ManifestId, idempotency_key: IdempotencyKey = None
) -> Response:
    gw, p = gateway(request), principal(request)

    async def run(command_id: str) -> tuple[int, bytes]:
        accepted = await gw.commands.send(
            CompleteManifest(manifest_id=manifest_id, owner_id=p.user_id),
            ManifestAccepted,
            command_id=command_id,
            actor=p.actor(),
            timeout_seconds=_MANIFEST_SECONDS,
        )
        view = await _manifest(gw, manifest_id, p.user_id, accepted.version)
        return 200, view.model_dump_json().encode()

    return await idempotent(request, p.idempotency_scope, idempotency_key, "complete_manifest", run)
