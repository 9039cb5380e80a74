"""Prometheus metrics: HTTP latency measured here, training state read from the database at scrape."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.orm import Training
from app.orm.training import STATUSES
from app.outbox import repository as outbox_repository
from app.trainings import repository

logger = logging.getLogger(__name__)

DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0)
WAIT_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0)


class TrainingCollector(Collector):
    """Reads training counts, queue depth and durations when Prometheus scrapes."""

    def __init__(self, session_factory: sessionmaker[Session], queue_depth: Callable[[], int]) -> None:
        self.session_factory = session_factory
        self.queue_depth = queue_depth

    def collect(self) -> Iterator[Any]:
        with self.session_factory() as session:
            counts = repository.count_by_status(session)
            compute = repository.histogram(session, Training.usage_compute_seconds, DURATION_BUCKETS)
            waits = repository.histogram(session, Training.queue_seconds, WAIT_BUCKETS)
            steps, seconds = repository.usage_totals(session)
            pending = outbox_repository.count_pending(session)
        by_status = GaugeMetricFamily("leap_trainings", "Trainings by status", labels=["status"])
        for status in STATUSES:
            by_status.add_metric([status], counts.get(status, 0))
        yield by_status
        try:
            depth = float(self.queue_depth())
        except Exception:
            logger.warning("queue depth unavailable", exc_info=True)
            depth = float("nan")
        yield GaugeMetricFamily("leap_queue_depth", "Messages waiting in the training queue", value=depth)
        yield GaugeMetricFamily("leap_outbox_pending", "Outbox messages not yet sent to the broker", value=pending)
        yield _histogram("leap_training_compute_seconds", "Training compute time (usage)", DURATION_BUCKETS, compute)
        yield _histogram("leap_training_queue_wait_seconds", "Wait from submission to first claim", WAIT_BUCKETS, waits)
        yield CounterMetricFamily("leap_training_steps", "Optimisation steps of recorded trainings", value=steps)
        yield GaugeMetricFamily(
            "leap_training_steps_per_second",
            "Steps per compute second over recorded trainings",
            value=steps / seconds if seconds else 0.0,
        )


def _histogram(
    name: str, documentation: str, buckets: tuple[float, ...], data: tuple[list[int], int, float]
) -> HistogramMetricFamily:
    cumulative, count, total = data
    points = [(str(bound), value) for bound, value in zip(buckets, cumulative, strict=True)] + [("+Inf", count)]
    return HistogramMetricFamily(name, documentation, buckets=points, sum_value=total)


class HttpMetricsMiddleware:
    """Request latency by route template, method and status (pure ASGI, cheap per request)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.latency = Histogram(
            "leap_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            self.latency.labels(scope["method"], template, str(status)).observe(time.perf_counter() - start)
