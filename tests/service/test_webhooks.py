"""Signed webhooks (Standard Webhooks) delivered by a real worker to local receivers: signatures
that verify with `standardwebhooks`, the event filter, retries with a stable webhook-id, attempts
listed through the API, redirects not followed, 410 and persistent failures disabling an endpoint,
manual redelivery, secret rotation, events written in the state change's transaction, and the
SSRF guard for every refused address class."""

from __future__ import annotations

import ipaddress
import json
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook, WebhookVerificationError

from app.db import unit_of_work
from app.orm import WebhookDelivery, WebhookEvent
from app.trainings import lifecycle
from app.webhooks import sender, ssrf
from app.webhooks import service as webhooks

from .factories import TenantKey, make_tenant, submit
from .helpers import assert_error, count_rows, run_directly, wait_until
from .receivers import Reply


def add_endpoint(api: TestClient, tenant: TenantKey, url: str, **fields: object) -> dict:
    response = api.post("/v1/webhook-endpoints", json={"url": url, **fields}, headers=tenant.headers)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def verified(secret: str, request) -> dict:  # type: ignore[no-untyped-def]
    return Webhook(secret).verify(request.body, request.headers)  # type: ignore[no-any-return]


def deliveries(api: TestClient, tenant: TenantKey, **params: str) -> list[dict]:
    return api.get("/v1/webhook-deliveries", params=params, headers=tenant.headers).json()["data"]  # type: ignore[no-any-return]


def test_events_are_signed_filtered_and_verify_with_standardwebhooks(api, database, receiver, delivery_worker, relay):
    tenant = make_tenant(database)
    everything = add_endpoint(api, tenant, f"{receiver.url}/all")
    assert everything["secret"].startswith("whsec_")
    add_endpoint(api, tenant, f"{receiver.url}/succeeded-only", event_types=["training.succeeded"])
    training = submit(
        api, tenant, data={"webhook_url": f"{receiver.url}/own", "metadata": json.dumps({"order": 7})}
    ).json()
    api.post(f"/v1/trainings/{training['id']}/cancel", headers=tenant.headers)

    wait_until(relay, lambda: len(receiver.at("/all")) == 2 and len(receiver.at("/own")) == 2, message="deliveries")
    queued, canceled = sorted(receiver.at("/all"), key=lambda item: json.loads(item.body)["type"] != "training.queued")
    body = verified(everything["secret"], queued)
    assert body["type"] == "training.queued" and body["data"]["id"] == training["id"]
    assert body["data"]["metadata"] == {"order": 7} and body["data"]["estimated_units"] == training["estimated_units"]
    assert verified(everything["secret"], canceled)["type"] == "training.canceled"
    assert queued.headers["webhook-id"] != canceled.headers["webhook-id"]
    assert queued.headers["webhook-signature"].startswith("v1,")
    assert receiver.at("/succeeded-only") == []

    # The training's own URL is signed with the tenant's secret (and the same webhook-id).
    tenant_secret = api.get("/v1/webhook-secret", headers=tenant.headers).json()["secret"]
    own = {json.loads(item.body)["type"]: item for item in receiver.at("/own")}
    assert verified(tenant_secret, own["training.queued"])["data"]["id"] == training["id"]
    assert own["training.queued"].headers["webhook-id"] == queued.headers["webhook-id"]
    with pytest.raises(WebhookVerificationError):
        verified(everything["secret"], own["training.queued"])
    tampered = own["training.canceled"]
    tampered.body = tampered.body.replace(b"canceled", b"succeeded")
    with pytest.raises(WebhookVerificationError):
        verified(tenant_secret, tampered)


