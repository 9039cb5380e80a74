"""GET /v1/trainings/{id}/stream: a training's live events as server-sent events.

Each API process keeps ONE source of events for all its streams, never a database session or a
thread per stream:
- with Redis (LEAP_EVENTS_REDIS_URL, or a Redis broker), one pub/sub subscription to the channel
  workers publish to after each commit (app.trainings.live), fanned out to per-stream queues;
- without it (the embedded default), one poller reading the streamed trainings' rows and new log
  lines every LEAP_STREAM_POLL_INTERVAL, in one query each.

A stream is opened so that nothing falls between its snapshot and its first event: with Redis it
subscribes first and reads the row second (events already in the snapshot are skipped); the
poller starts from the snapshot's own progress time, status and last log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import redis
import redis.asyncio as aioredis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.enums import FINISHED_STATUSES, TrainingStatus
from app.orm import Training
from app.orm.base import utcnow
from app.settings import Settings
from app.trainings import live, logs, presenter, repository, schemas, service
from app.trainings.presenter import ArtifactLinks

logger = logging.getLogger(__name__)

MAX_QUEUED_EVENTS = 10_000
"""Events waiting for one slow client; past it the stream drops them and catches up from the row."""
RETRY_MS = 3000


@dataclass(frozen=True)
class Snapshot:
    """The training as a stream starts (or catches up): its API view and the cursors events follow."""

    training: schemas.Training
    status: str
    progress_updated_at: datetime | None
    log_seq: int


Event = tuple[str, dict[str, Any]]
"""(progress | log | status | resync, data); resync: events may have been lost, read the row."""


@dataclass(eq=False)
class Subscription:
    """One stream's queue of events, with the poller's cursors."""

    training_id: uuid.UUID
    status: str = ""
    progress_updated_at: datetime | None = None
    log_seq: int = 0
    queue: asyncio.Queue[Event] = field(default_factory=asyncio.Queue)
    dropped: bool = False

    def put(self, event: Event) -> None:
        if self.queue.qsize() >= MAX_QUEUED_EVENTS:
            self.dropped = True
            return
        if self.dropped:
            self.dropped = False
            self.queue.put_nowait(("resync", {}))
        self.queue.put_nowait(event)


SnapshotReader = Callable[[], Awaitable[Snapshot | None]]


class EventHub(Protocol):
    async def open(self, training_id: uuid.UUID, read_snapshot: SnapshotReader) -> tuple[Snapshot | None, Subscription]:
        """Register a stream and take its snapshot, in the order that loses no event."""
        ...

    def close(self, subscription: Subscription) -> None: ...

    async def stop(self) -> None: ...


class _Registry:
    """The streams of each training, and the one background task that feeds them."""

    def __init__(self) -> None:
        self.subscriptions: dict[uuid.UUID, set[Subscription]] = defaultdict(set)
        self._task: asyncio.Task[None] | None = None

    def add(self, subscription: Subscription) -> None:
        self.subscriptions[subscription.training_id].add(subscription)

    def close(self, subscription: Subscription) -> None:
        streams = self.subscriptions.get(subscription.training_id)
        if streams is not None:
            streams.discard(subscription)
            if not streams:
                del self.subscriptions[subscription.training_id]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None


class RedisEventHub(_Registry):
    """One Redis subscription per API process, fanned out to its streams by training id."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self._ready = asyncio.Event()

    async def open(self, training_id: uuid.UUID, read_snapshot: SnapshotReader) -> tuple[Snapshot | None, Subscription]:
        subscription = Subscription(training_id)
        self.add(subscription)
        if self._task is None:
            self._task = asyncio.create_task(self._listen(), name="leap-training-events")
        with contextlib.suppress(TimeoutError):
            # Redis down: the stream still starts, and catches up from the row on each keepalive.
            await asyncio.wait_for(self._ready.wait(), timeout=5)
        try:
            return await read_snapshot(), subscription
        except BaseException:
            self.close(subscription)
            raise

    async def _listen(self) -> None:
        delay = 0.5
        connected_before = False
        while True:
            client = aioredis.Redis.from_url(self.url, socket_connect_timeout=2)
            try:
                async with client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(live.CHANNEL)
                    if connected_before:
                        # Messages published while we were away are gone: every stream reads its row.
                        self._broadcast(("resync", {}))
                    connected_before = True
                    self._ready.set()
                    delay = 0.5
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except (redis.RedisError, OSError) as error:
                self._ready.clear()
                logger.warning("training events: Redis subscription lost (%s); reconnecting", error)
            except Exception:
                self._ready.clear()
                logger.exception("training events: subscriber failed; restarting")
            finally:
                with contextlib.suppress(Exception):
                    await client.aclose()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    def _dispatch(self, raw: bytes | str) -> None:
        decoded = live.decode(raw)
        if decoded is None:
            return
        training_id, event, data = decoded
        for subscription in self.subscriptions.get(training_id, ()):
            subscription.put((event, data))

    def _broadcast(self, event: Event) -> None:
        for streams in self.subscriptions.values():
            for subscription in streams:
                subscription.put(event)


