"""Events of the process-manager kit (``libs.process``), recorded by whichever service runs
a process manager: a command it sent that the receiver refused for good."""

from __future__ import annotations

import uuid

from pydantic import Field

from contracts.base import EVENTS, Event


@EVENTS.register
class CommandRefused(Event):
    """A process manager's command was refused. This is an alert: someone must look."""

    event_type = "process.CommandRefused"

    manager: str = Field(description="The process manager that sent the command.")
    key: str | None = Field(description="The process instance, e.g. the job id.")
    command_type: str
    command_id: str
    cause_event_id: uuid.UUID = Field(description="The event the command answered.")
    cause_event_type: str
    code: str = Field(description="The receiver's error code.")
    message: str
    expected: bool = Field(
        description="True when the manager expected this refusal and had a plan for it."
    )
    then: list[str] = Field(description="Command types sent instead (the fallback).")
