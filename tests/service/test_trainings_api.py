"""Reading, listing and cancelling trainings; authentication and tenant isolation."""

from __future__ import annotations

import uuid

import pytest

from app.db import unit_of_work
from app.tenants import service as tenants

from .factories import make_tenant, submit
from .helpers import assert_error


def test_get_returns_the_training_with_progress_and_no_artifacts_yet(client, database):
    tenant = make_tenant(database)
    created = submit(client, tenant).json()
    response = client.get(f"/v1/trainings/{created['id']}", headers=tenant.headers)
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == created["id"]
    assert body["status"] == "queued"
    assert body["progress"] == {"step": 0, "total": None, "loss": None, "eta_s": None}
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


@pytest.mark.parametrize("training_id", [str(uuid.uuid4()), "not-a-uuid"])
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
