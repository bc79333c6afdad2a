"""Scene preparation: what the scene check finds (placeholder until the steps land)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class FindingSeverity(StrEnum):
    error = "error"
    warning = "warning"
    info = "info"


class SceneFinding(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    code: str = Field(description="Stable code of the finding.")
    severity: FindingSeverity = Field(description="error stops the job before any render.")
    message: str = Field(description="What was found.")
    path: str | None = Field(default=None, description="The asset path concerned.")
    setting: str | None = Field(default=None, description="The scene setting concerned.")