@dataclass(frozen=True)
class _Row:
    status: str
    step: int
    total: int | None
    loss: float | None
    eta_s: float | None
    progress_updated_at: datetime | None


class PollingEventHub(_Registry):
    """Without Redis: one task per API process reads every streamed training's row and new log
    lines each interval (two queries in all, however many streams) and turns changes into events."""

    def __init__(self, session_factory: sessionmaker[Session], *, interval: float) -> None:
        super().__init__()
        self.session_factory = session_factory
        self.interval = interval

    async def open(self, training_id: uuid.UUID, read_snapshot: SnapshotReader) -> tuple[Snapshot | None, Subscription]:
        snapshot = await read_snapshot()
        subscription = Subscription(training_id)
        if snapshot is not None:
            subscription.status = snapshot.status
            subscription.progress_updated_at = snapshot.progress_updated_at
            subscription.log_seq = snapshot.log_seq
        self.add(subscription)
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="leap-training-poller")
        return snapshot, subscription

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.subscriptions:
                continue
            cursors = {
                training_id: min(item.log_seq for item in streams)
                for training_id, streams in self.subscriptions.items()
                if streams
            }
            try:
                rows, lines = await run_in_threadpool(self._read, cursors)
            except Exception:
                logger.warning("training events: poll failed", exc_info=True)
                continue
            self._dispatch(rows, lines)

    def _read(self, cursors: dict[uuid.UUID, int]) -> tuple[dict[uuid.UUID, _Row], list[dict[str, Any]]]:
        with self.session_factory() as session:
            query = select(
                Training.id,
                Training.status,
                Training.progress_step,
                Training.progress_total,
                Training.progress_loss,
                Training.progress_eta_s,
                Training.progress_updated_at,
            ).where(Training.id.in_(list(cursors)))
            rows = {row[0]: _Row(*row[1:]) for row in session.execute(query)}
            lines = [
                {"training_id": row.training_id, **logs.line_data(row)}
                for row in logs.since(session, cursors, limit=logs.MAX_PAGE_SIZE)
            ]
        return rows, lines

    def _dispatch(self, rows: dict[uuid.UUID, _Row], lines: list[dict[str, Any]]) -> None:
        by_training: dict[uuid.UUID, list[dict[str, Any]]] = defaultdict(list)
        for line in lines:
            by_training[line.pop("training_id")].append(line)
        for training_id, streams in list(self.subscriptions.items()):
            row = rows.get(training_id)
            if row is None:
                continue
            for subscription in list(streams):
                self._advance(subscription, row, by_training.get(training_id, []))

    @staticmethod
    def _advance(subscription: Subscription, row: _Row, lines: list[dict[str, Any]]) -> None:
        """Events for what changed since this stream's cursors: progress, then log lines, then status."""
        updated = row.progress_updated_at
        if updated is not None and (
            subscription.progress_updated_at is None or updated > subscription.progress_updated_at
        ):
            subscription.progress_updated_at = updated
            # A claim resets progress to step 0: only a worker's progress write (the final one of a
            # succeeded training included) is an event.
            if row.step > 0:
                progress = {"step": row.step, "total": row.total, "loss": row.loss, "eta_s": row.eta_s}
                subscription.put(("progress", live.progress_data(progress, updated)))
        for line in lines:
            if line["seq"] > subscription.log_seq:
                subscription.log_seq = line["seq"]
                subscription.put(("log", line))
        if row.status != subscription.status:
            subscription.status = row.status
            subscription.put(("status", {"status": row.status}))


