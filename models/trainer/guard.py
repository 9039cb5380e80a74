"""The guarded start: score every candidate start on views the job does not fit to, leave the token
only for a candidate that beats it by more than the scores' noise.

The views are the job's evaluation (models/trainer/stopping.py): uploads held back where there are
10 or more (the booster predicts from the rest), else the trainer's augmentation of the uploads
(mirror images, latents drawn from the VAE's posterior). Every candidate is scored on the same rows
(view, timestep, noise), so candidate and token compare row by row: a candidate wins only where its
mean paired gain over the token (token's loss minus its loss, per row) exceeds MARGIN_STANDARD_ERRORS
standard errors of that mean; among those, the lowest mean loss starts, ties to the earliest listed
(the token first). Without any that clears the margin the token starts, so a booster's start is never
taken on a difference the evaluation cannot tell from noise. `choose_start` and `describe_scores` are
pure, for other trainers (models/text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from models.trainer.base_model import BaseComponents
from models.trainer.concept import ConceptModel, InitialState
from models.trainer.config import TrainConfig

TOKEN = "token"

# A booster resolver maps (base components, images, config) to an initial state, or to several
# (each its own `name`), or None when no booster is registered for the base model. The guard
# scores every one of them against the token. models.booster.resolver.registered_booster builds
# the real one from a registry; the trainer gets it from its caller (None: no booster).
BoosterResolver = Callable[
    [BaseComponents, Sequence[Image.Image], TrainConfig], InitialState | Sequence[InitialState] | None
]


# Chosen on the development concepts (bench/guard_margin.py --split dev): the smallest margin that no
# candidate worse than the token on unseen views cleared (the highest such scored 2.33 standard errors
# on 2 held-back uploads; on augmented views none scored above 0).
MARGIN_STANDARD_ERRORS = 2.5


@dataclass(frozen=True)
class Gain:
    """A candidate's paired gain over the token on the guard's rows: mean(token - candidate) and its
    standard error, both relative to the token's mean loss."""

    mean: float
    standard_error: float

    def clears(self, standard_errors: float = MARGIN_STANDARD_ERRORS) -> bool:
        """Whether the gain exceeds `standard_errors` standard errors (and is a gain at all)."""
        return self.mean > 0.0 and self.mean > standard_errors * self.standard_error


def paired_gain(token: torch.Tensor, candidate: torch.Tensor) -> Gain:
    """The candidate's gain over the token from their per-row losses on the same rows."""
    difference = (token.double() - candidate.double()).flatten()
    scale = float(token.double().mean())
    rows = difference.numel()
    error = float(difference.std(unbiased=True)) / rows**0.5 if rows > 1 else float("inf")
    return Gain(mean=float(difference.mean()) / scale, standard_error=error / scale)


def choose_start(
    scores: Mapping[str, float],
    gains: Mapping[str, Gain] | None = None,
    *,
    standard_errors: float = MARGIN_STANDARD_ERRORS,
) -> str:
    """The candidate with the lowest score among the first listed (the token) and those whose gain
    over it clears the margin (`gains` None: all); ties go to the earliest."""
    first = next(iter(scores))
    eligible = [
        name
        for name in scores
        if name == first or gains is None or (name in gains and gains[name].clears(standard_errors))
    ]
    return min(eligible, key=scores.__getitem__)


def describe_scores(
    winner: str,
    scores: Mapping[str, float],
    gains: Mapping[str, Gain] | None = None,
    *,
    views: str = "the job's images",
    standard_errors: float = MARGIN_STANDARD_ERRORS,
) -> str:
    """One line for init_note: which start won, why, and every candidate's score."""
    listed = ", ".join(f"{name} {value:.5f}" for name, value in scores.items())
    if gains is None:
        return f"guarded start: {winner} scored lowest on {views} (loss: {listed})"
    first = next(iter(scores))
    if winner != first:
        gain = gains[winner]
        why = (
            f"{winner} beat the {first} on {views} by {gain.mean:.2%} (paired, more than "
            f"{standard_errors:g} standard errors of {gain.standard_error:.2%}) and scored lowest"
        )
    else:
        best = min((name for name in scores if name != first), key=scores.__getitem__, default=None)
        closest = (
            f"; closest: {best} {gains[best].mean:+.2%} ± {gains[best].standard_error:.2%}"
            if best is not None and best in gains
            else ""
        )
        why = f"the {first}: no candidate beat it on {views} by more than {standard_errors:g} standard errors{closest}"
    return f"guarded start: {why} (loss: {listed})"


