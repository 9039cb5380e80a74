"""A customer account; owns API keys and trainings."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.orm.base import Base, UTCDateTime, new_id, utcnow


class Tenant(Base):
    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    max_concurrent_trainings: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Queued + running trainings at once; None: LEAP_MAX_CONCURRENT_TRAININGS."""
    monthly_unit_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    """Billable units per calendar month (UTC); None: unlimited."""
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    """Stripe customer billed for this tenant's usage (Billing Meter Events)."""
    webhook_secret: Mapped[str | None] = mapped_column(String(100), nullable=True)
    """whsec_ secret signing deliveries to per-training webhook_url (endpoints have their own)."""
