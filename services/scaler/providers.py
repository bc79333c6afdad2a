"""The provider the settings name (``RF_SCALER_PROVIDER``)."""

from __future__ import annotations

from collections.abc import Iterable

import httpx

from services.scaler.local import LocalFarmProvider
from services.scaler.provider import FleetProvider, VmInfo
from services.scaler.settings import LOCAL_CPU, ScalerSettings
from services.scaler.skypilot import SkyPilotProvider


def provider_of(
    settings: ScalerSettings, farm: httpx.AsyncClient, launches: Iterable[VmInfo] = ()
) -> FleetProvider:
    """``local`` (the farm's named workers through ``farm``) or ``skypilot``; ``launches``
    are the machines our events say were launched, for SkyPilot's launches in flight."""
    if settings.provider == "local":
        # One machine type; its price is the first pool's first instance type's. Machines of
        # a test-render pool serve only it (warm, never taken by a full render).
        local = settings.pools[0].instance_types[0] if settings.pools else LOCAL_CPU
        standby = frozenset(p.name for p in settings.pools if p.test_renders)
        return LocalFarmProvider(
            farm, local.hourly_price_usd, instance_type=local.name, standby_pools=standby
        )
    if settings.provider == "skypilot":
        return SkyPilotProvider(
            infra=settings.skypilot_infra,
            worker_command=settings.skypilot_worker_command,
            idle_minutes_to_autodown=settings.skypilot_idle_minutes_to_autodown,
            prices=settings.prices(),
            setup=settings.skypilot_setup,
            image_id=settings.skypilot_image_id,
            prefix=settings.skypilot_cluster_prefix,
            refresh=settings.skypilot_refresh,
            launches=launches,
        )
    raise ValueError(f"unknown provider {settings.provider!r}: local or skypilot")
