"""Every query on trainings and their artifacts."""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, FromClause, Select, bindparam, case, delete, func, select, tuple_, update
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Session

from app.db import Database, DriverStatement, read_in_thread
from app.enums import ACTIVE_STATUSES, TrainingStatus
from app.orm import Artifact, Training
from app.orm.training import TrainingRecord


def insert_training(session: Session, values: dict[str, Any]) -> bool:
    """Insert a training; False when the tenant already used its Idempotency-Key (no row written)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(Training)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        .returning(Training.id)
    )
    return session.execute(statement).first() is not None


def get(session: Session, training_id: uuid.UUID) -> Training | None:
    return session.get(Training, training_id, populate_existing=True)


def get_for_tenant(session: Session, *, tenant_id: uuid.UUID, training_id: uuid.UUID) -> Training | None:
    query = select(Training).where(Training.id == training_id, Training.tenant_id == tenant_id)
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def find_by_idempotency_key(session: Session, *, tenant_id: uuid.UUID, key: str) -> Training | None:
    query = select(Training).where(Training.tenant_id == tenant_id, Training.idempotency_key == key)
    return session.scalars(query).one_or_none()


def count_active(session: Session, *, tenant_id: uuid.UUID) -> int:
    """The tenant's queued and running trainings."""
    query = select(func.count()).where(Training.tenant_id == tenant_id, Training.status.in_(ACTIVE_STATUSES))
    return int(session.scalar(query) or 0)


_CLAIM_TRIES = 5


def _claim_order(columns: Any) -> tuple[Any, ...]:
    """The order a tenant's queued trainings are claimed in: the highest priority first, then trainings
    put back after a claim (attempts > 0, broker priority RECOVERED_PRIORITY), then the oldest."""
    return (columns.priority.desc(), case((columns.attempts > 0, 0), else_=1), columns.created_at, columns.id)


def _queue_position(training: FromClause) -> ColumnElement[Any]:
    """1-based place of a queued `training` row in the whole queue, in the order workers claim them;
    NULL when it is not queued.

    Broker messages are wake-ups served oldest first (recovered ones before new ones), each claiming
    its tenant's best queued training (_claim_order). So a tenant's queued trainings keep the places
    their submissions took in the queue (its "slots", oldest first), and its k-th training by claim
    order takes its k-th slot. Computed over the queued rows only (a partial index), however long
    the history grows."""
    queued_rows = Training.__table__.alias("queued_rows")
    columns = queued_rows.c
    recovered_first = case((columns.attempts > 0, 0), else_=1)
    by_arrival = (recovered_first, columns.created_at, columns.id)
    queued = (
        select(
            columns.id,
            columns.tenant_id,
            func.row_number().over(partition_by=columns.tenant_id, order_by=_claim_order(columns)).label("rank"),
            func.row_number().over(partition_by=columns.tenant_id, order_by=by_arrival).label("slot"),
            func.row_number().over(order_by=by_arrival).label("place"),
        )
        .where(columns.status == TrainingStatus.QUEUED)
        .subquery()
    )
    own, slot = queued.alias("own"), queued.alias("slot")
    place = (
        select(slot.c.place)
        .select_from(own.join(slot, (slot.c.tenant_id == own.c.tenant_id) & (slot.c.slot == own.c.rank)))
        .where(own.c.id == training.c.id)
        .scalar_subquery()
    )
    return case((training.c.status == TrainingStatus.QUEUED, place), else_=None)


# What the API shows of a training (app.trainings.schemas.TrainingState): the columns a record
# carries. Fewer columns cost less to describe and decode on every poll.
_VIEW_COLUMNS = (
    "id", "status", "base_model", "kind", "mode", "init", "init_used", "init_note", "init_scores",
    "stop_reason", "eval_curve", "previews", "token", "parameters", "priority", "caption_count", "webhook_url",
    "webhook_events_filter",
    "metadata_", "inputs", "skipped_files", "image_count", "example_count", "progress_step",
    "progress_total", "progress_loss", "progress_eta_s", "attempts", "cancel_requested_at",
    "error_code", "error_message", "usage_steps", "usage_compute_seconds", "usage_device",
    "estimated_units", "created_at", "started_at", "finished_at", "artifacts_expired_at",
)  # fmt: skip


