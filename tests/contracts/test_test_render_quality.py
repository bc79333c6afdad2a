"""A test render's quality: the test frames' size and samples against the job's settings,
and how many times their work a frame at the job's settings is. No servers."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from contracts.jobs import RenderSettings, Resolution, TestRenderQuality

HD = Resolution(width=1920, height=1080)


def test_the_default_is_the_jobs_own_settings() -> None:
    q = TestRenderQuality()
    settings = RenderSettings(samples=64)
    assert q.resolution_of(HD) == HD
    assert q.settings_of(settings) == settings
    assert q.work_factor(HD, settings, 128) == Decimal(1)


def test_half_size_renders_a_quarter_of_the_pixels() -> None:
    q = TestRenderQuality(resolution_percent=50)
    assert q.resolution_of(HD) == Resolution(width=960, height=540)
    assert q.work_factor(HD, RenderSettings(), 128) == Decimal(4)


def test_fewer_samples_scale_against_the_jobs_or_the_scenes_samples() -> None:
    q = TestRenderQuality(samples=32)
    assert q.settings_of(RenderSettings(samples=128)).samples == 32
    assert q.work_factor(HD, RenderSettings(samples=128), 4096) == Decimal(4)
    # The job leaves samples to the scene: the scene's count stands for the job's.
    assert q.work_factor(HD, RenderSettings(), 256) == Decimal(8)


def test_a_side_is_never_smaller_than_sixteen_pixels() -> None:
    q = TestRenderQuality(resolution_percent=10)
    assert q.resolution_of(Resolution(width=100, height=64)) == Resolution(width=16, height=16)


@pytest.mark.parametrize(
    "bad",
    [{"resolution_percent": 5}, {"resolution_percent": 101}, {"samples": 0}, {"x": 1}],
)
def test_out_of_range_quality_is_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TestRenderQuality.model_validate(bad)
