"""Response models of the usage API and the admin export."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.enums import TrainingStatus
from app.validation import Id
from models.enums import Kind, Mode

GroupBy = Literal["day", "base_model"]


class UsageRecord(BaseModel):
    # The API's, the export's and the usage.recorded event's view of a row: UsageRecord.model_validate(row).
    model_config = ConfigDict(from_attributes=True)

    id: Id = Field(description="Also the idempotency identifier sent to billing sinks.")
    tenant_id: Id
    training_id: Id
    status: TrainingStatus
    base_model: str
    kind: Kind = Field(description="image or text.")
    mode: Mode
    device: str
    device_class: str
    steps: int
    images: int
    examples: int = Field(description="Text examples of a text training; 0 for an image training.")
    compute_seconds: float
    billable_units: int
    started_at: datetime
    finished_at: datetime


class UsageTotals(BaseModel):
    trainings: int = 0
    steps: int = 0
    images: int = 0
    examples: int = 0
    compute_seconds: float = 0.0
    billable_units: int = 0


class UsageGroup(UsageTotals):
    key: str = Field(description="The day (YYYY-MM-DD, UTC) or the base model id.")


class UsageReport(BaseModel):
    start: datetime
    end: datetime
    group_by: GroupBy
    groups: list[UsageGroup]
    total: UsageTotals
    monthly_unit_limit: int | None = Field(description="This tenant's monthly quota; null: unlimited.")
    month_to_date_units: int = Field(description="Billable units recorded this UTC month.")


class UsageExport(BaseModel):
    data: list[UsageRecord]