@functools.cache
def _records_query() -> Select[Any]:
    # Built once, so it is compiled and its cache key generated once. Columns are labelled by
    # their attribute names on Training, so a TrainingRecord reads like the ORM object.
    trainings = Training.__table__
    attributes = sa_inspect(Training).column_attrs
    columns = [trainings.c[attributes[name].columns[0].key].label(name) for name in _VIEW_COLUMNS]
    return select(*columns, _queue_position(trainings).label("queue_position"))


@functools.cache
def _record_query() -> Select[Any]:
    trainings = Training.__table__
    return _records_query().where(
        trainings.c.id == bindparam("training_id"), trainings.c.tenant_id == bindparam("tenant_id")
    )


def record_for_tenant(session: Session, *, tenant_id: uuid.UUID, training_id: uuid.UUID) -> TrainingRecord | None:
    """One training as a TrainingRecord, with its queue position, in one query and without the ORM
    (the poll's read)."""
    parameters = {"training_id": training_id, "tenant_id": tenant_id}
    row = session.connection().execute(_record_query(), parameters).one_or_none()
    return None if row is None else TrainingRecord(row._asdict())


@functools.cache
def _record_statement(dialect: Dialect) -> DriverStatement:
    return DriverStatement.compile(_record_query(), dialect)


async def read_record(database: Database, *, tenant_id: uuid.UUID, training_id: uuid.UUID) -> TrainingRecord | None:
    """record_for_tenant from the event loop: read on the loop itself where the database allows it
    (Postgres), else on a read thread."""
    reads = database.loop_reads
    if reads is None:
        return await read_in_thread(
            database, lambda session: record_for_tenant(session, tenant_id=tenant_id, training_id=training_id)
        )
    parameters = {"training_id": training_id, "tenant_id": tenant_id}
    row = await reads.fetch_one(_record_statement(reads.dialect), parameters)
    return None if row is None else TrainingRecord(row)


def records_for_tenant(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    status: str | None,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[TrainingRecord]:
    """Newest first, as TrainingRecords with their queue positions; `before` is the (created_at, id)
    of the last row of the previous page."""
    trainings = Training.__table__
    query = _records_query().where(trainings.c.tenant_id == tenant_id)
    if status is not None:
        query = query.where(trainings.c.status == status)
    if before is not None:
        query = query.where(tuple_(trainings.c.created_at, trainings.c.id) < tuple_(*before))
    query = query.order_by(trainings.c.created_at.desc(), trainings.c.id.desc()).limit(limit)
    return [TrainingRecord(row._asdict()) for row in session.connection().execute(query)]


@functools.cache
def _queue_positions_query() -> Select[Any]:
    trainings = Training.__table__
    return select(trainings.c.id, _queue_position(trainings)).where(
        trainings.c.id.in_(bindparam("training_ids", expanding=True))
    )


def queue_position(session: Session, training_id: uuid.UUID) -> int | None:
    """The training's queue position (see _queue_position); None once it is not queued."""
    row = session.execute(_queue_positions_query(), {"training_ids": [training_id]}).first()
    return None if row is None or row[1] is None else int(row[1])


def queue_positions(session: Session, trainings: list[Training]) -> dict[uuid.UUID, int]:
    """The queue positions (see _queue_position) of these queued trainings, in one query. One that a
    worker claimed since it was read is no longer queued when counted: it gets none."""
    if not trainings:
        return {}
    rows = session.execute(_queue_positions_query(), {"training_ids": [training.id for training in trainings]})
    return {training_id: int(position) for training_id, position in rows if position is not None}


def artifacts_for(session: Session, training_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Artifact]]:
    """Artifacts of the given trainings, by training id."""
    if not training_ids:
        return {}
    query = select(Artifact).where(Artifact.training_id.in_(training_ids)).order_by(Artifact.name)
    grouped: dict[uuid.UUID, list[Artifact]] = defaultdict(list)
    for artifact in session.scalars(query):
        grouped[artifact.training_id].append(artifact)
    return grouped


def canceled_values(now: datetime, message: str) -> dict[str, Any]:
    """The columns every cancel writes (each transition adds its own); `message` says when it happened."""
    return {
        "status": TrainingStatus.CANCELED,
        "finished_at": now,
        "error_code": "canceled",
        "error_message": message,
    }


def cancel_if_queued(session: Session, *, training_id: uuid.UUID, now: datetime) -> bool:
    statement = (
        update(Training)
        .where(Training.id == training_id, Training.status == TrainingStatus.QUEUED)
        .values(cancel_requested_at=now, **canceled_values(now, "canceled before it started"))
        .returning(Training.id)
    )
    return session.execute(statement).first() is not None


