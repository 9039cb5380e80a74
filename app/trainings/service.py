"""The rules of the trainings API: submit, read, list, cancel. Takes a session, never commits."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import PurePosixPath
from typing import Any

import anyio
import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy.orm import Session

from app import task_names
from app.db import Database, on_rollback, read_in_thread, unit_of_work
from app.enums import TrainingStatus
from app.errors import (
    IdempotencyKeyReused,
    NotFound,
    RateLimited,
    ServiceUnavailable,
    ValidationFailed,
    plain_message,
)
from app.ids import id_or_404
from app.orm import Tenant, Training
from app.orm.base import utcnow
from app.orm.training import TrainingRecord
from app.outbox import service as outbox
from app.pagination import decode_cursor, encode_cursor
from app.settings import Settings
from app.storage import Storage, StorageError
from app.tenants import service as tenants
from app.tenants.service import Principal
from app.trainings import (
    captions,
    events,
    fetch,
    jobs,
    logs,
    presenter,
    repository,
    schemas,
    text_uploads,
    uploads,
)
from app.trainings.download_slots import DownloadSlots, Slot, slot_ttl_seconds
from app.trainings.presenter import ArtifactLinks
from app.usage import service as usage
from app.webhooks import service as webhooks
from models.enums import IMAGE_MODES, TEXT_MODES, Kind, Mode
from models.registry import RegisteredModel, Registry
from models.text.config import TextTrainConfig
from models.text.config import with_defaults as text_with_defaults
from models.trainer.defaults import with_defaults
from models.trainer.errors import InvalidConfigError

MAX_PAGE_SIZE = 100


TEXT_TOKEN = "<leap>"
"""A text training's token when the caller gives none: its examples write it."""


def default_token(training_id: uuid.UUID) -> str:
    """A training's token when the caller gives none: stable, and its own, so that its files
    (named after the token) do not overwrite another training's in A1111's or ComfyUI's folders."""
    return f"<leap-{training_id.hex[:8]}>"


def _parse_form(fields: dict[str, str], registry: Registry, settings: Settings) -> schemas.TrainingForm:
    try:
        form = schemas.TrainingForm.model_validate(fields)
    except ValidationError as error:
        problems = [
            {
                "field": ".".join(str(part) for part in item["loc"]) or "form",
                "message": _form_message(item, fields, registry),
            }
            for item in error.errors()
        ]
        first = problems[0]
        raise ValidationFailed(
            f"{first['field']}: {first['message']}", details={"field": first["field"], "errors": problems}
        ) from error
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


def _form_message(item: Any, fields: dict[str, str], registry: Registry) -> str:
    """A form field's problem as the caller should read it: without pydantic's prefix, and for an
    unknown mode, the modes of the chosen base model's kind only (token is not an image mode)."""
    if tuple(item["loc"]) == ("mode",) and item["type"] == "enum":
        model = registry.get(fields.get("base_model") or registry.default_id)
        if model is not None:
            return f"{fields.get('mode')!r} is not a mode of {model.id}; use {', '.join(_modes(model.kind))}"
    return plain_message(item["msg"])


def _modes(kind: str) -> tuple[Mode, ...]:
    return TEXT_MODES if kind == Kind.TEXT else IMAGE_MODES


def _check_kind_fields(form: schemas.TrainingForm, model: RegisteredModel) -> None:
    """422 naming the field when it belongs to the other kind: a mode such as token for an image
    model, a text-only option (max_length, lora_targets) for an image model, an image-only one (none
    today) for a text model."""
    modes = _modes(model.kind)
    if form.mode not in modes:
        raise ValidationFailed(
            f"mode: {form.mode.value!r} is not a mode of {model.id}, a {model.kind} model; use {', '.join(modes)}",
            details={"field": "mode", "kind": model.kind, "modes": list(modes)},
        )
    other_fields: tuple[str, ...]
    if model.kind == Kind.TEXT:
        other_fields, message = schemas.IMAGE_ONLY_FIELDS, "only for image models; {model} is a text model"
    else:
        other_fields, message = schemas.TEXT_ONLY_FIELDS, "only for text models; {model} is an image model"
    for name in other_fields:
        if getattr(form, name) is not None:
            raise ValidationFailed(
                f"{name}: " + message.format(model=model.id), details={"field": name, "kind": model.kind}
            )


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


