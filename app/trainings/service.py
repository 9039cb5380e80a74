"""The rules of the trainings API: submit, read, list, cancel. Takes a session, never commits."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from app.db import on_rollback
from app.errors import IdempotencyKeyReused, NotFound, RateLimited, ServiceUnavailable, ValidationFailed
from app.orm import Artifact, Tenant, Training
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.settings import Settings
from app.storage import Storage, StorageError
from app.tenants import service as tenants
from app.tenants.service import Principal
from app.trainings import events, repository, schemas, uploads
from app.usage import service as usage
from app.webhooks import service as webhooks
from models.registry import Registry
from models.trainer.config import TrainConfig
from models.trainer.defaults import with_defaults
from models.trainer.errors import InvalidConfigError

RUN_TASK = "trainings.run"
MAX_PAGE_SIZE = 100


@dataclass(frozen=True)
class ArtifactLinks:
    """Makes the presigned download URLs of artifacts."""

    storage: Storage
    ttl: timedelta
    base_url: str

    def link(self, artifact: Artifact) -> tuple[str, datetime]:
        expires_at = utcnow() + self.ttl
        url = self.storage.presign_get(
            artifact.key, filename=artifact.name, expires_in=self.ttl, base_url=self.base_url
        )
        return url, expires_at


def inputs_prefix(training_id: uuid.UUID) -> str:
    return f"trainings/{training_id}/inputs"


def artifacts_prefix(training_id: uuid.UUID) -> str:
    return f"trainings/{training_id}/artifacts"


def training_prefix(training_id: uuid.UUID) -> str:
    return f"trainings/{training_id}"


def default_token(training_id: uuid.UUID) -> str:
    """A training's token when the caller gives none: stable, and its own, so that its files
    (named after the token) do not overwrite another training's in A1111's or ComfyUI's folders."""
    return f"<leap-{training_id.hex[:8]}>"


def _parse_form(fields: dict[str, str], registry: Registry, settings: Settings) -> schemas.TrainingForm:
    try:
        form = schemas.TrainingForm.model_validate(fields)
    except ValidationError as error:
        problems = [
            {"field": ".".join(str(part) for part in item["loc"]) or "form", "message": item["msg"]}
            for item in error.errors()
        ]
        first = problems[0]
        raise ValidationFailed(f"{first['field']}: {first['message']}", details={"errors": problems}) from error
    if form.base_model is not None and registry.get(form.base_model) is None:
        known = ", ".join(sorted(registry.models))
        raise ValidationFailed(
            f"base_model: unknown model {form.base_model!r}; this server trains {known}",
            details={"field": "base_model"},
        )
    for name in ("steps", "max_steps"):
        value = getattr(form, name)
        if value is not None and value > settings.max_steps:
            raise ValidationFailed(f"{name}: at most {settings.max_steps} on this server", details={"field": name})
    if form.webhook_url is not None:
        webhooks.check_url(form.webhook_url, settings)
    if form.metadata is not None and len(json.dumps(form.metadata)) > settings.max_metadata_bytes:
        raise ValidationFailed(f"metadata: over {settings.max_metadata_bytes} bytes", details={"field": "metadata"})
    return form


def build_config(
    *, base_model: str, token: str, mode: str, init: str, parameters: dict[str, Any], registry: Registry
) -> TrainConfig:
    """The trainer's config: the registered model's folder and the caller's choices; the trainer
    fills what is unset from the model's registered defaults."""
    entry = registry.get(base_model)
    if entry is None:
        raise InvalidConfigError("base_model", f"{base_model!r} is not registered on this server")
    config = TrainConfig(
        base_model=entry.path,
        base_model_name=base_model,
        token=token,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        **parameters,
    )
    config.validate()
    return config


def _fingerprint(fields: dict[str, str], image_hashes: list[str]) -> str:
    canonical = json.dumps({"fields": sorted(fields.items()), "images": image_hashes}, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key: must be 1-255 printable characters", details={"field": "Idempotency-Key"}
        )
    return key


def _replay(existing: Training, fingerprint: str) -> Training:
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused(
            "Idempotency-Key was already used for a different request (other images or fields)",
            details={"training_id": str(existing.id)},
        )
    return existing


