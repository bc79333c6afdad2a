"""The render process manager: job and render events in, commands out.

Each event is handled by sending commands whose ids derive from the event (or, for a farm
submission, from the render), so a redelivered event repeats no effect: the receiving
service answers a repeated id with its first reply. The event is then marked handled and
the scheduler's state updated in one transaction, and only then acknowledged.
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel

from contracts.base import Command
from contracts.errors import DomainError
from contracts.jobs import (
    ConfirmJobCancelled,
    FailJob,
    JobAccepted,
    JobCancellationRequested,
    JobSubmitted,
    QueueJob,
    RenderOrder,
)
from contracts.render import (
    CancelRender,
    RenderAccepted,
    RenderKind,
    RenderStatus,
    SubmitRender,
    render_id_for,
)
from libs.bus.commands import Actor, CommandClient
from libs.bus.consumer import BusEvent, Retry, claim_event
from libs.eventstore.store import EventStore
from libs.logging import get_logger
from services.scheduler import projections
from services.scheduler.domain import job_commands_for, render_status_after
from services.scheduler.settings import SchedulerSettings

log = get_logger(__name__)

R = TypeVar("R", bound=BaseModel)

CONSUMER = "scheduler"
SUBJECTS = (
    f"events.{JobSubmitted.event_type}",
    f"events.{JobCancellationRequested.event_type}",
    "events.render.>",
)


class RenderManager:
    def __init__(self, settings: SchedulerSettings, store: EventStore, client: CommandClient):
        self.settings = settings
        self.store = store
        self.client = client
        self.actor = Actor(kind="service", id=settings.service_name)
        self.handled = 0

    async def send(
        self, cmd: Command, result: type[R], command_id: str, bus_event: BusEvent
    ) -> R | None:
        """Send a command; None when the receiver refuses it for good (logged)."""
        try:
            return await self.client.send(
                cmd,
                result,
                command_id=command_id,
                actor=self.actor,
                correlation_id=bus_event.metadata.get("correlation_id"),
            )
        except DomainError as e:
            if e.retryable:
                raise Retry(f"{cmd.command_type}: {e.code}: {e}") from e
            log.warning(
                "command_refused",
                command_type=cmd.command_type,
                code=e.code,
                error=str(e),
                event_type=bus_event.event_type,
            )
            return None

    async def handle(self, bus_event: BusEvent) -> None:
        async with self.store.pool.acquire() as conn:
            seen = await conn.fetchval(
                "SELECT 1 FROM scheduler.inbox WHERE consumer = $1 AND event_id = $2",
                CONSUMER,
                bus_event.event_id,
            )
        if seen:
            return
        event = bus_event.decode()
        match event:
            case JobSubmitted():
                await self.order_render(event, bus_event)
            case JobCancellationRequested():
                await self.stop_render(event.job_id, bus_event)
            case _:
                for n, cmd in enumerate(job_commands_for(event)):
                    await self.send(cmd, JobAccepted, f"{bus_event.event_id}:{n}", bus_event)
                status = render_status_after(event)
                await self.mark_handled(bus_event, status, getattr(event, "job_id", None))
                return
        self.handled += 1

    async def order_render(self, event: JobSubmitted, bus_event: BusEvent) -> None:
        """Queue the job, then order its render with the settings frozen by queueing."""
        job_id = event.job_id
        render_id = render_id_for(job_id, RenderKind.full, 1)
        order = await self.send(
            QueueJob(job_id=job_id, skip_reason=self.settings.skip_reason),
            RenderOrder,
            f"{bus_event.event_id}:queue",
            bus_event,
        )
        if order is None:  # cancelled before it was queued: make sure nothing runs
            await self.stop_render(job_id, bus_event)
            return
        accepted = await self.send(
            SubmitRender(
                job_id=job_id,
                owner_id=order.owner_id,
                kind=RenderKind.full,
                attempt=1,
                name=order.name,
                scene_key=order.scene_key,
                renderer=order.renderer,
                frame_range=order.frame_range,
                chunk_size=order.chunk_size,
                resolution=order.resolution,
                render_settings=order.render_settings,
                priority=order.priority,
            ),
            RenderAccepted,
            f"submit:{render_id}",
            bus_event,
        )
        if accepted is None:  # the bridge refused the order for good
            await self.send(
                FailJob(
                    job_id=job_id,
                    reason="the render farm refused the render order",
                    at=bus_event.recorded_at,
                ),
                JobAccepted,
                f"{bus_event.event_id}:fail",
                bus_event,
            )
        async with self.store.pool.acquire() as conn, conn.transaction():
            if await claim_event(conn, "scheduler", CONSUMER, bus_event.event_id):
                await projections.record_render(
                    conn,
                    job_id,
                    render_id,
                    accepted.status if accepted else RenderStatus.failed,
                    accepted.farm_job_id if accepted else None,
                    bus_event.recorded_at,
                )

    async def stop_render(self, job_id: str, bus_event: BusEvent) -> None:
        """Cancel the job's render on the farm; with none there, confirm the cancel at once."""
        async with self.store.pool.acquire() as conn:
            row = await projections.render_of(conn, job_id)
        render_id = row.render_id if row else render_id_for(job_id, RenderKind.full, 1)
        stopped = await self.send(
            CancelRender(render_id=render_id, reason="the job was cancelled"),
            RenderAccepted,
            f"{bus_event.event_id}:cancel",
            bus_event,
        )
        if stopped is None:  # the bridge never had it: nothing runs on the farm
            await self.send(
                ConfirmJobCancelled(job_id=job_id, at=bus_event.recorded_at),
                JobAccepted,
                f"{bus_event.event_id}:confirm",
                bus_event,
            )
        await self.mark_handled(bus_event, None, job_id)

    async def mark_handled(
        self, bus_event: BusEvent, status: RenderStatus | None, job_id: str | None
    ) -> None:
        async with self.store.pool.acquire() as conn, conn.transaction():
            if (
                await claim_event(conn, "scheduler", CONSUMER, bus_event.event_id)
                and status is not None
                and job_id is not None
            ):
                await projections.set_status(conn, job_id, status, bus_event.recorded_at)
