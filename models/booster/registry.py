"""Finding and applying the booster registered for a job's base model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from models.booster.apply import base_fingerprint
from models.booster.network import Booster, load_booster
from models.registry import load_registry
from models.trainer.base import BaseComponents
from models.trainer.concept import InitialState
from models.trainer.config import TrainConfig
from models.trainer.data import images_to_tensor
from models.trainer.defaults import public_base_model_name
from models.trainer.errors import BaseModelError

logger = logging.getLogger(__name__)

_loaded: dict[Path, Booster] = {}
_lock = threading.Lock()


def registered_booster_path(base: BaseComponents) -> Path | None:
    """The booster folder registered for this base model (matched by its source path or id)."""
    for entry in load_registry().models.values():
        if entry.path in (base.source, str(Path(base.source).resolve())) and entry.has_booster:
            return entry.booster_path
    return None


def checked_booster(directory: Path, base: BaseComponents) -> Booster:
    """Load a booster and make sure it was trained for this exact base model."""
    with _lock:
        if directory not in _loaded:
            _loaded[directory] = load_booster(directory)
        booster = _loaded[directory]
    config = booster.config
    # Messages reach API clients: models are named as outputs name them, folders go to the log.
    trained_for = public_base_model_name(config.base_model)
    if config.embedding_width != base.embedding_width:
        logger.warning("booster %s does not fit %s: embedding width", directory, base.source)
        raise BaseModelError(
            f"booster was trained for {trained_for} (embedding width {config.embedding_width}); "
            f"this base model's width is {base.embedding_width}")
    if config.base_fingerprint != base_fingerprint(base):
        logger.warning("booster %s does not fit %s: base fingerprint", directory, base.source)
        raise BaseModelError(f"booster was trained for {trained_for}, a different base model")
    return booster


@torch.no_grad()
def predict(booster: Booster, images: Sequence[Image.Image]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    pixels = images_to_tensor(images, booster.config.image_size)[None]
    embedding, lora = booster(pixels)
    return embedding[0], booster.unflatten_lora(lora[0])


def booster_initial_state(base: BaseComponents, images: Sequence[Image.Image],
                          config: TrainConfig) -> InitialState | None:
    """The booster's starting point for this job, or None where the base model has no booster."""
    directory = registered_booster_path(base)
    if directory is None:
        return None
    try:
        booster = checked_booster(directory, base)
    except BaseModelError as error:
        raise BaseModelError(f"{config.base_model_name}: registered {error.message}") from error
    embedding, lora = predict(booster, images)
    vectors = embedding[torch.arange(config.num_vectors) % embedding.shape[0]]
    if config.mode == "textual_inversion":
        return InitialState(embedding=vectors)
    if not booster.config.use_lora:
        return InitialState(embedding=vectors, note=f"embedding only: {booster.config.use_lora_note}")
    if config.lora_rank != booster.config.lora_rank:
        note = (f"embedding only: the booster predicts rank-{booster.config.lora_rank} LoRA, "
                f"the job asked for rank {config.lora_rank}")
        return InitialState(embedding=vectors, note=note)
    return InitialState(embedding=vectors, unet_lora=lora)
