"""Billing sinks: each sends one usage record idempotently (the record id is the identifier), so a
replayed record is never charged twice."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import stripe
from sqlalchemy.orm import Session

from app.orm import Tenant, UsageRecord
from app.settings import Settings
from app.usage.schemas import UsageRecord as UsageRecordView
from app.webhooks import service as webhooks


class SinkError(Exception):
    """A send that failed; `permanent` ones are not retried."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sink(Protocol):
    name: str

    def send(self, session: Session, *, record: UsageRecord, tenant: Tenant) -> None:
        """Deliver the record; raise SinkError on failure."""
        ...


def usage_event_id(record: UsageRecord) -> str:
    """The deterministic webhook-id of a record's usage.recorded event."""
    return f"msg_usage_{record.id.hex}"


@dataclass
class WebhookSink:
    """The signed usage.recorded event, to the tenant's subscribed endpoints (delivered with retries)."""

    settings: Settings
    name: str = "webhook"

    def send(self, session: Session, *, record: UsageRecord, tenant: Tenant) -> None:
        # An event id that already exists is not written again: a replay sends nothing new.
        webhooks.emit(
            session,
            tenant_id=record.tenant_id,
            event_type="usage.recorded",
            data={"object": "usage_record", **UsageRecordView.model_validate(record).model_dump(mode="json")},
            settings=self.settings,
            training_id=record.training_id,
            event_id=usage_event_id(record),
        )


@dataclass
class StripeSink:
    """Stripe Billing Meter Events: identifier = the record id, value = its billable units."""

    settings: Settings
    name: str = "stripe"

    def client(self) -> stripe.StripeClient:
        if self.settings.stripe_api_key is None:
            raise SinkError("LEAP_STRIPE_API_KEY is not set", permanent=True)
        base = {"api": self.settings.stripe_api_base} if self.settings.stripe_api_base else None
        return stripe.StripeClient(
            self.settings.stripe_api_key.get_secret_value(),
            base_addresses=base,  # type: ignore[arg-type]
            max_network_retries=0,  # the relay retries, counting attempts in the database
        )

    def send(self, session: Session, *, record: UsageRecord, tenant: Tenant) -> None:
        if not tenant.stripe_customer_id:
            raise SinkError(
                f"tenant {tenant.id} has no Stripe customer (PATCH /v1/admin/tenants/{{id}} stripe_customer_id)",
                permanent=True,
            )
        if record.billable_units <= 0:
            return  # nothing to charge
        try:
            self.client().v1.billing.meter_events.create(
                params={
                    "event_name": self.settings.stripe_meter_event_name,
                    "identifier": str(record.id),
                    "timestamp": int(record.finished_at.timestamp()),
                    "payload": {"stripe_customer_id": tenant.stripe_customer_id, "value": str(record.billable_units)},
                },
                options={"idempotency_key": f"leap-usage-{record.id}"},
            )
        except stripe.InvalidRequestError as error:
            if "identifier" in str(error).lower() and "already" in str(error).lower():
                return  # Stripe already has this record: charged once, as wanted
            raise SinkError(f"Stripe refused the meter event: {error}", permanent=True) from error
        except stripe.AuthenticationError as error:
            raise SinkError(f"Stripe authentication failed: {error}", permanent=True) from error
        except stripe.StripeError as error:
            raise SinkError(f"Stripe: {type(error).__name__}: {error}") from error


def make_sinks(settings: Settings) -> dict[str, Sink]:
    """The configured sinks by name."""
    available: dict[str, Sink] = {"webhook": WebhookSink(settings), "stripe": StripeSink(settings)}
    return {name: available[name] for name in settings.billing_sinks}
