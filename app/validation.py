"""Input rules every request model shares: text without NUL, integers that fit their columns."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictInt, ValidationInfo, field_validator

from app.errors import ValidationFailed

NUL = "\x00"
NUL_MESSAGE = "must not contain a NUL character (\\u0000)"
# The largest value of the database's Integer columns (32-bit on Postgres).
INT32_MAX = 2**31 - 1


def _integer(value: Any) -> Any:
    # JSON Schema's integer includes 10.0 (a number with no fraction), so the spec's clients may send
    # it; true/false, text and fractions are refused instead of being stored as 0, 1 or rounded.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An int that is an int (or a number with no fraction), and fits the database's Integer columns.
Int32 = Annotated[StrictInt, Field(ge=0, le=INT32_MAX), BeforeValidator(_integer)]


_NUMBER = re.compile(r"\s*[-+]?\d+(\.\d*)?\s*")


def _iso_only(value: Any) -> Any:
    # pydantic reads numbers (and numeric strings) as Unix timestamps: `end: 0` would mean 1970.
    if isinstance(value, bool | int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("must be an ISO 8601 date-time such as 2026-01-31T00:00:00Z, not a number")
    return value


# A date-time given as ISO 8601 text only.
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only)]

# An id as text: read models validate the ORM's uuid.UUID into it (the JSON schema stays a string).
Id = Annotated[str, BeforeValidator(str)]


def nul_path(value: Any, path: str = "") -> str | None:
    """Where in a (nested) value a NUL character is, e.g. `['a'][0]`; None when there is none."""
    if isinstance(value, str):
        return path if NUL in value else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and NUL in key:
                return f"{path}[{key!r}]"
            found = nul_path(item, f"{path}[{key!r}]")
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = nul_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def refuse_nul(field: str, value: str) -> str:
    """A 422 naming `field` when `value` holds a NUL (for text read outside a request model)."""
    if NUL in value:
        raise ValidationFailed(f"{field}: {NUL_MESSAGE}", details={"field": field})
    return value


class RequestModel(BaseModel):
    """Base of every request body: unknown fields and NUL characters (which Postgres cannot store,
    in text or JSON) are refused with a 422 naming the field."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any, info: ValidationInfo) -> Any:
        where = nul_path(value)
        if where is not None:
            raise ValueError(f"{NUL_MESSAGE}{f' (at {info.field_name}{where})' if where else ''}")
        return value