def create_training(
    session: Session,
    *,
    principal: Principal,
    submission: uploads.Submission,
    idempotency_key: str | None,
    settings: Settings,
    storage: Storage,
    registry: Registry,
) -> tuple[Training, bool]:
    """Validate everything, store the inputs, write the row and its outbox message.

    Returns (training, created); created is False when an Idempotency-Key replayed an earlier request.
    """
    idempotency_key = _check_idempotency_key(idempotency_key)
    form = _parse_form(submission.fields, registry, settings)
    sources = uploads.collect_images(submission.files, settings)
    hashes = [hashlib.sha256(source.data).hexdigest() for source in sources]
    fingerprint = _fingerprint(submission.fields, hashes)
    if idempotency_key is not None:
        existing = repository.find_by_idempotency_key(session, tenant_id=principal.tenant_id, key=idempotency_key)
        if existing is not None:
            return _replay(existing, fingerprint), False

    base_model_id = form.base_model or registry.default_id
    parameters = form.hyperparameters()
    tenant = _check_concurrency(session, principal=principal, settings=settings)
    training_id = uuid.uuid4()
    token = form.token or default_token(training_id)
    try:
        config = build_config(
            base_model=base_model_id,
            token=token,
            mode=form.mode,
            init=form.init,
            parameters=parameters,
            registry=registry,
        )
    except InvalidConfigError as error:
        raise ValidationFailed(str(error), details={"field": error.field}) from error
    uploads.validate_images(sources, settings)
    filled = with_defaults(config, registry)
    estimated_units = usage.estimate_units(
        settings,
        mode=form.mode,
        base_model=base_model_id,
        steps=filled.steps or filled.max_steps or 0,  # a training that stops when done: its cap
        images=len(sources),
    )
    usage.check_quota(
        session, tenant_id=principal.tenant_id, monthly_unit_limit=tenant.monthly_unit_limit, estimated=estimated_units
    )

    # Registered before the first write so a failure part-way through leaves nothing behind.
    def delete_inputs() -> None:
        storage.delete_prefix(inputs_prefix(training_id))

    on_rollback(session, delete_inputs)
    inputs = []
    for index, (source, digest) in enumerate(zip(sources, hashes, strict=True)):
        key = f"{inputs_prefix(training_id)}/{uploads.storage_name(index, source.name)}"
        try:
            storage.put_bytes(key, source.data)
        except StorageError as error:
            raise ServiceUnavailable("storage is unavailable; retry later") from error
        inputs.append(
            {
                "name": source.name,
                "key": key,
                "bytes": len(source.data),
                "sha256": digest,
            }
        )

    now = utcnow()
    created = repository.insert_training(
        session,
        {
            "id": training_id,
            "tenant_id": principal.tenant_id,
            "status": "queued",
            "idempotency_key": idempotency_key,
            "request_fingerprint": fingerprint,
            "base_model": base_model_id,
            "mode": form.mode,
            "init": form.init,
            "token": token,
            "parameters": parameters,
            "webhook_url": form.webhook_url,
            "metadata_": form.metadata or {},
            "inputs": inputs,
            "image_count": len(inputs),
            "progress_step": 0,
            "attempts": 0,
            "created_at": now,
            "estimated_units": estimated_units,
        },
    )
    if not created:
        # A concurrent request with the same Idempotency-Key won the race.
        storage.delete_prefix(inputs_prefix(training_id))
        existing = repository.find_by_idempotency_key(session, tenant_id=principal.tenant_id, key=idempotency_key or "")
        if existing is None:  # pragma: no cover - the conflicting row always exists
            raise RuntimeError("idempotency conflict without a row")
        return _replay(existing, fingerprint), False
    outbox.enqueue(session, task=RUN_TASK, args=[str(training_id)], queue=settings.queue)
    events.queued(session, training_id=training_id, settings=settings)
    training = repository.get(session, training_id)
    assert training is not None
    return training, True


def _check_concurrency(session: Session, *, principal: Principal, settings: Settings) -> Tenant:
    """429 when the tenant already has its limit of queued + running trainings.

    The tenant row is locked for the rest of the transaction so that concurrent submissions
    are counted one after another."""
    tenant = tenants.lock_tenant(session, principal.tenant_id)
    limit = tenant.max_concurrent_trainings
    if limit is None:
        limit = settings.max_concurrent_trainings
    active = repository.count_active(session, tenant_id=principal.tenant_id)
    if active >= limit:
        raise RateLimited(
            f"this tenant already has {active} queued or running trainings (limit {limit}); retry once one finishes",
            retry_after_seconds=int(settings.concurrency_retry_after.total_seconds()),
            details={"active_trainings": active, "limit": limit},
        )
    return tenant


