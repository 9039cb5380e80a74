"""Request and response models of the webhooks API."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

from app.enums import WebhookDeliveryStatus
from app.validation import Id, RequestModel

TrainingEventType = Literal[
    "training.queued",
    "training.started",
    "training.succeeded",
    "training.failed",
    "training.canceled",
]
TRAINING_EVENT_TYPES: tuple[str, ...] = TrainingEventType.__args__  # type: ignore[attr-defined]
"""The events a training's own webhook_url can receive (its webhook_events_filter picks among them)."""
EventType = Literal[TrainingEventType, "usage.recorded"]
EVENT_TYPES: tuple[str, ...] = EventType.__args__  # type: ignore[attr-defined]


# In the spec only: what the SSRF guard's first check accepts (an http(s) scheme and a host). The
# server's own check refuses the rest with its clearer unsafe_url message.
URL_SCHEMA: JsonDict = {"pattern": r"^[Hh][Tt][Tt][Pp][Ss]?://[^/?#\s]+", "minLength": 1}


class EndpointCreate(RequestModel):
    url: str = Field(max_length=2048, json_schema_extra=URL_SCHEMA, description="http(s) URL at a public address.")
    description: str = Field("", max_length=200)
    event_types: list[EventType] = Field(default_factory=list, description="Events sent here; empty: all.")


class EndpointUpdate(RequestModel):
    """Only the fields sent change. `enabled: true` re-enables a disabled endpoint."""

    url: str | None = Field(None, max_length=2048, json_schema_extra=URL_SCHEMA)
    description: str | None = Field(None, max_length=200)
    event_types: list[EventType] | None = None
    enabled: bool | None = None


class Endpoint(BaseModel):
    # Read from the row: Endpoint.model_validate(row) (EndpointWithSecret adds its secret).
    model_config = ConfigDict(from_attributes=True)

    id: Id
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    disabled_reason: str | None = Field(description="Why LEAP disabled it (410 Gone, or failing persistently).")
    disabled_at: datetime | None
    consecutive_failures: int
    previous_secret_expires_at: datetime | None = Field(description="Until then the old secret also signs.")
    created_at: datetime


class EndpointWithSecret(Endpoint):
    secret: str = Field(description="whsec_ secret: verify the webhook-signature header with it.")


class EndpointList(BaseModel):
    data: list[Endpoint]


class Secret(BaseModel):
    # An endpoint's (Secret.model_validate(row)) or the tenant's.
    model_config = ConfigDict(from_attributes=True)

    secret: str = Field(description="whsec_ secret")
    previous_secret_expires_at: datetime | None = None


class Attempt(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempted_at: datetime
    success: bool
    status_code: int | None
    latency_ms: int
    response_body: str = Field(description="The start of the receiver's response.")
    error: str | None


class DeliveryRow(BaseModel):
    """What a delivery's own row says; `Delivery` adds its event and attempts."""

    model_config = ConfigDict(from_attributes=True)

    id: Id
    event_id: str = Field(description="The webhook-id header (the same on every retry).")
    endpoint_id: Id | None = Field(description="null: the training's own webhook_url.")
    training_id: Id | None
    url: str
    status: WebhookDeliveryStatus
    attempt_count: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    completed_at: datetime | None


class Delivery(DeliveryRow):
    event_type: str
    attempts: list[Attempt]
    payload: dict = Field(description="The body sent: {type, timestamp, data}.")


class DeliveryList(BaseModel):
    data: list[Delivery]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next (older) page; null at the end.")
