"""Response models of GET /v1/models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from models.enums import Family, Kind


class BaseModelInfo(BaseModel):
    id: str
    kind: Kind = Field(
        description="image: trained on images (POST /v1/trainings `images`); text: on text examples (`examples`)."
    )
    modes: list[str] = Field(
        description="Training modes of this kind: image pivotal, textual_inversion, lora; text pivotal, token, lora."
    )
    description: str
    resolution: int | None = Field(
        description="Training resolution in pixels of an image model; null for a text model."
    )
    family: Family | None = Field(
        description="An image model's architecture: sd (SD 1.x/2.x) or sdxl; null for a text model, or for an "
        "image model given by hub id whose family is read when it is loaded."
    )
    min_image_side: int | None = Field(
        description="The shortest side in pixels an uploaded image may have for this image model (smaller "
        "images are refused with invalid_images); null for a text model."
    )
    has_booster: bool = Field(description="Whether init=booster has a trained booster for this model.")
    default: bool = Field(description="Used when a training names no base_model.")
    defaults: dict[str, Any] = Field(description="Hyperparameter defaults for this model.")
    preview_prompts: list[str] = Field(
        description="The prompts of a succeeded training's previews unless it sends its own; {token} stands "
        "for the training's token."
    )


class BaseModelList(BaseModel):
    data: list[BaseModelInfo]
