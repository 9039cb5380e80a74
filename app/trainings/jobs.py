"""What the API and the worker share about a training's job: storage prefixes, broker priorities and
the trainer's config. Imports only the torch-free parts of models."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from models.enums import Kind
from models.previews import TOKEN_FIELD, fill, prompt_templates
from models.registry import Registry
from models.text.config import TextTrainConfig
from models.trainer.config import TrainConfig
from models.trainer.errors import InvalidConfigError

# Broker priorities of training messages. On Redis the lowest number is served first (kombu keeps a
# list per priority step and pops them in order), so a training put back after a crash or a
# transient failure runs before newly submitted ones. The embedded filesystem broker ignores them.
RECOVERED_PRIORITY = 0
NEW_PRIORITY = 3

PREVIEW_FIELDS = ("previews", "preview_prompts")
"""Submission fields kept in a training's parameters that are about its previews, not the trainer."""


@dataclass(frozen=True)
class PreviewPlan:
    """What a succeeded training previews: its prompts (the token filled in) and, for images, the
    sampler's steps and seeds (the registry's preview_steps and preview_seeds)."""

    prompts: list[str]
    steps: int
    seeds: tuple[int, ...]


def preview_plan(*, base_model: str, token: str, parameters: dict[str, Any], registry: Registry) -> PreviewPlan | None:
    """The training's previews: the caller's preview_prompts, else the model's; None with previews=false."""
    entry = registry.get(base_model)
    if entry is None or parameters.get("previews") is False:
        return None
    templates = prompt_templates(entry, parameters.get("preview_prompts"))
    return PreviewPlan(prompts=fill(templates, token), steps=entry.preview_steps, seeds=entry.preview_seeds)


def preview_prompt_problem(prompts: list[str] | None, token: str) -> str | None:
    """Why the caller's preview_prompts cannot preview the concept (a prompt that names neither
    {token} nor the token itself), or None."""
    for index, prompt in enumerate(prompts or []):
        if TOKEN_FIELD not in prompt and token not in prompt:
            return f"prompt {index + 1} must name the concept as {TOKEN_FIELD} or as the token {token}"
    return None


def trainer_parameters(parameters: dict[str, Any]) -> dict[str, Any]:
    """The parameters the trainer's config takes (the preview fields left out)."""
    return {name: value for name, value in parameters.items() if name not in PREVIEW_FIELDS}


CONFIG_NAMES = {"train_text_encoder": "train_text_encoder_lora"}
"""The API's names of trainer options that the image trainer's config names otherwise."""


def inputs_prefix(training_id: uuid.UUID) -> str:
    return f"trainings/{training_id}/inputs"


def artifacts_prefix(training_id: uuid.UUID) -> str:
    return f"trainings/{training_id}/artifacts"


def training_prefix(training_id: uuid.UUID) -> str:
    return f"trainings/{training_id}"


def build_config(
    *, base_model: str, token: str, mode: str, init: str, parameters: dict[str, Any], registry: Registry
) -> TrainConfig:
    """The trainer's config: the registered model's folder and the caller's choices; the trainer
    fills what is unset from the model's registered defaults."""
    entry = registry.get(base_model)
    if entry is None:
        raise InvalidConfigError("base_model", f"{base_model!r} is not registered on this server")
    config = TrainConfig(
        base_model=entry.path,
        base_model_name=base_model,
        token=token,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        **{CONFIG_NAMES.get(name, name): value for name, value in trainer_parameters(parameters).items()},
    )
    config.validate()
    return config


def build_text_config(
    *,
    base_model: str,
    token: str,
    mode: str,
    init: str,
    parameters: dict[str, Any],
    registry: Registry,
    data_dir: str | None = None,
) -> TextTrainConfig:
    """The text trainer's config: the registry id (the trainer resolves and, for a GGUF release,
    converts it once into data_dir) and the caller's choices; unset values are the model's defaults."""
    entry = registry.get(base_model)
    if entry is None or entry.kind != Kind.TEXT:
        raise InvalidConfigError("base_model", f"{base_model!r} is not a text model registered on this server")
    config = TextTrainConfig(
        base_model=entry.id,
        token=token,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        data_dir=data_dir,
        **trainer_parameters(parameters),
    )
    config.validate()
    return config


def job_config(
    *,
    kind: str,
    base_model: str,
    token: str,
    mode: str,
    init: str,
    parameters: dict[str, Any],
    registry: Registry,
    data_dir: str | None = None,
) -> TrainConfig | TextTrainConfig:
    """The config of a training of this kind (text or image); `data_dir` is used by text trainings."""
    if kind == Kind.TEXT:
        return build_text_config(
            base_model=base_model,
            token=token,
            mode=mode,
            init=init,
            parameters=parameters,
            registry=registry,
            data_dir=data_dir,
        )
    return build_config(
        base_model=base_model, token=token, mode=mode, init=init, parameters=parameters, registry=registry
    )