def test_failed_deliveries_retry_with_a_stable_id_and_every_attempt_is_listed(
    api, database, receiver, delivery_worker, relay
):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/flaky")
    receiver.on("/flaky", Reply(500, b"x" * 100), Reply(503, b"busy"))
    submit(api, tenant)

    def done():  # type: ignore[no-untyped-def]
        listed = deliveries(api, tenant, endpoint_id=endpoint["id"])
        return listed if listed and listed[0]["status"] == "succeeded" else None

    (delivery,) = wait_until(relay, done, message="delivery to succeed on the third attempt")
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [500, 503, 200]
    assert [attempt["success"] for attempt in delivery["attempts"]] == [False, False, True]
    assert delivery["attempts"][0]["response_body"] == "x" * 16  # truncated
    assert all(attempt["latency_ms"] >= 0 for attempt in delivery["attempts"])
    requests = receiver.at("/flaky")
    assert len(requests) == 3 and len({item.headers["webhook-id"] for item in requests}) == 1
    assert {item.headers["webhook-id"] for item in requests} == {delivery["event_id"]}
    for item in requests:
        verified(endpoint["secret"], item)
    fetched = api.get(f"/v1/webhook-deliveries/{delivery['id']}", headers=tenant.headers).json()
    assert fetched["attempts"] == delivery["attempts"] and fetched["event_type"] == "training.queued"
    assert (
        api.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers).json()["consecutive_failures"] == 0
    )


def test_redirects_are_not_followed(api, database, receiver, delivery_worker, relay):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/moved")
    receiver.on("/moved", *[Reply(307, b"", {"location": f"{receiver.url}/elsewhere"})] * 4)
    submit(api, tenant)

    def exhausted():  # type: ignore[no-untyped-def]
        listed = deliveries(api, tenant, endpoint_id=endpoint["id"])
        return listed if listed and listed[0]["status"] == "failed" else None

    (delivery,) = wait_until(relay, exhausted, message="retries to be used up")
    assert [attempt["status_code"] for attempt in delivery["attempts"]] == [307] * 4  # 1 + 3 retries
    assert receiver.at("/elsewhere") == []


def test_410_gone_disables_the_endpoint_and_its_owner_sees_why(api, database, receiver, delivery_worker, relay):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/gone")
    receiver.on("/gone", Reply(410, b"gone"))
    submit(api, tenant)

    def disabled():  # type: ignore[no-untyped-def]
        body = api.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers).json()
        return body if not body["enabled"] else None

    body = wait_until(relay, disabled, message="endpoint disabled")
    assert "410" in body["disabled_reason"] and body["disabled_at"]
    (delivery,) = deliveries(api, tenant, endpoint_id=endpoint["id"])
    assert delivery["status"] == "failed" and len(delivery["attempts"]) == 1
    submit(api, tenant)  # disabled: no new delivery
    assert len(deliveries(api, tenant, endpoint_id=endpoint["id"])) == 1
    assert_error(
        api.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver", headers=tenant.headers),
        422,
        "validation_error",
        "disabled",
    )


def test_persistently_failing_endpoint_is_disabled_then_redelivered_by_hand(
    api, database, receiver, delivery_worker, relay
):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/down")
    receiver.on("/down", *[Reply(502, b"bad gateway")] * 4)
    submit(api, tenant)

    def disabled():  # type: ignore[no-untyped-def]
        body = api.get("/v1/webhook-endpoints", headers=tenant.headers).json()["data"][0]
        return body if not body["enabled"] else None

    body = wait_until(relay, disabled, message="endpoint disabled after 4 failures")
    assert "4 consecutive failed attempts" in body["disabled_reason"] and body["consecutive_failures"] == 4
    (delivery,) = deliveries(api, tenant, endpoint_id=endpoint["id"])
    assert delivery["status"] == "failed" and delivery["last_status_code"] == 502

    # The owner fixes the receiver, re-enables the endpoint and asks for the delivery again.
    enabled = api.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json={"enabled": True}, headers=tenant.headers)
    assert enabled.json()["enabled"] and enabled.json()["disabled_reason"] is None
    redelivered = api.post(f"/v1/webhook-deliveries/{delivery['id']}/redeliver", headers=tenant.headers)
    assert redelivered.status_code == 202 and redelivered.json()["status"] == "pending"
    wait_until(
        relay,
        lambda: deliveries(api, tenant, endpoint_id=endpoint["id"])[0]["status"] == "succeeded",
        message="redelivery",
    )
    requests = receiver.at("/down")
    assert len(requests) == 5 and len({item.headers["webhook-id"] for item in requests}) == 1