def make_event_hub(settings: Settings, session_factory: sessionmaker[Session]) -> EventHub:
    """Redis pub/sub when there is a Redis for events, else the database poller."""
    url = settings.resolved_events_redis_url
    if url:
        return RedisEventHub(url)
    return PollingEventHub(session_factory, interval=settings.stream_poll_interval.total_seconds())


def read_snapshot(
    session_factory: sessionmaker[Session], training_id: uuid.UUID, links: ArtifactLinks
) -> Snapshot | None:
    """The training's API view and cursors, from one short session (run in the thread pool)."""
    with session_factory() as session:
        training = repository.get(session, training_id)
        if training is None:
            return None
        return Snapshot(
            training=service.present(session, [training], links=links)[0],
            status=training.status,
            progress_updated_at=training.progress_updated_at,
            log_seq=logs.last_seq(session, training_id),
        )


def read_queue_position(session_factory: sessionmaker[Session], training_id: uuid.UUID) -> int | None:
    """The training's queue position now; None once it is not queued (run in the thread pool)."""
    with session_factory() as session:
        return repository.queue_position(session, training_id)


def read_log_lines(session_factory: sessionmaker[Session], training_id: uuid.UUID, after: int) -> list[dict[str, Any]]:
    with session_factory() as session:
        return [logs.line_data(row) for row in logs.page(session, training_id=training_id, after=after, limit=500)]


