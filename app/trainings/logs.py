"""A training's log: progress lines from the trainer and notes from the worker (claims, the start
the guard chose, why it stopped, retries, errors), numbered per training. Takes a session, never
commits; every line is also published as a live `log` event after the commit.

Lines are written in the transaction of a state change or heartbeat of the training, after that
transaction's UPDATE of the training's row: the row lock orders the writers, so `seq` is simply
one past the highest so far.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from app.orm import TrainingLog
from app.orm.base import utcnow
from app.settings import Settings
from app.trainings import live, presenter

PROGRESS_RESERVE = 50
"""Lines kept free for notes once progress lines have filled the log."""
MAX_PAGE_SIZE = 1000


@dataclass(frozen=True)
class LogLine:
    level: str
    message: str


def info(message: str) -> LogLine:
    return LogLine("info", message)


def warning(message: str) -> LogLine:
    return LogLine("warning", message)


def error(message: str) -> LogLine:
    return LogLine("error", message)


def progress_line(step: int, total: int | None, loss: float | None, eta_s: float | None) -> LogLine:
    """A trainer progress line, e.g. `step 40/200 loss 0.1234 eta 12s`."""
    parts = [f"step {step}/{total}" if total else f"step {step}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if eta_s is not None:
        parts.append(f"eta {eta_s:.0f}s")
    return info(" ".join(parts))


def last_seq(session: Session, training_id: uuid.UUID) -> int:
    return int(session.scalar(select(func.max(TrainingLog.seq)).where(TrainingLog.training_id == training_id)) or 0)


def append(
    session: Session,
    *,
    training_id: uuid.UUID,
    lines: list[LogLine],
    settings: Settings,
    progress: bool = False,
) -> list[TrainingLog]:
    """Add lines after the training's last one; progress lines stop short of log_max_lines so the
    notes of how it ended still fit, notes stop at it. Messages are cut to log_message_max_chars."""
    if not lines:
        return []
    seq = last_seq(session, training_id)
    limit = settings.log_max_lines - (PROGRESS_RESERVE if progress else 0)
    now = utcnow()
    rows = []
    for line in lines:
        if seq >= limit:
            break
        seq += 1
        rows.append(
            TrainingLog(
                training_id=training_id,
                seq=seq,
                created_at=now,
                level=line.level,
                message=_cut(line.message, settings.log_message_max_chars),
            )
        )
    if not rows:
        return []
    session.add_all(rows)
    session.flush()
    for row in rows:
        live.publish_after_commit(session, settings=settings, training_id=training_id, event="log", data=line_data(row))
    return rows


def status_changed(
    session: Session, *, training_id: uuid.UUID, status: str, settings: Settings, lines: list[LogLine]
) -> None:
    """After an UPDATE of the training's status: its log notes, and a live `status` event carrying the
    training as this transition left it (streams send it as is: a requeue shows as queued even when a
    worker claimed the training again before the stream read it)."""
    rows = append(session, training_id=training_id, lines=lines, settings=settings)
    if settings.resolved_events_redis_url is None:
        return  # nothing is published; the streams' poller reads the rows
    data: dict[str, Any] = {"status": status}
    state = presenter.state_data(session, training_id)
    if state is not None:
        # The log's last seq with this change: a stream whose snapshot already holds it skips it.
        data["training"] = state
        data["log_seq"] = rows[-1].seq if rows else last_seq(session, training_id)
    live.publish_after_commit(session, settings=settings, training_id=training_id, event="status", data=data)


def _cut(message: str, limit: int) -> str:
    message = message.replace("\x00", "")
    return message if len(message) <= limit else message[: max(limit - 1, 0)] + "…"


def line_data(row: TrainingLog) -> dict[str, object]:
    """A line as the API shows it (and as a `log` event's data)."""
    return {"seq": row.seq, "at": live.iso(row.created_at), "level": row.level, "message": row.message}


def page(session: Session, *, training_id: uuid.UUID, after: int, limit: int) -> list[TrainingLog]:
    """Lines with seq > after, oldest first."""
    query = (
        select(TrainingLog)
        .where(TrainingLog.training_id == training_id, TrainingLog.seq > after)
        .order_by(TrainingLog.seq)
        .limit(limit)
    )
    return list(session.scalars(query))


def since(session: Session, cursors: dict[uuid.UUID, int], *, limit: int) -> list[TrainingLog]:
    """Lines of several trainings, each after its own cursor (the embedded stream poller)."""
    if not cursors:
        return []
    condition = or_(
        *(
            (TrainingLog.training_id == training_id) & (TrainingLog.seq > after)
            for training_id, after in cursors.items()
        )
    )
    query = select(TrainingLog).where(condition).order_by(TrainingLog.training_id, TrainingLog.seq).limit(limit)
    return list(session.scalars(query))
