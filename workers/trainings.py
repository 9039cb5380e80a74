"""The training task: claim the row, train with a renewed lease, store artifacts, record the result.

torch and the trainer are imported only inside the task, never when this module is imported.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from celery import Task, shared_task
from sqlalchemy.exc import InterfaceError, OperationalError

from app import task_names
from app.storage import StorageError
from app.trainings import lifecycle, logs
from app.trainings.jobs import artifacts_prefix, build_config, build_text_config, preview_plan
from models.previews import Previews, record
from models.text.examples import parse_text_files
from models.trainer.config import Progress, TrainResult
from models.trainer.errors import TrainerError, TrainingCanceled
from models.trainer.images import ImageSource, decode_images
from workers.runtime import WorkerRuntime, get_runtime, load_trainer, parse_task_id

if TYPE_CHECKING:
    from models.trainer.loop import Start  # imports torch: the task imports it, not this module

logger = logging.getLogger(__name__)

TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (StorageError, OperationalError, InterfaceError)


DATABASE_ERRORS: tuple[type[BaseException], ...] = (OperationalError, InterfaceError)


class ClaimUnavailable(Exception):
    """The database could not be reached to claim the training; the message is sent again later."""


@shared_task(name=task_names.RUN_TRAINING, acks_late=True, ignore_result=True, bind=True, max_retries=None)
def run_training(self: Task, training_id: str) -> None:
    """Run one training by id; a duplicate or late message finds nothing to claim and returns."""
    runtime = get_runtime()
    try:
        _run_training(runtime, training_id)
    except ClaimUnavailable as error:
        # The row is still queued; dropping the message would leave it queued for ever.
        delay = lifecycle.retry_delay(self.request.retries + 1, runtime.settings)
        logger.warning("training %s: %s; trying again in %.0fs", training_id, error, delay.total_seconds())
        raise self.retry(countdown=delay.total_seconds(), exc=error) from error


class Heartbeat:
    """Renews the lease and writes the latest progress every progress_interval, from a thread,
    so the training loop only stores numbers; reports cancel requests and a lost lease."""

    def __init__(self, runtime: WorkerRuntime, training_id: uuid.UUID) -> None:
        self.runtime = runtime
        self.training_id = training_id
        self.cancel_requested = threading.Event()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._latest: Progress | None = None
        self._written: Progress | None = None
        # Progress lines for the log, made as the trainer reports steps and written with the next
        # heartbeat (or the final transaction): a run shorter than one heartbeat logs its steps too.
        self._lines: list[logs.LogLine] = []
        self._lines_lock = threading.Lock()
        self._logged_step = 0
        self.start_logged = False
        self._thread = threading.Thread(target=self._loop, name=f"lease-{training_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop renewing; returns once a renewal in progress is done. Called before the final
        transaction, which ends the lease: a renewal after it would read as a lost lease."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def report(self, progress: Progress) -> None:
        """The trainer's on_progress callback: the latest progress, and a log line at the first step,
        every LEAP_LOG_PROGRESS_STEPS steps and the last."""
        self._latest = progress
        every = max(self.runtime.settings.log_progress_steps, 1)
        last = progress.total is not None and progress.step >= progress.total
        if self._logged_step == 0 or progress.step % every == 0 or last:
            self._add_line(progress)

    def _add_line(self, progress: Progress) -> None:
        line = logs.progress_line(progress.step, progress.total, _finite(progress.loss), _finite(progress.eta_s))
        with self._lines_lock:
            self._lines.append(line)
            self._logged_step = progress.step

    def _take_lines(self) -> list[logs.LogLine]:
        with self._lines_lock:
            lines, self._lines = self._lines, []
        return lines

    def final_lines(self) -> list[logs.LogLine]:
        """The progress lines not written yet, ending with the step the run stopped at (a run that
        stops before its planned total has not logged it): for the final transaction."""
        latest = self._latest
        if latest is not None and latest.step != self._logged_step:
            self._add_line(latest)
        return self._take_lines()

    def record_start(self, start: Start) -> None:
        """The trainer's on_start callback: the start it took, shown and logged now. A failure to
        write it is not the run's: complete() writes it again."""
        try:
            with self.runtime.unit_of_work() as session:
                self.start_logged = lifecycle.record_start(
                    session,
                    training_id=self.training_id,
                    worker_id=self.runtime.worker_id,
                    settings=self.runtime.settings,
                    init_used=start.used,
                    init_note=start.note,
                    init_scores=start.scores,
                )
        except Exception:
            logger.warning("training %s: could not record its start", self.training_id, exc_info=True)

    def should_stop(self) -> bool:
        """The trainer's should_stop callback (checked every step)."""
        return self.cancel_requested.is_set() or self.lost.is_set()

    @property
    def last_step(self) -> int:
        return self._latest.step if self._latest else 0

    def beat(self) -> None:
        latest = self._latest
        progress = None
        if latest is not None and latest is not self._written:
            progress = {
                "step": latest.step,
                "total": latest.total,
                "loss": _finite(latest.loss),
                "eta_s": _finite(latest.eta_s),
            }
        log_lines = self._take_lines()
        try:
            with self.runtime.unit_of_work() as session:
                state = lifecycle.renew_lease(
                    session,
                    training_id=self.training_id,
                    worker_id=self.runtime.worker_id,
                    settings=self.runtime.settings,
                    progress=progress,
                    log_lines=log_lines,
                )
        except BaseException:
            with self._lines_lock:
                self._lines[:0] = log_lines  # written with the next heartbeat
            raise
        self._written = latest
        if not state.held:
            logger.warning("training %s: lease lost, stopping", self.training_id)
            self.lost.set()
        elif state.cancel_requested:
            self.cancel_requested.set()

    def _loop(self) -> None:
        interval = self.runtime.settings.progress_interval.total_seconds()
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception:
                # The lease outlives a few missed renewals; the sweeper handles a long outage.
                logger.warning("training %s: lease renewal failed", self.training_id, exc_info=True)


