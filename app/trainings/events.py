"""What is written in the same transaction as a training's state change: its webhook event and,
once it has finished, its usage record. Deliveries and billing are sent after commit (outbox)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from app.enums import TrainingStatus
from app.orm import Training
from app.settings import Settings
from app.trainings import presenter, repository
from app.usage import service as usage
from app.webhooks import service as webhooks


def event_type(training: Training) -> str:
    """training.queued, training.started (while running), training.succeeded, .failed or .canceled."""
    return f"training.{'started' if training.status == TrainingStatus.RUNNING else training.status}"


def event_data(session: Session, training: Training, settings: Settings) -> dict[str, Any]:
    """The `data` of training.* events: exactly the API's Training (presenter.present), as JSON; its
    artifacts without links (those expire, and a payload may be redelivered later: GET urls.get)."""
    # Always absolute: LEAP_PUBLIC_URL, else the address the training was submitted at.
    return presenter.webhook_data(session, training, public_url=settings.public_url or training.api_base_url)


def _emit(session: Session, training: Training, settings: Settings) -> None:
    type_ = event_type(training)
    wanted = training.webhook_events_filter is None or type_ in training.webhook_events_filter
    webhooks.emit(
        session,
        tenant_id=training.tenant_id,
        event_type=type_,
        data=event_data(session, training, settings),
        settings=settings,
        training_id=training.id,
        # The training's own URL gets the events its filter names; the tenant's endpoints are not affected.
        training_url=training.webhook_url if wanted else None,
    )


def queued(session: Session, training: Training, *, settings: Settings) -> None:
    """A new training was accepted (its row just written): training.queued."""
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
