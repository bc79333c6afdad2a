"""The estimator: a range from the renderer's reference time scaled by pixels and samples,
priced per instance-hour or per GHz-hour; measured farm tasks narrow it. No servers."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from contracts.billing import (
    CostLine,
    EstimateParameters,
    InstancePrice,
    LineCause,
    PriceList,
    PriceUnit,
    PriceVersion,
    SecondsSource,
)
from contracts.jobs import FrameRange, JobPriority, RenderSettings, Resolution
from services.billing.domain import estimate
from services.billing.settings import BillingSettings, default_prices
from tests.prices import TEST_PRICES

T = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
MODEL = BillingSettings().estimator()
PRICES = PriceVersion(version=1, effective_from=T, prices=TEST_PRICES, published_by="a")
HD = Resolution(width=1920, height=1080)


def params(**changes: object) -> EstimateParameters:
    base: dict[str, object] = {"frame_range": FrameRange(start=1, end=100), "resolution": HD}
    return EstimateParameters.model_validate({**base, **changes})


def task_line(n: int, seconds: str, amount: str, render: str = "job_1.full.1") -> CostLine:
    return CostLine(
        line_id=f"task:{render}:{n}",
        cause=LineCause.task,
        render_id=render,
        task_id=n,
        frames=[n],
        worker="w1",
        instance_type="local-cpu",
        seconds=Decimal(seconds),
        price_per_hour_credits=Decimal(1),
        price_version=1,
        amount_credits=Decimal(amount),
        at=T,
    )


def test_the_model_range_is_the_reference_time_at_half_and_two_and_a_half_times() -> None:
    # 100 frames x 60 s (Cycles at 1920x1080, 128 samples) on local-cpu at 1 credit/hour.
    est = estimate(params(), PRICES, MODEL)
    assert (est.low_credits, est.expected_credits, est.high_credits) == (
        Decimal("0.83"),
        Decimal("1.67"),
        Decimal("4.17"),
    )
    a = est.assumptions
    assert a.seconds_source is SecondsSource.model
    assert (a.seconds_per_frame_low, a.seconds_per_frame, a.seconds_per_frame_high) == (
        Decimal("30.000"),
        Decimal("60.000"),
        Decimal("150.000"),
    )
    assert (a.frames, a.tasks, a.workers, a.instance_type) == (100, 100, 4, "local-cpu")
    assert a.price_per_hour_credits == Decimal(1) and a.price_version == 1
    assert est.duration_seconds == 1500  # 6000 machine-seconds on 4 workers


def test_pixels_samples_priority_and_scene_loading_scale_the_estimate() -> None:
    uhd = params(
        resolution=Resolution(width=3840, height=2160),
        render_settings=RenderSettings(samples=64),
        priority=JobPriority.high,
    )
    est = estimate(uhd, PRICES, MODEL)
    assert est.assumptions.seconds_per_frame == Decimal("120.000")  # x4 pixels, x0.5 samples
    assert est.expected_credits == Decimal("5.00")  # 12000 s at 1.50/hour
    # 500 MB at 100 MB/s: 5 s per task, 10 tasks of 10 frames.
    loaded = estimate(params(chunk_size=10, scene_size_bytes=500_000_000), PRICES, MODEL)
    assert loaded.assumptions.scene_load_seconds == Decimal("5.000")
    assert loaded.assumptions.tasks == 10
    assert loaded.expected_credits == Decimal("1.68")  # 6050 s


def test_a_ghz_hour_price_is_cores_times_ghz_per_machine_hour() -> None:
    ghz = InstancePrice(
        instance_type="node-64",
        cores=64,
        ghz=Decimal("3.50"),
        unit=PriceUnit.ghz_hour,
        rates={p: Decimal("0.004") for p in JobPriority},
    )
    prices = PriceList(
        instances=[ghz],
        default_instance_type="node-64",
        storage_per_gb_month=Decimal(0),
        egress_per_gb=Decimal(0),
    )
    version = PriceVersion(version=2, effective_from=T, prices=prices, published_by="a")
    est = estimate(params(), version, MODEL)
    assert est.assumptions.price_per_hour_credits == Decimal("0.896")  # 224 GHz x 0.004
    assert est.expected_credits == Decimal("1.49")  # 6000 s x 0.896 / 3600 = 1.4933


def test_measured_tasks_narrow_the_range_to_their_spread_for_the_frames_left() -> None:
    lines = [task_line(1, "50", "0.01"), task_line(2, "70", "0.02")]
    est = estimate(params(), PRICES, MODEL, lines)
    a = est.assumptions
    assert a.seconds_source is SecondsSource.measured and a.measured_tasks == 2
    assert (a.seconds_per_frame_low, a.seconds_per_frame_high) == (
        Decimal("50.000"),
        Decimal("70.000"),
    )
    # 0.03 so far + 98 frames x 60 s at 1/hour = 1.6633.
    assert est.expected_credits == Decimal("1.66")
    assert est.low_credits == Decimal("1.39")  # 0.03 + 98 x 50 / 3600
    assert est.high_credits == Decimal("1.94")  # 0.03 + 98 x 70 / 3600


def test_a_measured_range_is_never_narrower_than_ten_percent() -> None:
    lines = [task_line(1, "60", "0.02"), task_line(2, "60", "0.02")]
    a = estimate(params(), PRICES, MODEL, lines).assumptions
    assert (a.seconds_per_frame_low, a.seconds_per_frame_high) == (
        Decimal("54.000"),
        Decimal("66.000"),
    )


def test_a_test_renders_tasks_give_the_seconds_when_the_full_render_has_none() -> None:
    lines = [task_line(1, "90", "0.03", render="job_1.test.1")]
    est = estimate(params(), PRICES, MODEL, lines)
    assert est.assumptions.seconds_source is SecondsSource.test_render
    assert est.expected_credits == Decimal("2.50")  # all 100 frames x 90 s; nothing so far


def test_a_reduced_test_render_is_scaled_to_the_jobs_settings_with_a_wider_range() -> None:
    """A test frame at half size (a quarter of the pixels) that took 22.5 s stands for 90 s
    at the job's settings; scaling is not exact (scene load, BVH build), so the range is
    at least +-25 %, not +-10 %."""
    line = task_line(1, "22.5", "0.01", render="job_1.test.1").model_copy(
        update={"work_factor": Decimal(4)}
    )
    est = estimate(params(), PRICES, MODEL, [line])
    a = est.assumptions
    assert a.seconds_source is SecondsSource.test_render
    assert a.seconds_per_frame == Decimal("90.000")
    assert (a.seconds_per_frame_low, a.seconds_per_frame_high) == (
        Decimal("67.500"),
        Decimal("112.500"),
    )
    assert est.expected_credits == Decimal("2.50")  # 100 frames x 90 s at 1/hour


def test_the_default_prices_are_rupees_an_hour() -> None:
    """1 credit = ₹1 (payments' paise_per_credit 100): docs/billing.md's worked example."""
    prices = default_prices()
    per_hour = {i.instance_type: i.per_hour(JobPriority.normal) for i in prices.instances}
    assert per_hour["local-cpu"] == Decimal("36.00")
    assert per_hour["c6i.8xlarge"] == Decimal("115.60")  # $1.36 x ₹85
    assert per_hour["ghz-node-64"] == Decimal("76.16")  # 224 GHz x ₹0.34
    version = PriceVersion(version=1, effective_from=T, prices=prices, published_by="billing")
    est = estimate(params(), version, MODEL)
    # 6,000 machine-seconds (30 .. 150 s a frame) at ₹36/hour.
    assert (est.low_credits, est.expected_credits, est.high_credits) == (
        Decimal("30.00"),
        Decimal("60.00"),
        Decimal("150.00"),
    )
