"""SkyPilot behind the FleetProvider port: one SkyPilot cluster per worker VM (ADR 0017).

The cluster of machine ``vm_id`` is named ``{prefix}{vm_id}``; clusters without the prefix
are not ours. A cluster runs one task whose ``run`` starts the farm's render worker, named
after the cluster; ``down=True`` with ``idle_minutes_to_autostop`` tears it down once no job
has run on it for that long (the worker process exited), a safety net for leaked VMs.

Every SDK call is an HTTP request to a SkyPilot API server (a local one is started on first
use when none is configured) returning a request id; the calls block, so they run in a
thread. ``sky`` is imported when the provider is built: the module imports without
SkyPilot, whose pins conflict with ours, so a scaler on SkyPilot runs from a venv of its own
(``.venv-sky``, ``docs/scaling.md``, "Install").
"""

from __future__ import annotations

import asyncio
import importlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from services.scaler.provider import LaunchRefused, LaunchSpec, VmInfo, VmStatus

#: SkyPilot's cluster names (``sky/skylet/constants.py``, ``CLUSTER_NAME_VALID_REGEX``).
_CLUSTER_NAME = re.compile(r"[a-zA-Z]([-_.a-zA-Z0-9]*[a-zA-Z0-9])?")
#: The cluster label that carries the machine's pool (read back by :meth:`machines`).
POOL_LABEL = "renderfarm-pool"
#: SkyPilot's request statuses of a request that has not finished.
_IN_FLIGHT = ("PENDING", "WAITING", "RUNNING")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

#: Hourly prices in US$ by (instance type, spot), for what SkyPilot's catalog does not price.
PriceTable = Mapping[tuple[str, bool], Decimal]


class SkyPilotUnavailable(RuntimeError):
    """The ``skypilot`` package is not installed where the scaler runs."""


def import_sky() -> Any:
    """SkyPilot's SDK (``sky``), or :class:`SkyPilotUnavailable` saying how to install it."""
    try:
        return importlib.import_module("sky")
    except ImportError as e:
        raise SkyPilotUnavailable(
            "RF_SCALER_PROVIDER=skypilot needs SkyPilot (skypilot==0.14.1) where the scaler "
            "runs: start it with .venv-sky/bin/python (make venv; docs/scaling.md, 'Install')"
        ) from e


