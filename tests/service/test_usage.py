"""Usage metering: one ledger record per started training, written with its final state; usage
reports, admin export, monthly quotas (402) and estimated cost at submission."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from app.db import unit_of_work
from app.orm import Training, UsageRecord
from app.orm.base import utcnow
from app.settings import PriceTable
from app.trainings import lifecycle
from app.usage import prices
from app.usage import service as usage

from .factories import make_tenant, submit
from .helpers import ADMIN, assert_error, count_rows, run_directly, wait_progress, wait_status
from .processes import WorkerProcess

FAULTY_TRAINER = "tests.service.fault_injection:train"


@pytest.fixture
def gpu_worker(settings):
    # The real trainer on leap-tiny, with an out-of-memory fault on the <oom> token.
    worker = WorkerProcess(settings, queues=settings.queue, extra_env={"LEAP_TRAINER": FAULTY_TRAINER})
    yield worker
    worker.stop()


def records(database) -> list[UsageRecord]:  # type: ignore[no-untyped-def]
    with database.session_factory() as session:
        return list(session.scalars(select(UsageRecord).order_by(UsageRecord.finished_at)))


def test_price_table_gives_whole_billable_units():
    table = PriceTable(
        units_per_1000_steps={"pivotal": 10, "lora": 8},
        units_per_image=0.5,
        base_model_multiplier={"sd15": 2},
        device_class_multiplier={"cpu": 0.5},
    )
    assert prices.billable_units(table, mode="pivotal", base_model="leap-tiny", steps=400, images=2) == 5
    assert prices.billable_units(table, mode="pivotal", base_model="sd15", steps=400, images=2) == 9
    assert prices.billable_units(table, mode="lora", base_model="x", steps=1000, images=0, device_class="cpu") == 4
    assert prices.billable_units(table, mode="lora", base_model="x", steps=1, images=0) == 1  # rounded up
    assert prices.billable_units(table, mode="lora", base_model="x", steps=0, images=3) == 0
    assert [prices.device_class(name) for name in ("cuda:H100", "cpu", "mps", None)] == ["gpu", "cpu", "mps", "unknown"]


def test_each_finished_training_writes_exactly_one_usage_record(client, database, settings, gpu_worker):
    tenant = make_tenant(database)
    succeeded = submit(client, tenant, data={"steps": "4", "mode": "lora"}).json()
    failed = submit(client, tenant, data={"steps": "20", "token": "<oom>"}).json()
    long = submit(client, tenant, data={"steps": "20000"}).json()
    assert wait_status(client, tenant, succeeded["id"], {"succeeded"}, timeout=180)
    assert wait_status(client, tenant, failed["id"], {"failed"}, timeout=120)
    wait_progress(client, tenant, long["id"])
    client.post(f"/v1/trainings/{long['id']}/cancel", headers=tenant.headers)
    assert wait_status(client, tenant, long["id"], {"canceled"}, timeout=30)
    never_started = submit(client, tenant, data={"steps": "4"}).json()
    client.post(f"/v1/trainings/{never_started['id']}/cancel", headers=tenant.headers)

    by_training = {str(record.training_id): record for record in records(database)}
    # Canceled before it started: costs nothing and has no record (unless the worker won the race).
    by_training.pop(never_started["id"], None)
    assert set(by_training) == {succeeded["id"], failed["id"], long["id"]}
    record = by_training[succeeded["id"]]
    assert (record.status, record.mode, record.base_model, record.steps, record.images) == (
        "succeeded",
        "lora",
        "leap-tiny",
        4,
        3,
    )
    assert record.device == "cpu" and record.device_class == "cpu" and record.compute_seconds > 0
    assert record.billable_units == prices.billable_units(
        settings.price_table, mode="lora", base_model="leap-tiny", steps=4, images=3, device_class="cpu"
    )
    assert str(record.tenant_id) == tenant.tenant_id
    assert by_training[failed["id"]].status == "failed"
    canceled = by_training[long["id"]]
    assert canceled.status == "canceled" and 0 < canceled.steps < 20000 and canceled.billable_units >= 1


def test_training_that_ran_twice_after_a_worker_crash_is_billed_once(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "50"}).json()["id"]
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=uuid.UUID(training_id), worker_id="crashed", settings=settings)
    # The first worker died: its lease expires and the sweeper requeues the training.
    with unit_of_work(database.session_factory) as session:
        session.execute(
            update(Training)
            .where(Training.id == uuid.UUID(training_id))
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with unit_of_work(database.session_factory) as session:
        report = lifecycle.sweep(
            session, settings=settings, storage=client.app.state.storage, send=lambda *args, **options: None
        )
        assert report.requeued == [uuid.UUID(training_id)]
    run_directly(database, settings, training_id, steps=50, worker="second")
    with unit_of_work(database.session_factory) as session:  # a late duplicate of the final write
        assert usage.record_final_usage(session, training_id=uuid.UUID(training_id), settings=settings) is None
    assert count_rows(database, UsageRecord) == 1
    (record,) = records(database)
    assert record.steps == 50 and record.device_class == "gpu"


def test_usage_report_groups_by_day_and_base_model(client, database, settings):
    tenant, other = make_tenant(database), make_tenant(database, name="other")
    first = submit(client, tenant, data={"steps": "100"}).json()["id"]
    second = submit(client, tenant, data={"steps": "300", "mode": "lora"}).json()["id"]
    foreign = submit(client, other, data={"steps": "100"}).json()["id"]
    for training_id, steps in ((first, 100), (second, 300), (foreign, 100)):
        run_directly(database, settings, training_id, steps=steps)
    yesterday = utcnow() - timedelta(days=1)
    with unit_of_work(database.session_factory) as session:
        session.execute(
            update(UsageRecord).where(UsageRecord.training_id == uuid.UUID(first)).values(finished_at=yesterday)
        )
    start = (utcnow() - timedelta(days=3)).isoformat()
    end = (utcnow() + timedelta(days=1)).isoformat()

    by_day = client.get("/v1/usage", params={"start": start, "end": end}, headers=tenant.headers).json()
    assert [group["key"] for group in by_day["groups"]] == [yesterday.date().isoformat(), utcnow().date().isoformat()]
    assert by_day["total"]["trainings"] == 2 and by_day["total"]["steps"] == 400
    assert by_day["total"]["billable_units"] == 1 + 3  # pivotal 100 steps: 1, lora 300 steps: 2.4 -> 3
    by_model = client.get(
        "/v1/usage", params={"start": start, "end": end, "group_by": "base_model"}, headers=tenant.headers
    ).json()
    assert by_model["groups"] == [
        {
            "key": "leap-tiny",
            "trainings": 2,
            "steps": 400,
            "images": 6,
            "examples": 0,
            "compute_seconds": 3.0,
            "billable_units": 4,
        }
    ]
    assert_error(
        client.get("/v1/usage", params={"start": end, "end": start}, headers=tenant.headers), 422, "validation_error"
    )
    assert_error(client.get("/v1/usage", params={"group_by": "week"}, headers=tenant.headers), 422, "validation_error")


def test_admin_exports_usage_as_json_and_csv(client, database, settings):
    tenant, other = make_tenant(database), make_tenant(database, name="other")
    mine = submit(client, tenant, data={"steps": "100"}).json()["id"]
    theirs = submit(client, other, data={"steps": "100"}).json()["id"]
    run_directly(database, settings, mine, steps=100)
    run_directly(database, settings, theirs, steps=100)
    period = {"start": "2000-01-01T00:00:00Z", "end": (utcnow() + timedelta(days=1)).isoformat()}

    everyone = client.get("/v1/admin/usage", params=period, headers=ADMIN).json()["data"]
    assert {item["training_id"] for item in everyone} == {mine, theirs}
    one = client.get("/v1/admin/usage", params=period | {"tenant_id": tenant.tenant_id}, headers=ADMIN).json()
    assert [item["training_id"] for item in one["data"]] == [mine]
    exported = client.get(
        "/v1/admin/usage", params=period | {"tenant_id": tenant.tenant_id, "format": "csv"}, headers=ADMIN
    )
    assert exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert len(rows) == 1 and rows[0]["training_id"] == mine and rows[0]["billable_units"] == "1"
    assert set(rows[0]) >= {"steps", "images", "compute_seconds", "device_class", "base_model", "mode"}
    assert client.get("/v1/admin/usage", params=period, headers=tenant.headers).status_code == 401


def test_submission_over_the_monthly_quota_gets_402_and_estimates_are_shown(client, database, settings):
    tenant = make_tenant(database)
    client.patch(f"/v1/admin/tenants/{tenant.tenant_id}", json={"monthly_unit_limit": 5}, headers=ADMIN)
    first = submit(client, tenant, data={"steps": "200"})  # pivotal, 200 steps: 2 units
    assert first.status_code == 202 and first.json()["estimated_units"] == 2
    default_steps = submit(client, tenant, data={"mode": "lora"}).json()  # leap-tiny lora default: 300 steps
    assert default_steps["estimated_units"] == 3
    refused = submit(client, tenant, data={"steps": "100"})  # 2 + 3 reserved, +1 > 5
    error = assert_error(refused, 402, "quota_exceeded", "monthly quota", "limit of 5")
    assert error["details"] == {
        "estimated_units": 1,
        "month_to_date_units": 0,
        "reserved_units": 5,
        "monthly_unit_limit": 5,
    }
    # Recorded usage counts at its real size: the first ran only 100 of its 200 steps.
    client.post(f"/v1/trainings/{default_steps['id']}/cancel", headers=tenant.headers)
    with unit_of_work(database.session_factory) as session:
        session.execute(
            update(Training).where(Training.id == uuid.UUID(first.json()["id"])).values(parameters={"steps": 100})
        )
    run_directly(database, settings, first.json()["id"], steps=100)
    report = client.get("/v1/usage", headers=tenant.headers).json()
    assert report["month_to_date_units"] == 1 and report["monthly_unit_limit"] == 5
    assert submit(client, tenant, data={"steps": "400"}).status_code == 202  # 1 + 4 <= 5
    assert submit(client, tenant, data={"steps": "100"}).status_code == 402


def test_month_bounds_are_utc_calendar_months():
    start, end = usage.month_bounds(datetime(2026, 12, 31, 23, 59, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC))
