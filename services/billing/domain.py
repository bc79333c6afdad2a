"""Billing's aggregates and the estimator: prices, each job's cost, API keys' spend. Pure:
no I/O and no clock (times come in with the command).

- :class:`PriceCatalogue` (stream ``prices-catalogue``): the published price versions; the
  version in force at ``t`` is the latest one effective at or before ``t``.
- :func:`estimate`: a cost range from a job's parameters (the renderer's reference time
  scaled by pixels and samples) or, once the job has farm tasks, from their measured times.
- :class:`JobCost` (stream ``jobcost-<job id>``): the hold before rendering, a cost line per
  farm task, growing the hold, the cap, the capture at the end.
- :class:`KeyBudget` (stream ``keybudget-<api key id>``): an API key's caps and commitments.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from decimal import Decimal

from pydantic import BaseModel, ConfigDict

from contracts.base import Event
from contracts.billing import (
    JOB_COST_EVENTS,
    CaptureRequest,
    CostEstimate,
    CostLine,
    CostTotals,
    EstimateAssumptions,
    EstimateParameters,
    HoldRequest,
    JobCostCapReached,
    JobCostHeld,
    JobCostOpened,
    JobCostSettled,
    JobHoldRefused,
    JobHoldRequested,
    KeySpend,
    KeySpendCapsSet,
    KeySpendCommitted,
    KeySpendReleased,
    LineCause,
    PriceList,
    PricesPublished,
    PriceVersion,
    SecondsSource,
    TaskCharged,
)
from contracts.envelope import AwaitingReason, CostStatus, Currency
from contracts.errors import (
    FieldProblem,
    FieldProblems,
    NoPrices,
    SpendCapReached,
    ValidationFailed,
)
from contracts.errors.money import SpendCapRef
from contracts.jobs import FrameRange, Renderer, TestRenderQuality
from contracts.render import RenderKind, render_kind_of
from contracts.wallet import credits
from libs.eventstore.aggregate import Aggregate

ZERO = Decimal("0.00")
#: The smallest hold: the ledger's minor unit.
MIN_HOLD = Decimal("0.01")
#: Pixels and samples the renderers' reference times are for.
REFERENCE_PIXELS = 1920 * 1080
REFERENCE_SAMPLES = 128
SECONDS = Decimal("0.001")
#: A cost line's work factor is kept to 0.0001.
WORK_FACTOR = Decimal("0.0001")

# --- prices -------------------------------------------------------------------------------


class PriceCatalogue(Aggregate):
    """Every published price version, in order."""

    stream_prefix = "prices"
    versions: list[PriceVersion] = []

    def apply(self, event: Event) -> None:
        if isinstance(event, PricesPublished):
            self.versions = [
                *self.versions,
                PriceVersion(
                    version=event.version,
                    effective_from=event.effective_from,
                    prices=event.prices,
                    published_by=event.published_by,
                ),
            ]

    def in_force(self, at: datetime) -> PriceVersion | None:
        """The latest version effective at or before ``at``."""
        effective = [v for v in self.versions if v.effective_from <= at]
        return max(effective, key=lambda v: v.version) if effective else None

    def scheduled(self, at: datetime) -> PriceVersion | None:
        """The next version to come into force after ``at``, if one is published."""
        later = [v for v in self.versions if v.effective_from > at]
        return min(later, key=lambda v: v.effective_from) if later else None

    def publish(
        self, prices: PriceList, effective_from: datetime | None, by: str, now: datetime
    ) -> PriceVersion:
        """Record version n+1, in force from ``effective_from`` (now if not given; never in
        the past, so no charge already made changes price)."""
        start = effective_from or now
        if start < now:
            problem = FieldProblem(
                loc=["effective_from"],
                message="a price version cannot take effect in the past",
                type="effective_from_in_past",
            )
            raise ValidationFailed(
                f"effective_from {start.isoformat()} is in the past",
                FieldProblems(errors=[problem]),
            )
        version = len(self.versions) + 1
        self.record(
            PricesPublished(
                version=version, effective_from=start, prices=prices, published_by=by, at=now
            )
        )
        return self.versions[-1]


def price_or_refuse(catalogue: PriceCatalogue, at: datetime) -> PriceVersion:
    version = catalogue.in_force(at)
    if version is None:
        raise NoPrices(f"no price version is in force at {at.isoformat()}")
    return version


# --- the estimator --------------------------------------------------------------------------


class EstimatorModel(BaseModel):
    """The estimator's assumptions (from the billing settings)."""

    model_config = ConfigDict(frozen=True)

    #: Seconds one frame takes at 1920x1080 and 128 samples, per renderer.
    reference_seconds: dict[Renderer, Decimal]
    #: The model's range: expected x low_factor .. expected x high_factor.
    low_factor: Decimal = Decimal("0.5")
    high_factor: Decimal = Decimal("2.5")
    #: Scene loading speed of a farm machine, MB/s (paid once per task).
    scene_load_mb_per_second: Decimal = Decimal("100")
    #: Machines assumed to render a job in parallel (at most its tasks).
    workers: int = 4
    #: A measured range is never narrower than expected +- this share.
    min_measured_spread: Decimal = Decimal("0.10")
    #: Nor than +- this share when measured at reduced quality and scaled up (render time
    #: is not quite proportional to pixels and samples: scene load, BVH build, denoising).
    min_scaled_spread: Decimal = Decimal("0.25")