def _start_callback(train: Callable[..., TrainResult], heartbeat: Heartbeat) -> dict[str, Any]:
    """on_start for a trainer that takes it (LEAP_TRAINER may name one that does not)."""
    parameters = inspect.signature(train).parameters.values()
    takes = any(item.name == "on_start" or item.kind is inspect.Parameter.VAR_KEYWORD for item in parameters)
    return {"on_start": heartbeat.record_start} if takes else {}


def _finite(value: float | None) -> float | None:
    return value if value is not None and value == value and abs(value) != float("inf") else None


def _device_name() -> str:
    torch = sys.modules.get("torch")
    if torch is None:
        return "unknown"
    if torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(0)}"
    return "cpu"


def _run_training(runtime: WorkerRuntime, training_id: str) -> None:
    parsed = parse_task_id(task_names.RUN_TRAINING, training_id)
    if parsed is None:
        return
    try:
        with runtime.unit_of_work() as session:
            claimed = lifecycle.claim(
                session, training_id=parsed, worker_id=runtime.worker_id, settings=runtime.settings
            )
    except DATABASE_ERRORS as error:
        raise ClaimUnavailable(f"database unavailable for the claim ({type(error).__name__})") from error
    if claimed is None:
        logger.info("training %s: nothing to claim (finished, canceled or running elsewhere)", training_id)
        return
    # The tenant's best queued training, which may be another than the message's (a higher priority).
    logger.info("training %s: claimed (attempt %d)", claimed.id, claimed.attempts)
    work_dir = runtime.settings.resolved_work_dir / f"{claimed.id}-{claimed.attempts}"
    heartbeat = Heartbeat(runtime, claimed.id)
    heartbeat.start()
    try:
        _execute(runtime, claimed, work_dir, heartbeat)
    finally:
        heartbeat.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


