"""The guarded start: score every candidate start on the job's own images, start from the best.

A booster can then never make a start worse than the plain token: the token is always a candidate,
and ties go to it. `choose_start` and `describe_scores` are pure, for other trainers (models/text).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

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


def choose_start(scores: Mapping[str, float]) -> str:
    """The candidate with the lowest score; ties go to the earliest (list the token first)."""
    return min(scores, key=scores.__getitem__)


def describe_scores(winner: str, scores: Mapping[str, float]) -> str:
    """One line for init_note: which start won and every candidate's score."""
    listed = ", ".join(f"{name} {value:.5f}" for name, value in scores.items())
    return f"guarded start: {winner} scored lowest on the job's images (loss: {listed})"


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
        found.append(Candidate(name, InitialState(embedding=state.embedding, note=state.note)))
        if has_lora and (state.unet_lora or state.text_encoder_lora):
            found.append(Candidate(f"{name}+lora", state))
        blend = 0.5 * (token_embedding + state.embedding.to(token_embedding))
        found.append(Candidate(f"{name}/token midpoint", InitialState(embedding=blend, note=state.note)))
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
    concept: ConceptModel, found: Sequence[Candidate], score: Callable[[ConceptModel], float]
) -> tuple[Candidate, dict[str, float]]:
    """Score each candidate (LoRA reset to the job's fresh one in between); leave the winner set."""
    fresh = snapshot(concept)
    scores: dict[str, float] = {}
    for candidate in found:
        concept.init_from_state(_over(fresh, candidate.state))
        scores[candidate.name] = round(score(concept), 6)
    winner = next(c for c in found if c.name == choose_start(scores))
    concept.init_from_state(_over(fresh, winner.state))
    return winner, scores


def _over(fresh: InitialState, state: InitialState) -> InitialState:
    """The candidate's tensors where it has them, the fresh LoRA elsewhere."""
    return InitialState(
        embedding=state.embedding,
        unet_lora=state.unet_lora or fresh.unet_lora,
        text_encoder_lora=state.text_encoder_lora or fresh.text_encoder_lora,
        note=state.note,
    )