def frame_count(frame_range: FrameRange) -> int:
    return len(range(frame_range.start, frame_range.end + 1, frame_range.step))


def model_seconds_per_frame(params: EstimateParameters, model: EstimatorModel) -> Decimal:
    """The renderer's reference time scaled by pixels and samples."""
    pixels = Decimal(params.resolution.width * params.resolution.height) / REFERENCE_PIXELS
    samples = Decimal(params.render_settings.samples or REFERENCE_SAMPLES) / REFERENCE_SAMPLES
    return model.reference_seconds[params.renderer] * pixels * samples


def _machine_cost(seconds: Decimal, per_hour: Decimal) -> Decimal:
    return seconds * per_hour / 3600


def estimate(
    params: EstimateParameters,
    price: PriceVersion,
    model: EstimatorModel,
    lines: Sequence[CostLine] = (),
) -> CostEstimate:
    """The cost range of rendering ``params`` at ``price``.

    Without measured task lines: the model's seconds per frame, x low/high factors, plus the
    scene load of every task. With the job's task lines (its full render's, else its test
    render's): their mean seconds per frame (scene load included in what was measured) for
    the frames still to render, the range from the fastest and slowest task (at least
    +-``min_measured_spread``), plus what the lines cost so far.
    """
    prices = price.prices
    instance = prices.instance(prices.default_instance_type)
    assert instance is not None  # PriceList checks the default is listed
    per_hour = instance.per_hour(params.priority)
    frames = frame_count(params.frame_range)
    tasks = math.ceil(frames / params.chunk_size)
    tasks_lines = [ln for ln in lines if ln.cause is LineCause.task and ln.frames]
    full = [ln for ln in tasks_lines if _kind(ln) is RenderKind.full]
    measured = full or tasks_lines
    if measured:
        source = SecondsSource.measured if full else SecondsSource.test_render
        seconds = sum((ln.seconds * ln.work_factor for ln in measured), Decimal(0))
        frames_measured = sum(len(ln.frames) for ln in measured)
        mean = seconds / frames_measured
        per_frame = [ln.seconds * ln.work_factor / len(ln.frames) for ln in measured]
        scaled = any(ln.work_factor != 1 for ln in measured)
        spread = model.min_scaled_spread if scaled else model.min_measured_spread
        low = min(min(per_frame), mean * (1 - spread))
        high = max(max(per_frame), mean * (1 + spread))
        done = {f for ln in full for f in ln.frames}
        remaining = max(frames - len(done), 0)
        so_far = sum((ln.amount_credits for ln in full), Decimal(0))
        load = Decimal(0)  # measured times include loading the scene
        left_tasks = math.ceil(remaining / params.chunk_size)
    else:
        source = SecondsSource.model
        mean = model_seconds_per_frame(params, model)
        low, high = mean * model.low_factor, mean * model.high_factor
        remaining, so_far, left_tasks = frames, Decimal(0), tasks
        load = Decimal(params.scene_size_bytes) / (model.scene_load_mb_per_second * 1_000_000)
    workers = max(1, min(model.workers, left_tasks))

    def cost(per_frame_seconds: Decimal) -> Decimal:
        machine = remaining * per_frame_seconds + left_tasks * load
        return credits(so_far + _machine_cost(machine, per_hour))

    duration = (remaining * mean + left_tasks * load) / workers
    return CostEstimate(
        low_credits=cost(low),
        expected_credits=cost(mean),
        high_credits=cost(high),
        currency=Currency.credits,
        duration_seconds=math.ceil(duration),
        assumptions=EstimateAssumptions(
            seconds_per_frame_low=low.quantize(SECONDS),
            seconds_per_frame=mean.quantize(SECONDS),
            seconds_per_frame_high=high.quantize(SECONDS),
            seconds_source=source,
            measured_tasks=len(measured),
            scene_load_seconds=load.quantize(SECONDS),
            frames=frames,
            tasks=tasks,
            workers=workers,
            instance_type=instance.instance_type,
            priority=params.priority,
            price_per_hour_credits=per_hour.normalize(),
            price_version=price.version,
        ),
    )