def _execute(runtime: WorkerRuntime, claimed: lifecycle.ClaimedTraining, work_dir: Path, heartbeat: Heartbeat) -> None:
    settings = runtime.settings
    worker_id = runtime.worker_id
    started = time.monotonic()

    def usage_so_far() -> lifecycle.UsageRecord:
        return lifecycle.UsageRecord(
            steps=heartbeat.last_step, compute_seconds=time.monotonic() - started, device=_device_name()
        )

    try:
        prepare = _prepare_text if claimed.kind == "text" else _prepare_images
        train, config, inputs = prepare(runtime, claimed)
        work_dir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        result = train(
            config,
            inputs,
            work_dir / "out",
            on_progress=heartbeat.report,
            should_stop=heartbeat.should_stop,
            **_start_callback(train, heartbeat),
        )
        result, previews = _render_previews(runtime, claimed, config, result, heartbeat)
    except TrainingCanceled:
        heartbeat.stop()
        if heartbeat.lost.is_set():
            return
        with runtime.unit_of_work() as session:
            lifecycle.cancel(
                session,
                training_id=claimed.id,
                worker_id=worker_id,
                settings=settings,
                usage=usage_so_far(),
                progress_lines=heartbeat.final_lines(),
            )
        logger.info("training %s: canceled", claimed.id)
        return
    except TrainerError as error:
        heartbeat.stop()
        with runtime.unit_of_work() as session:
            lifecycle.fail(
                session,
                training_id=claimed.id,
                worker_id=worker_id,
                code=error.code,
                message=error.message,
                settings=settings,
                usage=usage_so_far() if heartbeat.last_step else None,
                progress_lines=heartbeat.final_lines(),
            )
        logger.info("training %s: failed with %s: %s", claimed.id, error.code, error.message)
        return
    except TRANSIENT_ERRORS as error:
        heartbeat.stop()
        _retry(runtime, claimed, f"{type(error).__name__}: {error}")
        return
    except Exception as error:
        logger.exception("training %s: unexpected error", claimed.id)
        heartbeat.stop()
        with runtime.unit_of_work() as session:
            lifecycle.fail(
                session,
                training_id=claimed.id,
                worker_id=worker_id,
                code="internal",
                message=f"internal error ({type(error).__name__})",
                settings=settings,
                usage=usage_so_far(),
            )
        return
    _store_result(runtime, claimed, result, heartbeat, previews)


def _render_previews(
    runtime: WorkerRuntime, claimed: lifecycle.ClaimedTraining, config: Any, result: TrainResult, heartbeat: Heartbeat
) -> tuple[TrainResult, Previews | None]:
    """Previews rendered from the files the training just wrote (so they prove those files load), added
    to its artifacts and manifest. Their time is not in result.compute_seconds: it is not billed."""
    plan = preview_plan(
        base_model=claimed.base_model, token=claimed.token, parameters=claimed.parameters, registry=runtime.registry
    )
    if plan is None:
        return result, None
    if claimed.kind == "text":
        from models.text.preview import render_text_previews  # torch: imported by the task, not at import

        previews = render_text_previews(
            config.base_model,
            result.out_dir,
            registry=runtime.registry,
            prompts=plan.prompts,
            data_dir=config.data_dir,
            device=config.device,
            should_stop=heartbeat.should_stop,
        )
    else:
        from models.trainer.preview import render_image_previews

        previews = render_image_previews(
            config.base_model,
            result.out_dir,
            token=claimed.token,
            prompts=plan.prompts,
            steps=plan.steps,
            seeds=plan.seeds,
            device=config.device,
            mixed_precision=config.mixed_precision,
            should_stop=heartbeat.should_stop,
        )
    logger.info("training %s: %d previews in %.2fs", claimed.id, len(previews.prompts), previews.seconds)
    artifacts = record(result.out_dir, result.manifest, result.artifacts, previews)
    return dataclasses.replace(result, artifacts=artifacts), previews


def _prepare_images(
    runtime: WorkerRuntime, claimed: lifecycle.ClaimedTraining
) -> tuple[Callable[..., TrainResult], Any, Any]:
    """The image trainer, its config and the decoded images."""
    config = build_config(
        base_model=claimed.base_model,
        token=claimed.token,
        mode=claimed.mode,
        init=claimed.init,
        parameters=claimed.parameters,
        registry=runtime.registry,
    )
    sources = [ImageSource(name=item["name"], data=runtime.storage.get_bytes(item["key"])) for item in claimed.inputs]
    images = decode_images(sources, max_pixels=runtime.settings.max_image_pixels)
    from models.booster.resolver import registered_booster  # torch: imported by the task, not at import

    trainer = partial(
        load_trainer(runtime.settings.trainer), registry=runtime.registry, booster=registered_booster(runtime.registry)
    )
    captions = [item.get("caption") for item in claimed.inputs]
    if any(captions):  # only then: a trainer (LEAP_TRAINER) need not take captions otherwise
        trainer = partial(trainer, captions=captions)
    return trainer, config, images


