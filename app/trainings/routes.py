"""Trainings endpoints: thin wrappers over app.trainings.service."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.db import read_in_thread
from app.deps import ArtifactLinksDep, RegistryDep, SettingsDep, StorageDep, artifact_links
from app.enums import TrainingStatus
from app.errors import error_responses
from app.openapi_strict import form_without_null
from app.tenants.auth import PrincipalDep, SessionDep, bearer, resolve_principal_on_loop
from app.trainings import logs, schemas, service, stream, uploads
from app.validation import INT32_MAX

router = APIRouter(prefix="/v1/trainings", tags=["trainings"])

CURSOR_PATTERN = r"^[A-Za-z0-9_-]+$"
"""A page cursor is unpadded URL-safe base64 (service._encode_cursor)."""
MAX_CURSOR_LENGTH = 200

# The polled routes authenticate by calling resolve_principal_on_loop, not through a dependency,
# which costs FastAPI a dependency solve per request; openapi.yaml still says how.
BEARER_SECURITY: dict[str, Any] = {"security": [{bearer.scheme_name: []}]}


async def read_submission(request: Request, settings: SettingsDep) -> AsyncIterator[uploads.Submission]:
    submission = await uploads.read_submission(request, settings)
    try:
        yield submission
    finally:
        submission.close()  # the spooled files


def _form_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema of a form model for openapi_extra, its enums (Mode, Init) written inline: a
    `#/$defs/...` reference would point at the root of openapi.yaml, which has no $defs."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                rest = {key: value for key, value in node.items() if key != "$ref"}
                node = {**rest, **defs[ref.removeprefix("#/$defs/")]}
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(item) for item in node]
        return node

    result: dict[str, Any] = inline(schema)
    return result


_request_body = {
    "requestBody": {
        "required": True,
        "content": {
            # A form field is text or absent, never null (JSON may send null).
            "multipart/form-data": {"schema": form_without_null(_form_schema(schemas.TrainingRequest))},
            "application/x-www-form-urlencoded": {
                "schema": form_without_null(_form_schema(schemas.TrainingFieldsRequest))
            },
            "application/json": {"schema": _form_schema(schemas.TrainingJsonRequest)},
        },
    }
}


@router.post(
    "",
    status_code=202,
    response_model=schemas.Training,
    summary="Submit a training",
    openapi_extra=_request_body,
    responses={
        202: {
            "description": "Accepted and queued; Location points at the training.",
            "headers": {
                "Location": {
                    "description": "The training's absolute URL, as in urls.get",
                    "schema": {"type": "string"},
                },
                "Idempotent-Replayed": {
                    "description": "`true` when an Idempotency-Key returned an earlier training",
                    "schema": {"type": "string"},
                },
            },
        },
        **error_responses(400, 401, 402, 409, 413, 415, 422, 429, 503),
    },
)
async def create_training(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    submission: Annotated[uploads.Submission, Depends(read_submission, scope="function")],
    settings: SettingsDep,
    storage: StorageDep,
    registry: RegistryDep,
    links: ArtifactLinksDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description=(
                "Retries with the same key (per tenant) return the same training instead of creating another."
            ),
        ),
    ] = None,
) -> schemas.Training:
    view, created = await service.submit_training(
        request.app.state.database,
        principal=principal,
        submission=submission,
        idempotency_key=idempotency_key,
        settings=settings,
        storage=storage,
        registry=registry,
        links=links,
        downloads=request.app.state.download_slots,
    )
    response.headers["Location"] = view.urls.get
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return view


@router.get(
    "",
    response_model=schemas.TrainingList,
    summary="List your trainings, newest first",
    openapi_extra=BEARER_SECURITY,
    responses=error_responses(401, 422, 429),
)
async def list_trainings(
    request: Request,
    links: ArtifactLinksDep,
    status: Annotated[TrainingStatus | None, Query(description="Only trainings in this state")] = None,
    cursor: Annotated[
        str | None,
        Query(description="next_cursor of the previous page", pattern=CURSOR_PATTERN, max_length=MAX_CURSOR_LENGTH),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE_SIZE)] = 20,
) -> Response:
    # Like a poll: the key checked from the event loop, then the query and serialisation in one
    # read-thread call (run once more, on its own, if its connection was dead).
    principal = await resolve_principal_on_loop(request)

    def list_page(session: Session) -> Response:
        trainings, next_cursor = service.list_trainings(
            session, principal=principal, status=status, cursor=cursor, limit=limit
        )
        page = schemas.TrainingList(data=service.present(session, trainings, links=links), next_cursor=next_cursor)
        return Response(page.model_dump_json(by_alias=True), media_type="application/json")

    return await read_in_thread(request.app.state.database, list_page)


@router.get(
    "/{training_id}",
    response_model=schemas.Training,
    summary="Get a training",
    openapi_extra=BEARER_SECURITY,
    responses=error_responses(401, 404, 429, 503),
)
async def get_training(
    request: Request,
    training_id: str,
) -> Response:
    # The hot path (clients poll this): a cached key's check and the one query (row and queue
    # position, no ORM) run on the event loop itself where the database allows it (Postgres);
    # otherwise each runs on a read thread.
    principal = await resolve_principal_on_loop(request)
    view = await service.poll_training(
        request.app.state.database, principal=principal, training_id=training_id, links=artifact_links(request)
    )
    return Response(view.model_dump_json(by_alias=True), media_type="application/json")


@router.post(
    "/{training_id}/cancel",
    response_model=schemas.Training,
    summary="Cancel a training (idempotent)",
    responses=error_responses(401, 404, 429),
)
def cancel_training(
    training_id: str, principal: PrincipalDep, session: SessionDep, links: ArtifactLinksDep, settings: SettingsDep
) -> schemas.Training:
    training = service.cancel_training(session, principal=principal, training_id=training_id, settings=settings)
    return service.present(session, [training], links=links)[0]


@router.get(
    "/{training_id}/logs",
    response_model=schemas.TrainingLogPage,
    summary="Read a training's log lines",
    responses=error_responses(401, 404, 422, 429),
)
def training_logs(
    training_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    after: Annotated[
        int, Query(ge=0, le=INT32_MAX, description="Only lines with a larger seq: next_after of the last page")
    ] = 0,
    limit: Annotated[int, Query(ge=1, le=logs.MAX_PAGE_SIZE)] = 100,
) -> schemas.TrainingLogPage:
    return service.training_logs(session, principal=principal, training_id=training_id, after=after, limit=limit)


async def stream_open_slot(request: Request) -> AsyncIterator[None]:
    """Bounds how many streams of this process authenticate at once. Entered before the request's
    session and left after it closes: a burst of openings (200 clients reconnecting) cannot take
    every pooled connection while their commits wait for a thread, which would stall all requests
    until the pool's timeout."""
    async with request.app.state.stream_open_slots:
        yield


