"""Jobs that stop when done: a fixed, seeded evaluation of the job's own inputs and a plateau rule.

With `steps` unset, the trainer evaluates the concept every `eval_every` steps on the same noises,
timesteps and latents each time, and stops once the last `patience` evaluations brought no relative
improvement above `min_delta` over the best before them (after `min_steps`), or at `max_steps`.
With `probe_steps` set (off by default), a start predicted by a booster is probed after that many
steps instead of waiting out `min_steps`. Uploads of 10 or more images hold every 5th one back for
this evaluation; smaller sets are evaluated on the trainer's augmentation of them (mirror images,
posterior draws: still a fixed grid, so successive values compare exactly). The same evaluation
scores the candidate starts of the guard (models/trainer/guard.py).

The rule itself (`split_for_eval`, `plateaued`, `Plateau`) knows nothing of images: the text trainer
(models/text/train.py) stops by it too, on the held-out loss of its examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Generic, TypeVar

import torch
from PIL import Image

from models.trainer.base_model import BaseComponents
from models.trainer.concept import ConceptModel
from models.trainer.config import StopRule
from models.trainer.data import encode_images
from models.trainer.loss import denoising_loss

HOLD_BACK_MIN_IMAGES = 10
HOLD_BACK_EVERY = 5
EVAL_TIMESTEPS = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
MAX_EVAL_ROWS = 32


T = TypeVar("T")
S = TypeVar("S")


def split_for_eval(items: Sequence[T], *, fallback: str = "training_images") -> tuple[list[T], list[T], str]:
    """(training items, evaluation items, "held_back" | fallback): 10 or more items hold every 5th
    back (20%, at least 2); fewer are all trained on and evaluated on (images or examples)."""
    if len(items) < HOLD_BACK_MIN_IMAGES:
        return list(items), list(items), fallback
    return *hold_back(items, every=HOLD_BACK_EVERY), "held_back"


def hold_back(items: Sequence[T], *, every: int) -> tuple[list[T], list[T]]:
    """(kept, held): every `every`-th item (in order) is held back."""
    held = [item for i, item in enumerate(items) if i % every == every - 1]
    kept = [item for i, item in enumerate(items) if i % every != every - 1]
    return kept, held


def plateaued(losses: Sequence[float], *, patience: int, min_delta: float) -> bool:
    """True when the last `patience` losses improve on the best before them by no more than
    `min_delta` (relative). Pure, so other trainers (models/text) can share the rule."""
    if len(losses) <= patience:
        return False
    before = min(losses[:-patience])
    return min(losses[-patience:]) > before * (1.0 - min_delta)


class Plateau(Generic[S]):
    """The rule over one run without `steps`, for any trainer: the evaluation curve, the best
    evaluated state (of type S, e.g. a snapshot of the concept), and phases (pivotal) that each
    get their own plateau check and `min_steps`, starting from the best loss so far.

        plateau = Plateau(rule, first_loss, first_state)
        ... every step: if plateau.due(done, last=...): converged = plateau.record(done, loss, take_state)
        ... a new phase:  plateau.new_phase(done)
    """

    def __init__(self, rule: StopRule, first_loss: float, first_state: S, *, probe: bool = False) -> None:
        self.rule = rule
        self.curve: list[tuple[int, float]] = [(0, first_loss)]
        self.best_loss, self.best_step, self.best_state = first_loss, 0, first_state
        self._phase_losses = [first_loss]
        self._phase_start = 0
        # A predicted start: one evaluation after probe_steps decides whether the first phase has anything to do.
        self.probe_step = rule.probe_steps if probe and rule.probe_steps > 0 else None

    def due(self, done: int, *, last: bool = False) -> bool:
        """Whether to evaluate after `done` steps (every eval_every, the probe's step, and at a phase's
        or the run's end)."""
        return last or done % self.rule.eval_every == 0 or done == self.probe_step

    def record(self, done: int, loss: float, state: Callable[[], S]) -> bool:
        """Add an evaluation (`state()` is taken only when it is the best so far); True when the
        current phase has converged."""
        self.curve.append((done, loss))
        self._phase_losses.append(loss)
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.best_state = loss, done, state()
        rule = self.rule
        if done == self.probe_step and self._phase_start == 0:
            return plateaued(self._phase_losses, patience=1, min_delta=rule.min_delta)
        return done - self._phase_start >= rule.min_steps and plateaued(
            self._phase_losses, patience=rule.patience, min_delta=rule.min_delta
        )

    def new_phase(self, done: int) -> None:
        """The next phase starts after `done` steps, from the best state (the caller restores it)."""
        self._phase_start = done
        self._phase_losses = [self.best_loss]

    def report(self, **extra: object) -> dict[str, object]:
        """The manifest's `stopping` entry."""
        return {
            "rule": asdict(self.rule),
            **extra,
            "probe_step": self.probe_step,
            "best_step": self.best_step,
            "best_loss": self.best_loss,
            "curve": [[step, loss] for step, loss in self.curve],
        }


class SeededEval:
    """Denoising loss of a concept on fixed latents, noises and timesteps (at most `max_rows` pairs
    of view and timestep, chosen once by `seed`): the same value for the same concept, every call.

    With `augment` the views are what the trainer's augmentation makes of the images: each image
    and (with `flip`) its mirror image, each latent drawn once from the VAE's posterior rather than
    its mean. That is the evaluation of a job whose uploads are too few to hold any back."""

    def __init__(
        self,
        base: BaseComponents,
        images: Sequence[Image.Image],
        *,
        resolution: int,
        prompt: str,
        seed: int = 0,
        max_rows: int = MAX_EVAL_ROWS,
        augment: bool = False,
        flip: bool = False,
    ) -> None:
        self.base = base
        self.prompt = prompt
        encoded = encode_images(base, images, resolution=resolution, flip=augment and flip)
        means, stds = encoded.mean, encoded.std
        if encoded.flipped_mean is not None and encoded.flipped_std is not None:
            means, stds = torch.cat([means, encoded.flipped_mean]), torch.cat([stds, encoded.flipped_std])
        generator = torch.Generator().manual_seed(seed)
        pairs = [(view, t) for view in range(means.shape[0]) for t in EVAL_TIMESTEPS]
        if len(pairs) > max_rows:
            pairs = [pairs[int(i)] for i in torch.randperm(len(pairs), generator=generator)[:max_rows]]
        latents = torch.stack([means[view] for view, _ in pairs])
        if augment:
            spread = torch.stack([stds[view] for view, _ in pairs])
            latents = latents + spread * torch.randn(latents.shape, generator=generator)
        self.latents = latents.to(base.device)
        self.timesteps = torch.tensor([t for _, t in pairs], device=base.device)
        self.noise = torch.randn(self.latents.shape, generator=generator).to(base.device)

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    @torch.no_grad()
    def per_row(self, concept: ConceptModel) -> torch.Tensor:
        """The loss of every row (on the CPU), for paired comparisons of two states (the guard's)."""
        prompt = concept.prompt(self.prompt)
        with torch.autocast(
            self.base.device.type, dtype=self.base.weight_dtype, enabled=self.base.weight_dtype != torch.float32
        ):
            losses = denoising_loss(
                self.base, concept, self.latents, [prompt] * self.rows, self.noise, self.timesteps, per_sample=True
            )
        return losses.float().cpu()

    def __call__(self, concept: ConceptModel) -> float:
        return float(self.per_row(concept).mean())
