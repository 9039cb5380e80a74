"""A fine-tuning job: the row is the source of truth for its state, lease and results."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.enums import FINISHED_STATUSES, TrainingStatus
from app.orm.base import Base, JSONType, UTCDateTime, new_id, utcnow
from models.enums import Kind

STATUSES = tuple(status.value for status in TrainingStatus)
KINDS = tuple(kind.value for kind in Kind)


class _Columns(Protocol):
    status: str
    inputs: list[dict[str, Any]]
    progress_step: int
    progress_total: int | None
    progress_loss: float | None
    progress_eta_s: float | None
    error_code: str | None
    error_message: str | None
    usage_steps: int | None
    usage_compute_seconds: float | None
    usage_device: str | None


class TrainingFacts:
    """What a training's columns say, derived the same way from an ORM Training and a TrainingRecord."""

    @property
    def progress(self: _Columns) -> dict[str, Any]:
        """Its progress as the API shows it: step, total, loss, eta_s."""
        return {
            "step": self.progress_step,
            "total": self.progress_total,
            "loss": self.progress_loss,
            "eta_s": self.progress_eta_s,
        }

    @property
    def error(self: _Columns) -> dict[str, str] | None:
        """{code, message} once it failed or was canceled with an error code; None otherwise."""
        if self.status in (TrainingStatus.FAILED, TrainingStatus.CANCELED) and self.error_code:
            return {"code": self.error_code, "message": self.error_message or ""}
        return None

    @property
    def usage(self: _Columns) -> dict[str, Any] | None:
        """What it used (steps, compute_seconds, device) once recorded; None before."""
        if self.usage_steps is None:
            return None
        return {
            "steps": self.usage_steps,
            "compute_seconds": self.usage_compute_seconds or 0.0,
            "device": self.usage_device or "",
        }

    @property
    def input_urls(self: _Columns) -> list[str]:
        """The URLs its inputs were fetched from, once each, in order; empty for uploaded files."""
        return list(dict.fromkeys(item["source_url"] for item in self.inputs if "source_url" in item))

    @property
    def finished(self: _Columns) -> bool:
        return self.status in FINISHED_STATUSES


class Training(Base, TrainingFacts):
    __tablename__ = "trainings"
    __table_args__ = (
        CheckConstraint(f"status IN ({', '.join(repr(s) for s in STATUSES)})", name="status"),
        CheckConstraint(f"kind IN ({', '.join(repr(k) for k in KINDS)})", name="kind"),
        UniqueConstraint("tenant_id", "idempotency_key"),
        Index("ix_trainings_tenant_created", "tenant_id", "created_at", "id"),
        Index("ix_trainings_status_lease", "status", "lease_expires_at"),
        Index("ix_trainings_finished_at", "finished_at"),
        # queue_position counts the queued rows ahead of a training inside this partial index only.
        Index(
            "ix_trainings_queued",
            "attempts",
            "created_at",
            "id",
            postgresql_where=text(f"status = '{TrainingStatus.QUEUED.value}'"),
            sqlite_where=text(f"status = '{TrainingStatus.QUEUED.value}'"),
        ),
        # A claim picks the tenant's best queued training; queue_position ranks them within the tenant.
        Index(
            "ix_trainings_queued_tenant",
            "tenant_id",
            "created_at",
            "id",
            postgresql_where=text(f"status = '{TrainingStatus.QUEUED.value}'"),
            sqlite_where=text(f"status = '{TrainingStatus.QUEUED.value}'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default=TrainingStatus.QUEUED.value)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the parameters and image bytes; a reused Idempotency-Key must match it."""

    base_model: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16), default=Kind.IMAGE.value, server_default=Kind.IMAGE.value)
    """image or text: the base model's kind at submission (the registry may change later)."""
    mode: Mapped[str] = mapped_column(String(32))
    init: Mapped[str] = mapped_column(String(16))
    init_used: Mapped[str | None] = mapped_column(String(200), nullable=True)
    init_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    """Why init_used differs from init (e.g. no booster for the base model), from the trainer."""
    init_scores: Mapped[dict[str, float] | None] = mapped_column(JSONType, nullable=True)
    """The guarded start's score of each candidate start (lowest won), from the trainer."""
    stop_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    """converged | max_steps | steps | canceled."""
    eval_curve: Mapped[list[list[float]] | None] = mapped_column(JSONType, nullable=True)
    """[[step, loss], ...] of the fixed evaluation a training without `steps` stops by."""
    previews: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    """What its previews showed (models.previews.Previews.summary()); None when off or not succeeded."""
    token: Mapped[str] = mapped_column(String(40))
    parameters: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)
    """Hyperparameters the caller set (steps, learning rates, ...); the rest are the model's defaults."""
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Among the tenant's queued trainings, higher is claimed first (then older)."""
    caption_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Images with a caption (their captions are in `inputs`)."""
    wake_up_used: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    """Whether its run message was processed (repository.claim): a queued training whose message claimed
    a training of higher priority waits for the tenant's next message. Reset when it is put back."""
    webhook_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    webhook_events_filter: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True)
    """The event types sent to webhook_url (sorted); None: every training event."""
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSONType, default=dict)
    api_base_url: Mapped[str | None] = mapped_column(Text, nullable=True)
    """The API's address as the submitting client reached it (LEAP_PUBLIC_URL when set): the base of
    the absolute `urls` of its webhooks, which are sent without a request to take it from."""
    inputs: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, default=list)
    """[{name, key, bytes, sha256}] of the stored input files (clean PNG copies of the images, or text
    example files as uploaded), in upload order."""
    skipped_files: Mapped[list[str] | None] = mapped_column(JSONType, nullable=True, default=list)
    """Zip entries skipped as not images (notes.txt, .DS_Store, __MACOSX/...); null before 0008."""
    image_count: Mapped[int] = mapped_column(Integer)
    """Images of an image training; 0 for a text training."""
    example_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Text examples of a text training (parsed at submission); None for an image training."""

    progress_step: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    progress_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    """Claims so far; counted here, not in the broker."""
    transient_failures: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Claims that ended in a storage or database error and were requeued: not crashes, so
    attempts - transient_failures is what LEAP_MAX_ATTEMPTS caps."""
    transient_failing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    """First transient failure; past LEAP_TRANSIENT_RETRY_WINDOW the training fails for good."""
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)

    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)

    usage_steps: Mapped[int | None] = mapped_column(Integer, nullable=True)
    usage_compute_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    usage_device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    estimated_units: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Billable units estimated at submission (counted against the monthly quota until usage is recorded)."""
    queue_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    """Wait from creation to the first claim."""

    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    artifacts_expired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class TrainingRecord(TrainingFacts):
    """A trainings row read without the ORM (polls and lists, the hot path): its columns as
    attributes named as on Training (metadata_ included), and its queue_position, which the same
    query computes (None once it is not queued)."""

    queue_position: int | None

    def __init__(self, columns: Mapping[str, Any]) -> None:
        self.__dict__.update(columns)  # the query's columns, queue_position among them

    def __getattr__(self, name: str) -> Any:  # the columns, set above (for type checkers)
        raise AttributeError(name)
