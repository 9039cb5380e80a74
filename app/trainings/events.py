"""What is written in the same transaction as a training's state change: its webhook event and,
once it has finished, its usage record. Deliveries and billing are sent after commit (outbox)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from app.orm import Training
from app.settings import Settings
from app.trainings import repository
from app.usage import service as usage
from app.webhooks import service as webhooks


def event_data(training: Training) -> dict[str, Any]:
    """The `data` of training.* events: the state, not the artifact links (those expire; GET the training)."""
    error = None
    if training.status in ("failed", "canceled") and training.error_code:
        error = {"code": training.error_code, "message": training.error_message or ""}
    return {
        "id": str(training.id),
        "object": "training",
        "status": training.status,
        "base_model": training.base_model,
        "kind": training.kind,
        "mode": training.mode,
        "estimated_units": training.estimated_units,
        "attempts": training.attempts,
        "init_used": training.init_used,
        "init_scores": training.init_scores,
        "stop_reason": training.stop_reason,
        "eval_curve": training.eval_curve,
        "error": error,
        "usage": None
        if training.usage_steps is None
        else {
            "steps": training.usage_steps,
            "compute_seconds": training.usage_compute_seconds,
            "device": training.usage_device,
        },
        "metadata": training.metadata_,
        "created_at": training.created_at.isoformat(),
        "started_at": training.started_at.isoformat() if training.started_at else None,
        "finished_at": training.finished_at.isoformat() if training.finished_at else None,
    }


def _emit(session: Session, training: Training, settings: Settings) -> None:
    webhooks.emit(
        session,
        tenant_id=training.tenant_id,
        event_type=f"training.{'started' if training.status == 'running' else training.status}",
        data=event_data(training),
        settings=settings,
        training_id=training.id,
        training_url=training.webhook_url,
    )


def queued(session: Session, *, training_id: uuid.UUID, settings: Settings) -> None:
    """A new training was accepted: training.queued."""
    training = repository.get(session, training_id)
    if training is not None:
        _emit(session, training, settings)


def started(session: Session, *, training_id: uuid.UUID, settings: Settings) -> None:
    """A worker claimed it for the first time: training.started (retries after a crash say nothing)."""
    training = repository.get(session, training_id)
    if training is not None and training.attempts == 1:
        _emit(session, training, settings)


def finished(session: Session, *, training_id: uuid.UUID, settings: Settings) -> None:
    """It reached succeeded, failed or canceled: its usage record (if it started) and its event."""
    usage.record_final_usage(session, training_id=training_id, settings=settings)
    training = repository.get(session, training_id)
    if training is not None:
        _emit(session, training, settings)