def _kind(line: CostLine) -> RenderKind:
    try:
        return render_kind_of(line.render_id or "")
    except ValueError:
        return RenderKind.full


# --- an API key's spend ---------------------------------------------------------------------


class KeyBudget(Aggregate):
    """An API key's spend caps and what holds made through it committed."""

    stream_prefix = "keybudget"
    owner_id: str | None = None
    daily_cap: Decimal | None = None
    total_cap: Decimal | None = None
    day: date | None = None
    today: Decimal = ZERO
    total: Decimal = ZERO
    #: Credits committed per job and not yet released.
    jobs: dict[str, Decimal] = {}

    def apply(self, event: Event) -> None:
        match event:
            case KeySpendCapsSet():
                self.owner_id = event.owner_id
                self.daily_cap, self.total_cap = event.daily_cap_credits, event.total_cap_credits
            case KeySpendCommitted():
                self.today = (self.today if self.day == event.day else ZERO) + event.amount
                self.day = event.day
                self.total += event.amount
                self.jobs = {
                    **self.jobs,
                    event.job_id: self.jobs.get(event.job_id, ZERO) + event.amount,
                }
            case KeySpendReleased():
                self.total -= event.amount
                self.jobs = {k: v for k, v in self.jobs.items() if k != event.job_id}

    def today_at(self, at: datetime) -> Decimal:
        return self.today if self.day == at.date() else ZERO

    def room_for(self, amount: Decimal, at: datetime) -> SpendCapRef | None:
        """The cap ``amount`` more would pass, or None if both caps leave room for it."""
        today = self.today_at(at)
        if self.daily_cap is not None and today + amount > self.daily_cap:
            return SpendCapRef(
                api_key_id=self.key,
                cap="daily",
                cap_credits=self.daily_cap,
                committed_credits=today,
                required_credits=amount,
            )
        if self.total_cap is not None and self.total + amount > self.total_cap:
            return SpendCapRef(
                api_key_id=self.key,
                cap="total",
                cap_credits=self.total_cap,
                committed_credits=self.total,
                required_credits=amount,
            )
        return None

    def set_caps(
        self, owner_id: str, daily: Decimal | None, total: Decimal | None, at: datetime
    ) -> None:
        if self.owner_id == owner_id and (self.daily_cap, self.total_cap) == (daily, total):
            return
        self.record(
            KeySpendCapsSet(
                api_key_id=self.key,
                owner_id=owner_id,
                daily_cap_credits=daily,
                total_cap_credits=total,
                at=at,
            )
        )

    def commit(self, job_id: str, amount: Decimal, at: datetime) -> None:
        if amount > 0:
            self.record(
                KeySpendCommitted(
                    api_key_id=self.key, job_id=job_id, amount=amount, day=at.date(), at=at
                )
            )

    def release(self, job_id: str, captured: Decimal, at: datetime) -> None:
        """A settled job gives back what it committed beyond what it was charged."""
        if job_id not in self.jobs:
            return
        amount = max(self.jobs[job_id] - captured, ZERO)
        self.record(KeySpendReleased(api_key_id=self.key, job_id=job_id, amount=amount, at=at))

    def view(self, at: datetime) -> KeySpend:
        return KeySpend(
            api_key_id=self.key,
            daily_cap_credits=self.daily_cap,
            total_cap_credits=self.total_cap,
            today_credits=self.today_at(at),
            total_credits=self.total,
            currency=Currency.credits,
        )