def test_rotated_secret_signs_with_both_secrets_during_the_grace(api, database, receiver, delivery_worker, relay):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/rotating")
    rotated = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/rotate-secret", headers=tenant.headers).json()
    assert rotated["secret"] != endpoint["secret"] and rotated["previous_secret_expires_at"]
    submit(api, tenant)
    (request,) = wait_until(relay, lambda: receiver.at("/rotating"), message="delivery")
    assert len(request.headers["webhook-signature"].split(" ")) == 2
    verified(rotated["secret"], request)
    verified(endpoint["secret"], request)  # receivers not yet updated keep working
    assert (
        api.get(f"/v1/webhook-endpoints/{endpoint['id']}/secret", headers=tenant.headers).json()["secret"]
        == (rotated["secret"])
    )


def test_events_roll_back_with_their_transaction(database, webhook_settings):
    tenant = make_tenant(database)
    with pytest.raises(RuntimeError), unit_of_work(database.session_factory) as session:
        webhooks.emit(
            session,
            tenant_id=uuid.UUID(tenant.tenant_id),
            event_type="training.queued",
            data={},
            settings=webhook_settings,
            training_url="https://example.com/hook",
        )
        raise RuntimeError("the state change failed")
    assert count_rows(database, WebhookEvent) == 0 and count_rows(database, WebhookDelivery) == 0


def test_endpoint_crud_and_validation(api, client, database):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, "https://hooks.example.com/leap", description="prod")
    listed = api.get("/v1/webhook-endpoints", headers=tenant.headers).json()["data"]
    assert [item["id"] for item in listed] == [endpoint["id"]] and "secret" not in listed[0]
    changed = api.patch(
        f"/v1/webhook-endpoints/{endpoint['id']}", json={"event_types": ["usage.recorded"]}, headers=tenant.headers
    ).json()
    assert changed["event_types"] == ["usage.recorded"] and changed["description"] == "prod"
    assert_error(
        api.post(
            "/v1/webhook-endpoints", json={"url": "https://x.example", "event_types": ["nope"]}, headers=tenant.headers
        ),
        422,
        "validation_error",
    )
    # The default settings (no allow-list) refuse private literals at registration.
    for url, mention in (
        ("ftp://example.com/x", "http and https"),
        ("http://127.0.0.1:9/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[::ffff:10.0.0.1]/x", "ipv4-mapped private"),
        ("http://user:pw@example.com/x", "credentials"),
    ):
        assert_error(
            client.post("/v1/webhook-endpoints", json={"url": url}, headers=tenant.headers), 422, "unsafe_url", mention
        )
    assert_error(submit(client, tenant, data={"webhook_url": "http://10.1.2.3/hook"}), 422, "unsafe_url", "private")
    assert api.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers).status_code == 204
    assert_error(api.get(f"/v1/webhook-endpoints/{endpoint['id']}", headers=tenant.headers), 404, "not_found")


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("100.64.0.1", "cgnat"),
        ("100.127.255.254", "cgnat"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "ipv4-mapped loopback"),
        ("::ffff:169.254.169.254", "ipv4-mapped link-local"),
        ("::ffff:10.0.0.1", "ipv4-mapped private"),
        ("64:ff9b::a9fe:a9fe", "ipv4-mapped link-local"),
        ("2002:7f00:1::", "ipv4-mapped loopback"),
        ("240.0.0.1", "reserved"),
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
        ("::ffff:93.184.215.14", None),
    ],
)
def test_ssrf_guard_classifies_every_refused_address(address, refused):
    assert ssrf.refused_class(ipaddress.ip_address(address)) == refused


def test_ssrf_guard_refuses_a_name_if_any_address_is_unsafe_and_honours_the_allow_list():
    def resolver(addresses):  # type: ignore[no-untyped-def]
        return lambda host, port: addresses

    with pytest.raises(ssrf.UnsafeUrl, match="private"):
        ssrf.resolve("https://mixed.example/x", allowed_networks=[], resolver=resolver(["93.184.215.14", "10.0.0.7"]))
    with pytest.raises(ssrf.UnsafeUrl, match="link-local"):
        ssrf.resolve("http://metadata.example/", allowed_networks=[], resolver=resolver(["169.254.169.254"]))
    with pytest.raises(ssrf.UnsafeUrl, match="http and https"):
        ssrf.resolve("gopher://example.com/", allowed_networks=[], resolver=resolver(["93.184.215.14"]))
    target = ssrf.resolve("https://public.example:8443/x", allowed_networks=[], resolver=resolver(["93.184.215.14"]))
    assert (target.host, target.port, target.address) == ("public.example", 8443, "93.184.215.14")
    allowed = ssrf.resolve("http://onprem.example/x", allowed_networks=["10.0.0.0/8"], resolver=resolver(["10.1.2.3"]))
    assert allowed.address == "10.1.2.3"


