"""The cheap hot path keeps every guard: verified API keys are cached per process, yet a revoked key
is refused at once in every API process (through Redis, or directly on the embedded default),
another tenant's training stays not found, and the rate limit still trips on cached keys."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, literal, select

from app.db import DriverStatement, LoopReads, unit_of_work
from app.errors import ServiceUnavailable
from app.main import create_app
from app.orm.base import utcnow
from app.tenants import keys, rate_limit
from app.tenants import repository as tenant_repository
from app.tenants import service as tenants
from app.tenants.auth import make_key_cache

from .factories import make_tenant, submit
from .helpers import ADMIN, assert_error, run_leap


def _key_id(database, tenant) -> uuid.UUID:  # type: ignore[no-untyped-def]
    with unit_of_work(database.session_factory) as session:
        (key,) = tenants.list_api_keys(session, tenant_id=uuid.UUID(tenant.tenant_id))
        return key.id


def _cached(client: TestClient, tenant) -> bool:  # type: ignore[no-untyped-def]
    cache = client.app.state.verified_keys  # type: ignore[attr-defined]
    return cache.get(keys.digest(tenant.headers["Authorization"])) is not None


def test_keys_are_cached_only_where_revocations_reach_the_cache(settings, tmp_path):
    redis_limiter = rate_limit.make_rate_limiter(settings)
    assert make_key_cache(settings, redis_limiter) is not None
    assert make_key_cache(settings.model_copy(update={"api_key_cache_ttl": timedelta(0)}), redis_limiter) is None
    # Postgres without Redis: API processes could not tell each other of a revocation.
    no_redis = settings.model_copy(update={"broker_url": "amqp://localhost//"})
    assert make_key_cache(no_redis, rate_limit.make_rate_limiter(no_redis)) is None
    # The embedded default is one process: its cache is cleared directly.
    embedded = settings.model_copy(update={"database_url": None, "broker_url": None, "data_dir": tmp_path})
    assert make_key_cache(embedded, rate_limit.make_rate_limiter(embedded)) is not None


def test_a_key_revoked_through_one_api_is_refused_at_once_by_another_sharing_redis(client, settings, database):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    with TestClient(create_app(settings)) as other:
        for api in (client, other):
            assert api.get(f"/v1/trainings/{training_id}", headers=tenant.headers).status_code == 200
            assert api.get(f"/v1/trainings/{training_id}", headers=tenant.headers).status_code == 200
            assert _cached(api, tenant)
        key_id = _key_id(database, tenant)
        assert client.post(f"/v1/admin/keys/{key_id}/revoke", headers=ADMIN).status_code == 200
        for api in (other, client):
            for path in (f"/v1/trainings/{training_id}", "/v1/trainings"):
                assert_error(api.get(path, headers=tenant.headers), 401, "unauthorized", "revoked")


def test_a_revocation_announced_only_through_redis_empties_the_cache(client, settings, database):
    """What another API process does: revoke in the database, then replace the generation in Redis."""
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    for _ in range(2):
        assert client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).status_code == 200
    assert _cached(client, tenant)
    with unit_of_work(database.session_factory) as session:
        tenant_repository.revoke_api_key(session, _key_id(database, tenant), now=utcnow())  # no announcement here
    # Cached: the database is not read again yet...
    assert client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).status_code == 200
    redis.Redis.from_url(settings.broker_url).set(rate_limit.REVOCATIONS_KEY, uuid.uuid4().int >> 66)
    # ...until the generation changes: then at once.
    assert_error(client.get(f"/v1/trainings/{training_id}", headers=tenant.headers), 401, "unauthorized", "revoked")


def test_a_key_revoked_by_the_cli_process_is_refused_at_once(client, settings, database):
    tenant = make_tenant(database)
    for _ in range(2):
        assert client.get("/v1/trainings", headers=tenant.headers).status_code == 200
    assert _cached(client, tenant)
    assert run_leap(settings, "keys", "revoke", str(_key_id(database, tenant))).returncode == 0
    assert_error(client.get("/v1/trainings", headers=tenant.headers), 401, "unauthorized", "revoked")


def test_embedded_default_forgets_a_revoked_key_directly(tmp_path):
    from app.db import upgrade_database
    from app.settings import Settings

    settings = Settings(data_dir=tmp_path)  # SQLite, filesystem broker, no Redis
    upgrade_database(settings)
    with TestClient(create_app(settings)) as api:
        assert api.app.state.verified_keys is not None  # type: ignore[attr-defined]
        database = api.app.state.database  # type: ignore[attr-defined]
        tenant = make_tenant(database)
        for _ in range(2):
            assert api.get("/v1/trainings", headers=tenant.headers).status_code == 200
        assert _cached(api, tenant)
        with unit_of_work(database.session_factory) as session:
            tenants.revoke_api_key(session, key_id=_key_id(database, tenant))
        assert_error(api.get("/v1/trainings", headers=tenant.headers), 401, "unauthorized", "revoked")


def test_a_cached_key_still_gets_404_for_another_tenants_training(client, database):
    owner, other = make_tenant(database, name="owner"), make_tenant(database, name="other")
    training_id = submit(client, owner).json()["id"]
    for _ in range(2):
        assert client.get("/v1/trainings", headers=other.headers).status_code == 200
    assert _cached(client, other)
    assert_error(client.get(f"/v1/trainings/{training_id}", headers=other.headers), 404, "not_found")
    assert client.get("/v1/trainings", headers=other.headers).json()["data"] == []
    assert client.get(f"/v1/trainings/{training_id}", headers=owner.headers).json()["id"] == training_id


def test_the_rate_limit_trips_on_cached_keys(settings, database):
    limited = settings.model_copy(update={"rate_limit_requests": 3, "rate_limit_window": timedelta(minutes=1)})
    with TestClient(create_app(limited)) as api:
        tenant = make_tenant(database)
        responses = [api.get(f"/v1/trainings/{uuid.uuid4()}", headers=tenant.headers) for _ in range(3)]
        assert [response.status_code for response in responses] == [404, 404, 404]
        assert _cached(api, tenant)
        refused = api.get(f"/v1/trainings/{uuid.uuid4()}", headers=tenant.headers)
        assert_error(refused, 429, "rate_limited", "rate limit")
        assert 1 <= int(refused.headers["Retry-After"]) <= 61
        assert_error(api.get("/v1/trainings", headers=tenant.headers), 429, "rate_limited")


def test_a_poll_that_rechecks_a_cached_key_counts_once(settings, database):
    """A revocation elsewhere sends a cached key back to the database: the poll that finds out
    (its rate-limit hit taken on the event loop) is still counted once, not again on the thread."""
    limited = settings.model_copy(update={"rate_limit_requests": 4, "rate_limit_window": timedelta(minutes=1)})
    with TestClient(create_app(limited)) as api:
        tenant = make_tenant(database)
        for _ in range(2):  # the second one caches the key
            assert api.get(f"/v1/trainings/{uuid.uuid4()}", headers=tenant.headers).status_code == 404
        assert _cached(api, tenant)
        redis.Redis.from_url(settings.broker_url).set(rate_limit.REVOCATIONS_KEY, uuid.uuid4().int >> 66)
        for _ in range(2):  # the first of these goes back to the database
            assert api.get(f"/v1/trainings/{uuid.uuid4()}", headers=tenant.headers).status_code == 404
        assert_error(api.get(f"/v1/trainings/{uuid.uuid4()}", headers=tenant.headers), 429, "rate_limited")


def test_a_wrong_secret_is_refused_even_when_its_prefix_is_cached(client, database):
    tenant = make_tenant(database)
    for _ in range(2):
        assert client.get("/v1/trainings", headers=tenant.headers).status_code == 200
    assert _cached(client, tenant)
    tampered = tenant.key[:-4] + ("AAAA" if not tenant.key.endswith("AAAA") else "BBBB")
    response = client.get("/v1/trainings", headers={"Authorization": f"Bearer {tampered}"})
    assert_error(response, 401, "unauthorized", "invalid API key")


def test_an_unreachable_redis_bypasses_the_cache(settings, database):
    tenant = make_tenant(database)
    with TestClient(create_app(settings)) as api:
        for _ in range(2):
            assert api.get("/v1/trainings", headers=tenant.headers).status_code == 200
        assert _cached(api, tenant)
        api.app.state.rate_limiter = rate_limit.RedisRateLimiter(  # type: ignore[attr-defined]
            "redis://127.0.0.1:1/0", limit=100, window_seconds=60
        )
        with unit_of_work(database.session_factory) as session:
            tenant_repository.revoke_api_key(session, _key_id(database, tenant), now=utcnow())  # no announcement
        # Without the generation the cache cannot be trusted: the key is read from the database.
        assert_error(api.get("/v1/trainings", headers=tenant.headers), 401, "unauthorized", "revoked")


def test_a_poll_reads_again_when_its_pooled_connection_died(client, database, settings):
    """Read connections skip the pre-ping: a connection the database closed fails its read once,
    which runs again on a fresh connection; the client sees nothing but its training. Polls read
    on the event loop's own connections, lists on the read threads' pool: both are covered."""
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    read_engine = client.app.state.database.read_engine  # type: ignore[attr-defined]
    loop_reads = client.app.state.database.loop_reads  # type: ignore[attr-defined]
    assert client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).status_code == 200
    assert client.get("/v1/trainings", headers=tenant.headers).status_code == 200
    # the connections that read them wait for the next reads
    assert read_engine.pool.checkedin() >= 1 and loop_reads.idle_connections >= 1
    url = settings.resolved_database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(url, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 1
    for path in (f"/v1/trainings/{training_id}", "/v1/trainings"):
        response = client.get(path, headers=tenant.headers)
        assert response.status_code == 200, response.text
    assert client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()["status"] == "queued"


def test_a_loop_read_waits_for_a_connection_at_most_its_checkout_timeout(database):
    """Past the loop pool's size a read waits, then gets 503 (not an endless wait, nor a 500)."""
    pool = database.loop_reads
    reads = LoopReads(pool.dialect, pool.connect_kwargs, size=1, recycle_seconds=60, checkout_timeout=0.2)
    slow = DriverStatement.compile(select(func.pg_sleep(1).label("slept"), literal(7).label("seven")), pool.dialect)

    async def two_reads() -> dict | None:  # type: ignore[type-arg]
        first = asyncio.create_task(reads.fetch_one(slow, {}))
        await asyncio.sleep(0.1)  # the first holds the only connection
        with pytest.raises(ServiceUnavailable, match="busy"):
            await reads.fetch_one(slow, {})
        row = await first
        await reads.close()
        return row

    row = asyncio.run(two_reads())
    assert row is not None and row["seven"] == 7


def test_a_poll_shows_exactly_what_the_submission_returned(client, database):
    """Polls and lists read rows without the ORM; the training they show is the one the ORM path
    (submission, cancel, webhooks) presents, field for field."""
    tenant = make_tenant(database)
    submitted = submit(client, tenant, data={"metadata": '{"team": "a"}', "webhook_url": "https://example.com/h"})
    created = submitted.json()
    polled = client.get(f"/v1/trainings/{created['id']}", headers=tenant.headers).json()
    (listed,) = client.get("/v1/trainings", headers=tenant.headers).json()["data"]
    assert polled == created == listed
    assert polled["queue_position"] >= 1 and polled["metadata"] == {"team": "a"}
    canceled = client.post(f"/v1/trainings/{created['id']}/cancel", headers=tenant.headers).json()
    assert client.get(f"/v1/trainings/{created['id']}", headers=tenant.headers).json() == canceled
    assert canceled["queue_position"] is None and canceled["error"]["code"] == "canceled"