@dataclass(frozen=True)
class _Inputs:
    """A submission's checked inputs: decoded images (image model) or text files and their examples'
    count (text model), and the SHA-256 of each, which the request's fingerprint covers."""

    collected: uploads.CollectedImages | None
    text_files: list[tuple[str, bytes]]
    example_count: int | None
    hashes: list[str]
    captions: list[str | None] = dataclass_field(default_factory=list)
    """An image training's caption of each image (None: the preset's templates)."""

    @property
    def image_count(self) -> int:
        return len(self.collected.images) if self.collected is not None else 0


def create_training(
    session: Session,
    *,
    principal: Principal,
    submission: uploads.Submission,
    idempotency_key: str | None,
    settings: Settings,
    storage: Storage,
    registry: Registry,
    api_base_url: str | None = None,
) -> tuple[Training, bool]:
    """Validate everything, store the inputs, write the row and its outbox message. api_base_url is
    the API's address as the client reached it: the base of the links in the training's webhooks.

    The base model's kind decides the inputs: images (stored as clean copies) for an image model,
    .txt files or one .jsonl (stored as uploaded) for a text model. Returns (training, created);
    created is False when an Idempotency-Key replayed an earlier request.
    """
    idempotency_key = _check_idempotency_key(idempotency_key)
    form = _parse_form(submission.fields, registry, settings)
    model = registry.get(form.base_model or registry.default_id)
    assert model is not None  # _parse_form refused unknown ids
    _check_kind_fields(form, model)
    inputs = _collect_inputs(submission, model, form, settings)
    fingerprint = _fingerprint(submission.fields, inputs.hashes)
    replayed = _replay_if_known(session, principal, idempotency_key, fingerprint)
    if replayed is not None:
        return replayed, False

    training_id = uuid.uuid4()
    # Text examples spell the concept's token themselves, so a text training keeps the documented <leap>.
    token = form.token or (TEXT_TOKEN if model.kind == Kind.TEXT else default_token(training_id))
    problem = jobs.preview_prompt_problem(form.preview_prompts, token)
    if problem is not None:
        raise ValidationFailed(f"preview_prompts: {problem}", details={"field": "preview_prompts"})
    steps = _planned_steps(base_model=model.id, token=token, form=form, kind=model.kind, registry=registry)
    estimated_units = _estimate(settings, form, model, steps, inputs)
    stored = _store(session, training_id, submission, inputs, storage, settings, min_side=model.smallest_image_side)
    # The tenant's row is locked only now, for the few statements left: submissions of one tenant
    # queue behind each other for milliseconds, not for each other's decoding and uploads.
    _check_limits(session, principal=principal, settings=settings, estimated_units=estimated_units, lock=True)

    values = _row_values(
        training_id=training_id,
        principal=principal,
        idempotency_key=idempotency_key,
        fingerprint=fingerprint,
        model=model,
        form=form,
        token=token,
        inputs=inputs,
        stored=stored,
        steps=steps,
        estimated_units=estimated_units,
        api_base_url=api_base_url,
    )
    raced = _insert_or_replay(session, values, principal=principal, fingerprint=fingerprint, storage=storage)
    if raced is not None:
        return raced, False
    training = repository.get(session, training_id)
    assert training is not None
    _enqueue(session, training, settings)
    return training, True


def refuse_at_limits(
    session: Session,
    *,
    principal: Principal,
    idempotency_key: str | None,
    settings: Settings,
    downloads: DownloadSlots | None = None,
) -> bool:
    """429 or 402 for a tenant already at its limits, before a submission's inputs are downloaded,
    decoded or stored (create_training checks the job's own estimate under the lock once they are
    known); the tenant's submissions still downloading count as trainings. A request whose
    Idempotency-Key is known goes on, to be replayed or refused with 409: returns True for it."""
    key = _check_idempotency_key(idempotency_key)
    if key is not None and repository.find_by_idempotency_key(session, tenant_id=principal.tenant_id, key=key):
        return True
    downloading = downloads.count(str(principal.tenant_id)) if downloads is not None else 0
    _check_limits(
        session, principal=principal, settings=settings, estimated_units=0, lock=False, downloading=downloading
    )
    return False


@dataclass(frozen=True)
class _Admission:
    kind: str
    slot: Slot | None


