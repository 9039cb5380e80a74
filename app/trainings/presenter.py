"""The one representation of a training: what every trainings endpoint returns and what every
training.* webhook carries in its `data` (the same pydantic model, encoded the same way)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.enums import FINISHED_STATUSES, TrainingStatus
from app.orm import Artifact, Training
from app.orm.base import utcnow
from app.orm.training import TrainingRecord
from app.storage import Storage
from app.trainings import repository, schemas


@dataclass(frozen=True)
class ArtifactLinks:
    """Makes the presigned download URLs of artifacts, and carries the base of the API's own links."""

    storage: Storage
    ttl: timedelta
    base_url: str
    """Base of local-file download links: LEAP_PUBLIC_URL, else the request's own."""
    public_url: str | None = None
    """The base of a training's `urls` and of Location (LEAP_PUBLIC_URL, else the request's own);
    None: they are paths."""

    def link(self, artifact: Artifact) -> tuple[str, datetime]:
        expires_at = utcnow() + self.ttl
        url = self.storage.presign_get(
            artifact.key, filename=artifact.name, expires_in=self.ttl, base_url=self.base_url
        )
        return url, expires_at


def training_url(training_id: uuid.UUID | str, public_url: str | None) -> str:
    """The training's own URL (its Location): absolute under a base URL, else a path."""
    return f"{(public_url or '').rstrip('/')}/v1/trainings/{training_id}"


def training_urls(
    training: Training | TrainingRecord | schemas.TrainingState, public_url: str | None
) -> schemas.TrainingUrls:
    """Its endpoints; cancel and stream only while it has not finished (as Replicate does)."""
    base = training_url(training.id, public_url)
    active = training.status not in FINISHED_STATUSES
    return schemas.TrainingUrls(
        get=base,
        cancel=f"{base}/cancel" if active else None,
        stream=f"{base}/stream" if active else None,
        logs=f"{base}/logs",
    )


def present(
    session: Session,
    trainings: Sequence[Training | TrainingRecord],
    *,
    public_url: str | None,
    links: ArtifactLinks | None,
) -> list[schemas.Training]:
    """The API views of trainings, ORM objects or records (polls and lists read records, which carry
    their queue position). With links, artifacts carry presigned URLs; without (webhooks: a payload
    is stored and may be sent long after a link expired) their url and expires_at are null.

    At most two queries: the artifacts of succeeded trainings, and for queued ORM trainings one
    indexed count of the queue ahead; polls of queued or running trainings need neither."""
    artifacts = repository.artifacts_for(
        session, [item.id for item in trainings if item.status == TrainingStatus.SUCCEEDED]
    )
    positions = repository.queue_positions(
        session, [item for item in trainings if isinstance(item, Training) and item.status == TrainingStatus.QUEUED]
    )
    return [
        _view(training, artifacts.get(training.id, []), _position(training, positions), public_url, links)
        for training in trainings
    ]


def record_view(record: TrainingRecord, *, public_url: str | None, links: ArtifactLinks | None) -> schemas.Training:
    """present() of a record whose status has no artifacts to show (not succeeded): no query."""
    assert record.status != TrainingStatus.SUCCEEDED, "a succeeded training's artifacts need present()"
    return _view(record, [], record.queue_position, public_url, links)


def state_data(session: Session, training_id: uuid.UUID) -> dict[str, Any] | None:
    """The training as this transaction leaves it, queue position included, as JSON: what a live
    `status` event carries, so that a stream shows each state change itself, not a later re-read."""
    query = select(Training).where(Training.id == training_id).execution_options(populate_existing=True)
    training = session.scalars(query).one_or_none()
    if training is None:
        return None
    state = schemas.TrainingState.model_validate(training)
    if training.status == TrainingStatus.QUEUED:
        state.queue_position = repository.queue_position(session, training.id)
    return state.model_dump(mode="json", exclude={"artifacts", "urls"})


def state_view(data: dict[str, Any], *, public_url: str | None) -> schemas.Training:
    """A status event's state_data as the API's Training (no artifacts: not for a succeeded training)."""
    state = schemas.TrainingState.model_validate(data)
    assert state.status != TrainingStatus.SUCCEEDED, "a succeeded training's artifacts need present()"
    return schemas.Training.model_validate({**dict(state), "artifacts": [], "urls": training_urls(state, public_url)})


def _position(training: Training | TrainingRecord, positions: dict[uuid.UUID, int]) -> int | None:
    return training.queue_position if isinstance(training, TrainingRecord) else positions.get(training.id)


def webhook_data(session: Session, training: Training, *, public_url: str | None) -> dict[str, Any]:
    """The `data` of a training.* event: the API's representation as JSON (dates end in Z)."""
    (view,) = present(session, [training], public_url=public_url, links=None)
    return view.model_dump(mode="json")


def _view(
    training: Training | TrainingRecord,
    artifacts: list[Artifact],
    queue_position: int | None,
    public_url: str | None,
    links: ArtifactLinks | None,
) -> schemas.Training:
    state = schemas.TrainingState.model_validate(training)
    artifact_views = [_artifact_view(artifact, links) for artifact in artifacts]
    return schemas.Training.model_validate(
        {
            **dict(state),
            "queue_position": queue_position,
            "artifacts": artifact_views,
            "previews": _linked_previews(state.previews, artifact_views),
            "urls": training_urls(training, public_url),
        }
    )


def _linked_previews(previews: schemas.Previews | None, artifacts: list[schemas.Artifact]) -> schemas.Previews | None:
    """The previews with their pictures' artifact URLs (the same presigned links, or null as theirs are)."""
    if previews is None:
        return None
    by_name = {artifact.name: artifact for artifact in artifacts}

    def linked(image: schemas.PreviewImage) -> schemas.PreviewImage:
        found = by_name.get(image.name)
        return image.model_copy(update={"url": found.url, "expires_at": found.expires_at}) if found else image

    return previews.model_copy(
        update={
            "grid": linked(previews.grid) if previews.grid else None,
            "images": [linked(image) for image in previews.images],
        }
    )


def _artifact_view(artifact: Artifact, links: ArtifactLinks | None) -> schemas.Artifact:
    url, expires_at = links.link(artifact) if links is not None else (None, None)
    return schemas.Artifact(
        name=artifact.name,
        kind=artifact.kind,
        bytes=artifact.bytes,
        sha256=artifact.sha256,
        url=url,
        expires_at=expires_at,
    )
