"""The billing relay's state: one row per (usage record, sink), sent with retries."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.enums import BillingDeliveryStatus
from app.orm.base import Base, UTCDateTime, new_id, utcnow


class BillingDelivery(Base):
    __tablename__ = "billing_deliveries"
    __table_args__ = (UniqueConstraint("usage_record_id", "sink"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    usage_record_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("usage_records.id", ondelete="CASCADE"))
    tenant_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    sink: Mapped[str] = mapped_column(String(32))
    """webhook (the signed usage.recorded event) or stripe (Billing Meter Events)."""
    status: Mapped[str] = mapped_column(String(16), default=BillingDeliveryStatus.PENDING)
    """pending, delivered or failed (a permanent error, or retries used up)."""
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
