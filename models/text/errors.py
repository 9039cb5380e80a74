"""Typed failures of the text trainer (the rest are shared with the image trainer)."""

from __future__ import annotations

from models.trainer.errors import TrainerError


class InvalidExamplesError(TrainerError):
    """A text example (or the set) cannot be used; `file` and `line` name the culprit when known."""

    code = "invalid_examples"

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}" if file and line is not None else file
        super().__init__(f"{where}: {message}" if where else message)
        self.file = file
        self.line = line
        self.detail = message