def guard_report(
    winner: str, gains: Mapping[str, Gain], *, views: str, rows: int, standard_errors: float = MARGIN_STANDARD_ERRORS
) -> dict[str, Any]:
    """The manifest's `init_guard`: the rule, what it was scored on, the winner and each gain."""
    return {
        "rule": f"a candidate leaves the token only if its mean paired gain exceeds {standard_errors:g} "
        "standard errors",
        "standard_errors": standard_errors,
        "evaluated_on": views,
        "rows": rows,
        "winner": winner,
        "gains": {
            name: {"mean": round(gain.mean, 6), "standard_error": round(gain.standard_error, 6)}
            for name, gain in gains.items()
        },
    }


@dataclass
class Candidate:
    """One possible start: token vectors and, optionally, LoRA tensors to load."""

    name: str
    state: InitialState


def candidates(token_embedding: torch.Tensor, states: Sequence[InitialState], *, has_lora: bool) -> list[Candidate]:
    """token, then per booster state: its embedding (fresh LoRA), its embedding + predicted LoRA
    (where it predicts one and the job trains LoRA), and the token/booster midpoint."""
    found = [Candidate(TOKEN, InitialState(embedding=token_embedding))]
    for state in states:
        name = state.name
        # The embedding-only starts train from the booster's fixed LoRA A (zero B) where it has one.
        found.append(Candidate(name, state.embedding_only()))
        if has_lora and (state.unet_lora or state.text_encoder_lora):
            found.append(Candidate(f"{name}+lora", state))
        blend = 0.5 * (token_embedding + state.embedding.to(token_embedding))
        found.append(Candidate(f"{name}/token midpoint", state.embedding_only(blend)))
    return found


def snapshot(concept: ConceptModel) -> InitialState:
    """The concept's current vectors and LoRA tensors, copied (to restore later)."""
    unet, te = concept.lora_state()
    return InitialState(
        embedding=concept.embedding.detach().clone(),
        unet_lora={k: v.detach().clone() for k, v in unet.items()} if unet else None,
        text_encoder_lora={k: v.detach().clone() for k, v in te.items()} if te else None,
    )


def guarded_start(
    concept: ConceptModel,
    found: Sequence[Candidate],
    rows: Callable[[ConceptModel], torch.Tensor],
    *,
    standard_errors: float = MARGIN_STANDARD_ERRORS,
) -> tuple[Candidate, dict[str, float], dict[str, Gain]]:
    """Score each candidate on the same rows (LoRA reset to the job's fresh one in between); leave the
    winner set. (winner, mean loss of each, each non-token candidate's paired gain over the token)."""
    fresh = snapshot(concept)
    losses: dict[str, torch.Tensor] = {}
    for candidate in found:
        concept.init_from_state(_over(fresh, candidate.state))
        losses[candidate.name] = rows(concept)
    first = found[0].name
    scores = {name: round(float(value.mean()), 6) for name, value in losses.items()}
    gains = {name: paired_gain(losses[first], value) for name, value in losses.items() if name != first}
    chosen = choose_start(scores, gains, standard_errors=standard_errors)
    winner = next(c for c in found if c.name == chosen)
    concept.init_from_state(_over(fresh, winner.state))
    return winner, scores, gains


def _over(fresh: InitialState, state: InitialState) -> InitialState:
    """The candidate's tensors where it has them, the fresh LoRA elsewhere."""
    return InitialState(
        embedding=state.embedding,
        unet_lora=state.unet_lora or fresh.unet_lora,
        text_encoder_lora=state.text_encoder_lora or fresh.text_encoder_lora,
        note=state.note,
    )
