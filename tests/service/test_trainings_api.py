"""Reading, listing and cancelling trainings; authentication and tenant isolation."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from app.db import unit_of_work
from app.main import create_app
from app.openapi_export import openapi_document
from app.orm.base import utcnow
from app.tenants import service as tenants
from app.trainings import lifecycle, repository

from .factories import TEXT_MODEL, make_tenant, submit, text_files
from .helpers import assert_error


def test_get_returns_the_training_with_progress_and_no_artifacts_yet(client, database):
    tenant = make_tenant(database)
    created = submit(client, tenant).json()
    response = client.get(f"/v1/trainings/{created['id']}", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == created["id"]
    assert body["status"] == "queued" and body["object"] == "training"
    assert body["progress"] == {"step": 0, "total": 400, "loss": None, "eta_s": None}  # leap-tiny's cap
    assert body["artifacts"] == [] and body["error"] is None and body["usage"] is None


def test_each_training_gets_its_own_default_token_and_keeps_a_given_one(client, database):
    """Files are named after the token: two trainings must not share one unless the caller says so."""
    tenant = make_tenant(database)
    first, second = (submit(client, tenant).json() for _ in range(2))
    for body in (first, second):
        assert body["token"] == f"<leap-{uuid.UUID(body['id']).hex[:8]}>"
    assert first["token"] != second["token"]
    given = submit(client, tenant, data={"token": "<red_cube>"}).json()
    assert given["token"] == "<red_cube>"
    assert client.get(f"/v1/trainings/{first['id']}", headers=tenant.headers).json()["token"] == first["token"]


def test_list_is_newest_first_with_cursor_pagination_and_status_filter(client, database):
    tenant = make_tenant(database)
    ids = [submit(client, tenant).json()["id"] for _ in range(5)]
    client.post(f"/v1/trainings/{ids[0]}/cancel", headers=tenant.headers)

    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/trainings", params=params, headers=tenant.headers).json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    canceled = client.get("/v1/trainings", params={"status": "canceled"}, headers=tenant.headers).json()
    assert [item["id"] for item in canceled["data"]] == [ids[0]]
    queued = client.get("/v1/trainings", params={"status": "queued"}, headers=tenant.headers).json()
    assert len(queued["data"]) == 4


def test_list_refuses_bad_status_and_cursor(client, database):
    tenant = make_tenant(database)
    assert_error(
        client.get("/v1/trainings", params={"status": "done"}, headers=tenant.headers),
        422,
        "validation_error",
        "status",
    )
    assert_error(
        client.get("/v1/trainings", params={"cursor": "garbage"}, headers=tenant.headers),
        422,
        "validation_error",
        "cursor",
    )


def test_cancel_queued_training_is_immediate_and_idempotent(client, database):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    first = client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers)
    second = client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers)
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "canceled"
    assert first.json()["finished_at"] == second.json()["finished_at"]
    assert first.json()["error"]["code"] == "canceled"


def test_other_tenants_trainings_are_not_found(client, database):
    owner, other = make_tenant(database, name="owner"), make_tenant(database, name="other")
    training_id = submit(client, owner).json()["id"]
    assert_error(client.get(f"/v1/trainings/{training_id}", headers=other.headers), 404, "not_found")
    assert_error(client.post(f"/v1/trainings/{training_id}/cancel", headers=other.headers), 404, "not_found")
    assert client.get("/v1/trainings", headers=other.headers).json()["data"] == []
    assert client.get(f"/v1/trainings/{training_id}", headers=owner.headers).json()["status"] == "queued"


@pytest.mark.parametrize("training_id", ["7b1f4d0e-3c2a-4e5b-9d8f-0a1b2c3d4e5f", "not-a-uuid"])
def test_unknown_training_is_not_found(client, database, training_id):
    tenant = make_tenant(database)
    assert_error(client.get(f"/v1/trainings/{training_id}", headers=tenant.headers), 404, "not_found", training_id)


@pytest.mark.parametrize(
    ("header", "mention"),
    [
        (None, "missing Authorization"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer not-a-key", "malformed API key"),
        ("Bearer leap_live_aaaaaaaaaaaa_" + "A" * 40, "invalid API key"),
    ],
)
def test_missing_or_invalid_key_is_unauthorized(client, database, header, mention):
    headers = {"Authorization": header} if header else {}
    for method, path in (
        ("GET", "/v1/trainings"),
        ("GET", "/v1/models"),
        ("GET", f"/v1/trainings/{uuid.uuid4()}"),
    ):
        response = client.request(method, path, headers=headers)
        assert_error(response, 401, "unauthorized", mention)
        assert response.headers["www-authenticate"] == "Bearer"


def test_wrong_secret_for_a_known_prefix_is_unauthorized(client, database):
    tenant = make_tenant(database)
    tampered = tenant.key[:-4] + ("AAAA" if not tenant.key.endswith("AAAA") else "BBBB")
    response = client.get("/v1/trainings", headers={"Authorization": f"Bearer {tampered}"})
    assert_error(response, 401, "unauthorized", "invalid API key")


def test_revoked_key_is_refused_at_once(client, database):
    tenant = make_tenant(database)
    assert client.get("/v1/trainings", headers=tenant.headers).status_code == 200
    with unit_of_work(database.session_factory) as session:
        (key,) = tenants.list_api_keys(session, tenant_id=uuid.UUID(tenant.tenant_id))
        tenants.revoke_api_key(session, key_id=key.id)
    assert_error(client.get("/v1/trainings", headers=tenant.headers), 401, "unauthorized", "revoked")


def test_models_lists_the_registry(client, database):
    tenant = make_tenant(database)
    body = client.get("/v1/models", headers=tenant.headers).json()
    (model,) = [item for item in body["data"] if item["id"] == "leap-tiny"]
    assert model["default"] is True
    assert isinstance(model["has_booster"], bool)


def test_unknown_route_uses_the_error_shape(client):
    assert_error(client.get("/v1/nothing"), 404, "not_found")


def _get(client, tenant, training_id: str) -> dict:  # type: ignore[no-untyped-def]
    return client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("data", "total"),
    [
        ({"steps": "50"}, 50),  # exactly these
        ({"max_steps": "120"}, 120),  # stops when done, at most these
        ({}, 400),  # the bundled registry's cap for leap-tiny pivotal
        ({"mode": "lora"}, 300),  # ... and lora
    ],
)
def test_progress_total_is_the_planned_steps_from_submission(client, database, data, total):
    tenant = make_tenant(database)
    created = submit(client, tenant, data=data).json()
    assert created["progress"] == {"step": 0, "total": total, "loss": None, "eta_s": None}
    assert _get(client, tenant, created["id"])["progress"]["total"] == total


def test_a_text_trainings_progress_total_is_its_models_default_steps(client, database):
    tenant = make_tenant(database)
    created = submit(client, tenant, files=text_files(), data={"base_model": TEXT_MODEL, "mode": "token"}).json()
    assert created["progress"]["total"] == 200  # the bundled registry's smollm2-135m token cap (max_steps)


def test_a_training_claimed_after_it_was_read_as_queued_gets_no_queue_position(client, database, settings):
    # An Idempotency-Key replay reads the training (queued), then counts its place in the queue. A
    # worker that claimed it in between left the count NULL, and the replay answered 500 (seen in CI).
    tenant = make_tenant(database)
    created = submit(client, tenant).json()
    with unit_of_work(database.session_factory) as session:
        training = repository.get(session, uuid.UUID(created["id"]))
        assert training is not None and training.status == "queued"
        with unit_of_work(database.session_factory) as other:
            assert lifecycle.claim(other, training_id=training.id, worker_id="w", settings=settings)
        assert repository.queue_positions(session, [training]) == {}


def test_queue_position_counts_every_tenants_queue_in_claim_order(client, database, settings):
    first, second = make_tenant(database, name="first"), make_tenant(database, name="second")
    a1 = submit(client, first).json()
    b1 = submit(client, second).json()
    a2 = submit(client, first).json()
    assert [a1["queue_position"], b1["queue_position"], a2["queue_position"]] == [1, 2, 3]
    assert _get(client, second, b1["id"])["queue_position"] == 2
    listed = client.get("/v1/trainings", headers=first.headers).json()["data"]
    assert [(item["id"], item["queue_position"]) for item in listed] == [(a2["id"], 3), (a1["id"], 1)]

    # a2 is claimed (running: no position), then put back after its worker is lost: a recovered
    # training is claimed before new ones (broker priority), so it is first although the youngest.
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=uuid.UUID(a2["id"]), worker_id="w", settings=settings)
    assert _get(client, first, a2["id"])["queue_position"] is None
    assert _get(client, first, a2["id"])["status"] == "running"
    assert _get(client, second, b1["id"])["queue_position"] == 2
    with unit_of_work(database.session_factory) as session:
        requeued = repository.requeue_expired(session, now=utcnow() + timedelta(hours=1), max_attempts=3)
        assert requeued == [uuid.UUID(a2["id"])]
    assert [_get(client, first, a2["id"])["queue_position"], _get(client, first, a1["id"])["queue_position"]] == [1, 2]

    client.post(f"/v1/trainings/{a1['id']}/cancel", headers=first.headers)
    assert _get(client, first, a1["id"])["queue_position"] is None
    assert _get(client, second, b1["id"])["queue_position"] == 2


def test_every_response_links_the_trainings_endpoints_and_location_is_its_own(client, database):
    tenant = make_tenant(database)
    response = submit(client, tenant)
    created = response.json()
    base = f"http://testserver/v1/trainings/{created['id']}"  # absolute, on the request's own address
    expected = {"get": base, "cancel": f"{base}/cancel", "stream": f"{base}/stream", "logs": f"{base}/logs"}
    assert created["urls"] == expected and response.headers["location"] == base
    assert _get(client, tenant, created["id"])["urls"] == expected
    assert client.get("/v1/trainings", headers=tenant.headers).json()["data"][0]["urls"] == expected

    # Once finished, as on Replicate: nothing to cancel or stream.
    canceled = client.post(expected["cancel"], headers=tenant.headers).json()
    finished = {"get": base, "cancel": None, "stream": None, "logs": f"{base}/logs"}
    assert canceled["urls"] == finished and _get(client, tenant, created["id"])["urls"] == finished


def test_urls_and_location_are_absolute_under_the_public_url(settings, database):
    public = settings.model_copy(update={"public_url": "https://leap.example.com/"})
    tenant = make_tenant(database)
    with TestClient(create_app(public)) as public_client:
        response = submit(public_client, tenant)
        created = response.json()
        own = f"https://leap.example.com/v1/trainings/{created['id']}"
        assert response.headers["location"] == own == created["urls"]["get"]
        assert created["urls"]["cancel"] == f"{own}/cancel" and created["urls"]["logs"] == f"{own}/logs"
        assert public_client.get(own, headers=tenant.headers).json()["urls"]["get"] == own


def test_options_lists_every_method_of_a_path_without_a_key(client):
    assert client.options("/v1/trainings").headers["allow"] == "GET, POST, OPTIONS"
    training_id = uuid.uuid4()
    response = client.options(f"/v1/trainings/{training_id}")
    assert response.status_code == 204 and response.content == b""
    assert response.headers["allow"] == "GET, OPTIONS"
    assert client.options(f"/v1/trainings/{training_id}/cancel").headers["allow"] == "POST, OPTIONS"
    assert client.options(f"/v1/webhook-endpoints/{training_id}").headers["allow"] == "GET, PATCH, DELETE, OPTIONS"
    preflight = client.options(
        "/v1/trainings", headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 204 and preflight.headers["allow"] == "GET, POST, OPTIONS"
    # Every documented path answers with exactly its documented methods.
    for path, operations in openapi_document()["paths"].items():
        concrete = path.replace("{key}", "a/b.png")
        for name in ("training_id", "endpoint_id", "delivery_id", "tenant_id", "key_id"):
            concrete = concrete.replace(f"{{{name}}}", str(training_id))
        allowed = client.options(concrete).headers["allow"].split(", ")
        assert set(allowed) == {method.upper() for method in operations} | {"OPTIONS"}, path
    # Unknown paths are still not found, and other methods still need a key.
    assert_error(client.options("/v1/nothing"), 404, "not_found")
    assert_error(client.get("/v1/trainings"), 401, "unauthorized")
