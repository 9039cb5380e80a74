"""What a client reads: refusals that name their field in plain words, the models list, and
cursor pagination of webhook deliveries like the other lists."""

from __future__ import annotations

from .factories import TEXT_MODEL, image_files, make_tenant, submit
from .helpers import assert_error


def test_validator_messages_have_no_pydantic_prefix(client, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = submit(
        client, tenant, data={"webhook_url": "https://example.com/hook", "webhook_events_filter": "training.bogus"}
    )
    error = assert_error(response, 422, "validation_error", "webhook_events_filter: unknown event 'training.bogus'")
    assert "Value error" not in response.text
    assert error["details"]["field"] == "webhook_events_filter"


def test_an_unknown_mode_offers_only_the_modes_of_the_models_kind(client, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    image = assert_error(submit(client, tenant, data={"mode": "dreambooth"}), 422, "validation_error", "mode:")
    assert "pivotal" in image["message"] and "token" not in image["message"], image["message"]
    text = assert_error(
        submit(client, tenant, data={"mode": "dreambooth", "base_model": TEXT_MODEL}), 422, "validation_error"
    )
    assert "token" in text["message"] and "textual_inversion" not in text["message"], text["message"]


def test_every_input_count_refusal_names_its_field(client, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    none = assert_error(submit(client, tenant, files=[], data={"steps": "5"}), 422, "invalid_images", "no images")
    assert none["details"]["field"] == "images"
    one = assert_error(submit(client, tenant, files=image_files(1)), 422, "invalid_images", "need 2-50 images")
    assert one["details"]["field"] == "images"


def test_images_sent_to_a_text_model_get_a_clear_message(client, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = submit(client, tenant, files=image_files(2), data={"base_model": TEXT_MODEL})
    error = assert_error(response, 422, "invalid_examples", "is an image", f"{TEXT_MODEL} is a text model")
    assert "choose an image base model" in error["message"]
    assert error["details"]["field"] == "images"


def test_models_list_gives_text_models_no_resolution(client, database):  # type: ignore[no-untyped-def]
    listed = client.get("/v1/models", headers=make_tenant(database).headers).json()
    models = {item["id"]: item for item in listed["data"]}
    assert models[TEXT_MODEL]["resolution"] is None
    assert all(item["resolution"] > 0 for item in models.values() if item["kind"] == "image")


def test_webhook_deliveries_page_with_a_cursor(client, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    for _ in range(3):
        assert submit(client, tenant, data={"webhook_url": "https://example.com/hook"}).status_code == 202
    first = client.get("/v1/webhook-deliveries", params={"limit": 2}, headers=tenant.headers).json()
    assert len(first["data"]) == 2 and first["next_cursor"]
    rest = client.get(
        "/v1/webhook-deliveries", params={"limit": 2, "cursor": first["next_cursor"]}, headers=tenant.headers
    ).json()
    assert len(rest["data"]) == 1 and rest["next_cursor"] is None
    ids = [item["id"] for item in first["data"] + rest["data"]]
    assert len(set(ids)) == 3
    bad = client.get("/v1/webhook-deliveries", params={"cursor": "nope"}, headers=tenant.headers)
    assert assert_error(bad, 422, "validation_error", "cursor")["details"]["field"] == "cursor"
