"""Request and response models of the admin API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from app.validation import Id, Int32, IsoDatetime, RequestModel


class TenantLimits(RequestModel):
    max_concurrent_trainings: Int32 | None = Field(
        None, description="Queued + running trainings at once; null: the server default."
    )
    monthly_unit_limit: Int32 | None = Field(None, description="Billable units per UTC month; null: unlimited.")
    stripe_customer_id: str | None = Field(None, max_length=255, description="Stripe customer billed for usage.")


class TenantCreate(TenantLimits):
    name: str = Field(min_length=1, max_length=200)


class TenantUpdate(TenantLimits):
    """Only the fields sent are changed; null clears one."""


class Tenant(BaseModel):
    # Read from the row: Tenant.model_validate(row).
    model_config = ConfigDict(from_attributes=True)

    id: Id
    name: str
    created_at: datetime
    max_concurrent_trainings: int | None
    monthly_unit_limit: int | None
    stripe_customer_id: str | None


class TenantList(BaseModel):
    data: list[Tenant]


class ApiKeyCreate(RequestModel):
    name: str = Field("", max_length=200, description="A label for the key.")


class ApiKey(BaseModel):
    # Read from the row (its secret hash is not a field): ApiKey.model_validate(row).
    model_config = ConfigDict(from_attributes=True)

    id: Id
    tenant_id: Id
    name: str
    prefix: str = Field(description="Public part: the key reads leap_live_<prefix>_<secret>.")
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKey):
    key: str = Field(description="The full key. Shown only now: it is stored as a hash.")


class ApiKeyList(BaseModel):
    data: list[ApiKey]


class BillingReplay(RequestModel):
    tenant_id: str | None = Field(None, description="One tenant; default: all.")
    start: IsoDatetime | None = Field(None, description="Records finished at or after this (ISO 8601).")
    end: IsoDatetime | None = Field(None, description="Records finished before this (ISO 8601).")


class BillingReplayResult(BaseModel):
    replayed: int = Field(description="Usage records sent to every billing sink again (sinks drop duplicates).")
