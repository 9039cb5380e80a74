"""Billing sinks fed from the usage ledger by the relay (a real worker): Stripe Billing Meter Events
against a local server that records what it receives and behaves like Stripe on identifiers and
Idempotency-Key, and the signed usage.recorded webhook. Replays charge nothing twice."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from urllib.parse import parse_qsl

import pytest
from sqlalchemy import select
from standardwebhooks import Webhook

from app.orm import BillingDelivery, UsageRecord

from .factories import make_tenant, submit
from .helpers import ADMIN, run_directly, wait_until
from .receivers import Receiver, Reply

METER_PATH = "/v1/billing/meter_events"


class FakeStripe(Receiver):
    """Stripe's meter events endpoint: a repeated Idempotency-Key gets the first response back, a
    repeated identifier is refused, anything else is charged."""

    def __init__(self) -> None:
        self.charged: list[dict[str, str]] = []
        self.responses: dict[str, bytes] = {}
        self.failures = 0
        super().__init__()

    def respond(self, method: str, path: str, body: bytes) -> Reply | None:
        if path != METER_PATH:
            return Reply(404, b"{}")
        if self.failures > 0:
            self.failures -= 1
            return Reply(500, json.dumps({"error": {"type": "api_error", "message": "try again"}}).encode())
        fields = dict(parse_qsl(body.decode()))
        key = self.requests[-1].headers.get("idempotency-key", "")
        if key in self.responses:
            return Reply(200, self.responses[key], {"idempotent-replayed": "true"})
        if any(item["identifier"] == fields["identifier"] for item in self.charged):
            message = f"An event already exists with identifier {fields['identifier']}."
            error = {"error": {"type": "invalid_request_error", "message": message}}
            return Reply(400, json.dumps(error).encode())
        charge = {
            "identifier": fields["identifier"],
            "event_name": fields["event_name"],
            "customer": fields["payload[stripe_customer_id]"],
            "value": fields["payload[value]"],
            "timestamp": fields["timestamp"],
        }
        self.charged.append(charge)
        response = json.dumps(
            {
                "object": "billing.meter_event",
                "created": 1,
                "event_name": charge["event_name"],
                "identifier": charge["identifier"],
                "livemode": False,
                "payload": {"stripe_customer_id": charge["customer"], "value": charge["value"]},
                "timestamp": int(charge["timestamp"]),
            }
        ).encode()
        self.responses[key] = response
        return Reply(200, response)


@pytest.fixture(scope="module")
def stripe_server():
    server = FakeStripe()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset(stripe_server):
    stripe_server.reset()
    stripe_server.charged.clear()
    stripe_server.responses.clear()
    stripe_server.failures = 0


@pytest.fixture(scope="module")
def webhook_settings(settings, stripe_server):
    """Overrides conftest's: its `api`, `delivery_worker` and `relay` run over these billing settings."""
    return settings.model_copy(
        update={
            "billing_sinks": ["webhook", "stripe"],
            "stripe_api_key": "sk_test_leap",
            "stripe_api_base": stripe_server.url,
            "billing_retry_backoff": timedelta(seconds=0.2),
            "webhook_allowed_networks": ["127.0.0.1/32"],
            "webhook_retry_schedule": [timedelta(seconds=0.2)] * 2,
        }
    )


def billed_tenant(api, database, receiver, customer: str | None = "cus_acme"):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    if customer:
        api.patch(f"/v1/admin/tenants/{tenant.tenant_id}", json={"stripe_customer_id": customer}, headers=ADMIN)
    endpoint = api.post(
        "/v1/webhook-endpoints",
        json={"url": f"{receiver.url}/usage", "event_types": ["usage.recorded"]},
        headers=tenant.headers,
    ).json()
    return tenant, endpoint


def finish_trainings(api, database, webhook_settings, tenant, steps: list[int]) -> list[UsageRecord]:  # type: ignore[no-untyped-def]
    ids = [submit(api, tenant, data={"steps": str(count)}).json()["id"] for count in steps]
    for training_id, count in zip(ids, steps, strict=True):
        run_directly(database, webhook_settings, training_id, steps=count)
    with database.session_factory() as session:
        return list(session.scalars(select(UsageRecord).where(UsageRecord.tenant_id == uuid.UUID(tenant.tenant_id))))


def deliveries(database) -> list[BillingDelivery]:  # type: ignore[no-untyped-def]
    with database.session_factory() as session:
        return list(session.scalars(select(BillingDelivery)))