def test_sender_connects_to_the_checked_address_not_a_second_lookup(receiver):
    lookups: list[str] = []

    def resolver(host: str, port: int) -> list[str]:
        # A rebinding attacker's DNS: the first answer is the checked one, later ones would differ.
        lookups.append(host)
        return ["127.0.0.1"] if len(lookups) == 1 else ["10.0.0.1"]

    outcome = sender.post(
        f"http://receiver.example:{receiver.port}/pinned?x=1",
        body=b"{}",
        headers={"webhook-id": "msg_1"},
        timeout=timedelta(seconds=3),
        response_bytes=100,
        allowed_networks=["127.0.0.1/32"],
        resolver=resolver,
    )
    assert outcome.success and lookups == ["receiver.example"]
    (request,) = receiver.at("/pinned")
    assert request.headers["host"] == f"receiver.example:{receiver.port}" and request.path == "/pinned?x=1"
    refused = sender.post(
        f"http://receiver.example:{receiver.port}/pinned",
        body=b"{}",
        headers={},
        timeout=timedelta(seconds=3),
        response_bytes=100,
        allowed_networks=[],
        resolver=lambda host, port: ["127.0.0.1"],
    )
    assert refused.permanent and not refused.success and "loopback" in (refused.error or "")
    assert len(receiver.at("/pinned")) == 1


def test_unsafe_destination_fails_the_delivery_without_retrying(database, webhook_settings, receiver):
    from app.webhooks import delivery as delivery_module

    tenant = make_tenant(database)
    strict = webhook_settings.model_copy(update={"webhook_allowed_networks": []})
    with unit_of_work(database.session_factory) as session:
        webhooks.emit(
            session,
            tenant_id=uuid.UUID(tenant.tenant_id),
            event_type="training.queued",
            data={},
            settings=strict,
            training_url=f"{receiver.url}/private",
        )
    with database.session_factory() as session:
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()
    with unit_of_work(database.session_factory) as session:
        assert delivery_module.attempt(session, delivery_id=delivery_id, settings=strict) == "failed"
    with database.session_factory() as session:
        stored = session.get(WebhookDelivery, delivery_id)
        assert stored is not None and stored.status == "failed" and "loopback" in (stored.last_error or "")
    assert receiver.at("/private") == []


def test_worker_state_changes_and_usage_emit_their_events_in_order(
    api, database, webhook_settings, receiver, delivery_worker, relay
):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/lifecycle")
    training = submit(api, tenant, data={"steps": "100"}).json()
    run_directly(database, webhook_settings, training["id"], steps=100)  # claim (started) + complete

    def all_four():  # type: ignore[no-untyped-def]
        types = [json.loads(item.body)["type"] for item in receiver.at("/lifecycle")]
        return types if len(types) == 4 else None

    types = wait_until(relay, all_four, message="queued, started, succeeded and usage.recorded")
    assert sorted(types) == ["training.queued", "training.started", "training.succeeded", "usage.recorded"]
    bodies = {body["type"]: body for body in (verified(endpoint["secret"], item) for item in receiver.at("/lifecycle"))}
    assert bodies["training.succeeded"]["data"]["usage"]["steps"] == 100
    assert bodies["usage.recorded"]["data"]["training_id"] == training["id"]
    assert bodies["usage.recorded"]["data"]["billable_units"] == 1