def _prepare_text(
    runtime: WorkerRuntime, claimed: lifecycle.ClaimedTraining
) -> tuple[Callable[..., TrainResult], Any, Any]:
    """The text trainer (LEAP_TEXT_TRAINER), its config and the examples, parsed again from the stored
    files (the trainer checks the exact token limit and names the file and line past it)."""
    settings = runtime.settings
    config = build_text_config(
        base_model=claimed.base_model,
        token=claimed.token,
        mode=claimed.mode,
        init=claimed.init,
        parameters=claimed.parameters,
        registry=runtime.registry,
        data_dir=str(settings.data_dir.resolve()),
    )
    files = [(item["name"], runtime.storage.get_bytes(item["key"])) for item in claimed.inputs]
    examples = parse_text_files(files, token=config.token)
    from models.text.booster import text_booster_resolver  # torch: imported by the task, not at import

    trainer = partial(
        load_trainer(settings.text_trainer),
        registry=runtime.registry,
        booster_resolver=text_booster_resolver(runtime.registry),
    )
    return trainer, config, examples


def _retry(runtime: WorkerRuntime, claimed: lifecycle.ClaimedTraining, message: str) -> None:
    logger.warning("training %s: transient failure, retrying: %s", claimed.id, message)
    with runtime.unit_of_work() as session:
        outcome = lifecycle.retry_or_fail(
            session,
            training_id=claimed.id,
            worker_id=runtime.worker_id,
            settings=runtime.settings,
            message=message,
        )
    logger.info("training %s: %s", claimed.id, outcome)


def _content_type(name: str) -> str:
    if name.endswith(".png"):
        return "image/png"
    return "application/json" if name.endswith(".json") else "application/octet-stream"


def _store_result(
    runtime: WorkerRuntime,
    claimed: lifecycle.ClaimedTraining,
    result: TrainResult,
    heartbeat: Heartbeat,
    previews: Previews | None = None,
) -> None:
    """Upload the artifacts, then record them with the usage in one transaction (or clean up)."""
    started = time.monotonic()
    storage = runtime.storage
    prefix = artifacts_prefix(claimed.id)
    stored: list[lifecycle.StoredArtifact] = []
    try:
        for artifact in result.artifacts:
            key = f"{prefix}/{artifact.name}"
            storage.put_file(key, Path(artifact.path), content_type=_content_type(artifact.name))
            stored.append(
                lifecycle.StoredArtifact(
                    name=artifact.name,
                    kind=artifact.kind,
                    key=key,
                    bytes=artifact.bytes,
                    sha256=artifact.sha256,
                )
            )
    except StorageError as error:
        heartbeat.stop()
        storage.delete_keys([item.key for item in stored])
        _retry(runtime, claimed, f"storing artifacts: {error}")
        return
    # Bills the steps actually run: a training without `steps` stops when done, before its cap.
    usage = lifecycle.UsageRecord(steps=result.steps, compute_seconds=result.compute_seconds, device=result.device)
    heartbeat.stop()  # this transaction renews the lease itself, then ends it
    with runtime.unit_of_work() as session:
        state = lifecycle.renew_lease(
            session,
            training_id=claimed.id,
            worker_id=runtime.worker_id,
            settings=runtime.settings,
            progress=None,
        )
        if state.held and state.cancel_requested:
            lifecycle.cancel(
                session,
                training_id=claimed.id,
                worker_id=runtime.worker_id,
                settings=runtime.settings,
                usage=usage,
                progress_lines=heartbeat.final_lines(),
            )
            recorded = False
        elif state.held:
            recorded = lifecycle.complete(
                session,
                training_id=claimed.id,
                worker_id=runtime.worker_id,
                artifacts=stored,
                usage=usage,
                settings=runtime.settings,
                init_used=result.init_used,
                init_note=result.init_note,
                init_scores=result.init_scores,
                stop_reason=result.stop_reason,
                eval_curve=result.eval_curve,
                previews=previews.summary() if previews is not None else None,
                progress_lines=heartbeat.final_lines(),
                start_logged=heartbeat.start_logged,
            )
        else:
            recorded = False
    if not recorded:
        # Canceled at the last moment or the lease was lost: list nothing, keep nothing.
        storage.delete_keys([item.key for item in stored])
        logger.info("training %s: result discarded (canceled or lease lost)", claimed.id)
        return
    logger.info(
        "training %s: succeeded with %d artifacts, listed %.3fs after training ended",
        claimed.id,
        len(stored),
        time.monotonic() - started,
    )