def _admit(
    session: Session,
    *,
    principal: Principal,
    submission: uploads.Submission,
    idempotency_key: str | None,
    settings: Settings,
    registry: Registry,
    downloads: DownloadSlots,
) -> _Admission:
    """Check the form and the tenant's limits before anything is downloaded; a submission with
    input URLs takes one of the tenant's download slots (429 when its trainings and downloads fill
    its concurrency limit)."""
    form = _parse_form(submission.fields, registry, settings)
    model = registry.get(form.base_model or registry.default_id)
    assert model is not None  # _parse_form refused unknown ids
    _check_kind_fields(form, model)
    field = fetch.url_field(submission, kind=model.kind)
    replay = refuse_at_limits(
        session, principal=principal, idempotency_key=idempotency_key, settings=settings, downloads=downloads
    )
    if field is None or replay:
        return _Admission(kind=model.kind, slot=None)
    tenant_id = str(principal.tenant_id)
    _, active, limit = _concurrency(session, principal=principal, settings=settings, lock=False)
    slot = downloads.acquire(tenant_id, room=limit - active, ttl_seconds=slot_ttl_seconds(settings))
    if slot is None:
        _refuse_concurrency(active, downloads.count(tenant_id), limit, settings)
    return _Admission(kind=model.kind, slot=slot)


async def submit_training(
    database: Database,
    *,
    principal: Principal,
    submission: uploads.Submission,
    idempotency_key: str | None,
    settings: Settings,
    storage: Storage,
    registry: Registry,
    links: ArtifactLinks,
    downloads: DownloadSlots,
) -> tuple[schemas.Training, bool]:
    """A submission from the API: checked against the tenant's limits, its input URLs downloaded
    on the event loop (holding a download slot), then create_training in one unit of work on a
    worker thread, commit included. Returns (training view, created)."""

    def admit(session: Session) -> _Admission:
        return _admit(
            session,
            principal=principal,
            submission=submission,
            idempotency_key=idempotency_key,
            settings=settings,
            registry=registry,
            downloads=downloads,
        )

    def create() -> tuple[schemas.Training, bool]:
        # The tenant's row lock is taken and released within this one thread call, never held
        # across a hop back to the event loop (which serialised one tenant's submissions under load).
        with unit_of_work(database.session_factory) as session:
            training, created = create_training(
                session,
                principal=principal,
                submission=submission,
                idempotency_key=idempotency_key,
                settings=settings,
                storage=storage,
                registry=registry,
                api_base_url=links.public_url,
            )
            return present(session, [training], links=links)[0], created

    # On a read connection: no transaction is held open while the inputs download and decode.
    admission = await read_in_thread(database, admit)
    try:
        await fetch.download_inputs(submission, kind=admission.kind, settings=settings)
        return await anyio.to_thread.run_sync(create)
    finally:
        if admission.slot is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(downloads.release, admission.slot)


def _url_field(submission: uploads.Submission) -> str | None:
    """images_url or examples_url when the inputs were given by URL (refusals name it)."""
    return next(iter(submission.urls), None)


def _collect_inputs(
    submission: uploads.Submission, model: RegisteredModel, form: schemas.TrainingForm, settings: Settings
) -> _Inputs:
    """Download inputs given by URL, then check them exactly as uploaded files are (the fingerprint
    covers their bytes, not the URLs: a fresh presigned URL is the same request)."""
    fetch.fetch_inputs(submission, kind=model.kind, settings=settings)
    if model.kind == Kind.TEXT:
        with fetch.naming(_url_field(submission)):
            text_files, examples = text_uploads.collect_examples(
                submission.files, submission.examples, model=model, token=form.token or TEXT_TOKEN, settings=settings
            )
        hashes = [hashlib.sha256(data).hexdigest() for _, data in text_files]
        return _Inputs(collected=None, text_files=text_files, example_count=len(examples), hashes=hashes)
    url_field = _url_field(submission)
    text_uploads.refuse_text_for_image_model(
        submission.files, submission.examples, model, field=url_field or uploads.IMAGES_FIELD
    )
    with fetch.naming(url_field):
        collected = uploads.collect_images(submission.files, settings, field=url_field or uploads.IMAGES_FIELD)
        hashes = [image.sha256() for image in collected.images]
    names = [image.name for image in collected.images]
    image_captions = captions.captions_for_images(names, collected.captions, form.captions)
    if any(image_captions):  # the fingerprint covers caption files as it covers images
        hashes.append(hashlib.sha256(json.dumps(image_captions).encode()).hexdigest())
    return _Inputs(collected=collected, text_files=[], example_count=None, hashes=hashes, captions=image_captions)