def format_event(event: str, data: dict[str, Any], event_id: int | None = None) -> str:
    """One server-sent event: `id:` (log events only, the line's seq), `event:` and one `data:` line."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def _transition_view(data: dict[str, Any], links: ArtifactLinks) -> schemas.Training | None:
    """A status event's training (published by the transition) as the API shows it; None when the
    event carries none, or a final status, which the stream reads from the row with its artifacts
    and the log lines written with it (a finished row no longer changes)."""
    state = data.get("training")
    if not isinstance(state, dict) or state.get("status") in FINISHED_STATUSES:
        return None
    try:
        return presenter.state_view(state, public_url=links.public_url)
    except ValueError:
        return None


def _parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


@dataclass
class TrainingStream:
    """One client's stream of one training (see the module docstring)."""

    hub: EventHub
    session_factory: sessionmaker[Session]
    training_id: uuid.UUID
    links: ArtifactLinks
    keepalive_seconds: float
    last_event_id: int | None = None
    recheck_on_keepalive: bool = True
    queue_seconds: float = 1.0
    """While queued: how often the queue position is read (a `queue` event when it changed)."""

    async def _snapshot(self) -> Snapshot | None:
        return await run_in_threadpool(read_snapshot, self.session_factory, self.training_id, self.links)

    async def _lines_after(self, after: int, until: int | None = None) -> AsyncIterator[dict[str, Any]]:
        while until is None or after < until:
            lines = await run_in_threadpool(read_log_lines, self.session_factory, self.training_id, after)
            if not lines:
                return
            for line in lines:
                if until is not None and line["seq"] > until:
                    return
                yield line
                after = line["seq"]

    async def events(self) -> AsyncIterator[str]:
        """The text of the stream: a status event, then progress, log, queue and status events; ends
        after a final status. Resumed (Last-Event-ID), the missed log lines come before the first
        status, so a client that stops at a final status has them all."""
        snapshot, subscription = await self.hub.open(self.training_id, self._snapshot)
        try:
            if snapshot is None:
                return
            yield f"retry: {RETRY_MS}\n\n"
            if self.last_event_id is not None and self.last_event_id < snapshot.log_seq:
                async for line in self._lines_after(self.last_event_id, until=snapshot.log_seq):
                    yield format_event("log", line, line["seq"])
            yield format_event("status", snapshot.training.model_dump(mode="json"))
            sent_seq = snapshot.log_seq
            if snapshot.status in FINISHED_STATUSES:
                return
            status, progress_at = snapshot.status, snapshot.progress_updated_at
            position, shown_seq = snapshot.training.queue_position, snapshot.log_seq
            loop = asyncio.get_running_loop()
            written_at = loop.time()
            while True:
                queued = status == TrainingStatus.QUEUED
                wait = min(self.keepalive_seconds, self.queue_seconds) if queued else self.keepalive_seconds
                event: str = ""
                data: dict[str, Any] = {}
                try:
                    event, data = await asyncio.wait_for(subscription.queue.get(), timeout=wait)
                except TimeoutError:
                    if queued:
                        current = await run_in_threadpool(read_queue_position, self.session_factory, self.training_id)
                        if current is not None and current != position:
                            position, written_at = current, loop.time()
                            yield format_event("queue", {"queue_position": current, "at": live.iso(utcnow())})
                            continue
                        if current is None:
                            event, data = "resync", {}  # claimed or canceled: the row says which
                    if event != "resync":
                        if loop.time() - written_at < self.keepalive_seconds:
                            continue
                        written_at = loop.time()
                        yield ": keepalive\n\n"
                        if not self.recheck_on_keepalive:
                            continue
                        event, data = "resync", {}
                written_at = loop.time()
                if event == "progress":
                    at = _parse_time(data.get("at"))
                    if at is not None and progress_at is not None and at <= progress_at:
                        continue  # already in the snapshot
                    progress_at = at or progress_at
                    yield format_event("progress", data)
                elif event == "log":
                    seq = int(data.get("seq", 0))
                    if seq <= sent_seq:
                        continue
                    if seq > sent_seq + 1:  # a line was lost on the way: read the gap
                        async for line in self._lines_after(sent_seq, until=seq - 1):
                            yield format_event("log", line, line["seq"])
                    sent_seq = seq
                    yield format_event("log", data, seq)
                elif event == "status" and _transition_view(data, self.links) is not None:
                    # A state change as its transaction left it (not a later read of the row, which
                    # may have moved on: a requeue then a claim would show as running only).
                    if int(data.get("log_seq") or 0) <= shown_seq:
                        continue  # already in what this stream showed
                    view = _transition_view(data, self.links)
                    assert view is not None
                    status, position, shown_seq = view.status, view.queue_position, int(data["log_seq"])
                    yield format_event("status", view.model_dump(mode="json"))
                else:  # a status without its state, a final status, or a resync: the row decides
                    fresh = await self._snapshot()
                    if fresh is None:
                        return
                    async for line in self._lines_after(sent_seq, until=fresh.log_seq):
                        sent_seq = line["seq"]
                        yield format_event("log", line, line["seq"])
                    shown_seq = max(shown_seq, fresh.log_seq)
                    if event == "status" or fresh.status != status:
                        status, position = fresh.status, fresh.training.queue_position
                        progress_at = fresh.progress_updated_at or progress_at
                        yield format_event("status", fresh.training.model_dump(mode="json"))
                    if fresh.status in FINISHED_STATUSES:
                        return
        finally:
            self.hub.close(subscription)