def request_cancel_if_running(session: Session, *, training_id: uuid.UUID, now: datetime) -> bool:
    statement = (
        update(Training)
        .where(
            Training.id == training_id,
            Training.status == TrainingStatus.RUNNING,
            Training.cancel_requested_at.is_(None),
        )
        .values(cancel_requested_at=now)
        .returning(Training.id)
    )
    return session.execute(statement).first() is not None


def _claim_candidate(session: Session, *, training_id: uuid.UUID, tenant_id: uuid.UUID) -> uuid.UUID | None:
    """The training `training_id`'s message claims (see claim), or None when the tenant has none queued."""
    queued = select(Training.id, Training.priority, Training.wake_up_used).where(
        Training.tenant_id == tenant_id, Training.status == TrainingStatus.QUEUED
    )
    best = session.execute(queued.order_by(*_claim_order(Training.__table__.c)).limit(1)).first()
    if best is None:
        return None
    own = session.execute(queued.where(Training.id == training_id)).first()
    lost_its_message = best.wake_up_used and best.id != training_id
    if own is not None and own.priority == best.priority and not lost_its_message:
        return own.id
    return best.id


def claim(
    session: Session, *, training_id: uuid.UUID, worker_id: str, now: datetime, lease: timedelta
) -> Training | None:
    """queued -> running for this worker, atomically, on `training_id`'s run message; None when the
    message was processed before (a duplicate or late one) or there is nothing to claim.

    A message is a wake-up for its tenant: it claims the tenant's best queued training (_claim_order).
    Its own training, while queued, goes first among those of its priority, unless one of them lost its
    message to a higher priority (an older one, whose message claimed that training): so a higher
    priority overtakes, an overtaken training is claimed by the tenant's next message, and each message
    claims at most one training, so none is left without a message."""
    used = session.execute(
        update(Training)
        .where(Training.id == training_id, Training.wake_up_used.is_(False))
        .values(wake_up_used=True)
        .returning(Training.tenant_id)
    ).first()
    if used is None:
        return None
    for _ in range(_CLAIM_TRIES):
        candidate = _claim_candidate(session, training_id=training_id, tenant_id=used[0])
        if candidate is None:
            return None
        statement = (
            update(Training)
            .where(Training.id == candidate, Training.status == TrainingStatus.QUEUED)
            .values(
                status=TrainingStatus.RUNNING,
                worker_id=worker_id,
                lease_expires_at=now + lease,
                attempts=Training.attempts + 1,
                started_at=func.coalesce(Training.started_at, now),
                progress_step=0,
                progress_updated_at=now,
            )
            .returning(Training.id)
        )
        if session.execute(statement).first() is not None:
            return get(session, candidate)
    return None  # pragma: no cover - other workers claimed every candidate first, _CLAIM_TRIES times


def heartbeat(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    now: datetime,
    lease: timedelta,
    progress: dict[str, Any] | None,
) -> tuple[bool, datetime | None] | None:
    """Renew the lease (and write progress); None when this worker no longer holds the training."""
    values: dict[str, Any] = {"lease_expires_at": now + lease}
    if progress is not None:
        values.update(progress_updated_at=now, **{f"progress_{key}": value for key, value in progress.items()})
    statement = (
        update(Training)
        .where(Training.id == training_id, Training.worker_id == worker_id, Training.status == TrainingStatus.RUNNING)
        .values(**values)
        .returning(Training.cancel_requested_at)
    )
    row = session.execute(statement).first()
    return None if row is None else (True, row[0])


def update_running(session: Session, *, training_id: uuid.UUID, worker_id: str, values: dict[str, Any]) -> bool:
    """Write columns of a running training, only if this worker still holds the lease."""
    statement = (
        update(Training)
        .where(Training.id == training_id, Training.worker_id == worker_id, Training.status == TrainingStatus.RUNNING)
        .values(**values)
        .returning(Training.id)
    )
    return session.execute(statement).first() is not None


def finish(session: Session, *, training_id: uuid.UUID, worker_id: str, values: dict[str, Any]) -> bool:
    """running -> a final state, only if this worker still holds the lease."""
    statement = (
        update(Training)
        .where(Training.id == training_id, Training.worker_id == worker_id, Training.status == TrainingStatus.RUNNING)
        .values(lease_expires_at=None, **values)
        .returning(Training.id)
    )
    return session.execute(statement).first() is not None


