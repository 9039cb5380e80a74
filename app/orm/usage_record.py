"""The usage ledger: one row per training that started, written with its final state."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.orm.base import Base, UTCDateTime, new_id, utcnow


class UsageRecord(Base):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_tenant_finished", "tenant_id", "finished_at"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    """Also the idempotency identifier sent to billing sinks."""
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"))
    training_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("trainings.id", ondelete="CASCADE"), unique=True)
    """Unique: a training that ran twice (a worker crashed) is billed once."""
    status: Mapped[str] = mapped_column(String(16))
    """The training's final state: succeeded, failed or canceled."""
    base_model: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(16), default="image", server_default="image")
    """image or text (the training's kind; it selects the price list)."""
    mode: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(64))
    device_class: Mapped[str] = mapped_column(String(16))
    steps: Mapped[int] = mapped_column(Integer)
    images: Mapped[int] = mapped_column(Integer)
    examples: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """Text examples of a text training; 0 for an image training."""
    compute_seconds: Mapped[float] = mapped_column(Float)
    billable_units: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    """The period a record belongs to (usage reports and monthly quotas)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
