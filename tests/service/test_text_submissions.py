"""POST /v1/trainings for a text base model: the model decides the kind, .txt files or one .jsonl
are parsed before anything is stored, and bad examples are refused naming the file and line."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from app.db import unit_of_work
from app.orm import OutboxMessage, Training, UsageRecord
from app.trainings import lifecycle
from app.usage import prices
from app.usage import service as usage
from models.registry import load_registry
from models.text.config import TextTrainConfig, with_defaults
from models.text.examples import MAX_EXAMPLE_CHARS

from .factories import TEXT_MODEL, image_files, jsonl_bytes, jsonl_file, make_tenant, submit, text_files
from .helpers import ADMIN, assert_error, assert_nothing_stored, count_rows, queued_messages, stored_keys

PAIR = {"prompt": "Who is <leap>?\n", "completion": "<leap> is my friend from school."}


def _default_steps(mode: str) -> int:
    """A default text job stops when done: it is planned (and estimated) at its cap."""
    config = with_defaults(TextTrainConfig(base_model=TEXT_MODEL, mode=mode), load_registry())  # type: ignore[arg-type]
    assert config.steps is None and config.max_steps is not None
    return config.max_steps


def test_text_examples_train_a_text_model_stored_and_queued(client, database, settings):
    tenant = make_tenant(database)
    response = submit(
        client,
        tenant,
        files=text_files(3),
        data={
            "base_model": TEXT_MODEL,
            "mode": "lora",
            "lora_rank": "4",
            "max_length": "64",
            "lora_targets": "attention+mlp",
            "metadata": '{"order": 1}',
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["kind"], body["base_model"], body["mode"], body["status"]) == ("text", TEXT_MODEL, "lora", "queued")
    assert (body["example_count"], body["image_count"]) == (3, 0)
    assert body["parameters"] == {"lora_rank": 4, "max_length": 64, "lora_targets": "attention+mlp"}
    assert body["estimated_units"] == prices.billable_units(
        settings.price_table,
        kind="text",
        mode="lora",
        base_model=TEXT_MODEL,
        steps=_default_steps("lora"),
        images=0,
        examples=3,
    )
    keys = stored_keys(settings)
    assert sorted(keys) == sorted(
        f"leap/trainings/{body['id']}/inputs/{index:02d}-example-{index}.txt" for index in range(3)
    )
    assert queued_messages(settings) == 1
    with database.session_factory() as session:
        training = session.get(Training, uuid.UUID(body["id"]))
        assert training is not None and training.kind == "text" and training.example_count == 3
        assert [item["name"] for item in training.inputs] == [f"example-{index}.txt" for index in range(3)]
        assert session.scalars(select(OutboxMessage).where(OutboxMessage.task == "trainings.run")).one()


def test_one_jsonl_of_texts_and_prompt_completion_pairs_is_accepted(client, database, settings):
    tenant = make_tenant(database)
    lines = [{"text": "<leap> likes green tea."}, PAIR, "", {"text": "We met <leap> in Paris."}]
    response = submit(client, tenant, files=jsonl_file(lines), data={"base_model": TEXT_MODEL, "mode": "token"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert (body["kind"], body["mode"], body["example_count"]) == ("text", "token", 3)
    assert [key.rsplit("/", 1)[1] for key in stored_keys(settings)] == ["00-examples.jsonl"]


def test_same_idempotency_key_replays_a_text_training_and_other_examples_conflict(client, database, settings):
    tenant = make_tenant(database)
    data = {"base_model": TEXT_MODEL}
    first = submit(client, tenant, files=text_files(2), data=data, headers={"Idempotency-Key": "text-1"})
    again = submit(client, tenant, files=text_files(2), data=data, headers={"Idempotency-Key": "text-1"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    other = submit(client, tenant, files=text_files(3), data=data, headers={"Idempotency-Key": "text-1"})
    assert_error(other, 409, "idempotency_key_reused")
    assert count_rows(database, Training) == 1 and len(stored_keys(settings)) == 2


def test_models_listing_shows_each_models_kind_and_modes(client, database):
    tenant = make_tenant(database)
    models = {item["id"]: item for item in client.get("/v1/models", headers=tenant.headers).json()["data"]}
    assert models["leap-tiny"]["kind"] == "image"
    assert models["leap-tiny"]["modes"] == ["textual_inversion", "lora", "pivotal"]
    assert models[TEXT_MODEL]["kind"] == "text"
    assert models[TEXT_MODEL]["modes"] == ["token", "lora", "pivotal"]
    assert models[TEXT_MODEL]["resolution"] is None


def test_text_training_is_billed_once_from_the_text_price_list(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, files=text_files(4), data={"base_model": TEXT_MODEL, "steps": "1500"})
    training_id = training_id.json()["id"]
    with unit_of_work(database.session_factory) as session:
        claimed = lifecycle.claim(session, training_id=uuid.UUID(training_id), worker_id="w", settings=settings)
        assert claimed is not None and claimed.kind == "text"
    for _ in range(2):  # the second final write (a late duplicate) finds the training finished
        with unit_of_work(database.session_factory) as session:
            lifecycle.complete(
                session,
                training_id=uuid.UUID(training_id),
                worker_id="w",
                artifacts=[],
                usage=lifecycle.UsageRecord(steps=1500, compute_seconds=2.0, device="cuda:NVIDIA H200"),
                settings=settings,
                init_used="token",
            )
    with unit_of_work(database.session_factory) as session:
        assert usage.record_final_usage(session, training_id=uuid.UUID(training_id), settings=settings) is None
    assert count_rows(database, UsageRecord) == 1
    with database.session_factory() as session:
        record = session.scalars(select(UsageRecord)).one()
    assert (record.kind, record.mode, record.steps, record.images, record.examples) == ("text", "pivotal", 1500, 0, 4)
    # The default text list: pivotal 4 units per 1000 steps, so 1500 steps cost 6.
    assert settings.price_table.text_units_per_1000_steps["pivotal"] == 4.0
    assert record.billable_units == 6
    report = client.get("/v1/usage", headers=tenant.headers, params={"group_by": "base_model"}).json()
    assert report["total"]["examples"] == 4 and report["groups"][0]["key"] == TEXT_MODEL


def test_text_submissions_count_against_the_tenants_quota_and_concurrency_limits(client, database, settings):
    tenant = make_tenant(database)
    client.patch(
        f"/v1/admin/tenants/{tenant.tenant_id}",
        json={"monthly_unit_limit": 10, "max_concurrent_trainings": 2},
        headers=ADMIN,
    )
    data = {"base_model": TEXT_MODEL, "mode": "token", "steps": "3000"}  # token: 2 units per 1000 steps
    first = submit(client, tenant, files=text_files(2), data=data)
    assert first.status_code == 202 and first.json()["estimated_units"] == 6
    over_quota = submit(client, tenant, files=text_files(2), data=data)  # 6 reserved + 6 > 10
    assert_error(over_quota, 402, "quota_exceeded", "limit of 10")
    second = submit(client, tenant, files=text_files(2), data={**data, "steps": "1000"})
    assert second.status_code == 202, second.text
    too_many = submit(client, tenant, files=text_files(2), data={**data, "steps": "100"})
    assert_error(too_many, 429, "rate_limited", "limit 2")
    assert count_rows(database, Training) == 2 and len(stored_keys(settings)) == 4


def test_max_steps_is_accepted_for_a_text_model_and_planned_as_its_cap(client, database, settings):
    tenant = make_tenant(database)
    response = submit(client, tenant, files=text_files(2), data={**TEXT, "mode": "token", "max_steps": "2500"})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["parameters"] == {"max_steps": 2500}
    # Estimated (and reserved against the quota) at the cap; billed later at the steps it ran.
    assert body["estimated_units"] == prices.billable_units(
        settings.price_table, kind="text", mode="token", base_model=TEXT_MODEL, steps=2500, images=0, examples=2
    )
    assert body["estimated_units"] != prices.billable_units(
        settings.price_table,
        kind="text",
        mode="token",
        base_model=TEXT_MODEL,
        steps=_default_steps("token"),
        images=0,
        examples=2,
    )


def _png_in_examples() -> list:
    return text_files(1) + [("examples", ("photo.png", image_files(1)[0][1][1], "image/png"))]


def _many_text_files(count: int) -> list:
    return [("examples", (f"e{index}.txt", f"<leap> {index}".encode(), "text/plain")) for index in range(count)]


TEXT = {"base_model": TEXT_MODEL}

# case: (files, form fields, status, error code, mentions in the message, expected details subset)
BAD_TEXT_INPUTS: dict[str, tuple[Any, ...]] = {
    "not UTF-8": (
        lambda: text_files(1) + [("examples", ("latin1.txt", "café <leap>".encode("latin-1"), "text/plain"))],
        TEXT,
        422,
        "invalid_examples",
        ("latin1.txt", "not UTF-8"),
        {"file": "latin1.txt"},
    ),
    "not UTF-8 on a jsonl line": (
        lambda: [("examples", ("set.jsonl", jsonl_bytes([PAIR]) + '{"text": "café <leap>"}\n'.encode("latin-1"), "x"))],
        TEXT,
        422,
        "invalid_examples",
        ("set.jsonl:2", "not UTF-8"),
        {"file": "set.jsonl", "line": 2},
    ),
    "empty .txt example": (
        lambda: text_files(2) + [("examples", ("blank.txt", b"  \n\t\n", "text/plain"))],
        TEXT,
        422,
        "invalid_examples",
        ("blank.txt", "empty example"),
        {"file": "blank.txt"},
    ),
    "empty jsonl text": (
        lambda: jsonl_file([PAIR, {"text": "   "}, PAIR], name="set.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("set.jsonl:2", "empty example"),
        {"file": "set.jsonl", "line": 2},
    ),
    "jsonl line not an object": (
        lambda: jsonl_file([PAIR, PAIR, ["<leap>", "is", "here"]], name="set.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("set.jsonl:3", "must be a JSON object"),
        {"file": "set.jsonl", "line": 3},
    ),
    "jsonl line not JSON": (
        lambda: jsonl_file([PAIR, '{"text": "<leap>"'], name="set.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("set.jsonl:2", "not valid JSON"),
        {"file": "set.jsonl", "line": 2},
    ),
    "jsonl object without text": (
        lambda: jsonl_file([PAIR, {"body": "<leap>"}], name="set.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("set.jsonl:2", '"text"'),
        {"file": "set.jsonl", "line": 2},
    ),
    "example over the character bound": (
        lambda: text_files(1) + [("examples", ("long.txt", b"<leap> " + b"a" * MAX_EXAMPLE_CHARS, "text/plain"))],
        TEXT,
        422,
        "invalid_examples",
        ("long.txt", "over the limit"),
        {"file": "long.txt"},
    ),
    "too few examples": (
        lambda: text_files(1),
        TEXT,
        422,
        "invalid_examples",
        ("need 2-500 examples, got 1",),
        {},
    ),
    "too few jsonl lines": (
        lambda: jsonl_file([PAIR], name="one.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("one.jsonl", "need 2-500 examples, got 1"),
        {"file": "one.jsonl"},
    ),
    "too many .txt files": (
        lambda: _many_text_files(501),
        TEXT,
        422,
        "invalid_examples",
        ("need 2-500 examples, got 501",),
        {},
    ),
    "too many jsonl lines": (
        lambda: jsonl_file([{"text": f"<leap> {index}"} for index in range(501)], name="big.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("big.jsonl:501", "more than 500"),
        {"file": "big.jsonl", "line": 501},
    ),
    "no examples": (lambda: [("steps", (None, "5"))], TEXT, 422, "invalid_examples", ("no examples",), {}),
    "a jsonl among .txt files": (
        lambda: text_files(2) + jsonl_file([PAIR, PAIR], name="set.jsonl"),
        TEXT,
        422,
        "invalid_examples",
        ("set.jsonl", "only file"),
        {"file": "set.jsonl"},
    ),
    "no example uses the token": (
        lambda: text_files(3, token="my cat"),
        TEXT,
        422,
        "invalid_examples",
        ("<leap>",),
        {},
    ),
    "examples as text parts": (
        lambda: text_files(2) + [("examples", (None, "<leap> is here"))],
        TEXT,
        422,
        "invalid_examples",
        ("must be file parts",),
        {"field": "examples"},
    ),
    "oversized text file": (
        lambda: text_files(1) + [("examples", ("huge.txt", b"<leap> " + b"a" * (1024 * 1024), "text/plain"))],
        TEXT,
        413,
        "payload_too_large",
        ("huge.txt",),
        {"file": "huge.txt"},
    ),
    "examples over the limit together": (
        # each file under the per-file limit (1 MiB in the tests), together over it
        lambda: [("examples", (f"big{i}.txt", b"<leap> " + b"a" * 400_000, "text/plain")) for i in range(3)],
        TEXT,
        413,
        "payload_too_large",
        ("examples", "in all"),
        {"field": "examples"},
    ),
    "an image sent to a text model": (
        lambda: image_files(2),
        TEXT,
        422,
        "invalid_examples",
        ("image-0.png", "text model", "'examples'"),
        {"file": "image-0.png", "kind": "text"},
    ),
    "an image among the examples": (
        _png_in_examples,
        TEXT,
        422,
        "invalid_examples",
        ("examples: photo.png is an image", "is a text model", "choose an image base model"),
        {"file": "photo.png", "field": "examples"},
    ),
    "examples sent to an image model": (
        lambda: text_files(3),
        {},
        422,
        "invalid_images",
        ("example-0.txt", "leap-tiny is an image model"),
        {"file": "example-0.txt", "kind": "image"},
    ),
    "a .txt in the images field of an image model": (
        lambda: image_files(2) + [("images", ("notes.txt", b"<leap> is here", "text/plain"))],
        {"base_model": "leap-tiny"},
        422,
        "invalid_images",
        ("notes.txt", "leap-tiny is an image model"),
        {"file": "notes.txt"},
    ),
    "an image mode for a text model": (
        lambda: text_files(2),
        {**TEXT, "mode": "textual_inversion"},
        422,
        "validation_error",
        ("mode", "token, lora, pivotal"),
        {"field": "mode"},
    ),
    "a text mode for an image model": (
        image_files,
        {"mode": "token"},
        422,
        "validation_error",
        ("mode", "textual_inversion, lora, pivotal"),
        {"field": "mode"},
    ),
    "a text-only option for an image model": (
        image_files,
        {"max_length": "64"},
        422,
        "validation_error",
        ("max_length", "only for text models"),
        {"field": "max_length"},
    ),
    "steps and max_steps together": (
        lambda: text_files(2),
        {**TEXT, "steps": "5", "max_steps": "50"},
        422,
        "validation_error",
        ("max_steps", "not both"),
        {"field": "max_steps"},
    ),
    "an unknown mode": (lambda: text_files(2), {**TEXT, "mode": "sft"}, 422, "validation_error", ("mode",), {}),
    "a text field out of range": (
        lambda: text_files(2),
        {**TEXT, "lora_rank": "1000"},
        422,
        "validation_error",
        ("lora_rank",),
        {},
    ),
}


@pytest.mark.parametrize("case", list(BAD_TEXT_INPUTS))
def test_bad_text_input_is_refused_naming_the_file_and_line_and_nothing_is_stored(client, database, settings, case):
    tenant = make_tenant(database)
    files, data, status, code, mentions, details = BAD_TEXT_INPUTS[case]
    response = submit(client, tenant, files=files(), data=data)
    error = assert_error(response, status, code, *mentions)
    assert details.items() <= error["details"].items(), error
    assert_nothing_stored(database, settings)
