"""One line of a training's log: trainer progress and the worker's notes, numbered per training."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from app.orm.base import Base, UTCDateTime, utcnow


class TrainingLog(Base):
    __tablename__ = "training_logs"

    # The primary key (training_id, seq) is the index pages are read by.
    training_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("trainings.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    """1, 2, ... within the training; a page continues after the last seq it saw."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    level: Mapped[str] = mapped_column(String(16))
    """info | warning | error."""
    message: Mapped[str] = mapped_column(Text)