def _replay_if_known(
    session: Session, principal: Principal, idempotency_key: str | None, fingerprint: str
) -> Training | None:
    """The training an earlier request with this Idempotency-Key created (409 if it was another request)."""
    if idempotency_key is None:
        return None
    existing = repository.find_by_idempotency_key(session, tenant_id=principal.tenant_id, key=idempotency_key)
    return _replay(existing, fingerprint) if existing is not None else None


def _estimate(
    settings: Settings, form: schemas.TrainingForm, model: RegisteredModel, steps: int, inputs: _Inputs
) -> int:
    """Billable units of the training if it runs all its planned steps."""
    return usage.estimate_units(
        settings,
        mode=form.mode,
        base_model=model.id,
        steps=steps,
        images=inputs.image_count,
        kind=model.kind,
        examples=inputs.example_count or 0,
    )


def _store(
    session: Session,
    training_id: uuid.UUID,
    submission: uploads.Submission,
    inputs: _Inputs,
    storage: Storage,
    settings: Settings,
    *,
    min_side: int,
) -> list[dict[str, Any]]:
    """Store the inputs (clean copies of images, text files as uploaded) with the URL each came from;
    images below the base model's `min_side` are refused before anything is stored."""
    if inputs.collected is not None:
        copies_of = uploads.clean_copies(inputs.collected.images, settings, min_side=min_side)
        with fetch.naming(_url_field(submission)), copies_of as copies:
            stored = _store_inputs(session, training_id=training_id, copies=copies, storage=storage)
    else:
        stored = _store_text_inputs(
            session, training_id=training_id, files=inputs.text_files, hashes=inputs.hashes, storage=storage
        )
    _record_sources(stored, fetch.source_urls(submission))
    for item, caption in zip(stored, inputs.captions, strict=False):
        if caption:
            item["caption"] = caption
    return stored


def _row_values(
    *,
    training_id: uuid.UUID,
    principal: Principal,
    idempotency_key: str | None,
    fingerprint: str,
    model: RegisteredModel,
    form: schemas.TrainingForm,
    token: str,
    inputs: _Inputs,
    stored: list[dict[str, Any]],
    steps: int,
    estimated_units: int,
    api_base_url: str | None,
) -> dict[str, Any]:
    """The new row: queued, with the caller's choices and its stored inputs."""
    return {
        "id": training_id,
        "tenant_id": principal.tenant_id,
        "status": TrainingStatus.QUEUED,
        "idempotency_key": idempotency_key,
        "request_fingerprint": fingerprint,
        "base_model": model.id,
        "kind": model.kind,
        "mode": form.mode,
        "init": form.init,
        "token": token,
        "parameters": form.hyperparameters(),
        "priority": form.priority or 0,
        "caption_count": sum(1 for caption in inputs.captions if caption),
        "webhook_url": form.webhook_url,
        "webhook_events_filter": form.webhook_events_filter,
        "metadata_": form.metadata or {},
        "api_base_url": api_base_url,
        "inputs": stored,
        "skipped_files": inputs.collected.skipped if inputs.collected is not None else [],
        "image_count": inputs.image_count,
        "example_count": inputs.example_count,
        "progress_step": 0,
        "progress_total": steps or None,  # shown while queued; the worker writes the same number
        "attempts": 0,
        "created_at": utcnow(),
        "estimated_units": estimated_units,
    }


def _insert_or_replay(
    session: Session, values: dict[str, Any], *, principal: Principal, fingerprint: str, storage: Storage
) -> Training | None:
    """Insert the row; None when it was written. When a concurrent request with the same
    Idempotency-Key won the race, delete these inputs and return that request's training."""
    if repository.insert_training(session, values):
        return None
    storage.delete_prefix(jobs.inputs_prefix(values["id"]))
    key = values["idempotency_key"] or ""
    existing = repository.find_by_idempotency_key(session, tenant_id=principal.tenant_id, key=key)
    if existing is None:  # pragma: no cover - the conflicting row always exists
        raise RuntimeError("idempotency conflict without a row")
    return _replay(existing, fingerprint)


