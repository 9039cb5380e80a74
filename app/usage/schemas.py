"""Response models of the usage API and the admin export."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.orm import UsageRecord as UsageRecordRow

GroupBy = Literal["day", "base_model"]


class UsageRecord(BaseModel):
    id: str = Field(description="Also the idempotency identifier sent to billing sinks.")
    tenant_id: str
    training_id: str
    status: str
    base_model: str
    kind: str = Field(description="image or text.")
    mode: str
    device: str
    device_class: str
    steps: int
    images: int
    examples: int = Field(description="Text examples of a text training; 0 for an image training.")
    compute_seconds: float
    billable_units: int
    started_at: datetime
    finished_at: datetime

    @classmethod
    def from_row(cls, record: UsageRecordRow) -> UsageRecord:
        return cls(
            id=str(record.id),
            tenant_id=str(record.tenant_id),
            training_id=str(record.training_id),
            status=record.status,
            base_model=record.base_model,
            kind=record.kind,
            mode=record.mode,
            device=record.device,
            device_class=record.device_class,
            steps=record.steps,
            images=record.images,
            examples=record.examples,
            compute_seconds=record.compute_seconds,
            billable_units=record.billable_units,
            started_at=record.started_at,
            finished_at=record.finished_at,
        )


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
