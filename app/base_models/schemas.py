"""Response models of GET /v1/models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class BaseModelInfo(BaseModel):
    id: str
    description: str
    resolution: int
    has_booster: bool = Field(description="Whether init=booster has a trained booster for this model.")
    default: bool = Field(description="Used when a training names no base_model.")
    defaults: dict[str, Any] = Field(description="Hyperparameter defaults for this model.")


class BaseModelList(BaseModel):
    data: list[BaseModelInfo]
