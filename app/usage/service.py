"""Usage rules: the one ledger record per started training, reports, exports and monthly quotas.

Takes a session, never commits: a record is written in the transaction that moves its training
to a final state.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from app.billing import service as billing
from app.enums import FINISHED_STATUSES
from app.errors import PaymentRequired, ValidationFailed
from app.orm import UsageRecord
from app.orm.base import utcnow
from app.settings import Settings
from app.tenants import service as tenants
from app.usage import prices, repository, schemas
from models.enums import Kind

MAX_REPORT_DAYS = 366


def estimate_units(
    settings: Settings,
    *,
    mode: str,
    base_model: str,
    steps: int,
    images: int,
    kind: str = Kind.IMAGE,
    examples: int = 0,
) -> int:
    """Billable units of a training that runs all its steps (device multiplier assumed 1)."""
    return prices.billable_units(
        settings.price_table,
        mode=mode,
        base_model=base_model,
        steps=steps,
        images=images,
        kind=kind,
        examples=examples,
    )


def month_bounds(now: datetime) -> tuple[datetime, datetime]:
    """[first instant of now's UTC month, first instant of the next)."""
    start = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def month_to_date_units(session: Session, *, tenant_id: uuid.UUID, now: datetime | None = None) -> int:
    start, end = month_bounds(now or utcnow())
    return repository.units_in_period(session, tenant_id=tenant_id, start=start, end=end)


def check_quota(session: Session, *, tenant_id: uuid.UUID, monthly_unit_limit: int | None, estimated: int) -> None:
    """402 when this month's recorded units, plus the estimates of queued and running trainings,
    plus this estimate would pass the tenant's monthly limit. The caller holds the tenant's lock."""
    if monthly_unit_limit is None:
        return
    used = month_to_date_units(session, tenant_id=tenant_id)
    pending = repository.estimated_units_of_active(session, tenant_id=tenant_id)
    if used + pending + estimated > monthly_unit_limit:
        raise PaymentRequired(
            f"monthly quota exceeded: this training is estimated at {estimated} billable units, and "
            f"{used} are used plus {pending} reserved by queued or running trainings this month, "
            f"of a limit of {monthly_unit_limit}; ask your administrator to raise the limit",
            details={
                "estimated_units": estimated,
                "month_to_date_units": used,
                "reserved_units": pending,
                "monthly_unit_limit": monthly_unit_limit,
            },
        )


def record_final_usage(session: Session, *, training_id: uuid.UUID, settings: Settings) -> UsageRecord | None:
    """Write the training's one usage record in the caller's transaction (the one that set its
    final state). None when it never started, is not finished, or already has its record."""
    training = repository.get_training(session, training_id)
    if training is None or training.started_at is None or training.status not in FINISHED_STATUSES:
        return None
    finished_at = training.finished_at or utcnow()
    steps = training.usage_steps if training.usage_steps is not None else training.progress_step
    device = training.usage_device or "unknown"
    klass = prices.device_class(device)
    units = prices.billable_units(
        settings.price_table,
        mode=training.mode,
        base_model=training.base_model,
        steps=steps,
        images=training.image_count,
        device_class=klass,
        kind=training.kind,
        examples=training.example_count or 0,
    )
    record_id = repository.insert_once(
        session,
        {
            "id": uuid.uuid4(),
            "tenant_id": training.tenant_id,
            "training_id": training.id,
            "status": training.status,
            "base_model": training.base_model,
            "kind": training.kind,
            "mode": training.mode,
            "device": device[:64],
            "device_class": klass,
            "steps": steps,
            "images": training.image_count,
            "examples": training.example_count or 0,
            "compute_seconds": round(training.usage_compute_seconds or 0.0, 3),
            "billable_units": units,
            "started_at": training.started_at,
            "finished_at": finished_at,
            "created_at": utcnow(),
        },
    )
    if record_id is None:
        return None
    record = repository.get(session, record_id)
    assert record is not None
    billing.enqueue_record(session, record=record, settings=settings)
    return record


def _check_period(
    start: datetime,
    end: datetime,
    *,
    max_days: int | None = MAX_REPORT_DAYS,
    start_given: bool = True,
    end_given: bool = True,
) -> tuple[datetime, datetime]:
    """The period as aware UTC datetimes; a 422 names the parameter the client sent (`end` when both)."""
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    end = end if end.tzinfo else end.replace(tzinfo=UTC)
    blamed = "end" if end_given or not start_given else "start"
    default_note = ""
    if not end_given:
        default_note = f" (end defaults to {end.isoformat()}; send end as well)"
    elif not start_given:
        default_note = f" (start defaults to {start.isoformat()}; send start as well)"
    if end <= start:
        raise ValidationFailed(f"{blamed}: end must be after start{default_note}", details={"field": blamed})
    if max_days is not None and end - start > timedelta(days=max_days):
        raise ValidationFailed(
            f"{blamed}: a period is at most {max_days} days{default_note}", details={"field": blamed}
        )
    return start, end


def _add(totals: schemas.UsageTotals, record: UsageRecord) -> None:
    totals.trainings += 1
    totals.steps += record.steps
    totals.images += record.images
    totals.examples += record.examples
    totals.compute_seconds = round(totals.compute_seconds + record.compute_seconds, 3)
    totals.billable_units += record.billable_units


def report(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    start: datetime | None,
    end: datetime | None,
    group_by: schemas.GroupBy,
) -> schemas.UsageReport:
    """A tenant's usage in [start, end) (default: this UTC month), by UTC day or by base model."""
    month_start, month_end = month_bounds(utcnow())
    start, end = _check_period(
        start or month_start, end or month_end, start_given=start is not None, end_given=end is not None
    )
    tenant = tenants.get_tenant(session, tenant_id)
    groups: dict[str, schemas.UsageGroup] = defaultdict(lambda: schemas.UsageGroup(key=""))
    total = schemas.UsageTotals()
    for record in repository.in_period(session, tenant_id=tenant_id, start=start, end=end):
        key = record.finished_at.date().isoformat() if group_by == "day" else record.base_model
        group = groups[key]
        group.key = key
        _add(group, record)
        _add(total, record)
    return schemas.UsageReport(
        start=start,
        end=end,
        group_by=group_by,
        groups=[groups[key] for key in sorted(groups)],
        total=total,
        monthly_unit_limit=tenant.monthly_unit_limit,
        month_to_date_units=month_to_date_units(session, tenant_id=tenant_id),
    )


def export(
    session: Session, *, tenant_id: uuid.UUID | None, start: datetime, end: datetime
) -> list[schemas.UsageRecord]:
    """Ledger records of one tenant (or all) finished in [start, end), any length of period."""
    start, end = _check_period(start, end, max_days=None)
    records = repository.in_period(session, tenant_id=tenant_id, start=start, end=end)
    return [schemas.UsageRecord.model_validate(record) for record in records]


def to_csv(records: list[schemas.UsageRecord]) -> str:
    """The export as CSV with a header row."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(schemas.UsageRecord.model_fields))
    writer.writeheader()
    for record in records:
        writer.writerow(record.model_dump(mode="json"))
    return buffer.getvalue()
