"""Live training events: what workers (and the API, for a cancel) publish after each commit, and
what the API's streams receive. Shared by both sides; importing it needs no running Redis.

One Redis pub/sub channel carries every training's events; each API process subscribes once and
hands each event to the streams of its training. Without Redis (the embedded default) nothing is
published: the API reads the same facts from the database (app.trainings.stream's poller).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

import redis
from sqlalchemy.orm import Session

from app.db import on_commit, on_rollback
from app.orm.base import utcnow
from app.settings import Settings

logger = logging.getLogger(__name__)

CHANNEL = "leap:training-events"
EventType = Literal["progress", "log", "status"]

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def _client(url: str) -> redis.Redis:
    with _clients_lock:
        client = _clients.get(url)
        if client is None:
            # Short timeouts: publishing happens after a commit and must never hold a worker up.
            client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
            _clients[url] = client
        return client


def encode(training_id: uuid.UUID, event: EventType, data: dict[str, Any]) -> str:
    """One channel message: the training's id, the event type and its data."""
    return json.dumps({"training_id": str(training_id), "event": event, "data": data}, separators=(",", ":"))


def decode(message: str | bytes) -> tuple[uuid.UUID, EventType, dict[str, Any]] | None:
    """A channel message as (training id, event type, data); None when malformed."""
    try:
        body = json.loads(message)
        return uuid.UUID(body["training_id"]), body["event"], dict(body["data"])
    except (ValueError, KeyError, TypeError):
        return None


def publish_after_commit(
    session: Session, *, settings: Settings, training_id: uuid.UUID, event: EventType, data: dict[str, Any]
) -> None:
    """Publish the event once the session's unit of work has committed (never on rollback), so a
    stream never sees a state the database does not hold. A no-op without Redis."""
    url = settings.resolved_events_redis_url
    if url is None:
        return
    messages: list[str] = session.info.setdefault("leap_live_events", [])
    if not messages:
        # One callback per transaction publishes everything it wrote, in order, in one round trip.
        on_commit(session, lambda: _publish(url, session.info.pop("leap_live_events", messages)))
        on_rollback(session, lambda: session.info.pop("leap_live_events", None))
    messages.append(encode(training_id, event, data))


def _publish(url: str, messages: list[str]) -> None:
    try:
        pipeline = _client(url).pipeline(transaction=False)
        for message in messages:
            pipeline.publish(CHANNEL, message)
        pipeline.execute()
    except redis.RedisError as error:
        # Streams re-read the row on their keepalive, so a lost event delays them, never misleads.
        logger.warning("could not publish %d training events: %s", len(messages), error)


def progress_data(progress: dict[str, Any], at: datetime | None = None) -> dict[str, Any]:
    """The data of a progress event: step, total, loss, eta_s and when the worker wrote it."""
    return {
        "step": progress.get("step"),
        "total": progress.get("total"),
        "loss": progress.get("loss"),
        "eta_s": progress.get("eta_s"),
        "at": iso(at or utcnow()),
    }


def iso(value: datetime) -> str:
    """A UTC time as the API writes times everywhere else (pydantic's JSON: `...Z`)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