def _enqueue(session: Session, training: Training, settings: Settings) -> None:
    """Its run message (sent after commit) and its training.queued event."""
    outbox.enqueue(
        session,
        task=task_names.RUN_TRAINING,
        args=[str(training.id)],
        queue=settings.queue,
        priority=jobs.NEW_PRIORITY,
    )
    events.queued(session, training, settings=settings)


def _planned_steps(*, base_model: str, token: str, form: schemas.TrainingForm, kind: str, registry: Registry) -> int:
    """The steps the training will run (the caller's, else the model's default); 422 on a bad config."""
    try:
        config = jobs.job_config(
            kind=kind,
            base_model=base_model,
            token=token,
            mode=form.mode,
            init=form.init,
            parameters=form.hyperparameters(),
            registry=registry,
        )
        filled = (
            text_with_defaults(config, registry)
            if isinstance(config, TextTrainConfig)
            else with_defaults(config, registry)
        )
        return filled.steps or filled.max_steps or 0  # a training that stops when done: its cap
    except InvalidConfigError as error:
        raise ValidationFailed(str(error), details={"field": error.field}) from error


def _record_sources(inputs: list[dict[str, Any]], urls: list[str]) -> None:
    """Note the URL each input came from (one per input, or one zip's for all of them)."""
    if not urls:
        return
    for index, item in enumerate(inputs):
        item["source_url"] = urls[index] if len(urls) == len(inputs) else urls[0]


def _delete_inputs_on_rollback(session: Session, *, training_id: uuid.UUID, storage: Storage) -> None:
    # Registered before the first write so a failure part-way through leaves nothing behind (a
    # process killed here leaves the prefix to the sweeper's orphan clean-up).
    def delete_inputs() -> None:
        storage.delete_prefix(jobs.inputs_prefix(training_id))

    on_rollback(session, delete_inputs)


def _store_text_inputs(
    session: Session, *, training_id: uuid.UUID, files: list[tuple[str, bytes]], hashes: list[str], storage: Storage
) -> list[dict[str, Any]]:
    """Store a text training's example files as uploaded; a rollback deletes them."""
    _delete_inputs_on_rollback(session, training_id=training_id, storage=storage)
    inputs = []
    for index, ((name, data), digest) in enumerate(zip(files, hashes, strict=True)):
        suffix = PurePosixPath(name).suffix.lower()
        key = f"{jobs.inputs_prefix(training_id)}/{uploads.storage_name(index, name, suffix)}"
        try:
            storage.put_bytes(key, data)
        except StorageError as error:
            raise ServiceUnavailable("storage is unavailable; retry later") from error
        inputs.append({"name": name, "key": key, "bytes": len(data), "sha256": digest})
    return inputs


def _store_inputs(
    session: Session, *, training_id: uuid.UUID, copies: list[uploads.CleanCopy], storage: Storage
) -> list[dict[str, Any]]:
    """Store the clean copies under the training's inputs prefix; a rollback deletes them."""
    _delete_inputs_on_rollback(session, training_id=training_id, storage=storage)
    inputs = []
    for index, copy in enumerate(copies):
        key = f"{jobs.inputs_prefix(training_id)}/{uploads.storage_name(index, copy.name)}"
        try:
            storage.put_file(key, copy.path, content_type="image/png")
        except StorageError as error:
            raise ServiceUnavailable("storage is unavailable; retry later") from error
        inputs.append({"name": copy.name, "key": key, "bytes": copy.bytes, "sha256": copy.sha256})
    return inputs


def _concurrency(session: Session, *, principal: Principal, settings: Settings, lock: bool) -> tuple[Tenant, int, int]:
    """(tenant, queued + running trainings, its limit). With lock=True the tenant row is locked
    for the rest of the transaction, so concurrent submissions are counted one after another."""
    if lock:
        tenant = tenants.lock_tenant(session, principal.tenant_id)
    else:
        tenant = tenants.get_tenant(session, principal.tenant_id)
    limit = tenant.max_concurrent_trainings
    if limit is None:
        limit = settings.max_concurrent_trainings
    return tenant, repository.count_active(session, tenant_id=principal.tenant_id), limit


