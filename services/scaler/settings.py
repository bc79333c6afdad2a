"""Settings of the scaler (``RF_SCALER_*``); the policy's defaults are in ``docs/scaling.md``."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from libs.config import BaseServiceSettings


class UnknownVms(StrEnum):
    """What reconciliation does with a machine the provider runs for us and we never asked."""

    adopt = "adopt"  # recorded as ours (``fleet.VmAdopted``) and scaled like the rest
    stop = "stop"  # recorded, then stopped (a leak: someone launched it by hand)


class InstanceSetting(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    hourly_price_usd: Decimal = Field(ge=0)
    spot_hourly_price_usd: Decimal | None = Field(default=None, ge=0)
    #: The provider's region; the same type in another region is another option, tried
    #: when this one is refused and backed off.
    region: str | None = None


class PoolSetting(BaseModel):
    """One pool the scaler sizes (``RF_SCALER_POOLS`` is a JSON list of these)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    instance_types: tuple[InstanceSetting, ...] = Field(min_length=1)
    min_workers: int = Field(default=0, ge=0)
    max_workers: int = Field(default=10, ge=0)
    standby: int = Field(default=0, ge=0)
    spot: bool = False
    idle_seconds: float = Field(default=300.0, ge=0)
    boot_seconds: float = Field(default=180.0, ge=0)
    drain_target_seconds: float = Field(default=3600.0, gt=0)
    #: A waiting task's time when the farm has not measured one (seconds).
    task_seconds: float = Field(default=120.0, gt=0)
    #: Tasks waiting in this pool are test renders (their SLA drives scale-out).
    test_renders: bool = False
    priority: int = 1


LOCAL_CPU = InstanceSetting(name="local-cpu", hourly_price_usd=Decimal("0.10"))


class ScalerSettings(BaseServiceSettings):
    env_section = "scaler"
    service_name: str = "scaler"

    #: ``local`` (the local farm's named workers); ``skypilot`` runs from ``.venv-sky``.
    provider: str = "local"
    #: The farm's Deadline Web Service (the queue, and draining through worker settings).
    farm_url: str = "http://127.0.0.1:18081"
    farm_username: str | None = None
    farm_password: SecretStr | None = None
    farm_timeout_seconds: float = 15.0
    #: Seconds between reconcile-and-decide rounds.
    tick_seconds: float = Field(default=2.0, gt=0)
    #: The defaults suit the local farm (workers start in seconds): full renders in the
    #: bridge's pool ``none``, test renders in ``test`` with one warm machine.
    pools: tuple[PoolSetting, ...] = (
        PoolSetting(
            name="none",
            instance_types=(LOCAL_CPU,),
            max_workers=3,
            idle_seconds=60,
            boot_seconds=5,
            drain_target_seconds=600,
        ),
        PoolSetting(
            name="test",
            instance_types=(LOCAL_CPU,),
            max_workers=2,
            standby=1,
            idle_seconds=60,
            boot_seconds=5,
            test_renders=True,
            priority=0,
        ),
    )
    #: Fleet-wide ceilings: machines, and dollars per hour of every live machine.
    max_vms: int = Field(default=8, ge=0)
    max_spend_per_hour_usd: Decimal = Field(default=Decimal("5.00"), ge=0)
    unknown_vms: UnknownVms = UnknownVms.adopt
    #: A machine asked for and not up after this long is given up (``launch_timeout``).
    launch_timeout_seconds: float = Field(default=900.0, gt=0)

    #: The SkyPilot provider (``provider = "skypilot"``): SkyPilot's infra (``aws``, ``gcp``,
    #: ``k8s``…), the worker's start command (``{worker_name}``, ``{pool}``), an optional setup
    #: and machine image, the autodown safety net and ``sky.status``'s refresh mode.
    skypilot_infra: str = "aws"
    skypilot_worker_command: str = "deadlineworker -nogui -name {worker_name}"
    skypilot_setup: str | None = None
    skypilot_image_id: str | None = None
    skypilot_idle_minutes_to_autodown: int = Field(default=30, ge=1)
    skypilot_refresh: Literal["NONE", "AUTO", "FORCE"] = "AUTO"
    skypilot_cluster_prefix: str = "rf-"

    def prices(self) -> dict[tuple[str, bool], Decimal]:
        """The pools' hourly prices by (instance type, spot)."""
        table: dict[tuple[str, bool], Decimal] = {}
        for pool in self.pools:
            for i in pool.instance_types:
                table[(i.name, False)] = i.hourly_price_usd
                if i.spot_hourly_price_usd is not None:
                    table[(i.name, True)] = i.spot_hourly_price_usd
        return table