def streamed_training(training_id: str, principal: PrincipalDep, session: SessionDep) -> uuid.UUID:
    """The caller's training to stream (404 for another tenant's); its session ends before streaming."""
    return service.get_training(session, principal=principal, training_id=training_id).id


_STREAM_DESCRIPTION = (
    "Server-sent events (text/event-stream). First `event: status` with the training as GET returns "
    "it; then `event: progress` (`{step, total, loss, eta_s, at}`, every progress update the worker "
    "writes), `event: log` (`{seq, at, level, message}`, with `id: <seq>`), `event: queue` "
    "(`{queue_position, at}`, while queued, each time its place in the queue changes) and `event: status` "
    "(the whole training again, as the change left it) on each state change, a requeue included. The "
    "stream ends after a final status (succeeded, failed, canceled). A comment line (`: keepalive`) is "
    "sent when idle. Reconnect with `Last-Event-ID: <seq>` to receive the log lines after that seq "
    "first, then the status."
)


# One event of the stream, written as FastAPI writes its own server-sent events (`itemSchema`): the
# event's name, and its `data` line, JSON of the schema that name says.
_STREAM_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["status", "progress", "log"]},
        "id": {"type": "string", "description": "Log events: the line's seq (send it back as Last-Event-ID)."},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {
                "oneOf": [
                    {"$ref": "#/components/schemas/Training"},
                    {
                        "title": "ProgressEvent",
                        "type": "object",
                        "required": ["step", "total", "loss", "eta_s", "at"],
                        "properties": {
                            "step": {"type": "integer"},
                            "total": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                            "loss": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                            "eta_s": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                            "at": {"type": "string", "format": "date-time"},
                        },
                    },
                    {"$ref": "#/components/schemas/TrainingLogLine"},
                ]
            },
        },
    },
}


@router.get(
    "/{training_id}/stream",
    summary="Stream a training's progress, log lines and state changes",
    response_class=StreamingResponse,
    responses={
        200: {"description": _STREAM_DESCRIPTION, "content": {"text/event-stream": {"itemSchema": _STREAM_EVENT}}},
        **error_responses(401, 404, 422, 429),
    },
)
async def stream_training(
    request: Request,
    _slot: Annotated[None, Depends(stream_open_slot, scope="function")],
    training_id: Annotated[uuid.UUID, Depends(streamed_training)],
    links: ArtifactLinksDep,
    settings: SettingsDep,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID", ge=0, le=INT32_MAX, description="Resume: the seq of the last log event received."
        ),
    ] = None,
) -> StreamingResponse:
    hub = request.app.state.event_hub
    events = stream.TrainingStream(
        hub=hub,
        session_factory=request.app.state.database.session_factory,
        training_id=training_id,
        links=links,
        keepalive_seconds=settings.stream_keepalive.total_seconds(),
        queue_seconds=settings.stream_queue_interval.total_seconds(),
        last_event_id=last_event_id,
        recheck_on_keepalive=isinstance(hub, stream.RedisEventHub),
    )
    return StreamingResponse(
        events.events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
