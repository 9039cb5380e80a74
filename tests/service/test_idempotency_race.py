"""A concurrent request with the same Idempotency-Key that commits first: the loser's insert conflicts,
its stored inputs are deleted and it answers with the winner's training (replayed), queueing nothing."""

from __future__ import annotations

from sqlalchemy import select

from app.orm import Training
from app.trainings import repository

from .factories import image_files, make_tenant, submit
from .helpers import queued_messages, stored_keys


def test_the_request_that_loses_the_insert_race_replays_the_winner(client, database, settings, monkeypatch):
    tenant = make_tenant(database)
    files = image_files(2)
    first = submit(client, tenant, files=files, headers={"Idempotency-Key": "race"})
    assert first.status_code == 202
    # The second request looks the key up before the first one committed: it does not see it.
    lookups = []
    real_find = repository.find_by_idempotency_key

    def find_after_the_first_lookup(session, *, tenant_id, key):  # type: ignore[no-untyped-def]
        lookups.append(key)
        return None if len(lookups) == 1 else real_find(session, tenant_id=tenant_id, key=key)

    monkeypatch.setattr(repository, "find_by_idempotency_key", find_after_the_first_lookup)
    second = submit(client, tenant, files=files, headers={"Idempotency-Key": "race"})
    assert second.status_code == 202
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    assert lookups == ["race", "race"]
    with database.session_factory() as session:
        assert len(session.scalars(select(Training)).all()) == 1
    assert queued_messages(settings) == 1
    keys = stored_keys(settings)
    assert len(keys) == 2 and all(first.json()["id"] in key for key in keys)  # the loser's inputs are gone
