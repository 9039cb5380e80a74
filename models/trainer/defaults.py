"""Hyperparameter defaults: per registered base model, else public SD 1.x/2.x recipes.

SD recipe sources: diffusers examples/textual_inversion (lr 5e-4 scaled by an effective
batch of 4 -> ~2e-3 for few-image sets, a few thousand steps), cloneofsimo/lora PTI
(embedding 5e-4 for ~1000 steps, then LoRA rank 4 at 1e-4 with the embedding at 1e-5
for ~1000 steps) and diffusers' advanced_diffusion_training (LoRA lr 1e-4, rank 4-32).
A registry entry's `defaults` (models/registry.yaml) overrides these per base model.
The step counts are caps (`max_steps`): a default job stops when done (models/trainer/stopping.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from models.enums import Kind
from models.registry import Registry
from models.trainer.config import TrainConfig, Tunable
from models.trainer.errors import BaseModelError

SD_RECIPE: dict[str, dict[str, Any]] = {
    "textual_inversion": {"max_steps": 2000, "embedding_lr": 2e-3, "batch_size": 4},
    "lora": {"max_steps": 1000, "lora_lr": 1e-4, "batch_size": 4},
    "pivotal": {"max_steps": 2000, "embedding_lr": 5e-4, "pivot_embedding_lr": 1e-5, "lora_lr": 1e-4, "batch_size": 4},
}
FIELDS = ("steps", "max_steps", "embedding_lr", "lora_lr", "pivot_embedding_lr", "batch_size")
C = TypeVar("C", bound=Tunable)


def registered_defaults(base_model: str, registry: Registry, *, kind: Kind | None = None) -> dict[str, dict[str, Any]]:
    """The registry's per-mode defaults for a model given by id or by its folder path (only a model of
    `kind`, when given)."""
    entry = registry.get(base_model)
    if entry is None:
        resolved = str(Path(base_model).resolve()) if Path(base_model).exists() else base_model
        entry = next((m for m in registry.models.values() if m.path == resolved), None)
    return entry.defaults if entry and (kind is None or entry.kind == kind) else {}


def resolve_base_model(base_model: str, registry: Registry) -> str:
    """A registry id becomes its path; anything else (folder or hub id) passes through."""
    entry = registry.get(base_model)
    if entry is not None and entry.kind != Kind.IMAGE:
        raise BaseModelError(f"{base_model!r} is a {entry.kind.value} model; the image trainer needs an image model")
    return entry.path if entry else base_model


def public_base_model_name(base_model: str, registry: Registry) -> str:
    """How outputs name a base model without revealing where it lives on this machine: the
    registry id, else a local folder's name (the registered id when a registry entry points at
    the folder), else the hub id, which is public anyway."""
    if registry.get(base_model) is not None:
        return base_model
    path = Path(base_model)
    if path.is_absolute() or path.exists():
        resolved = str(path.resolve())
        entry = next((m for m in registry.models.values() if m.path == resolved), None)
        return entry.id if entry else path.resolve().name
    return base_model


def fill_unset(config: C, per_mode: dict[str, Any]) -> C:
    """Every FIELDS value the config leaves None, from `per_mode` (image and text trainers)."""
    values = {name: per_mode.get(name) for name in FIELDS if getattr(config, name) is None}
    # Steps or a cap, never both: the caller's choice first, then a model's fixed step count.
    if config.max_steps is not None:
        values.pop("steps", None)
    elif config.steps is not None or values.get("steps") is not None:
        values.pop("max_steps", None)
    return replace(config, **{k: v for k, v in values.items() if v is not None})


def with_defaults(config: TrainConfig, registry: Registry) -> TrainConfig:
    """Fill every None hyperparameter from the model's registered defaults, then the SD recipe."""
    per_mode = {**SD_RECIPE[config.mode], **registered_defaults(config.base_model, registry).get(config.mode, {})}
    filled = fill_unset(config, per_mode)
    if filled.initializer_token is None:
        filled = replace(filled, initializer_token=config.preset)
    if filled.lora_alpha is None:
        filled = replace(filled, lora_alpha=float(filled.lora_rank))
    if filled.base_model_name is None:
        filled = replace(filled, base_model_name=public_base_model_name(config.base_model, registry))
    return filled
