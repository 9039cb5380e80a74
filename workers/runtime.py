"""What tasks share within one worker process: settings, database, storage, registry, broker sender."""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from celery import current_app
from celery.signals import worker_process_init
from sqlalchemy.orm import Session

from app.db import Database, create_database, unit_of_work
from app.ids import uuid_or_none
from app.outbox.sender import Sender, bind_sender
from app.settings import Settings, get_settings
from app.storage import Storage, make_storage
from models.enums import Kind
from models.registry import Registry, load_registry
from models.trainer.config import TrainResult
from workers.celery_app import make_sender


@dataclass
class WorkerRuntime:
    settings: Settings
    database: Database
    storage: Storage
    registry: Registry
    send: Sender
    worker_id: str

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        """A task transaction: commits on success, rolls back on error, then sends its outbox messages."""
        with unit_of_work(self.database.session_factory) as session:
            yield session


_runtime: WorkerRuntime | None = None


def _settings() -> Settings:
    settings = getattr(current_app.conf, "leap_settings", None)
    return settings if isinstance(settings, Settings) else get_settings()


def get_runtime() -> WorkerRuntime:
    """The process's runtime, built on first use (after the fork, in prefork pools)."""
    global _runtime
    if _runtime is None:
        settings = _settings()
        database = create_database(settings)
        send = make_sender(current_app)
        bind_sender(database.session_factory, send)
        registry_path: Path | None = settings.model_registry
        _runtime = WorkerRuntime(
            settings=settings,
            database=database,
            storage=make_storage(settings),
            registry=load_registry(registry_path),
            send=send,
            worker_id=f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}",
        )
    return _runtime


@worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    # A forked child must not reuse the parent's connections.
    global _runtime
    _runtime = None


_trainers: dict[str, Callable[..., TrainResult]] = {}


def load_trainer(path: str) -> Callable[..., TrainResult]:
    """Import the training function named by LEAP_TRAINER (module:function), once per process."""
    if path not in _trainers:
        module_name, _, function_name = path.partition(":")
        _trainers[path] = getattr(importlib.import_module(module_name), function_name or "train")
    return _trainers[path]


@worker_process_init.connect
def _preload_models(**_: Any) -> None:
    # LEAP_PRELOAD_MODELS: import the trainer (torch) and load every registered base model when
    # the process starts, so the first training does not pay for it. The trainer caches loaded
    # models per process.
    runtime = get_runtime()
    wanted = runtime.settings.preload_models
    entries = [entry for entry in runtime.registry.models.values() if wanted is True or entry.id in (wanted or ())]
    if not entries:
        return
    kinds = {entry.kind for entry in entries}
    if Kind.IMAGE in kinds:
        load_trainer(runtime.settings.trainer)
    if Kind.TEXT in kinds:
        load_trainer(runtime.settings.text_trainer)
    from models.trainer.base_model import load_base, pick_device

    device = pick_device()
    logger = logging.getLogger(__name__)
    for entry in entries:
        try:
            if entry.kind == Kind.TEXT:
                _preload_text_model(entry.id, runtime, device)
            else:
                load_base(entry.path, device)
        except Exception:
            logger.exception("could not preload %s", entry.id)
        else:
            logger.info("preloaded base model %s on %s", entry.id, device)


def _preload_text_model(model_id: str, runtime: WorkerRuntime, device: Any) -> None:
    # The folder the text trainer resolves too (a GGUF release is converted once into the data
    # directory), so its per-process cache finds the model already loaded.
    from models.text.base_model import load_text_base, resolve_text_model

    source = resolve_text_model(model_id, str(runtime.settings.data_dir.resolve()), runtime.registry)
    load_text_base(source, device)


def parse_task_id(task: str, value: str) -> uuid.UUID | None:
    """A task's id argument as a UUID; a malformed one is logged and the message dropped (None)."""
    parsed = uuid_or_none(value)
    if parsed is None:
        logging.getLogger(__name__).error("%s got a malformed id %r; dropped", task, value)
    return parsed


def run_by_id(
    task: str,
    raw_id: str,
    body: Callable[[Session, uuid.UUID, Settings], str],
    *,
    what: str,
    logger: logging.Logger,
) -> None:
    """A task whose body acts on one row by id in one unit of work: parse the id (a malformed one is
    logged and dropped), run the body, log the outcome it returns as `<what> <id>: <outcome>`."""
    parsed = parse_task_id(task, raw_id)
    if parsed is None:
        return
    runtime = get_runtime()
    with runtime.unit_of_work() as session:
        outcome = body(session, parsed, runtime.settings)
    logger.info("%s %s: %s", what, raw_id, outcome)
