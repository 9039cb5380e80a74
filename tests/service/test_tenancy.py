"""Admin API for tenants and keys (shared with the CLI), rate and concurrency limits, and the
cross-tenant matrix: every tenant endpoint answers 404 for another tenant's ids."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.tenants.rate_limit import MemoryRateLimiter, RedisRateLimiter, make_rate_limiter

from .factories import make_tenant, submit
from .helpers import ADMIN, assert_error, run_leap


def test_admin_api_creates_tenants_and_keys_that_work_until_revoked(client):
    created = client.post("/v1/admin/tenants", json={"name": "Acme", "monthly_unit_limit": 100}, headers=ADMIN)
    assert created.status_code == 201, created.text
    tenant = created.json()
    assert tenant["name"] == "Acme" and tenant["monthly_unit_limit"] == 100
    assert tenant["id"] in {item["id"] for item in client.get("/v1/admin/tenants", headers=ADMIN).json()["data"]}

    key = client.post(f"/v1/admin/tenants/{tenant['id']}/keys", json={"name": "ci"}, headers=ADMIN).json()
    assert re.fullmatch(r"leap_live_[a-z0-9]{12}_[A-Za-z0-9]{40}", key["key"])
    assert key["key"].startswith(f"leap_live_{key['prefix']}_")
    headers = {"Authorization": f"Bearer {key['key']}"}
    assert client.get("/v1/trainings", headers=headers).status_code == 200

    listed = client.get(f"/v1/admin/tenants/{tenant['id']}/keys", headers=ADMIN).json()["data"]
    assert [item["id"] for item in listed] == [key["id"]]
    assert "key" not in listed[0] and key["key"] not in str(listed)

    revoked = client.post(f"/v1/admin/keys/{key['id']}/revoke", headers=ADMIN)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert_error(client.get("/v1/trainings", headers=headers), 401, "unauthorized", "revoked")
    # Idempotent.
    assert client.post(f"/v1/admin/keys/{key['id']}/revoke", headers=ADMIN).status_code == 200


def test_admin_api_refuses_tenant_keys_and_wrong_tokens(client, database):
    tenant = make_tenant(database)
    assert_error(client.get("/v1/admin/tenants"), 401, "unauthorized", "missing")
    assert_error(client.get("/v1/admin/tenants", headers=tenant.headers), 401, "unauthorized", "admin token")
    wrong = {"Authorization": "Bearer dev-admin-tokeN"}
    assert_error(client.post("/v1/admin/tenants", json={"name": "x"}, headers=wrong), 401, "unauthorized")
    assert_error(client.get(f"/v1/admin/tenants/{uuid.uuid4()}", headers=ADMIN), 404, "not_found")
    assert_error(client.get("/v1/admin/tenants/nope/keys", headers=ADMIN), 404, "not_found")
    assert_error(client.post(f"/v1/admin/keys/{uuid.uuid4()}/revoke", headers=ADMIN), 404, "not_found")


def test_cli_and_admin_api_share_one_service(client, settings):
    created = run_leap(
        settings, "tenants", "create", "From CLI", "--monthly-unit-limit", "50", "--stripe-customer-id", "cus_1"
    )
    tenant_id = created.stdout.strip()
    fetched = client.get(f"/v1/admin/tenants/{tenant_id}", headers=ADMIN).json()
    assert fetched["name"] == "From CLI"
    assert fetched["monthly_unit_limit"] == 50 and fetched["stripe_customer_id"] == "cus_1"
    refused = run_leap(settings, "tenants", "create", "x", "--max-concurrent-trainings", "-1")
    assert refused.returncode == 1 and "must be an integer 0-2147483647" in refused.stderr
    key = client.post(f"/v1/admin/tenants/{tenant_id}/keys", json={"name": "api"}, headers=ADMIN).json()
    listed = run_leap(settings, "keys", "list", tenant_id).stdout
    assert key["id"] in listed and key["key"] not in listed
    assert run_leap(settings, "keys", "revoke", key["id"]).returncode == 0
    assert client.get(f"/v1/admin/tenants/{tenant_id}/keys", headers=ADMIN).json()["data"][0]["revoked_at"]


@pytest.fixture
def limited_client(settings):
    app = create_app(settings.model_copy(update={"rate_limit_requests": 3, "rate_limit_window": timedelta(minutes=1)}))
    with TestClient(app) as test_client:
        yield test_client


def test_each_key_gets_429_with_retry_after_past_its_rate_limit(limited_client, database):
    first, second = make_tenant(database, name="a"), make_tenant(database, name="b")
    for _ in range(3):
        assert limited_client.get("/v1/trainings", headers=first.headers).status_code == 200
    refused = limited_client.get("/v1/trainings", headers=first.headers)
    error = assert_error(refused, 429, "rate_limited", "rate limit")
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    assert error["details"]["retry_after_seconds"] == int(refused.headers["Retry-After"])
    # Another key has its own budget.
    assert limited_client.get("/v1/trainings", headers=second.headers).status_code == 200


def test_rate_limit_uses_redis_when_configured_and_memory_on_the_embedded_default(settings, tmp_path):
    assert isinstance(make_rate_limiter(settings), RedisRateLimiter)
    embedded = make_rate_limiter(settings.model_copy(update={"broker_url": None, "rate_limit_requests": 2}))
    assert isinstance(embedded, MemoryRateLimiter)
    assert [embedded.hit("k").allowed for _ in range(3)] == [True, True, False]
    assert embedded.hit("other").allowed
    refused = embedded.hit("k")
    assert not refused.allowed and 0 < refused.retry_after_seconds <= 60


def test_tenant_over_its_concurrent_trainings_gets_429(client, database):
    tenant = make_tenant(database)
    client.patch(f"/v1/admin/tenants/{tenant.tenant_id}", json={"max_concurrent_trainings": 1}, headers=ADMIN)
    assert submit(client, tenant).status_code == 202  # no worker: it stays queued
    refused = submit(client, tenant)
    error = assert_error(refused, 429, "rate_limited", "limit 1")
    assert refused.headers["Retry-After"] == "30"
    assert error["details"] == {"retry_after_seconds": 30, "active_trainings": 1, "limit": 1}
    # Others are not affected.
    assert submit(client, make_tenant(database, name="other")).status_code == 202


def _tenant_operations(app, *, with_ids: bool) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    """(method, path) of every tenant-scoped operation, read from the OpenAPI document."""
    return [
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/v1/") and not path.startswith(("/v1/admin", "/v1/files"))
        if "{" in path or not with_ids
        for method in operations
    ]


def _owned_resources(client, database) -> dict:  # type: ignore[no-untyped-def]
    """One of each tenant-owned resource of the victim tenant, keyed by path parameter."""
    victim = make_tenant(database, name="victim")
    ids: dict = {"_headers": victim.headers}
    endpoint = client.post(
        "/v1/webhook-endpoints", json={"url": "https://hooks.example.com/victim"}, headers=victim.headers
    ).json()
    ids["endpoint_id"] = endpoint["id"]
    ids["training_id"] = submit(client, victim).json()["id"]  # training.queued: a delivery to the endpoint
    deliveries = client.get("/v1/webhook-deliveries", headers=victim.headers).json()["data"]
    ids["delivery_id"] = deliveries[0]["id"]
    return ids


def test_every_tenant_endpoint_answers_404_for_another_tenants_ids(client, database):
    victim_ids = _owned_resources(client, database)
    intruder = make_tenant(database, name="intruder")
    operations = _tenant_operations(client.app, with_ids=True)
    assert len(operations) >= 2, operations
    for method, template in operations:
        params = re.findall(r"{(\w+)}", template)
        unknown = [name for name in params if name not in victim_ids]
        assert not unknown, f"{template}: add a victim resource for {unknown} to the matrix"
        path = template
        for name in params:
            path = path.replace("{" + name + "}", victim_ids[name])
        response = client.request(method, path, headers=intruder.headers, json={})
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "not_found"
    # Lists filtered by another tenant's ids find nothing either.
    for query in ({"endpoint_id": victim_ids["endpoint_id"]}, {"training_id": victim_ids["training_id"]}):
        response = client.get("/v1/webhook-deliveries", params=query, headers=intruder.headers)
        assert response.status_code == 404 or response.json()["data"] == [], response.text
    # And the owner still sees them (the ids are real).
    assert client.get(f"/v1/trainings/{victim_ids['training_id']}", headers=victim_ids["_headers"]).status_code == 200


def test_revoked_key_is_refused_at_once_on_every_tenant_endpoint(client, database):
    tenant = make_tenant(database)
    assert client.get("/v1/trainings", headers=tenant.headers).status_code == 200
    with database.session_factory.begin() as session:
        from app.tenants import service

        (api_key,) = service.list_api_keys(session, tenant_id=uuid.UUID(tenant.tenant_id))
        key_id = api_key.id
    client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN)
    for method, template in _tenant_operations(client.app, with_ids=False):
        path = re.sub(r"{\w+}", str(uuid.uuid4()), template)
        response = client.request(method, path, headers=tenant.headers, json={})
        assert_error(response, 401, "unauthorized", "revoked")
