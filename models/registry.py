"""Base-model registry: ids the service trains -> diffusers folder or hub id, defaults, booster.

Torch-free: the API lists models from it. The file is YAML; LEAP ships one that registers
leap-tiny, and `LEAP_MODEL_REGISTRY` (read by the service) points at another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_REGISTRY_PATH = PACKAGE_ROOT / "registry.yaml"


@dataclass(frozen=True)
class BaseModel:
    """One registered base model."""

    id: str
    path: str
    """A diffusers folder (absolute, or relative to the registry file) or a hub id."""
    resolution: int
    booster_path: Path | None = None
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def has_booster(self) -> bool:
        return self.booster_path is not None and (self.booster_path / "booster.safetensors").is_file()


@dataclass(frozen=True)
class Registry:
    default_id: str
    models: dict[str, BaseModel]

    def get(self, model_id: str) -> BaseModel | None:
        return self.models.get(model_id)


def _resolve(base: Path, value: str) -> str:
    candidate = Path(value)
    if candidate.is_absolute():
        return value
    local = (base / candidate).resolve()
    # A relative value that names no local folder is a hub id such as "runwayml/stable-diffusion-v1-5".
    return str(local) if local.exists() or value.startswith(".") else value


def load_registry(path: Path | None = None) -> Registry:
    """Read a registry YAML file: `path`, else $LEAP_MODEL_REGISTRY, else the bundled one."""
    path = path or Path(os.environ.get("LEAP_MODEL_REGISTRY") or DEFAULT_REGISTRY_PATH)
    raw = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().parent
    models: dict[str, BaseModel] = {}
    for model_id, entry in (raw.get("models") or {}).items():
        booster = entry.get("booster")
        models[model_id] = BaseModel(
            id=model_id,
            path=_resolve(base, entry["path"]),
            resolution=int(entry["resolution"]),
            booster_path=Path(_resolve(base, booster)) if booster else None,
            defaults=dict(entry.get("defaults") or {}),
            description=entry.get("description", ""),
        )
    default_id = raw.get("default") or next(iter(models), "")
    if default_id not in models:
        raise ValueError(f"{path}: default model {default_id!r} is not registered")
    return Registry(default_id=default_id, models=models)