def requeue_transient(
    session: Session, *, training_id: uuid.UUID, worker_id: str, now: datetime, window: timedelta, message: str
) -> int | None:
    """running -> queued after a transient failure, only if this worker still holds the lease and
    the training's first transient failure is less than `window` ago; its transient failures so far."""
    statement = (
        update(Training)
        .where(
            Training.id == training_id,
            Training.worker_id == worker_id,
            Training.status == TrainingStatus.RUNNING,
            Training.transient_failing_since.is_(None) | (Training.transient_failing_since > now - window),
        )
        .values(
            status=TrainingStatus.QUEUED,
            worker_id=None,
            lease_expires_at=None,
            wake_up_used=False,  # its new run message claims it
            error_message=message,
            transient_failures=Training.transient_failures + 1,
            transient_failing_since=func.coalesce(Training.transient_failing_since, now),
        )
        .returning(Training.transient_failures)
    )
    row = session.execute(statement).first()
    return None if row is None else int(row[0])


def add_artifacts(session: Session, artifacts: list[Artifact]) -> None:
    session.add_all(artifacts)
    session.flush()


def _expired(now: datetime) -> Any:
    return (Training.status == TrainingStatus.RUNNING) & (Training.lease_expires_at < now)


def _crashed_claims() -> Any:
    """Claims that ended with the worker gone (the expired one included), not in a transient error."""
    return Training.attempts - Training.transient_failures


def cancel_expired(session: Session, *, now: datetime) -> list[uuid.UUID]:
    """Expired leases of trainings whose cancel was requested: canceled (no point running them again)."""
    statement = (
        update(Training)
        .where(_expired(now), Training.cancel_requested_at.is_not(None))
        .values(lease_expires_at=None, **canceled_values(now, "canceled"))
        .returning(Training.id)
    )
    return [row[0] for row in session.execute(statement)]


def requeue_expired(session: Session, *, now: datetime, max_attempts: int) -> list[uuid.UUID]:
    statement = (
        update(Training)
        .where(_expired(now), _crashed_claims() < max_attempts)
        .values(status=TrainingStatus.QUEUED, worker_id=None, lease_expires_at=None, wake_up_used=False)
        .returning(Training.id)
    )
    return [row[0] for row in session.execute(statement)]


def fail_expired(session: Session, *, now: datetime, max_attempts: int, message: str) -> list[uuid.UUID]:
    statement = (
        update(Training)
        .where(_expired(now), _crashed_claims() >= max_attempts)
        .values(
            status=TrainingStatus.FAILED,
            finished_at=now,
            lease_expires_at=None,
            error_code="worker_lost",
            error_message=message,
        )
        .returning(Training.id)
    )
    return [row[0] for row in session.execute(statement)]


def lock_past_retention(session: Session, *, finished_before: datetime, limit: int) -> list[Training]:
    query = (
        select(Training)
        .where(Training.finished_at < finished_before, Training.artifacts_expired_at.is_(None))
        .order_by(Training.finished_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def delete_artifacts(session: Session, *, training_id: uuid.UUID) -> None:
    session.execute(delete(Artifact).where(Artifact.training_id == training_id))


def mark_artifacts_expired(session: Session, *, training_id: uuid.UUID, now: datetime) -> None:
    session.execute(update(Training).where(Training.id == training_id).values(artifacts_expired_at=now))


def count_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Training.status, func.count()).group_by(Training.status))
    return {status: count for status, count in rows}


def histogram(session: Session, column: Any, buckets: tuple[float, ...]) -> tuple[list[int], int, float]:
    """Cumulative bucket counts, count and sum of a numeric column over all rows where it is set."""
    columns = [func.coalesce(func.sum(case((column <= bound, 1), else_=0)), 0) for bound in buckets]
    query = select(*columns, func.count(column), func.coalesce(func.sum(column), 0.0)).where(column.is_not(None))
    row = session.execute(query).one()
    return [int(value) for value in row[: len(buckets)]], int(row[-2]), float(row[-1])


def usage_totals(session: Session) -> tuple[int, float]:
    """Steps and compute seconds of every training that recorded usage."""
    row = session.execute(
        select(
            func.coalesce(func.sum(Training.usage_steps), 0),
            func.coalesce(func.sum(Training.usage_compute_seconds), 0.0),
        )
    ).one()
    return int(row[0] or 0), float(row[1] or 0.0)


def existing_ids(session: Session, training_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of these trainings have a row."""
    if not training_ids:
        return set()
    return set(session.scalars(select(Training.id).where(Training.id.in_(training_ids))))
