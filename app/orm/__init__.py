"""SQLAlchemy models, one file per table; importing this package registers them all."""

from app.orm.api_key import ApiKey
from app.orm.artifact import Artifact
from app.orm.base import Base
from app.orm.billing_delivery import BillingDelivery
from app.orm.outbox_message import OutboxMessage
from app.orm.tenant import Tenant
from app.orm.training import Training
from app.orm.training_log import TrainingLog
from app.orm.usage_record import UsageRecord
from app.orm.webhook import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent

__all__ = [
    "ApiKey",
    "Artifact",
    "Base",
    "BillingDelivery",
    "OutboxMessage",
    "Tenant",
    "Training",
    "TrainingLog",
    "UsageRecord",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
]
