"""The scaler's round: reconcile what the provider and the farm say with what we recorded,
then decide (``domain.decide``) and act. One round every ``tick_seconds``.

Reconcile, per machine: one the provider has and we never recorded is adopted or stopped
(``unknown_vms``); one we think runs and the provider lost is ``lost``; preempted and failed
ones are recorded and released; a booted one's worker on the farm is seen busy or idle. Then
the policy's launches (recorded before the provider is asked, with our vm id, so a scaler
killed mid-launch finds the machine by id and never launches a second), drains (through the
farm: the worker disabled, its task finishes), resumes and stops (only drained machines).
Every change is a ``fleet.*`` event on the machine's stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from contracts.fleet import ScalingAction, ScalingHold, VmPhase
from libs.eventstore.uow import StorePort, UnitOfWork
from libs.ids import new_id
from libs.logging import get_logger
from services.scaler.domain import (
    TEST_RENDER_SLA_SECONDS,
    Backoffs,
    Decision,
    FleetLimits,
    InstanceOption,
    PoolPolicy,
    PoolQueue,
    QueuedWork,
    RunningTask,
    Worker,
    WorkerStatus,
    decide,
    launch_failed,
    launch_succeeded,
    placement,
)
from services.scaler.farm import FarmQueue, FarmSnapshot
from services.scaler.farm import WorkerStatus as FarmStatus
from services.scaler.machines import UP_PHASES, PoolScaling, Vm
from services.scaler.provider import FleetProvider, LaunchRefused, LaunchSpec, VmInfo, VmStatus
from services.scaler.settings import PoolSetting, ScalerSettings, UnknownVms

log = get_logger(__name__)

Clock = Callable[[], datetime]


class FleetStore(StorePort, Protocol):
    """What a round needs of the event store (PostgreSQL's, or the in-memory one)."""

    def notify_appended(self) -> None: ...


def policies_of(settings: ScalerSettings) -> list[PoolPolicy]:
    return [
        PoolPolicy(
            name=p.name,
            instance_types=tuple(
                InstanceOption(i.name, i.hourly_price_usd, i.spot_hourly_price_usd, i.region)
                for i in p.instance_types
            ),
            min_workers=p.min_workers,
            max_workers=p.max_workers,
            standby=p.standby,
            spot=p.spot,
            idle_seconds=p.idle_seconds,
            boot_seconds=p.boot_seconds,
            drain_target_seconds=p.drain_target_seconds,
            priority=p.priority,
        )
        for p in settings.pools
    ]


def queues_of(
    farm: FarmSnapshot,
    pools: Sequence[PoolSetting],
    workers: Mapping[str, str],
    affordable: Mapping[str, int] | None = None,
) -> dict[str, PoolQueue]:
    """The policy's queues from the farm's: each job's waiting tasks at its measured task
    time (the pool's ``task_seconds`` before one completed), a test-render pool's due
    ``TEST_RENDER_SLA_SECONDS`` after the farm job's submission; a rendering task has half
    its job's task time left. ``workers`` maps farm worker names to our vm ids. A job in
    ``affordable`` (by our job id, the farm job's batch) counts no more waiting tasks than
    its budget pays for, less those rendering: no machine is launched for work the job's
    cost cap will stop."""
    affordable = affordable or {}
    by_name = {p.name: p for p in pools}
    waiting: dict[str, list[QueuedWork]] = {p.name: [] for p in pools}
    seconds: dict[str, float] = {}
    for job in farm.jobs:
        p = by_name.get(job.pool)
        if p is None:
            continue
        seconds[job.job_id] = job.task_seconds or p.task_seconds
        waiting_tasks = job.waiting
        if job.batch in affordable:
            waiting_tasks = min(waiting_tasks, max(0, affordable[job.batch] - job.running))
        if waiting_tasks:
            deadline = job.submitted_at + TEST_RENDER_SLA_SECONDS if p.test_renders else None
            work = QueuedWork(
                job.job_id, waiting_tasks, seconds[job.job_id], deadline, p.test_renders
            )
            waiting[p.name].append(work)
    queues: dict[str, PoolQueue] = {}
    for p in pools:
        running = tuple(
            RunningTask(
                f"{w.job_id}:{w.task_id}",
                workers[w.name],
                seconds.get(w.job_id or "", p.task_seconds) / 2,
            )
            for w in farm.workers.values()
            if w.name in workers and w.job_id and p.name in w.pools
        )
        queues[p.name] = PoolQueue(waiting=tuple(waiting[p.name]), running=running)
    return queues


@dataclass
class FleetRound:
    """One scaler process's rounds; holds only what a restart may lose (back-offs)."""

    store: FleetStore
    provider: FleetProvider
    farm: FarmQueue
    settings: ScalerSettings
    #: Machines the fleet read model lists as not ended (it may lag: ``known`` covers that).
    recorded_live: Callable[[], Awaitable[set[str]]]
    #: Our jobs' budgets: for the job ids given, how many more tasks each may pay for (jobs
    #: whose budget does not bind are left out).
    budgets: Callable[[Sequence[str]], Awaitable[Mapping[str, int]]] | None = None
    clock: Clock = field(default=lambda: datetime.now(UTC))
    #: Machines this process recorded and has not seen end.
    known: set[str] = field(default_factory=set)
    backoffs: Backoffs = field(default_factory=dict)

    async def run_once(self) -> Decision:
        now = self.clock()
        machines = {m.vm_id: m for m in await self.provider.machines()}
        farm = await self.farm.snapshot()
        vms: dict[str, Vm] = {}
        for vm_id in sorted(self.known | await self.recorded_live() | set(machines)):
            vm = await self._reconcile(vm_id, machines.get(vm_id), farm, now)
            if not vm.ended:
                vms[vm_id] = vm
        self.known = set(vms)
        fleet = [w for vm_id, vm in vms.items() if (w := self._worker(vm_id, vm, farm))]
        names = {w.worker_name: w.vm_id for w in fleet if w.worker_name}
        policies = policies_of(self.settings)
        limits = FleetLimits(self.settings.max_vms, self.settings.max_spend_per_hour_usd)
        t = now.timestamp()
        batches = sorted({j.batch for j in farm.jobs if j.batch})
        affordable = await self.budgets(batches) if self.budgets and batches else {}
        queues = queues_of(farm, self.settings.pools, names, affordable)
        decision = decide(t, policies, limits, queues, fleet, self.backoffs)
        await self._act(decision, vms, now)
        return decision

    # -- reconcile ----------------------------------------------------------------------

    async def _reconcile(
        self, vm_id: str, seen: VmInfo | None, farm: FarmSnapshot, now: datetime
    ) -> Vm:
        uow, vm = await self._load(vm_id)
        asked_at = vm.since if vm.phase is VmPhase.requested else None
        if seen is None and vm.phase is VmPhase.requested:
            seen = await self._relaunch(vm, now)
        if seen is None:
            vm.lost(now)
        elif vm.phase is None:
            self._unknown(vm, seen, now)
        elif seen.status is VmStatus.preempted:
            vm.preempted(seen.reason or "preempted by the provider", now)
        elif seen.status is VmStatus.failed:
            vm.launch_failed(seen.reason or "launch failed", now)
        elif seen.status is VmStatus.stopped:
            vm.stopped("stopped_by_provider", now)
        elif seen.worker_name and not vm.ended:
            worker = farm.workers.get(seen.worker_name)
            if worker is not None and worker.status is not FarmStatus.offline:
                busy = worker.status in (FarmStatus.rendering, FarmStatus.draining)
                vm.booted(seen.worker_name, now) or vm.worker_seen(busy, now)
        await self._commit(uow)
        if asked_at is not None:
            self._launch_settled(vm, asked_at, now)
        if seen is not None and (vm.ended or vm.phase is None):
            await self.provider.stop(vm_id)  # preempted, failed, or an unknown one not kept
        return vm

    def _launch_settled(self, vm: Vm, asked_at: datetime, now: datetime) -> None:
        """What a machine that was booting tells of its (pool, placement): up, the placement
        is trusted again; failed or preempted before it was ever up (a capacity or quota
        failure reported after the launch was accepted, as SkyPilot does), a failed launch
        for the back-off, as a refusal at launch is."""
        where = placement(vm.instance_type, vm.region)
        if vm.phase in UP_PHASES:
            self.backoffs = launch_succeeded(self.backoffs, vm.pool, where)
        elif vm.phase in (VmPhase.failed, VmPhase.preempted):
            reason = vm.reason or vm.phase.value
            self.backoffs = launch_failed(
                self.backoffs, vm.pool, where, now.timestamp(), reason, asked_at.timestamp()
            )
            log.error("vm_failed_before_ready", vm_id=vm.key, placement=where, reason=reason)

    async def _relaunch(self, vm: Vm, now: datetime) -> VmInfo | None:
        """A machine we asked for that the provider does not list: the launch never reached
        it (a scaler killed between recording and asking) or is still on its way. Asked
        again with the same vm id, which is the same machine; given up after
        ``launch_timeout_seconds``."""
        assert vm.since is not None
        if (now - vm.since).total_seconds() > self.settings.launch_timeout_seconds:
            vm.launch_failed("launch_timeout", now)
            return None
        spec = LaunchSpec(vm.key, vm.pool, vm.instance_type, vm.spot, vm.region)
        try:
            info = await self.provider.launch(spec)
        except LaunchRefused as e:
            vm.launch_failed(e.reason, now)
            return None
        vm.launch_accepted(info.request_id, now)
        return info

    def _unknown(self, vm: Vm, seen: VmInfo, now: datetime) -> None:
        vm.adopt(
            pool=seen.pool,
            provider=self.provider.name,
            instance_type=seen.instance_type,
            spot=seen.spot,
            region=seen.region,
            hourly_price_usd=seen.hourly_price_usd,
            worker_name=seen.worker_name,
            launched_at=min(seen.launched_at, now),
            at=now,
        )
        if self.settings.unknown_vms is UnknownVms.stop:
            vm.stopped("unknown_vm", now)
        log.warning("vm_unknown", vm_id=vm.key, kept=self.settings.unknown_vms.value)

    def _worker(self, vm_id: str, vm: Vm, farm: FarmSnapshot) -> Worker | None:
        status = _STATUS.get(vm.phase) if vm.phase else None
        if status is None:
            return None
        farm_worker = farm.workers.get(vm.worker_name) if vm.worker_name else None
        if status is WorkerStatus.draining and (
            farm_worker is None or farm_worker.status is FarmStatus.disabled
        ):
            status = WorkerStatus.drained
        assert vm.since is not None
        return Worker(
            vm_id=vm_id,
            pool=vm.pool,
            status=status,
            instance_type=vm.instance_type,
            spot=vm.spot,
            hourly_price_usd=vm.hourly_price_usd,
            launched_at=vm.since.timestamp() if status is WorkerStatus.booting else 0.0,
            idle_since=vm.since.timestamp() if status is WorkerStatus.idle else None,
            worker_name=vm.worker_name,
        )

    # -- act ----------------------------------------------------------------------------

    async def _act(self, decision: Decision, vms: dict[str, Vm], now: datetime) -> None:
        decision_id = new_id("dec")
        launched: list[tuple[str, ScalingAction]] = []
        for launch in decision.launches:
            vm_id = new_id("vm")
            action = ScalingAction(
                action="launch",
                vm_id=vm_id,
                reason=launch.reason.value,
                instance_type=launch.instance_type,
            )
            launched.append((launch.pool, action))
            request = partial(
                Vm.request,
                pool=launch.pool,
                provider=self.provider.name,
                instance_type=launch.instance_type,
                spot=launch.spot,
                region=launch.region,
                hourly_price_usd=launch.hourly_price_usd,
                reason=launch.reason.value,
                decision_id=decision_id,
                at=now,
            )
            await self._record(vm_id, request)
            self.known.add(vm_id)
            log.info("vm_launch", vm_id=vm_id, reason=launch.reason.value, **dict(launch.inputs))
            try:
                info = await self.provider.launch(launch.spec(vm_id))
            except LaunchRefused as e:
                self.backoffs = launch_failed(
                    self.backoffs, launch.pool, launch.placement, now.timestamp(), e.reason
                )
                await self._record(vm_id, partial(Vm.launch_failed, reason=e.reason, at=now))
                log.error("vm_launch_refused", vm_id=vm_id, reason=e.reason)
                continue
            await self._record(
                vm_id, partial(Vm.launch_accepted, request_id=info.request_id, at=now)
            )
        for vm_action in decision.drains:
            if worker := vms[vm_action.vm_id].worker_name:
                await self.farm.drain(worker)
            reason = vm_action.reason.value
            drain = partial(Vm.drain, reason=reason, decision_id=decision_id, at=now)
            await self._record(vm_action.vm_id, drain)
        for vm_action in decision.resumes:
            if worker := vms[vm_action.vm_id].worker_name:
                await self.farm.undrain(worker)
            reason = vm_action.reason.value
            resume = partial(Vm.resume, reason=reason, decision_id=decision_id, at=now)
            await self._record(vm_action.vm_id, resume)
        for vm_action in decision.stops:
            await self.provider.stop(vm_action.vm_id)
            stop = partial(Vm.stopped, reason=vm_action.reason.value, at=now)
            await self._record(vm_action.vm_id, stop)
            self.known.discard(vm_action.vm_id)
        await self._record_decisions(decision, decision_id, launched, now)

    async def _record_decisions(
        self,
        decision: Decision,
        decision_id: str,
        launched: list[tuple[str, ScalingAction]],
        now: datetime,
    ) -> None:
        """Each pool's part of ``decision``, with the inputs it was decided on."""
        for sizing in decision.pools:
            pool = sizing.pool
            actions = [a for p, a in launched if p == pool]
            for kind, done in (
                ("drain", decision.drains),
                ("resume", decision.resumes),
                ("stop", decision.stops),
            ):
                actions += [
                    ScalingAction(action=kind, vm_id=a.vm_id, reason=a.reason.value)
                    for a in done
                    if a.pool == pool
                ]
            held = [
                ScalingHold(count=h.count, reason=h.reason.value)
                for h in decision.held
                if h.pool == pool
            ]
            inputs: dict[str, str | int | float] = {
                **sizing.inputs(),
                "spend_per_hour_usd": str(decision.spend_per_hour_usd),
                "live_vms": decision.live_vms,
            }
            backed_off = sorted(
                where
                for (p, where), b in self.backoffs.items()
                if p == pool and b.until > now.timestamp()
            )
            if backed_off:  # the placements not launched now, after failed launches
                inputs["backed_off"] = ", ".join(backed_off)
            actor = {"kind": "service", "id": self.settings.service_name}
            uow = UnitOfWork(self.store, metadata={"actor": actor})
            scaling = await uow.get(PoolScaling, pool)
            scaling.decided(decision_id, now, inputs, actions, held)
            await self._commit(uow)

    async def _record(self, vm_id: str, decide_on: Callable[[Vm], object]) -> Vm:
        uow, vm = await self._load(vm_id)
        decide_on(vm)
        await self._commit(uow)
        return vm

    async def _load(self, vm_id: str) -> tuple[UnitOfWork, Vm]:
        """The machine as its stream has it (one scaler writes it: the leader)."""
        uow = UnitOfWork(
            self.store,
            metadata={
                "actor": {"kind": "service", "id": self.settings.service_name},
                "correlation_id": f"vm:{vm_id}",
            },
        )
        return uow, await uow.get(Vm, vm_id)

    async def _commit(self, uow: UnitOfWork) -> None:
        if await uow.commit():
            self.store.notify_appended()


_STATUS = {
    VmPhase.requested: WorkerStatus.booting,
    VmPhase.idle: WorkerStatus.idle,
    VmPhase.busy: WorkerStatus.busy,
    VmPhase.draining: WorkerStatus.draining,
}
