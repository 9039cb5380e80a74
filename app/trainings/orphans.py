"""Inputs stored for a submission whose row never committed (the API died between storing the
images and the commit): the sweeper deletes them once they are older than a grace period."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from app.ids import uuid_or_none
from app.orm.base import utcnow
from app.settings import Settings
from app.storage import Storage, StorageError
from app.trainings import repository
from app.trainings.jobs import inputs_prefix

logger = logging.getLogger(__name__)

TRAININGS_FOLDER = "trainings"
BATCH = 500


def _newest_input(storage: Storage, training_id: uuid.UUID) -> datetime | None:
    return max((item.modified for item in storage.list_objects(inputs_prefix(training_id))), default=None)


def purge_orphan_inputs(
    session: Session, *, storage: Storage, settings: Settings, now: datetime | None = None
) -> list[uuid.UUID]:
    """Delete `trainings/<id>/inputs/` of ids with no training row whose newest input is older than
    LEAP_ORPHAN_INPUT_GRACE (a younger one may belong to a submission still being stored);
    returns the ids cleaned."""
    now = now or utcnow()
    cutoff = now - settings.orphan_input_grace
    purged: list[uuid.UUID] = []
    try:
        folders = [
            parsed for name in storage.list_folders(TRAININGS_FOLDER) if (parsed := uuid_or_none(name)) is not None
        ]
        for start in range(0, len(folders), BATCH):
            batch = folders[start : start + BATCH]
            known = repository.existing_ids(session, batch)
            for training_id in batch:
                if training_id in known:
                    continue
                newest = _newest_input(storage, training_id)
                if newest is not None and newest < cutoff:
                    storage.delete_prefix(inputs_prefix(training_id))
                    purged.append(training_id)
    except StorageError as error:
        # Not worth failing the sweep's other work over: the next sweep tries again.
        logger.warning("orphan input clean-up stopped: %s", error)
    if purged:
        logger.info("deleted the inputs of %d submissions that never committed: %s", len(purged), purged)
    return purged
