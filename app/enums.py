"""States of the service's rows. Neutral (no imports) so the thin client can share them.

StrEnum members are their values, so the String columns, JSON and SQL binds stay plain strings."""

from __future__ import annotations

from enum import StrEnum


class TrainingStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


ACTIVE_STATUSES = (TrainingStatus.QUEUED, TrainingStatus.RUNNING)
FINISHED_STATUSES = (TrainingStatus.SUCCEEDED, TrainingStatus.FAILED, TrainingStatus.CANCELED)


class WebhookDeliveryStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class BillingDeliveryStatus(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
