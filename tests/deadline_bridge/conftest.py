"""The bridge's tests run against real local farms (``make_farm``, from the farm's suite)."""

from tests.farm.conftest import make_farm

__all__ = ["make_farm"]
