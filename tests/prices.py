"""The tests' own price list, so the amounts they check follow from it and not from the
service's defaults (a change of ``default_prices`` moves none of them).

``local-cpu`` (the default machine) costs 1 credit an hour at normal priority: an hour of
rendering is 1.00, a minute 0.0167. Every amount in a billing test is then easy to check.
"""

from __future__ import annotations

from decimal import Decimal

from contracts.billing import InstancePrice, PriceList, PriceUnit
from contracts.jobs import JobPriority

#: Credits per hour of ``local-cpu`` by priority tier.
LOCAL_CPU_RATES = {
    JobPriority.low: Decimal("0.50"),
    JobPriority.normal: Decimal("1.00"),
    JobPriority.high: Decimal("1.50"),
    JobPriority.urgent: Decimal("2.00"),
}

TEST_PRICES = PriceList(
    instances=[
        InstancePrice(
            instance_type="local-cpu",
            cores=8,
            ghz=Decimal("3.00"),
            unit=PriceUnit.instance_hour,
            rates=LOCAL_CPU_RATES,
        ),
    ],
    default_instance_type="local-cpu",
    storage_per_gb_month=Decimal("0.0200"),
    egress_per_gb=Decimal("0.0900"),
)
