"""SQLAlchemy models, one file per table; importing this package registers them all."""

from app.orm.api_key import ApiKey
from app.orm.artifact import Artifact
from app.orm.base import Base
from app.orm.outbox_message import OutboxMessage
from app.orm.tenant import Tenant
from app.orm.training import Training

__all__ = ["ApiKey", "Artifact", "Base", "OutboxMessage", "Tenant", "Training"]
