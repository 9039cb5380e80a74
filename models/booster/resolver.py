"""Finding and applying the booster registered for a job's base model."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from PIL import Image

from models.booster.apply import base_fingerprint
from models.booster.network import Booster, load_booster
from models.enums import Mode
from models.registry import Registry
from models.trainer.base_model import BaseComponents
from models.trainer.concept import InitialState
from models.trainer.config import TrainConfig
from models.trainer.data import images_to_tensor
from models.trainer.defaults import public_base_model_name
from models.trainer.errors import BaseModelError, foreign_booster
from models.trainer.guard import BoosterResolver

logger = logging.getLogger(__name__)

_loaded: dict[Path, Booster] = {}
_lock = threading.Lock()


def registered_booster_paths(base: BaseComponents, registry: Registry) -> list[Path]:
    """The booster folders registered for this base model (matched by its source path or id), first
    the main one; empty without one."""
    for entry in registry.models.values():
        if entry.path in (base.source, str(Path(base.source).resolve())) and entry.has_booster:
            found = [folder for folder in entry.boosters if (folder / "booster.safetensors").is_file()]
            if len(found) < len(entry.boosters):
                logger.warning(
                    "%s: booster folders without weights skipped: %s", entry.id, set(entry.boosters) - set(found)
                )
            return found
    return []


def registered_booster_path(base: BaseComponents, registry: Registry) -> Path | None:
    """The main booster folder registered for this base model, or None."""
    return next(iter(registered_booster_paths(base, registry)), None)


def checked_booster(directory: Path, base: BaseComponents, registry: Registry) -> Booster:
    """Load a booster and make sure it was trained for this exact base model."""
    with _lock:
        if directory not in _loaded:
            _loaded[directory] = load_booster(directory)
        booster = _loaded[directory]
    config = booster.config
    # Messages reach API clients: models are named as outputs name them, folders go to the log.
    trained_for = public_base_model_name(config.base_model, registry)
    if config.embedding_width != base.embedding_width:
        logger.warning("booster %s does not fit %s: embedding width", directory, base.source)
        raise BaseModelError(
            f"booster was trained for {trained_for} (embedding width {config.embedding_width}); "
            f"this base model's width is {base.embedding_width}"
        )
    if config.base_fingerprint != base_fingerprint(base):
        logger.warning("booster %s does not fit %s: base fingerprint", directory, base.source)
        raise BaseModelError(f"booster was trained for {trained_for}, a different base model")
    return booster


@torch.no_grad()
def predict(
    booster: Booster, images: Sequence[Image.Image], num_vectors: int | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor], str]:
    """(embedding [num_vectors, width], LoRA tensors, a note) for one job's images.

    A count with its own head gets distinct vectors; any other count gets the single-vector
    prediction copied into every slot, and the note says so."""
    pixels = images_to_tensor(images, booster.config.image_size)[None]
    hidden = booster.hidden(pixels)
    lora = booster.lora_up(hidden)
    wanted = num_vectors or booster.config.num_vectors
    note = ""
    if wanted in booster.supported_vectors():
        embedding = booster.vectors(hidden, wanted)[0]
    else:
        one = booster.vectors(hidden, booster.config.num_vectors)[0]
        embedding = one[torch.arange(wanted) % one.shape[0]]
        counts = ", ".join(str(n) for n in booster.supported_vectors())
        note = (
            f"the booster predicts distinct vectors for {counts} vector(s) only: its {one.shape[0]}-vector "
            f"prediction was copied into all {wanted} slots"
        )
    return embedding, booster.unflatten_lora(lora[0]), note


def booster_initial_state(
    base: BaseComponents, images: Sequence[Image.Image], config: TrainConfig, registry: Registry
) -> list[InitialState] | None:
    """Each registered booster's starting point for this job (the main one named "booster", others
    by their folder), or None where the base model has no booster.

    A multi-vector job takes only the boosters with a head for its count where any has one: a booster
    without one can only copy its single prediction into every slot, and the guard would then weigh a
    copy against distinct vectors on a few views (the first such booster's note says which were left
    out). Where none has a head, each offers its copy (the token's own multi-vector start is copies
    of the initializer word) and the guard's margin decides."""
    directories = registered_booster_paths(base, registry)
    if not directories:
        return None
    loaded = []
    for directory in directories:
        try:
            loaded.append((directory, checked_booster(directory, base, registry)))
        except BaseModelError as error:
            raise foreign_booster(error, what="booster", base_model=config.base_model_name) from error
    wanted = config.num_vectors
    with_head = [(d, b) for d, b in loaded if wanted in b.supported_vectors()]
    chosen = with_head or loaded
    left_out = [d.name for d, b in loaded if wanted not in b.supported_vectors()] if with_head else []
    states: list[InitialState] = []
    for directory, booster in chosen:
        state = initial_state_from(booster, images, config)
        state = state if directory == directories[0] else replace(state, name=directory.name)
        if left_out and not states:
            extra = f"left out for {wanted} vectors (no head for that count): {', '.join(left_out)}"
            state = replace(state, note="; ".join(part for part in (state.note, extra) if part))
        states.append(state)
    return states


def registered_booster(registry: Registry) -> BoosterResolver:
    """The trainer's `booster`: the booster `registry` registers for a job's base model (None without one)."""
    return partial(booster_initial_state, registry=registry)


def initial_state_from(
    booster: Booster, images: Sequence[Image.Image], config: TrainConfig, *, use_lora: bool | None = None
) -> InitialState:
    """A job's starting point from a loaded booster (`use_lora` overrides its config, for ablations)."""
    vectors, lora, vector_note = predict(booster, images, config.num_vectors)
    use_lora = booster.config.use_lora if use_lora is None else use_lora

    def noted(*parts: str) -> str:
        return "; ".join(part for part in (*parts, vector_note) if part)

    if config.mode == Mode.TEXTUAL_INVERSION:
        return InitialState(embedding=vectors, note=noted())
    if config.lora_rank != booster.config.lora_rank:
        note = (
            f"embedding only: the booster predicts rank-{booster.config.lora_rank} LoRA, "
            f"the job asked for rank {config.lora_rank}"
        )
        return InitialState(embedding=vectors, note=noted(note))
    # The job trains from the booster's fixed A: B predicted, or zero for the embedding-only start.
    fresh = booster.zero_lora()
    if not use_lora:
        note = f"embedding only: {booster.config.use_lora_note}"
        return InitialState(embedding=vectors, note=noted(note), fresh_unet_lora=fresh)
    scaled = booster.scaled_lora(lora, lora_alpha=config.lora_alpha)
    return InitialState(embedding=vectors, unet_lora=scaled, note=noted(), fresh_unet_lora=fresh)
