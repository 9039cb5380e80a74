"""The Celery app and its config. Importing this module never imports torch or the tasks' heavy parts."""

from __future__ import annotations

from typing import Any

from celery import Celery

from app import task_names
from app.settings import Settings, get_settings


def broker_options(settings: Settings) -> dict[str, Any]:
    """Transport options: the embedded filesystem broker's folders, or Redis' visibility timeout."""
    if settings.broker_url is None:
        folder = settings.broker_folder
        for name in ("messages", "control", "processed"):
            (folder / name).mkdir(parents=True, exist_ok=True)
        return {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "control_folder": str(folder / "control"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
            "polling_interval": 0.1,
        }
    # A training can outlast the default hour; the lease, not redelivery, recovers lost work.
    # Bounded socket timeouts: a request that sends after commit must not hang on a dead broker
    # (the outbox relay sends the message later).
    return {"visibility_timeout": 6 * 3600, "socket_connect_timeout": 2, "socket_timeout": 10}


def create_celery(settings: Settings) -> Celery:
    """A Celery app for these settings (the API uses it only to send)."""
    app = Celery(
        "leap",
        broker=settings.resolved_broker_url,
        include=["workers.trainings", "workers.sweeper", "workers.webhooks", "workers.usage"],
    )
    app.conf.update(
        broker_transport_options=broker_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.maintenance_queue,
        task_routes={
            "trainings.*": {"queue": settings.queue},
            "sweeper.*": {"queue": settings.maintenance_queue},
            "webhooks.*": {"queue": settings.maintenance_queue},
            "billing.*": {"queue": settings.maintenance_queue},
        },
        worker_send_task_events=False,
        worker_hijack_root_logger=False,
        beat_schedule={
            "sweep": {
                "task": task_names.SWEEP,
                "schedule": settings.sweeper_interval.total_seconds(),
                "options": {
                    "queue": settings.maintenance_queue,
                    "expires": settings.sweeper_interval.total_seconds(),
                },
            }
        },
        beat_schedule_filename=str((settings.data_dir / "celerybeat-schedule").resolve()),
        beat_scheduler="workers.beat:SingleBeatScheduler",
    )
    app.conf.leap_settings = settings
    return app


def make_sender(app: Celery) -> Any:
    """The outbox's send(task, args, queue, **options) for this app (options: priority, eta)."""

    def send(task: str, args: list[Any], queue: str, /, **options: Any) -> None:
        app.send_task(task, args=args, queue=queue, **options)

    return send


def queue_depth(app: Celery, queue: str) -> int:
    """Messages waiting in a broker queue (not counting ones a worker has reserved)."""
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        return int(channel.queue_declare(queue=queue, passive=True).message_count)


def check_broker(app: Celery) -> None:
    """Raise when the broker cannot be reached."""
    with app.connection_for_read() as connection:
        connection.ensure_connection(max_retries=1, timeout=2)


def __getattr__(name: str) -> Any:
    # `celery -A workers.celery_app` finds the app here; built on first use so that importing
    # create_celery (as the API does) has no side effects.
    if name == "celery_app":
        app = create_celery(get_settings())
        globals()["celery_app"] = app
        return app
    raise AttributeError(name)
