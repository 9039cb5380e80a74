"""Jobs that stop when done: a fixed, seeded evaluation of the job's own images and a plateau rule.

With `steps` unset, the trainer evaluates the concept every `eval_every` steps on the same noises,
timesteps and latents each time, and stops once the last `patience` evaluations brought no relative
improvement above `min_delta` over the best before them (after `min_steps`), or at `max_steps`.
Uploads of 10 or more images hold every 5th one back for this evaluation; smaller sets are
evaluated on their training images (still a fixed grid, so successive values compare exactly).
The same evaluation scores the candidate starts of the guard (models/trainer/guard.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from models.trainer.base import BaseComponents
from models.trainer.concept import ConceptModel
from models.trainer.data import encode_images
from models.trainer.loss import denoising_loss

HOLD_BACK_MIN_IMAGES = 10
HOLD_BACK_EVERY = 5
EVAL_TIMESTEPS = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
MAX_EVAL_ROWS = 32


def split_for_eval(images: Sequence[Image.Image]) -> tuple[list[Image.Image], list[Image.Image], str]:
    """(training images, evaluation images, "held_back" | "training_images")."""
    if len(images) < HOLD_BACK_MIN_IMAGES:
        return list(images), list(images), "training_images"
    held = [image for i, image in enumerate(images) if i % HOLD_BACK_EVERY == HOLD_BACK_EVERY - 1]
    kept = [image for i, image in enumerate(images) if i % HOLD_BACK_EVERY != HOLD_BACK_EVERY - 1]
    return kept, held, "held_back"


def plateaued(losses: Sequence[float], *, patience: int, min_delta: float) -> bool:
    """True when the last `patience` losses improve on the best before them by no more than
    `min_delta` (relative). Pure, so other trainers (models/text) can share the rule."""
    if len(losses) <= patience:
        return False
    before = min(losses[:-patience])
    return min(losses[-patience:]) > before * (1.0 - min_delta)


class SeededEval:
    """Denoising loss of a concept on fixed latents, noises and timesteps (at most `max_rows` pairs
    of image and timestep, chosen once by `seed`): the same value for the same concept, every call."""

    def __init__(self, base: BaseComponents, images: Sequence[Image.Image], *, resolution: int, prompt: str,
                 seed: int = 0, max_rows: int = MAX_EVAL_ROWS) -> None:
        self.base = base
        self.prompt = prompt
        means = encode_images(base, images, resolution=resolution, flip=False).mean
        generator = torch.Generator().manual_seed(seed)
        pairs = [(view, t) for view in range(means.shape[0]) for t in EVAL_TIMESTEPS]
        if len(pairs) > max_rows:
            pairs = [pairs[int(i)] for i in torch.randperm(len(pairs), generator=generator)[:max_rows]]
        self.latents = torch.stack([means[view] for view, _ in pairs]).to(base.device)
        self.timesteps = torch.tensor([t for _, t in pairs], device=base.device)
        self.noise = torch.randn(self.latents.shape, generator=generator).to(base.device)

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    @torch.no_grad()
    def __call__(self, concept: ConceptModel) -> float:
        prompt = concept.prompt(self.prompt)
        with torch.autocast(self.base.device.type, dtype=self.base.weight_dtype,
                            enabled=self.base.weight_dtype != torch.float32):
            loss = denoising_loss(self.base, concept, self.latents, [prompt] * self.rows, self.noise, self.timesteps)
        return float(loss)