def _refuse_concurrency(active: int, downloading: int, limit: int, settings: Settings) -> None:
    busy = f"{active} queued or running trainings" + (
        f" and {downloading} submissions downloading their inputs" if downloading else ""
    )
    raise RateLimited(
        f"this tenant already has {busy} (limit {limit}); retry once one finishes",
        retry_after_seconds=int(settings.concurrency_retry_after.total_seconds()),
        details={"active_trainings": active, "limit": limit} | ({"downloading": downloading} if downloading else {}),
    )


def _check_limits(
    session: Session,
    *,
    principal: Principal,
    settings: Settings,
    estimated_units: int,
    lock: bool,
    downloading: int = 0,
) -> None:
    """429 when the tenant already has its limit of queued + running trainings (and `downloading`
    submissions), 402 when the estimate would pass its monthly quota."""
    tenant, active, limit = _concurrency(session, principal=principal, settings=settings, lock=lock)
    if active + downloading >= limit:
        _refuse_concurrency(active, downloading, limit, settings)
    usage.check_quota(
        session, tenant_id=principal.tenant_id, monthly_unit_limit=tenant.monthly_unit_limit, estimated=estimated_units
    )


def get_training(session: Session, *, principal: Principal, training_id: str) -> Training:
    """One of the caller's trainings; another tenant's id is simply not found."""
    training = repository.get_for_tenant(
        session, tenant_id=principal.tenant_id, training_id=id_or_404(training_id, "training")
    )
    if training is None:
        raise NotFound(f"training {training_id} not found")
    return training


async def poll_training(
    database: Database, *, principal: Principal, training_id: str, links: ArtifactLinks
) -> schemas.Training:
    """get_training and present for a poll: the row and its queue position in one query, without
    the ORM, read from the event loop; a succeeded training's artifacts take one more query."""
    record = await repository.read_record(
        database, tenant_id=principal.tenant_id, training_id=id_or_404(training_id, "training")
    )
    if record is None:
        raise NotFound(f"training {training_id} not found")
    if record.status == TrainingStatus.SUCCEEDED:
        return await read_in_thread(database, lambda session: present(session, [record], links=links)[0])
    return presenter.record_view(record, public_url=links.public_url, links=links)


def list_trainings(
    session: Session, *, principal: Principal, status: str | None, cursor: str | None, limit: int
) -> tuple[list[TrainingRecord], str | None]:
    """The caller's trainings, newest first, one page at a time."""
    before = decode_cursor(cursor) if cursor else None
    rows = repository.records_for_tenant(
        session, tenant_id=principal.tenant_id, status=status, before=before, limit=limit + 1
    )
    page = rows[:limit]
    return page, (encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None)


def cancel_training(session: Session, *, principal: Principal, training_id: str, settings: Settings) -> Training:
    """Cancel a queued training now, or ask the worker to stop a running one; idempotent."""
    training = get_training(session, principal=principal, training_id=training_id)
    now = utcnow()
    if repository.cancel_if_queued(session, training_id=training.id, now=now):
        events.finished(session, training_id=training.id, settings=settings)
        logs.status_changed(
            session,
            training_id=training.id,
            status=TrainingStatus.CANCELED,
            settings=settings,
            lines=[logs.warning("canceled before it started")],
        )
    elif repository.request_cancel_if_running(session, training_id=training.id, now=now):
        logs.append(
            session,
            training_id=training.id,
            lines=[logs.warning("cancel requested; the worker stops at its next step")],
            settings=settings,
        )
    refreshed = repository.get(session, training.id)
    assert refreshed is not None
    return refreshed


def training_logs(
    session: Session, *, principal: Principal, training_id: str, after: int, limit: int
) -> schemas.TrainingLogPage:
    """One page of a training's log lines after seq `after`; another tenant's training is not found."""
    training = get_training(session, principal=principal, training_id=training_id)
    rows = logs.page(session, training_id=training.id, after=after, limit=limit)
    return schemas.TrainingLogPage(
        data=[
            schemas.TrainingLogLine(seq=row.seq, at=row.created_at, level=row.level, message=row.message)  # type: ignore[arg-type]
            for row in rows
        ],
        next_after=rows[-1].seq if rows else after,
    )


def present(
    session: Session, trainings: Sequence[Training | TrainingRecord], *, links: ArtifactLinks
) -> list[schemas.Training]:
    """API views of trainings, with presigned artifact URLs (presenter.present: webhooks use it too)."""
    return presenter.present(session, trainings, public_url=links.public_url, links=links)
