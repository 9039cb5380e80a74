"""Typed failures of the training core; the service maps them to error codes."""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)


class TrainerError(Exception):
    """Base class; `code` is the stable machine-readable error code."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidConfigError(TrainerError):
    """A config field is out of range or inconsistent; `field` names it."""

    code = "invalid_config"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidImagesError(TrainerError):
    """An input image cannot be used; `file` names it (None when about the set)."""

    code = "invalid_images"

    def __init__(self, message: str, file: str | None = None) -> None:
        super().__init__(f"{file}: {message}" if file else message)
        self.file = file


class BaseModelError(TrainerError):
    """The base model (or its booster) cannot be loaded or does not fit."""

    code = "invalid_base_model"


class TrainingCanceled(TrainerError):
    """`should_stop` returned True; raised between steps."""

    code = "canceled"


class OutOfMemory(TrainerError):
    """The device ran out of memory."""

    code = "out_of_memory"


def foreign_booster(error: BaseModelError, *, what: str, base_model: str | None) -> BaseModelError:
    """The job's error for a registered booster that was trained for another base model. The message
    reaches API clients, so the folders `error` names stay in the worker's log."""
    logger.warning("%s for %s: %s", what, base_model, error.message)
    return BaseModelError(
        f"the {what} registered for {base_model} was trained for another base model; "
        "the server's model registry needs fixing"
    )
