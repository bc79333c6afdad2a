"""Settings of the billing service (``RF_BILLING_*``)."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from pydantic import Field

from contracts.billing import InstancePrice, PriceList, PriceUnit
from contracts.jobs import JobPriority, Renderer
from libs.config import BaseServiceSettings
from services.billing.domain import EstimatorModel, HoldRules

P = JobPriority


def _tiers(low: str, normal: str, high: str, urgent: str) -> dict[JobPriority, Decimal]:
    return {
        P.low: Decimal(low),
        P.normal: Decimal(normal),
        P.high: Decimal(high),
        P.urgent: Decimal(urgent),
    }


def default_prices() -> PriceList:
    """Version 1 when none is published, in rupees (1 credit = ₹1, as payments'
    ``paise_per_credit`` 100): the local farm's machine at ₹36/hour, two cloud types at their
    USD on-demand price x ₹85 (c6i.8xlarge $1.36/hour: ₹115.60) and a GHz-hour priced node
    (₹0.34 per GHz-hour), each at the normal tier; low is cheaper, high and urgent dearer."""
    return PriceList(
        instances=[
            InstancePrice(
                instance_type="local-cpu",
                cores=8,
                ghz=Decimal("3.00"),
                unit=PriceUnit.instance_hour,
                rates=_tiers("18.00", "36.00", "54.00", "72.00"),
            ),
            InstancePrice(
                instance_type="c6i.8xlarge",
                cores=16,
                ghz=Decimal("3.50"),
                unit=PriceUnit.instance_hour,
                rates=_tiers("68.00", "115.60", "161.50", "229.50"),
            ),
            InstancePrice(
                instance_type="g5.2xlarge",
                cores=4,
                ghz=Decimal("3.30"),
                unit=PriceUnit.instance_hour,
                rates=_tiers("59.50", "102.85", "144.50", "204.00"),
            ),
            InstancePrice(
                instance_type="ghz-node-64",
                cores=64,
                ghz=Decimal("3.50"),
                unit=PriceUnit.ghz_hour,
                rates=_tiers("0.2550", "0.3400", "0.5100", "0.6800"),
            ),
        ],
        default_instance_type="local-cpu",
        storage_per_gb_month=Decimal("1.9550"),
        egress_per_gb=Decimal("7.6500"),
    )


class BillingSettings(BaseServiceSettings):
    env_section = "billing"
    service_name: str = "billing"
    #: The price list published as version 1 when none exists.
    default_prices: PriceList = Field(default_factory=default_prices)
    #: Seconds a frame takes at 1920x1080 and 128 samples, per renderer.
    reference_seconds_per_frame: dict[Renderer, Decimal] = Field(
        default_factory=lambda: {
            Renderer.blender_cycles: Decimal("60"),
            Renderer.blender_eevee: Decimal("6"),
        }
    )
    estimate_low_factor: Decimal = Decimal("0.5")
    estimate_high_factor: Decimal = Decimal("2.5")
    scene_load_mb_per_second: Decimal = Decimal("100")
    estimate_workers: int = 4
    #: The first hold: the estimate's high end x (1 + margin), at most the job's cap.
    hold_margin: Decimal = Decimal("0.2")
    #: How long a hold lives unless grown (seconds or ISO 8601, e.g. P7D).
    hold_ttl: timedelta = timedelta(days=7)
    #: Grow the hold once the cost reaches this share of it ...
    grow_at: Decimal = Decimal("0.8")
    #: ... by this share of the first hold.
    grow_by: Decimal = Decimal("0.5")
    #: Seconds to wait for a command's reply (the wallet's, the job's).
    command_timeout_seconds: float = 30.0

    def estimator(self) -> EstimatorModel:
        return EstimatorModel(
            reference_seconds=self.reference_seconds_per_frame,
            low_factor=self.estimate_low_factor,
            high_factor=self.estimate_high_factor,
            scene_load_mb_per_second=self.scene_load_mb_per_second,
            workers=self.estimate_workers,
        )

    def hold_rules(self) -> HoldRules:
        return HoldRules(
            margin=self.hold_margin,
            grow_at=self.grow_at,
            grow_by=self.grow_by,
            ttl=self.hold_ttl,
        )