def refused_by_cap(ref: SpendCapRef) -> SpendCapReached:
    return SpendCapReached(
        f"API key {ref.api_key_id}'s {ref.cap} spend cap of {ref.cap_credits} credits leaves"
        f" no room for {ref.required_credits}",
        ref,
    )


# --- a job's cost ---------------------------------------------------------------------------


class HoldRules(BaseModel):
    """How much is held and when it grows (from the billing settings)."""

    model_config = ConfigDict(frozen=True)

    #: The first hold: the estimate's high end x (1 + margin), at most the cap.
    margin: Decimal = Decimal("0.2")
    #: Grow the hold once the cost reaches this share of it ...
    grow_at: Decimal = Decimal("0.8")
    #: ... by this share of the first hold (at most up to the cap).
    grow_by: Decimal = Decimal("0.5")
    #: Holds expire this long after they are placed or grown, unless renewed.
    ttl: timedelta = timedelta(days=7)


def hold_target(high: Decimal, cap: Decimal | None, rules: HoldRules) -> Decimal:
    target = credits(high * (1 + rules.margin))
    if cap is not None:
        target = min(target, credits(cap))
    return max(target, MIN_HOLD)


class JobCost(Aggregate):
    """A job's money: its estimate, holds, cost lines, cap and settlement."""

    stream_prefix = "jobcost"
    snapshot_version = 3
    job_id: str = ""
    owner_id: str = ""
    api_key_id: str | None = None
    parameters: EstimateParameters | None = None
    hold_target: Decimal = ZERO
    #: The hold asked of the wallet and not answered yet (asked again unchanged).
    pending_hold: HoldRequest | None = None
    totals: CostTotals = CostTotals(
        status=CostStatus.pending,
        estimate=None,
        cap_credits=None,
        held_credits=ZERO,
        so_far_credits=ZERO,
        captured_credits=ZERO,
        released_credits=ZERO,
    )
    #: The hold transfers placed or grown, in order (transfer n is ``hold:<job>:<n>``), so
    #: a repeated record changes nothing.
    transfers: list[str] = []
    lines: list[CostLine] = []

    @property
    def exists(self) -> bool:
        return bool(self.job_id)

    @property
    def status(self) -> CostStatus:
        return self.totals.status

    @property
    def closed(self) -> bool:
        """Settled, or at its cap (``JobCostCapReached``): no more holds, ever."""
        return self.status in (CostStatus.settled, CostStatus.cap_reached)

    def apply(self, event: Event) -> None:
        if isinstance(event, JobCostOpened):
            self.job_id, self.owner_id = event.job_id, event.owner_id
            self.api_key_id, self.parameters = event.api_key_id, event.parameters
            self.hold_target = event.hold_target_credits
        if isinstance(event, JobHoldRequested):
            self.pending_hold = event.request
        if isinstance(event, JobCostHeld | JobHoldRefused):
            self.pending_hold = None
        if isinstance(event, JobCostHeld):
            self.transfers = [*self.transfers, event.transfer_id]
        if isinstance(event, TaskCharged):
            self.lines = [*self.lines, event.line]
        if isinstance(event, JobCostSettled):
            self.lines = [*self.lines, *event.adjustments]
        if isinstance(event, JOB_COST_EVENTS):
            self.totals = event.totals

    def _totals(self, **changes: object) -> CostTotals:
        return self.totals.model_copy(update={"lines": len(self.lines), **changes})

    # -- opening and holds ---------------------------------------------------------------

    def open(
        self,
        job_id: str,
        owner_id: str,
        api_key_id: str | None,
        params: EstimateParameters,
        cap: Decimal | None,
        est: CostEstimate,
        rules: HoldRules,
        at: datetime,
    ) -> None:
        target = hold_target(est.high_credits, cap, rules)
        self.record(
            JobCostOpened(
                job_id=job_id,
                owner_id=owner_id,
                totals=self._totals(status=CostStatus.holding, estimate=est, cap_credits=cap),
                at=at,
                api_key_id=api_key_id,
                parameters=params,
                hold_target_credits=target,
            )
        )

    def next_hold(self, rules: HoldRules, at: datetime) -> HoldRequest | None:
        """The hold the job needs now: the first one, or growing it (None: none).

        A new request is recorded (``JobHoldRequested``) and answered again, unchanged,
        until the wallet's answer is recorded: a retry while an earlier try is unrecorded
        asks the wallet for the very same transfer and gets ``exists``, never
        ``transfer_id_reused``."""
        if self.closed:
            return None
        if self.pending_hold is not None:
            return self.pending_hold
        if not self.transfers:
            return self._request("open", self.hold_target, rules, at)
        t = self.totals
        held = t.held_credits
        waiting = t.status is CostStatus.awaiting_credits
        if t.so_far_credits < held * rules.grow_at and not waiting:
            return None
        new_total = max(held, t.so_far_credits) + credits(self.hold_target * rules.grow_by)
        if t.cap_credits is not None:
            new_total = min(new_total, credits(t.cap_credits))
        if new_total <= held:
            return None  # held up to the cap already: the cap stops it
        return self._request("increase", new_total - held, rules, at)

    def _request(self, kind: str, amount: Decimal, rules: HoldRules, at: datetime) -> HoldRequest:
        request = HoldRequest(
            user_id=self.owner_id,
            transfer_id=f"hold:{self.job_id}:{len(self.transfers) + 1}",
            hold_id=self.job_id,
            job_id=self.job_id,
            kind=kind,
            amount=amount,
            expires_at=at + rules.ttl,
        )
        self.record(
            JobHoldRequested(job_id=self.job_id, owner_id=self.owner_id, request=request, at=at)
        )
        return request

    def refuse_hold(
        self,
        reason: AwaitingReason,
        needed: Decimal,
        available: Decimal | None,
        at: datetime,
    ) -> None:
        t = self.totals
        if t.status is CostStatus.awaiting_credits and t.awaiting_reason is reason:
            return  # waiting for this already
        if self.closed:
            return
        self.record(
            JobHoldRefused(
                job_id=self.job_id,
                owner_id=self.owner_id,
                totals=self._totals(status=CostStatus.awaiting_credits, awaiting_reason=reason),
                at=at,
                reason=reason,
                needed_credits=needed,
                available_credits=available,
            )
        )

    def record_hold(self, transfer_id: str, held_total: Decimal, at: datetime) -> Decimal:
        """The wallet holds ``held_total`` now; returns the increase (0 if recorded before)."""
        if transfer_id in self.transfers or self.status is CostStatus.settled:
            return ZERO
        t = self.totals
        increase = max(held_total - t.held_credits, ZERO)
        resumed = t.status is CostStatus.awaiting_credits
        status = t.status if t.status is CostStatus.cap_reached else CostStatus.held
        self.record(
            JobCostHeld(
                job_id=self.job_id,
                owner_id=self.owner_id,
                totals=self._totals(status=status, held_credits=held_total, awaiting_reason=None),
                at=at,
                transfer_id=transfer_id,
                increase_credits=increase,
                resumed=resumed,
            )
        )
        return increase

    # -- charging ------------------------------------------------------------------------

    def charge_task(
        self,
        render_id: str,
        task_id: int,
        frames: list[int],
        worker: str,
        instance_type: str | None,
        render_seconds: float,
        finished_at: datetime,
        price: PriceVersion,
        model: EstimatorModel | None = None,
        quality: TestRenderQuality | None = None,
    ) -> bool:
        """Record the task's cost line (once per render and task); True if it is new. A test
        render's task re-estimates the job (with ``model``) from the frames measured so far,
        scaled to the job's settings when it rendered at a reduced ``quality``: the range the
        full render is started on."""
        line_id = f"task:{render_id}:{task_id}"
        charged = any(ln.line_id == line_id for ln in self.lines)
        if charged or self.status is CostStatus.settled:
            return False
        assert self.parameters is not None
        prices = price.prices
        instance = (instance_type and prices.instance(instance_type)) or prices.instance(
            prices.default_instance_type
        )
        assert instance is not None
        per_hour = instance.per_hour(self.parameters.priority)
        seconds = Decimal(str(render_seconds)).quantize(SECONDS)
        line = CostLine(
            line_id=line_id,
            cause=LineCause.task,
            render_id=render_id,
            task_id=task_id,
            frames=frames,
            worker=worker,
            instance_type=instance.instance_type,
            seconds=seconds,
            price_per_hour_credits=per_hour.normalize(),
            price_version=price.version,
            amount_credits=credits(_machine_cost(seconds, per_hour)),
            at=finished_at,
            work_factor=self._work_factor(quality),
        )
        so_far = self.totals.so_far_credits + line.amount_credits
        changes: dict[str, object] = {"so_far_credits": so_far, "lines": len(self.lines) + 1}
        if model is not None and _kind(line) is RenderKind.test:
            changes["estimate"] = estimate(self.parameters, price, model, [*self.lines, line])
        self.record(
            TaskCharged(
                job_id=self.job_id,
                owner_id=self.owner_id,
                totals=self._totals(**changes),
                at=finished_at,
                line=line,
            )
        )
        return True

    def _work_factor(self, quality: TestRenderQuality | None) -> Decimal:
        if quality is None:
            return Decimal(1)
        assert self.parameters is not None
        p = self.parameters
        factor = quality.work_factor(p.resolution, p.render_settings, REFERENCE_SAMPLES)
        return factor.quantize(WORK_FACTOR)

    def _would_pass_cap(self) -> bool:
        """At the cap, or the next task (at the mean task cost) would pass it while frames
        are still to render."""
        t = self.totals
        if t.cap_credits is None:
            return False
        if t.so_far_credits >= t.cap_credits:
            return True
        assert self.parameters is not None
        tasks = [ln for ln in self.lines if ln.cause is LineCause.task]
        done = {f for ln in tasks for f in ln.frames}
        if not tasks or len(done) >= frame_count(self.parameters.frame_range):
            return False
        mean = sum((ln.amount_credits for ln in tasks), Decimal(0)) / len(tasks)
        return t.so_far_credits + mean > t.cap_credits

    def check_cap(self, at: datetime) -> bool:
        """Record JobCostCapReached (once) if the cost reached the cap; True if it did now."""
        if self.closed or not self._would_pass_cap():
            return False
        self.record(
            JobCostCapReached(
                job_id=self.job_id,
                owner_id=self.owner_id,
                totals=self._totals(status=CostStatus.cap_reached),
                at=at,
            )
        )
        return True

    # -- settling ------------------------------------------------------------------------

    def capture_amount(self) -> Decimal:
        t = self.totals
        amount = min(t.so_far_credits, t.held_credits)
        if t.cap_credits is not None:
            amount = min(amount, t.cap_credits)
        return credits(amount)

    def capture_request(self) -> CaptureRequest | None:
        """What to ask the wallet at the end: capture the cost, or void an unused hold."""
        if self.status is CostStatus.settled or self.totals.held_credits == 0:
            return None
        amount = self.capture_amount()
        kind = "capture" if amount > 0 else "void"
        return CaptureRequest(
            user_id=self.owner_id,
            transfer_id=f"{kind}:{self.job_id}",
            hold_id=self.job_id,
            kind=kind,
            amount=amount,
        )

    def settle(
        self, captured: Decimal, released: Decimal, at: datetime, transfer_id: str | None = None
    ) -> bool:
        """Record the end (``transfer_id``: the wallet transfer that settled the hold, None if
        none was placed): adjustment lines make the lines add up to ``captured``. True if
        recorded now (False: settled before)."""
        if self.status is CostStatus.settled:
            return False
        t = self.totals
        charged = t.so_far_credits
        capped = min(charged, t.cap_credits) if t.cap_credits is not None else charged
        adjustments = []
        if capped < charged:
            adjustments.append(self._adjustment(LineCause.cap_adjustment, capped - charged, at))
        if captured < capped:
            adjustments.append(self._adjustment(LineCause.hold_shortfall, captured - capped, at))
        self.record(
            JobCostSettled(
                job_id=self.job_id,
                owner_id=self.owner_id,
                totals=self._totals(
                    status=CostStatus.settled,
                    held_credits=ZERO,
                    so_far_credits=captured,
                    captured_credits=captured,
                    released_credits=released,
                    awaiting_reason=None,
                    lines=len(self.lines) + len(adjustments),
                ),
                at=at,
                adjustments=adjustments,
                transfer_id=transfer_id,
            )
        )
        return True

    def _adjustment(self, cause: LineCause, amount: Decimal, at: datetime) -> CostLine:
        return CostLine(
            line_id=f"{cause.value}:{self.job_id}",
            cause=cause,
            render_id=None,
            task_id=None,
            frames=[],
            worker=None,
            instance_type=None,
            seconds=Decimal(0),
            price_per_hour_credits=None,
            price_version=None,
            amount_credits=amount,
            at=at,
        )
