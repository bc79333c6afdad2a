"""The local provider: each machine is a named worker process of the local farm
(``PUT``/``DELETE /_farm/workers/{name}``), so ``make up`` autoscales for real on one machine.

The farm is the provider's only state: a restarted scaler finds its machines there. A local
machine is never spot and never preempted, and there is one instance type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from services.scaler.provider import LaunchRefused, LaunchSpec, VmInfo, VmStatus

#: The farm's worker names: a letter or digit, then letters, digits, ``.``, ``_`` or ``-``.
_WORKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
#: Deadline worker Stats of a worker that is up (rendering, idle).
_UP = (1, 2)


class LocalFarmProvider:
    """:class:`~services.scaler.provider.FleetProvider` over the local farm's HTTP API.

    ``client`` has the farm's base URL (and auth); the caller closes it. The worker of
    machine ``vm_id`` is named ``{prefix}{vm_id}``; named workers without the prefix are not
    ours and are left alone.
    """

    name = "local"

    def __init__(
        self,
        client: httpx.AsyncClient,
        hourly_price_usd: Decimal,
        instance_type: str = "local-cpu",
        prefix: str = "local-",
        standby_pools: frozenset[str] = frozenset(),
    ) -> None:
        self.client = client
        #: Pools whose machines serve only that pool (test renders: warm, never taken by a
        #: full render).
        self.standby_pools = standby_pools
        self.hourly_price_usd = hourly_price_usd
        self.instance_type = instance_type
        self.prefix = prefix

    def worker_name(self, vm_id: str) -> str | None:
        """The farm worker's name for ``vm_id``; None when ``vm_id`` cannot be one."""
        name = f"{self.prefix}{vm_id}"
        return name if _WORKER_NAME.fullmatch(name) else None

    async def launch(self, spec: LaunchSpec) -> VmInfo:
        """Start the machine's worker serving ``spec.pool`` (one running already: that one)."""
        if spec.instance_type != self.instance_type:
            raise LaunchRefused(spec, f"the local farm has only {self.instance_type} machines")
        if spec.spot:
            raise LaunchRefused(spec, "the local farm has no spot machines")
        name = self.worker_name(spec.vm_id)
        if name is None:
            raise LaunchRefused(spec, f"{spec.vm_id!r} cannot name a farm worker")
        body = {"pools": [spec.pool], "standby": spec.pool in self.standby_pools}
        response = await self.client.put(f"/_farm/workers/{name}", json=body)
        if response.status_code == 409:  # the farm is full
            raise LaunchRefused(spec, response.text)
        response.raise_for_status()
        return self._vm(response.json())

    async def stop(self, vm_id: str) -> None:
        """Stop the machine's worker; its running task, if any, is requeued by the farm."""
        name = self.worker_name(vm_id)
        if name is None:
            return
        response = await self.client.delete(f"/_farm/workers/{name}")
        if response.status_code != 404:  # 404: not running, nothing to do
            response.raise_for_status()

    async def machines(self) -> Sequence[VmInfo]:
        """Our named workers on the farm."""
        response = await self.client.get("/_farm/workers")
        response.raise_for_status()
        named: list[dict[str, Any]] = response.json()["named"]
        return [self._vm(w) for w in named if w["name"].startswith(self.prefix)]

    def _vm(self, worker: dict[str, Any]) -> VmInfo:
        """A named worker of ``/_farm/workers`` as a machine: running once it registered."""
        pools: list[str] = worker["Pools"]
        return VmInfo(
            vm_id=worker["name"].removeprefix(self.prefix),
            pool=pools[0] if pools else "none",
            instance_type=self.instance_type,
            spot=False,
            status=VmStatus.running if worker["Stat"] in _UP else VmStatus.launching,
            worker_name=worker["name"],
            hourly_price_usd=self.hourly_price_usd,
            request_id=None,
            launched_at=datetime.fromisoformat(worker["launched"]),
        )
