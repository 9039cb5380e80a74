"""Listing the registry's models."""

from __future__ import annotations

from app.base_models.schemas import BaseModelInfo
from models.enums import Kind
from models.previews import prompt_templates
from models.registry import Registry
from models.text.config import MODES as TEXT_MODES
from models.trainer.config import MODES as IMAGE_MODES


def list_base_models(registry: Registry) -> list[BaseModelInfo]:
    """Every registered model, the default first."""
    models = sorted(registry.models.values(), key=lambda model: (model.id != registry.default_id, model.id))
    return [
        BaseModelInfo(
            id=model.id,
            kind=model.kind,
            modes=list(TEXT_MODES if model.kind == "text" else IMAGE_MODES),
            description=model.description,
            resolution=model.resolution if model.kind == Kind.IMAGE else None,
            family=model.image_family,
            min_image_side=model.smallest_image_side if model.kind == Kind.IMAGE else None,
            has_booster=model.has_booster,
            default=model.id == registry.default_id,
            defaults=dict(model.defaults),
            preview_prompts=prompt_templates(model),
        )
        for model in models
    ]
