"""The upload service's decisions, without I/O: part plans, completeness, quotas, manifests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, strategies

from contracts.errors import (
    AssetSizeConflict,
    InvalidPartNumber,
    ManifestIncomplete,
    UploadBytesLimitReached,
    UploadIncomplete,
    UploadNotOpen,
    UploadSessionExpired,
    UploadSessionLimitReached,
    UploadTooLarge,
)
from contracts.staging import AssetStaged
from contracts.uploads import (
    GiB,
    ManifestCompleted,
    ManifestFile,
    ManifestFilesListed,
    ManifestSubmitted,
    MiB,
    TiB,
    UploadCompleted,
    UploadCompletionFailed,
    UploadCompletionRequested,
    UploadExpired,
    UploadKind,
    UploadPartsConfirmed,
)
from services.upload.domain import (
    MANIFEST_FILES_PER_EVENT,
    Asset,
    HeldPart,
    Manifest,
    NewSession,
    OwnerUploads,
    Upload,
    UploadLimits,
    check_size,
    content_sha256,
    key_segment,
    part_plan,
    scene_object_key,
)
from tests.aggregates import evolve

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SHA = "ab" * 32


# --- part plans ------------------------------------------------------------------------------


def test_a_200_gb_file_is_planned_in_2981_parts_of_64_mib() -> None:
    plan = part_plan(200 * 10**9)
    assert (plan.part_size_bytes, plan.part_count) == (64 * MiB, 2981)
    assert plan.size_of(2980) == 64 * MiB
    assert plan.size_of(2981) == 200 * 10**9 - 2980 * 64 * MiB == 15_585_280


def test_a_5_tib_file_is_planned_in_9987_parts_of_525_mib() -> None:
    plan = part_plan(5 * TiB)
    # 5 TiB / 10,000 is 524.3 MiB: rounded up to a whole MiB.
    assert (plan.part_size_bytes, plan.part_count) == (525 * MiB, 9987)
    assert plan.part_count <= 10_000 and plan.part_size_bytes >= 64 * MiB
    assert sum(plan.size_of(n) for n in range(1, plan.part_count + 1)) == 5 * TiB


def test_small_files_are_one_part_and_the_last_part_holds_the_remainder() -> None:
    assert part_plan(1).part_count == 1 and part_plan(1).size_of(1) == 1
    plan = part_plan(64 * MiB + 1)
    assert (plan.part_count, plan.size_of(1), plan.size_of(2)) == (2, 64 * MiB, 1)
    with pytest.raises(ValueError, match="outside"):
        plan.size_of(3)


@given(strategies.integers(min_value=1, max_value=10_000 * 5 * GiB))
def test_every_plan_has_at_most_10000_parts_of_64_mib_to_5_gib(size: int) -> None:
    plan = part_plan(size)
    assert 1 <= plan.part_count <= 10_000
    assert 64 * MiB <= plan.part_size_bytes <= 5 * GiB
    assert plan.part_size_bytes % MiB == 0
    assert 1 <= plan.size_of(plan.part_count) <= plan.part_size_bytes
    assert plan.part_size_bytes * (plan.part_count - 1) + plan.size_of(plan.part_count) == size


def test_a_file_over_the_servers_limit_is_refused_with_the_limit() -> None:
    check_size(5 * TiB, 5 * TiB)
    with pytest.raises(UploadTooLarge) as refused:
        check_size(5 * TiB + 1, 5 * TiB)
    assert refused.value.details.max_bytes == 5 * TiB


def test_object_keys_keep_the_file_name_where_keys_allow_it() -> None:
    assert (
        scene_object_key("usr_1", "upl_1", "shot_010.blend") == "uploads/usr_1/upl_1/shot_010.blend"
    )
    assert key_segment("shot 010 (v2) ü.blend") == "shot_010_(v2)__.blend"


# --- a session -------------------------------------------------------------------------------


def started(size: int = 10 * MiB + 1024, min_part: int = 5 * MiB) -> Upload:
    upload = Upload()
    upload.start(
        upload_id="upl_1",
        owner_id="usr_1",
        kind=UploadKind.scene,
        file_name="shot.blend",
        size_bytes=size,
        sha256=SHA,
        content_type=None,
        bucket="scenes",
        object_key="uploads/usr_1/upl_1/shot.blend",
        s3_upload_id="s3-1",
        plan=part_plan(size, min_part),
        now=NOW,
        ttl=timedelta(days=3),
    )
    return upload


def held(n: int, size: int) -> HeldPart:
    return HeldPart(part_number=n, size_bytes=size, etag=f'"e{n}"', checksum_sha256="c")


def test_completion_is_refused_with_the_missing_parts_as_ranges_and_the_wrong_sizes() -> None:
    upload = started(size=100 * 5 * MiB)  # 100 parts
    parts = [held(n, 5 * MiB) for n in range(1, 101) if n not in (2, 3, 4, 50)]
    parts[0] = held(1, 5 * MiB - 1)
    with pytest.raises(UploadIncomplete) as refused:
        upload.verify(parts)
    d = refused.value.details
    assert d.missing_part_count == 4
    assert [(r.first, r.last) for r in d.missing_parts] == [(2, 4), (50, 50)]
    assert [(w.part_number, w.size_bytes, w.expected_size_bytes) for w in d.wrong_sizes] == [
        (1, 5 * MiB - 1, 5 * MiB)
    ]


def test_completion_takes_the_plans_parts_in_order_and_ignores_others() -> None:
    upload = started()
    parts = [held(3, 1024), held(1, 5 * MiB), held(2, 5 * MiB), held(4, 7)]
    assert [p.part_number for p in upload.verify(parts)] == [1, 2, 3]


def test_progress_is_recorded_only_when_it_changed_and_counts_only_planned_parts() -> None:
    upload = started()
    [confirmed] = upload.confirm([held(1, 5 * MiB), held(3, 1)], NOW)  # part 3: wrong size
    assert confirmed == UploadPartsConfirmed(
        upload_id="upl_1", parts_confirmed=1, bytes_confirmed=5 * MiB, at=NOW
    )
    assert upload.confirm([held(1, 5 * MiB)], NOW) == []


def test_part_numbers_outside_the_plan_are_refused_all_at_once() -> None:
    upload = started()
    upload.check_part_numbers([1, 2, 3])
    with pytest.raises(InvalidPartNumber) as refused:
        upload.check_part_numbers([0, 2, 4, 9])
    assert refused.value.details.part_numbers == [0, 4, 9]
    assert refused.value.details.part_count == 3


def test_a_session_past_its_expiry_takes_no_parts_and_is_expired_once() -> None:
    upload = started()
    later = NOW + timedelta(days=3)
    upload.require_open(later - timedelta(seconds=1))
    with pytest.raises(UploadSessionExpired):
        upload.require_open(later)
    assert upload.expire(later - timedelta(seconds=1)) == []
    assert evolve(upload, upload.expire(later)).status == "expired"
    assert upload.expire(later) == []
    assert isinstance(upload.pending[-1], UploadExpired)


def test_completing_twice_records_once_and_a_completed_upload_cannot_be_aborted() -> None:
    upload = started()
    [requested] = upload.request_completion(NOW)
    assert isinstance(requested, UploadCompletionRequested)
    assert upload.request_completion(NOW) == []
    [done] = upload.complete(NOW)
    assert isinstance(done, UploadCompleted) and done.object_key.startswith("uploads/")
    assert upload.complete(NOW) == [] and upload.request_completion(NOW) == []
    with pytest.raises(UploadNotOpen):
        upload.abort(NOW)


def test_a_session_being_completed_takes_no_parts_and_does_not_expire() -> None:
    upload = started()
    upload.request_completion(NOW)
    assert (upload.parts_confirmed, upload.bytes_confirmed) == (3, 10 * MiB + 1024)
    with pytest.raises(UploadNotOpen) as refused:
        upload.require_open(NOW)
    assert refused.value.details.status == "completing"
    with pytest.raises(UploadNotOpen):
        upload.abort(NOW)
    assert upload.expire(NOW + timedelta(days=30)) == []
    # The store would not join the parts: open again, for the client to retry.
    [failed] = upload.completion_failed("parts changed", NOW)
    assert isinstance(failed, UploadCompletionFailed) and upload.status == "uploading"
    assert upload.completion_failed("again", NOW) == []
    upload.request_completion(NOW)
    # The store dropped it meanwhile: it ends, whatever its expiry.
    assert isinstance(upload.expire(NOW, due=False)[0], UploadExpired)


def test_an_aborted_upload_stays_aborted() -> None:
    upload = started()
    assert len(upload.abort(NOW)) == 1
    assert upload.abort(NOW) == []
    with pytest.raises(UploadNotOpen):
        upload.require_open(NOW)
    with pytest.raises(UploadNotOpen):
        upload.complete(NOW)


# --- quotas ----------------------------------------------------------------------------------

LIMITS = UploadLimits(max_open_sessions=2, max_open_asset_sessions=3, max_bytes_in_flight=100)


def test_open_sessions_and_bytes_in_flight_are_limited_and_freed() -> None:
    owner = OwnerUploads()
    owner.take("usr_1", [NewSession("upl_1", UploadKind.scene, 60)])
    owner.make_room([NewSession("upl_2", UploadKind.scene, 40)], LIMITS)
    with pytest.raises(UploadBytesLimitReached) as too_big:
        owner.make_room([NewSession("upl_2", UploadKind.scene, 41)], LIMITS)
    assert too_big.value.details.model_dump() == {
        "current_bytes": 60,
        "requested_bytes": 41,
        "limit_bytes": 100,
    }
    owner.take("usr_1", [NewSession("upl_2", UploadKind.scene, 10)])
    with pytest.raises(UploadSessionLimitReached) as too_many:
        owner.make_room([NewSession("upl_3", UploadKind.scene, 1)], LIMITS)
    assert (too_many.value.details.current, too_many.value.details.limit) == (2, 2)
    owner.make_room([NewSession("upl_3", UploadKind.asset, 1)], LIMITS)  # other kind
    owner.free("usr_1", "upl_1")
    assert owner.free("usr_1", "upl_1") == []
    owner.make_room([NewSession("upl_3", UploadKind.scene, 90)], LIMITS)


def test_asset_sessions_have_their_own_count_and_are_found_by_content() -> None:
    owner = OwnerUploads()
    owner.take("usr_1", [NewSession(f"upl_{i}", UploadKind.asset, 1, f"{i}" * 64) for i in "12"])
    assert owner.open_asset("1" * 64) == ("upl_1", owner.open["upl_1"])
    assert owner.open_asset("3" * 64) is None
    with pytest.raises(UploadSessionLimitReached) as refused:
        owner.make_room([NewSession(f"upl_{i}", UploadKind.asset, 1) for i in "34"], LIMITS)
    assert refused.value.details.kind is UploadKind.asset


# --- manifests -------------------------------------------------------------------------------


def files(n: int) -> list[ManifestFile]:
    return [
        ManifestFile(path=f"textures/t{i:05d}.png", size_bytes=i + 1, sha256=f"{i:064x}")
        for i in range(n)
    ]


def test_a_manifest_is_recorded_sorted_in_chunks_and_identified_by_its_content() -> None:
    many = files(MANIFEST_FILES_PER_EVENT * 2 + 1)
    manifest = Manifest()
    sessions = {f.sha256: f"upl_{i}" for i, f in enumerate(many)}
    recorded = manifest.submit("man_1", "usr_1", many[0].path, many[::-1], sessions, NOW)
    submitted, *chunks = recorded
    assert isinstance(submitted, ManifestSubmitted)
    assert submitted.file_count == len(many) and submitted.total_bytes == sum(range(1, 502))
    assert submitted.content_sha256 == content_sha256(many)
    assert [len(c.files) for c in chunks if isinstance(c, ManifestFilesListed)] == [250, 250, 1]
    assert [f.path for f in manifest.files] == sorted(f.path for f in many)
    assert manifest.files[0].upload_id == "upl_0"
    assert all(len(c.model_dump_json()) < 300_000 for c in chunks)


def test_a_manifest_completes_only_once_every_content_is_held() -> None:
    manifest = Manifest()
    same = ManifestFile(path="b/copy.png", size_bytes=1, sha256=files(1)[0].sha256)
    lacking = {f.sha256: f"upl_{i}" for i, f in enumerate(files(3))}
    manifest.submit("man_1", "usr_1", "textures/t00000.png", [*files(3), same], lacking, NOW)
    with pytest.raises(ManifestIncomplete) as refused:
        manifest.complete({files(3)[0].sha256}, {files(3)[2].sha256: "upl_9"}, NOW)
    d = refused.value.details
    assert d.missing_file_count == 2
    assert [(m.paths, m.upload_id) for m in d.missing] == [
        (["textures/t00001.png"], None),
        (["textures/t00002.png"], "upl_9"),
    ]
    [done] = manifest.complete({f.sha256 for f in files(3)}, {}, NOW)
    assert isinstance(done, ManifestCompleted)
    assert manifest.complete(set(), {}, NOW) == []


def test_one_content_has_one_size() -> None:
    asset = Asset()
    asset.check_size(SHA, 5)  # nothing stored yet
    asset.store(started(size=5), NOW)
    asset.check_size(SHA, 5)
    with pytest.raises(AssetSizeConflict) as refused:
        asset.check_size(SHA, 6)
    assert refused.value.details.known_size_bytes == 5
    assert asset.store(started(size=5), NOW) == []


def test_content_a_staging_fetched_is_kept_once_even_after_its_removal() -> None:
    asset = Asset()
    assert asset.kept("usr_1", SHA, 1.0, NOW) == []  # not stored: nothing to keep
    asset.store(started(size=5), NOW)
    [staged] = asset.stage("usr_1", SHA, 0.5, NOW)
    assert asset.kept("usr_1", SHA, 1.0, NOW) == []  # staged as uploaded already
    asset.unstage("usr_1", SHA, "retention ended", NOW)
    assert not asset.to_stage  # the pre-stager does not stage it again
    [kept] = asset.kept("usr_1", SHA, 1.25, NOW)  # a job's staging fetched it: kept
    assert isinstance(kept, AssetStaged) and (kept.size_bytes, kept.seconds) == (5, 1.25)
    assert isinstance(staged, AssetStaged)
    assert kept.staged_key == staged.staged_key == f"staged/.content/usr_1/{SHA}"
    assert asset.kept("usr_1", SHA, 1.0, NOW) == []
