"""Worker-side state transitions of a training, and the sweeper. Takes a session, never commits.

Every transition is a guarded UPDATE on the row: a worker acts only while it holds the lease
(status running, worker_id its own), so a duplicate or redelivered message can never run a
finished or running training twice, and a worker that lost its lease cannot overwrite the result.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from app import task_names
from app.backoff import backoff_seconds
from app.enums import TrainingStatus
from app.orm import Artifact
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.settings import Settings
from app.storage import Storage
from app.trainings import events, live, logs, repository
from app.trainings.jobs import RECOVERED_PRIORITY, training_prefix
from models.enums import Kind, StopReason

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClaimedTraining:
    """What a worker needs to run a training, detached from the session."""

    id: uuid.UUID
    attempts: int
    base_model: str
    token: str
    mode: str
    init: str
    parameters: dict[str, Any]
    inputs: list[dict[str, Any]]
    kind: str = Kind.IMAGE
    """image or text: which trainer runs it and how its inputs are read."""


@dataclass(frozen=True)
class LeaseState:
    held: bool
    cancel_requested: bool


@dataclass(frozen=True)
class StoredArtifact:
    name: str
    kind: str
    key: str
    bytes: int
    sha256: str


@dataclass(frozen=True)
class UsageRecord:
    steps: int
    compute_seconds: float
    device: str


def claim(session: Session, *, training_id: uuid.UUID, worker_id: str, settings: Settings) -> ClaimedTraining | None:
    """queued -> running with a fresh lease; None when finished, canceled or held by another worker."""
    now = utcnow()
    training = repository.claim(
        session, training_id=training_id, worker_id=worker_id, now=now, lease=settings.lease_duration
    )
    if training is None:
        return None
    events.started(session, training_id=training.id, settings=settings)
    logs.status_changed(
        session,
        training_id=training.id,
        status=TrainingStatus.RUNNING,
        settings=settings,
        lines=[logs.info(f"claimed by worker {worker_id} (attempt {training.attempts})")],
    )
    if training.queue_seconds is None:
        training.queue_seconds = max((now - training.created_at).total_seconds(), 0.0)
    return ClaimedTraining(
        id=training.id,
        attempts=training.attempts,
        base_model=training.base_model,
        token=training.token,
        mode=training.mode,
        init=training.init,
        parameters=dict(training.parameters),
        inputs=list(training.inputs),
        kind=training.kind,
    )


def renew_lease(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    settings: Settings,
    progress: dict[str, Any] | None,
    log_lines: list[logs.LogLine] | None = None,
) -> LeaseState:
    """Extend the lease, write progress (and its log lines) if given, and report whether a cancel
    was requested. Written progress is published as a live `progress` event after the commit."""
    now = utcnow()
    result = repository.heartbeat(
        session,
        training_id=training_id,
        worker_id=worker_id,
        now=now,
        lease=settings.lease_duration,
        progress=progress,
    )
    if result is None:
        return LeaseState(held=False, cancel_requested=False)
    if progress is not None:
        live.publish_after_commit(
            session,
            settings=settings,
            training_id=training_id,
            event="progress",
            data=live.progress_data(progress, now),
        )
    if log_lines:
        logs.append(session, training_id=training_id, lines=log_lines, settings=settings, progress=True)
    return LeaseState(held=True, cancel_requested=result[1] is not None)


def _usage_values(usage: UsageRecord | None) -> dict[str, Any]:
    """The usage columns, and the progress step set to the steps billed: the last heartbeat may have
    written an earlier step than the one the trainer stopped at, and both must say the same."""
    if usage is None:
        return {}
    return {
        "usage_steps": usage.steps,
        "usage_compute_seconds": usage.compute_seconds,
        "usage_device": usage.device,
        "progress_step": usage.steps,
    }


def start_note(init_used: str, init_note: str) -> str:
    """The log line of the start a run took (and why)."""
    return f"started from {init_used}" + (f": {init_note}" if init_note else "")


def record_start(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    settings: Settings,
    init_used: str,
    init_note: str = "",
    init_scores: dict[str, float] | None = None,
) -> bool:
    """The trainer decided how the run starts (the guard included): shown by GET and logged now, while it
    runs, not only once it finished (a canceled run keeps them too). False when the lease was lost."""
    recorded = repository.update_running(
        session,
        training_id=training_id,
        worker_id=worker_id,
        values={"init_used": init_used, "init_note": init_note or None, "init_scores": init_scores or None},
    )
    if recorded:
        logs.append(
            session, training_id=training_id, lines=[logs.info(start_note(init_used, init_note))], settings=settings
        )
    return recorded


def complete(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    artifacts: list[StoredArtifact],
    usage: UsageRecord,
    settings: Settings,
    init_used: str,
    init_note: str = "",
    init_scores: dict[str, float] | None = None,
    stop_reason: str | None = None,
    eval_curve: list[tuple[int, float]] | None = None,
    previews: dict[str, Any] | None = None,
    progress_lines: list[logs.LogLine] | None = None,
    start_logged: bool = False,
) -> bool:
    """running -> succeeded with its artifacts and usage, in the caller's one transaction; with the
    trainer's progress lines not yet written, and the start's note unless record_start logged it."""
    now = utcnow()
    finished = repository.finish(
        session,
        training_id=training_id,
        worker_id=worker_id,
        values={
            "status": TrainingStatus.SUCCEEDED,
            "finished_at": now,
            "init_used": init_used,
            "init_note": init_note or None,
            "init_scores": init_scores or None,
            "stop_reason": stop_reason,
            "eval_curve": [[step, loss] for step, loss in eval_curve] if eval_curve else None,
            "previews": previews,
            "progress_step": usage.steps,
            "progress_total": usage.steps,
            "progress_eta_s": 0.0,
            "progress_updated_at": now,
            "error_code": None,
            "error_message": None,
            **_usage_values(usage),
        },
    )
    if finished:
        repository.add_artifacts(
            session,
            [
                Artifact(
                    training_id=training_id,
                    name=item.name,
                    kind=item.kind,
                    key=item.key,
                    bytes=item.bytes,
                    sha256=item.sha256,
                    created_at=now,
                )
                for item in artifacts
            ],
        )
        # The final progress write (steps run of steps run) is a progress event like the others.
        final = {"step": usage.steps, "total": usage.steps, "loss": _last_loss(session, training_id), "eta_s": 0.0}
        live.publish_after_commit(
            session, settings=settings, training_id=training_id, event="progress", data=live.progress_data(final, now)
        )
        _log_progress(session, training_id, progress_lines, settings)
        notes = _outcome_notes(init_used, init_note, stop_reason, usage, len(artifacts))
        _announce(
            session,
            training_id=training_id,
            settings=settings,
            status=TrainingStatus.SUCCEEDED,
            lines=notes[1:] if start_logged else notes,
        )
    return finished


def _log_progress(
    session: Session, training_id: uuid.UUID, lines: list[logs.LogLine] | None, settings: Settings
) -> None:
    if lines:
        logs.append(session, training_id=training_id, lines=lines, settings=settings, progress=True)


def _announce(
    session: Session, *, training_id: uuid.UUID, settings: Settings, status: TrainingStatus, lines: list[logs.LogLine]
) -> None:
    """A final state was written: its usage record and webhook event, then its status and log lines
    (published live after the commit)."""
    events.finished(session, training_id=training_id, settings=settings)
    logs.status_changed(session, training_id=training_id, status=status, settings=settings, lines=lines)


def _last_loss(session: Session, training_id: uuid.UUID) -> float | None:
    training = repository.get(session, training_id)
    return training.progress_loss if training is not None else None


def _outcome_notes(
    init_used: str, init_note: str, stop_reason: str | None, usage: UsageRecord, artifacts: int
) -> list[logs.LogLine]:
    start = start_note(init_used, init_note)
    reasons: dict[str, str] = {
        StopReason.CONVERGED: "its evaluation loss stopped improving",
        StopReason.MAX_STEPS: "it reached max_steps",
        StopReason.STEPS: "the requested steps ran out",
    }
    reason = reasons.get(stop_reason or "", stop_reason or "done")
    return [
        logs.info(start),
        logs.info(f"stopped after {usage.steps} steps: {reason}"),
        logs.info(f"succeeded with {artifacts} artifacts in {usage.compute_seconds:.1f}s on {usage.device}"),
    ]


def fail(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    code: str,
    message: str,
    settings: Settings,
    usage: UsageRecord | None = None,
    progress_lines: list[logs.LogLine] | None = None,
) -> bool:
    """running -> failed with an error code; no artifacts are listed."""
    finished = repository.finish(
        session,
        training_id=training_id,
        worker_id=worker_id,
        values={
            "status": TrainingStatus.FAILED,
            "finished_at": utcnow(),
            "error_code": code,
            "error_message": message[:2000],
            **_usage_values(usage),
        },
    )
    if finished:
        _log_progress(session, training_id, progress_lines, settings)
        lines = [logs.error(f"failed ({code}): {message}")]
        _announce(session, training_id=training_id, settings=settings, status=TrainingStatus.FAILED, lines=lines)
    return finished


def cancel(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    settings: Settings,
    usage: UsageRecord | None = None,
    progress_lines: list[logs.LogLine] | None = None,
) -> bool:
    """running -> canceled, once the worker has stopped."""
    finished = repository.finish(
        session,
        training_id=training_id,
        worker_id=worker_id,
        values={
            **repository.canceled_values(utcnow(), "canceled while running"),
            "stop_reason": StopReason.CANCELED,
            **_usage_values(usage),
        },
    )
    if finished:
        _log_progress(session, training_id, progress_lines, settings)
        steps = f" after {usage.steps} steps" if usage is not None else ""
        lines = [logs.warning(f"canceled while running{steps}")]
        _announce(session, training_id=training_id, settings=settings, status=TrainingStatus.CANCELED, lines=lines)
    return finished


def retry_delay(attempts: int, settings: Settings) -> timedelta:
    """Exponential backoff with a cap and up to 25% jitter."""
    return timedelta(
        seconds=backoff_seconds(
            max(attempts - 1, 0),
            base=settings.retry_backoff.total_seconds(),
            cap=settings.retry_backoff_max.total_seconds(),
            jitter=(1.0, 1.25),
        )
    )


def retry_or_fail(
    session: Session,
    *,
    training_id: uuid.UUID,
    worker_id: str,
    settings: Settings,
    message: str,
) -> str:
    """After a transient (storage or database) failure: requeue with backoff, or fail once the
    training has been failing so for LEAP_TRANSIENT_RETRY_WINDOW. Such failures are not crashes:
    they do not count against LEAP_MAX_ATTEMPTS."""
    now = utcnow()
    failures = repository.requeue_transient(
        session,
        training_id=training_id,
        worker_id=worker_id,
        now=now,
        window=settings.transient_retry_window,
        message=message[:2000],
    )
    if failures is not None:
        delay = retry_delay(failures, settings)
        outbox.enqueue(
            session,
            task=task_names.RUN_TRAINING,
            args=[str(training_id)],
            queue=settings.queue,
            delay=delay,
            priority=RECOVERED_PRIORITY,
        )
        logs.status_changed(
            session,
            training_id=training_id,
            status=TrainingStatus.QUEUED,
            settings=settings,
            lines=[
                logs.warning(
                    f"transient failure {failures}, requeued to run again in {delay.total_seconds():.0f}s: {message}"
                )
            ],
        )
        return "requeued"
    failed = fail(
        session,
        training_id=training_id,
        worker_id=worker_id,
        code="internal",
        message=f"storage or database unavailable for longer than {settings.transient_retry_window}: {message}",
        settings=settings,
    )
    return "failed" if failed else "lost"


@dataclass
class SweepReport:
    canceled: list[uuid.UUID] = field(default_factory=list)
    requeued: list[uuid.UUID] = field(default_factory=list)
    failed: list[uuid.UUID] = field(default_factory=list)
    expired: int = 0
    relayed: int = 0
    purged: int = 0


def _sweep_notes(session: Session, report: SweepReport, settings: Settings) -> None:
    notes = [
        (
            report.requeued,
            TrainingStatus.QUEUED,
            logs.warning("the worker running it stopped renewing its lease; requeued"),
        ),
        (
            report.failed,
            TrainingStatus.FAILED,
            logs.error("the worker running it stopped renewing its lease too often; failed"),
        ),
        (
            report.canceled,
            TrainingStatus.CANCELED,
            logs.warning("canceled: its worker stopped after the cancel request"),
        ),
    ]
    for training_ids, status, line in notes:
        for training_id in training_ids:
            logs.status_changed(session, training_id=training_id, status=status, settings=settings, lines=[line])


def sweep(session: Session, *, settings: Settings, storage: Storage, send: outbox.Sender) -> SweepReport:
    """Requeue trainings whose worker died (lease expired), fail them after max_attempts, delete
    artifacts past retention and send outbox messages that were not sent after their commit."""
    now = utcnow()
    report = SweepReport()
    # Relay first: messages written below are sent after this transaction commits, never before.
    report.relayed = outbox.relay_pending(session, send=send, grace=settings.outbox_grace)
    report.canceled = repository.cancel_expired(session, now=now)
    report.requeued = repository.requeue_expired(session, now=now, max_attempts=settings.max_attempts)
    for training_id in report.requeued:
        outbox.enqueue(
            session,
            task=task_names.RUN_TRAINING,
            args=[str(training_id)],
            queue=settings.queue,
            priority=RECOVERED_PRIORITY,
        )
    report.failed = repository.fail_expired(
        session,
        now=now,
        max_attempts=settings.max_attempts,
        message=f"the worker running it stopped renewing its lease {settings.max_attempts} times "
        "(crashed or lost its connection)",
    )
    for training_id in [*report.canceled, *report.failed]:
        events.finished(session, training_id=training_id, settings=settings)
    _sweep_notes(session, report, settings)
    for training in repository.lock_past_retention(
        session, finished_before=now - settings.artifact_retention, limit=100
    ):
        storage.delete_prefix(training_prefix(training.id))
        repository.delete_artifacts(session, training_id=training.id)
        repository.mark_artifacts_expired(session, training_id=training.id, now=now)
        report.expired += 1
    report.purged = outbox.purge(session, older_than=timedelta(days=1))
    if report.requeued or report.failed or report.canceled or report.expired or report.relayed:
        logger.info("sweep: %s", report)
    return report