def _parse_id(training_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(training_id)
    except ValueError as error:
        raise NotFound(f"training {training_id} not found") from error


def get_training(session: Session, *, principal: Principal, training_id: str) -> Training:
    """One of the caller's trainings; another tenant's id is simply not found."""
    training = repository.get_for_tenant(session, tenant_id=principal.tenant_id, training_id=_parse_id(training_id))
    if training is None:
        raise NotFound(f"training {training_id} not found")
    return training


def _encode_cursor(training: Training) -> str:
    raw = json.dumps([training.created_at.isoformat(), str(training.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, training_id = json.loads(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(training_id)
    except (ValueError, TypeError) as error:
        raise ValidationFailed("cursor: not a cursor returned by this API", details={"field": "cursor"}) from error


def list_trainings(
    session: Session, *, principal: Principal, status: str | None, cursor: str | None, limit: int
) -> tuple[list[Training], str | None]:
    """The caller's trainings, newest first, one page at a time."""
    before = _decode_cursor(cursor) if cursor else None
    rows = repository.list_for_tenant(
        session, tenant_id=principal.tenant_id, status=status, before=before, limit=limit + 1
    )
    page = rows[:limit]
    return page, (_encode_cursor(page[-1]) if len(rows) > limit else None)


def cancel_training(session: Session, *, principal: Principal, training_id: str, settings: Settings) -> Training:
    """Cancel a queued training now, or ask the worker to stop a running one; idempotent."""
    training = get_training(session, principal=principal, training_id=training_id)
    now = utcnow()
    if repository.cancel_if_queued(session, training_id=training.id, now=now):
        events.finished(session, training_id=training.id, settings=settings)
    else:
        repository.request_cancel_if_running(session, training_id=training.id, now=now)
    refreshed = repository.get(session, training.id)
    assert refreshed is not None
    return refreshed


def present(session: Session, trainings: list[Training], *, links: ArtifactLinks) -> list[schemas.Training]:
    """API views of trainings, with presigned artifact URLs."""
    # Only succeeded trainings have artifacts: polls of queued or running ones skip the query.
    artifacts = repository.artifacts_for(session, [item.id for item in trainings if item.status == "succeeded"])
    return [_view(training, artifacts.get(training.id, []), links) for training in trainings]


def _view(training: Training, artifacts: list[Artifact], links: ArtifactLinks) -> schemas.Training:
    error = None
    if training.status in ("failed", "canceled") and training.error_code:
        error = schemas.TrainingError(code=training.error_code, message=training.error_message or "")
    usage = None
    if training.usage_steps is not None:
        usage = schemas.Usage(
            steps=training.usage_steps,
            compute_seconds=training.usage_compute_seconds or 0.0,
            device=training.usage_device or "",
        )
    artifact_views = []
    for artifact in artifacts:
        url, expires_at = links.link(artifact)
        artifact_views.append(
            schemas.Artifact(
                name=artifact.name,
                kind=artifact.kind,
                bytes=artifact.bytes,
                sha256=artifact.sha256,
                url=url,
                expires_at=expires_at,
            )
        )
    return schemas.Training(
        id=str(training.id),
        status=training.status,  # type: ignore[arg-type]
        base_model=training.base_model,
        mode=training.mode,
        init=training.init,
        init_used=training.init_used,
        init_note=training.init_note,
        init_scores=training.init_scores,
        stop_reason=training.stop_reason,  # type: ignore[arg-type]
        eval_curve=[schemas.EvalPoint(step=int(step), loss=loss) for step, loss in training.eval_curve]
        if training.eval_curve
        else None,
        token=training.token,
        parameters=training.parameters,
        image_count=training.image_count,
        estimated_units=training.estimated_units,
        progress=schemas.Progress(
            step=training.progress_step,
            total=training.progress_total,
            loss=training.progress_loss,
            eta_s=training.progress_eta_s,
        ),
        error=error,
        usage=usage,
        artifacts=artifact_views,
        attempts=training.attempts,
        webhook_url=training.webhook_url,
        metadata=training.metadata_,
        created_at=training.created_at,
        started_at=training.started_at,
        finished_at=training.finished_at,
        cancel_requested_at=training.cancel_requested_at,
        artifacts_expired_at=training.artifacts_expired_at,
    )
