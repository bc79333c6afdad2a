"""The scheduler's service tests run the render path in this process against a real local
farm (``make_farm``, from the farm's suite)."""

from tests.farm.conftest import make_farm

__all__ = ["make_farm"]