class SkyPilotProvider:
    """:class:`~services.scaler.provider.FleetProvider` over SkyPilot's Python SDK.

    ``infra`` is SkyPilot's (``aws``, ``gcp``, ``k8s``…; a spec's region is appended).
    ``worker_command`` is the task's ``run``, formatted with ``worker_name`` and ``pool``.
    ``launches`` are the machines our events say were launched (with their request ids), so
    that a restarted scaler reports a launch in flight as launching instead of lost.
    """

    name = "skypilot"

    def __init__(
        self,
        *,
        infra: str,
        worker_command: str,
        idle_minutes_to_autodown: int,
        prices: PriceTable,
        setup: str | None = None,
        image_id: str | None = None,
        prefix: str = "rf-",
        refresh: str = "AUTO",
        launches: Iterable[VmInfo] = (),
    ) -> None:
        self.sky = import_sky()
        self.infra = infra
        self.worker_command = worker_command
        self.idle_minutes_to_autodown = idle_minutes_to_autodown
        self.prices = prices
        self.setup = setup
        self.image_id = image_id
        self.prefix = prefix
        #: ``sky.status``'s refresh: NONE (SkyPilot's records), AUTO (clusters with
        #: autostop or spot, i.e. all of ours, asked of the cloud) or FORCE.
        self.refresh = self.sky.StatusRefreshMode[refresh]
        self._launches: dict[str, VmInfo] = {vm.vm_id: vm for vm in launches}
        #: vm id -> request id of its ``sky.down``, until that request has finished.
        self._stopping: dict[str, str] = {}

    def cluster_name(self, vm_id: str) -> str | None:
        """The cluster's name for ``vm_id``; None when ``vm_id`` cannot be one."""
        name = f"{self.prefix}{vm_id}"
        return name if _CLUSTER_NAME.fullmatch(name) else None

    def _name(self, spec: LaunchSpec) -> str:
        name = self.cluster_name(spec.vm_id)
        if name is None:
            raise LaunchRefused(spec, f"{self.prefix}{spec.vm_id!r} is no SkyPilot cluster name")
        return name

    def task(self, spec: LaunchSpec) -> Any:
        """The ``sky.Task`` of ``spec``'s machine, its resources validated by SkyPilot
        (against its catalog, which it downloads on first use)."""
        name = self._name(spec)
        try:
            resources = self.sky.Resources(
                infra=f"{self.infra}/{spec.region}" if spec.region else self.infra,
                instance_type=spec.instance_type,
                use_spot=spec.spot,
                image_id=self.image_id,
                labels={POOL_LABEL: spec.pool},
            )
            resources.validate()  # SkyPilot validates lazily otherwise (at the launch)
        except ValueError as e:  # no such instance type, region or label on that infra
            raise LaunchRefused(spec, str(e)) from e
        task = self.sky.Task(
            name="render-worker",
            setup=self.setup,
            run=self.worker_command.format(worker_name=name, pool=spec.pool),
            envs={"RF_VM_ID": spec.vm_id, "RF_POOL": spec.pool, "RF_WORKER_NAME": name},
        )
        task.set_resources(resources)
        return task

    def hourly_price(self, resources: Any, spot: bool) -> Decimal | None:
        """SkyPilot's catalog price of ``resources`` (cheapest zone), else the price table's."""
        try:
            price = Decimal(str(resources.get_cost(3600)))
        except (AssertionError, ValueError):  # no cloud or instance type, or not priced there
            price = Decimal(0)
        if price > 0:
            return price
        return self.prices.get((resources.instance_type, spot))

    async def launch(self, spec: LaunchSpec) -> VmInfo:
        """Ask SkyPilot for the cluster and return at once (a cluster of that name: it)."""
        known = self._launches.get(spec.vm_id)
        if known is not None:
            return known
        name = self._name(spec)
        existing = await self._clusters([name])
        if existing:
            return existing[0]
        task = await asyncio.to_thread(self.task, spec)
        price = await asyncio.to_thread(self.hourly_price, next(iter(task.resources)), spec.spot)
        if price is None:
            raise LaunchRefused(spec, f"no price for {spec.instance_type} (spot: {spec.spot})")
        request_id = await asyncio.to_thread(
            self.sky.launch,
            task,
            cluster_name=name,
            idle_minutes_to_autostop=self.idle_minutes_to_autodown,
            down=True,
        )
        info = VmInfo(
            vm_id=spec.vm_id,
            pool=spec.pool,
            instance_type=spec.instance_type,
            spot=spec.spot,
            status=VmStatus.launching,
            worker_name=name,
            hourly_price_usd=price,
            request_id=str(request_id),
            launched_at=datetime.now(UTC),
            region=spec.region,
        )
        self._launches[spec.vm_id] = info
        return info

    async def stop(self, vm_id: str) -> None:
        """Cancel the machine's launch if in flight and ask SkyPilot to tear it down; the
        machine is ``stopping`` until that request has finished."""
        name = self.cluster_name(vm_id)
        if name is None or vm_id in self._stopping:
            return
        known = self._launches.get(vm_id)
        if known is not None and known.request_id is not None:
            await asyncio.to_thread(self.sky.api_cancel, known.request_id, silent=True)
        self._stopping[vm_id] = str(await asyncio.to_thread(self.sky.down, name))

    async def machines(self) -> Sequence[VmInfo]:
        """Our clusters as SkyPilot lists them, and our launches not listed yet."""
        listed = {vm.vm_id: vm for vm in await self._clusters(None)}
        requests = await self._requests(
            [
                *self._stopping.values(),
                *(
                    i.request_id
                    for v, i in self._launches.items()
                    if v not in listed and i.request_id
                ),
            ]
        )
        for vm_id, request_id in list(self._stopping.items()):
            if requests.get(request_id) not in _IN_FLIGHT:  # torn down, or down failed
                del self._stopping[vm_id]
                self._launches.pop(vm_id, None)
        machines = [
            replace(vm, status=VmStatus.stopping) if vm.vm_id in self._stopping else vm
            for vm in listed.values()
        ]
        for vm_id, vm in list(self._launches.items()):
            if vm_id in listed:
                continue
            if vm_id in self._stopping:
                machines.append(replace(vm, status=VmStatus.stopping))
                continue
            status = requests.get(vm.request_id or "")
            if status in _IN_FLIGHT:
                machines.append(vm)
            elif status in ("FAILED", "CANCELLED"):
                reason = await self._failure(vm.request_id or "")
                machines.append(replace(vm, status=VmStatus.failed, reason=reason))
            elif status == "SUCCEEDED" and vm.spot:  # up once, now gone from the cloud
                reason = "spot cluster not found on the cloud (preempted or autodowned)"
                machines.append(replace(vm, status=VmStatus.preempted, reason=reason))
            else:  # gone (autodowned, or by hand), or a request the server no longer has
                del self._launches[vm_id]
        return machines

    # -- SkyPilot's answers ---------------------------------------------------------------

    async def _clusters(self, names: list[str] | None) -> list[VmInfo]:
        """``sky.status`` of our clusters (``names``: those only) as machines."""

        def status() -> list[VmInfo]:
            records = self.sky.get(self.sky.status(cluster_names=names, refresh=self.refresh))
            return [self._vm(r) for r in records if r.name.startswith(self.prefix)]

        return await asyncio.to_thread(status)

    async def _requests(self, request_ids: list[str]) -> dict[str, str]:
        """SkyPilot's status of each request (unknown to the server: absent)."""
        if not request_ids:
            return {}
        payloads = await asyncio.to_thread(self.sky.api_status, request_ids)
        return {p.request_id: p.status for p in payloads}

    async def _failure(self, request_id: str) -> str:
        """The exception a finished request raised, in SkyPilot's words."""
        try:
            await asyncio.to_thread(self.sky.get, request_id)
        except Exception as e:  # the server-side exception, re-raised by sky.get
            return _ANSI.sub("", f"{type(e).__name__}: {e}")
        return "the request finished without a cluster"

    def _vm(self, record: Any) -> VmInfo:
        """One ``sky.status`` record as a machine: UP running, INIT launching (a spot one
        SkyPilot found partly gone: preempted), STOPPED stopped (spot: preempted)."""
        vm_id = record.name.removeprefix(self.prefix)
        known = self._launches.get(vm_id)
        launched = record.handle.launched_resources if record.handle is not None else None
        spot = bool(launched.use_spot) if launched is not None else bool(known and known.spot)
        status, reason = _STATUS[record.status.value], record.last_event
        if spot and record.status.value == "STOPPED":
            status, reason = VmStatus.preempted, reason or "spot cluster stopped by the cloud"
        elif spot and record.init_kind == "unhealthy":
            status, reason = VmStatus.preempted, record.init_status_reason or reason
        if known is not None:
            return replace(
                known, status=status, reason=reason, region=record.region or known.region
            )
        instance_type = launched.instance_type if launched is not None else "unknown"
        price = self.hourly_price(launched, spot) if launched is not None else None
        return VmInfo(
            vm_id=vm_id,
            pool=(record.labels or {}).get(POOL_LABEL, "none"),
            instance_type=instance_type,
            spot=spot,
            status=status,
            worker_name=record.name,
            hourly_price_usd=price or Decimal(0),
            request_id=None,
            launched_at=datetime.fromtimestamp(record.launched_at, UTC),
            region=record.region,
            reason=reason,
        )


_STATUS = {"UP": VmStatus.running, "INIT": VmStatus.launching, "STOPPED": VmStatus.stopped}