def test_each_usage_record_is_metered_in_stripe_and_sent_as_a_signed_webhook(
    api, database, webhook_settings, stripe_server, receiver, delivery_worker, relay
):
    tenant, endpoint = billed_tenant(api, database, receiver)
    records = finish_trainings(api, database, webhook_settings, tenant, [100, 300])
    wait_until(
        relay,
        lambda: len(stripe_server.charged) == 2 and len(receiver.at("/usage")) == 2,
        message="meter events and usage webhooks",
    )
    by_id = {str(record.id): record for record in records}
    for charge in stripe_server.charged:
        record = by_id[charge["identifier"]]
        assert charge["customer"] == "cus_acme" and charge["event_name"] == "leap_billable_units"
        assert charge["value"] == str(record.billable_units)
        assert charge["timestamp"] == str(int(record.finished_at.timestamp()))
    assert all(item.headers["authorization"] == "Bearer sk_test_leap" for item in stripe_server.at(METER_PATH))
    for request in receiver.at("/usage"):
        body = Webhook(endpoint["secret"]).verify(request.body, request.headers)
        assert body["type"] == "usage.recorded" and body["data"]["id"] in by_id
        assert request.headers["webhook-id"] == f"msg_usage_{uuid.UUID(body['data']['id']).hex}"
        assert body["data"]["billable_units"] == by_id[body["data"]["id"]].billable_units
    assert {(item.sink, item.status) for item in deliveries(database)} == {
        ("webhook", "delivered"),
        ("stripe", "delivered"),
    }


def test_replaying_every_usage_record_three_times_charges_nothing_twice(
    api, database, webhook_settings, stripe_server, receiver, delivery_worker, relay
):
    tenant, _ = billed_tenant(api, database, receiver)
    records = finish_trainings(api, database, webhook_settings, tenant, [100, 200, 400])
    wait_until(
        relay, lambda: len(stripe_server.charged) == 3 and len(receiver.at("/usage")) == 3, message="first sends"
    )
    sent_before = len(stripe_server.at(METER_PATH))
    for _ in range(3):
        replayed = api.post("/v1/admin/billing/replay", json={"tenant_id": tenant.tenant_id}, headers=ADMIN)
        assert replayed.status_code == 202 and replayed.json() == {"replayed": 3}
        wait_until(
            relay,
            lambda: all(item.status == "delivered" for item in deliveries(database)),
            message="replay relayed",
        )
    assert len(stripe_server.at(METER_PATH)) == sent_before + 3 * 3  # every replay reached Stripe ...
    assert sorted(item["identifier"] for item in stripe_server.charged) == sorted(str(r.id) for r in records)
    assert sum(int(item["value"]) for item in stripe_server.charged) == sum(r.billable_units for r in records)
    keys = {item.headers["idempotency-key"] for item in stripe_server.at(METER_PATH)}
    assert keys == {f"leap-usage-{record.id}" for record in records}  # ... with the same key per record
    assert len(receiver.at("/usage")) == 3  # one usage.recorded per record, never re-sent


def test_stripe_outage_is_retried_until_the_meter_event_lands(
    api, database, webhook_settings, stripe_server, receiver, delivery_worker, relay
):
    stripe_server.failures = 2
    tenant, _ = billed_tenant(api, database, receiver)
    (record,) = finish_trainings(api, database, webhook_settings, tenant, [100])

    def delivered():  # type: ignore[no-untyped-def]
        rows = [item for item in deliveries(database) if item.sink == "stripe" and item.status == "delivered"]
        return rows or None

    (row,) = wait_until(relay, delivered, message="stripe delivery after an outage")
    assert row.attempts == 3 and row.last_error is None
    assert [item["identifier"] for item in stripe_server.charged] == [str(record.id)]


def test_tenant_without_a_stripe_customer_fails_clearly_and_is_not_retried(
    api, database, webhook_settings, stripe_server, receiver, delivery_worker, relay
):
    tenant, _ = billed_tenant(api, database, receiver, customer=None)
    finish_trainings(api, database, webhook_settings, tenant, [100])

    def settled():  # type: ignore[no-untyped-def]
        rows = {item.sink: item for item in deliveries(database)}
        return rows if rows.get("stripe") and rows["stripe"].status != "pending" else None

    rows = wait_until(relay, settled, message="stripe delivery to settle")
    assert rows["stripe"].status == "failed" and rows["stripe"].attempts == 1
    assert "no Stripe customer" in (rows["stripe"].last_error or "")
    assert stripe_server.at(METER_PATH) == []