def test_a_trainings_webhook_data_is_exactly_its_api_representation_and_its_filter_is_honoured(
    api, database, webhook_settings, receiver, delivery_worker, relay
):
    tenant = make_tenant(database)
    endpoint = add_endpoint(api, tenant, f"{receiver.url}/everything")
    response = submit(
        api,
        tenant,
        data={"steps": "100", "webhook_url": f"{receiver.url}/own", "webhook_events_filter": '["training.succeeded"]'},
    )
    created = response.json()
    assert created["webhook_events_filter"] == ["training.succeeded"]
    training_id = uuid.UUID(created["id"])
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=training_id, worker_id="w", settings=webhook_settings)
    with unit_of_work(database.session_factory) as session:
        key = f"leap/trainings/{training_id}/artifacts/cube.safetensors"
        artifact = lifecycle.StoredArtifact(
            name="cube.safetensors", kind="embedding", key=key, bytes=3, sha256="a" * 64
        )
        assert lifecycle.complete(
            session,
            training_id=training_id,
            worker_id="w",
            artifacts=[artifact],
            usage=lifecycle.UsageRecord(steps=100, compute_seconds=1.0, device="cpu"),
            settings=webhook_settings,
            init_used="token",
        )

    def everything_sent():  # type: ignore[no-untyped-def]
        bodies = [verified(endpoint["secret"], item) for item in receiver.at("/everything")]
        return {body["type"]: body for body in bodies} if len(bodies) == 4 and receiver.at("/own") else None

    bodies = wait_until(relay, everything_sent, message="four events to the endpoint and one to the training's URL")
    # training.queued carries what POST answered, byte for byte once parsed: the same model and encoding.
    assert bodies["training.queued"]["data"] == created
    assert created["created_at"].endswith("Z") and created["object"] == "training"
    assert bodies["training.started"]["data"]["status"] == "running"
    assert bodies["training.started"]["data"]["queue_position"] is None
    # training.succeeded is GET's answer, but for the artifact links: a payload is kept and may be sent
    # again after any link expired (GET urls.get for fresh ones).
    got = api.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert got["artifacts"][0]["url"] and got["artifacts"][0]["expires_at"].endswith("Z")
    got["artifacts"][0].update(url=None, expires_at=None)
    assert bodies["training.succeeded"]["data"] == got
    assert got["urls"]["cancel"] is None and got["urls"]["get"] == f"http://testserver/v1/trainings/{training_id}"

    # The training's own URL got only the event its filter names; the tenant's endpoint got them all.
    (own,) = receiver.at("/own")
    assert json.loads(own.body)["type"] == "training.succeeded"
    with database.session_factory() as session:
        own_deliveries = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.training_id == training_id, WebhookDelivery.endpoint_id.is_(None)
            )
        ).all()
    assert len(own_deliveries) == 1


@pytest.mark.parametrize(
    ("sent", "stored"),
    [
        ('["training.succeeded", "training.started"]', ["training.started", "training.succeeded"]),
        (
            "training.canceled, training.failed,training.succeeded",
            ["training.succeeded", "training.failed", "training.canceled"],
        ),
        ("training.queued,training.queued", ["training.queued"]),
    ],
)
def test_webhook_events_filter_is_a_json_array_or_comma_separated(client, database, sent, stored):
    tenant = make_tenant(database)
    data = {"webhook_url": "https://example.com/hook", "webhook_events_filter": sent}
    created = submit(client, tenant, data=data).json()
    assert created["webhook_events_filter"] == stored
    assert (
        client.get(f"/v1/trainings/{created['id']}", headers=tenant.headers).json()["webhook_events_filter"] == stored
    )


@pytest.mark.parametrize(
    ("data", "mention"),
    [
        ({"webhook_events_filter": "training.started,completed"}, "unknown event 'completed'"),
        ({"webhook_events_filter": '["training.started", "usage.recorded"]'}, "unknown event 'usage.recorded'"),
        ({"webhook_events_filter": '["training.started"'}, "not a JSON array"),
        ({"webhook_events_filter": "[1]"}, "JSON array of event names"),
        ({"webhook_events_filter": ""}, "names no event"),
    ],
)
def test_bad_webhook_events_filter_is_a_422_naming_it(client, database, data, mention):
    tenant = make_tenant(database)
    response = submit(client, tenant, data={"webhook_url": "https://example.com/hook", **data})
    error = assert_error(response, 422, "validation_error", "webhook_events_filter", mention)
    assert error["details"]["field"] == "webhook_events_filter"


def test_webhook_events_filter_needs_the_trainings_webhook_url(client, database):
    tenant = make_tenant(database)
    response = submit(client, tenant, data={"webhook_events_filter": "training.succeeded"})
    error = assert_error(response, 422, "validation_error", "webhook_events_filter", "only together with webhook_url")
    assert error["details"]["field"] == "webhook_events_filter"
    created = submit(client, tenant, data={"webhook_url": "https://example.com/hook"}).json()
    assert created["webhook_events_filter"] is None  # every event
