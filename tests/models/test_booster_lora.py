"""The booster's LoRA lives in one space per base model: fixed down-projections A, predicted B."""

from pathlib import Path

import pytest
import torch

from models.booster.network import fixed_lora_down, is_up, load_booster
from models.booster.resolver import initial_state_from
from models.booster.train_booster import fit_lora_head, make_booster
from models.enums import Init, Mode
from models.registry import load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.concept import InitialState
from models.trainer.config import TrainConfig
from models.trainer.defaults import with_defaults
from models.trainer.guard import candidates
from models.trainer.sdxl import concept_model

WEIGHTS = Path(__file__).parents[2] / "models/booster/weights"


@pytest.fixture()
def booster_and_base(random_tiny):
    base = load_base(random_tiny, pick_device("cpu"))
    booster = make_booster(base, "random-tiny", rank=4, image_size=32)
    with torch.no_grad():
        booster.lora_mean.normal_(0, 0.01)
    return booster, base


def _pivotal(lora_alpha: float | None = None) -> TrainConfig:
    config = TrainConfig(base_model="leap-tiny", mode=Mode.PIVOTAL, init=Init.BOOSTER, steps=1, lora_alpha=lora_alpha)
    return with_defaults(config, load_registry())


def test_the_booster_start_fits_the_trainers_lora_and_shares_its_fixed_down_projection(
    booster_and_base, concept_images
):
    """Every booster candidate the guard scores loads into the job's own peft LoRA: A is the booster's
    fixed down-projection, B the prediction (+lora) or zero (embedding only, and the midpoint)."""
    booster, base = booster_and_base
    state = initial_state_from(booster, concept_images, _pivotal())
    predicted = booster.unflatten_lora(booster.lora_up(booster.hidden(_pixels(booster, concept_images)))[0])
    concept = concept_model(base, token="<leap>", num_vectors=1)
    try:
        concept.add_lora(rank=4, alpha=4.0, text_encoder=False)
        live, _ = concept.lora_state()
        assert live is not None and state.unet_lora is not None
        fresh = {key: value.clone() for key, value in live.items()}  # peft's state dict shares the weights
        assert {k: v.shape for k, v in state.unet_lora.items()} == {k: v.shape for k, v in fresh.items()}
        found = {c.name: c.state for c in candidates(concept.embedding.detach(), [state], has_lora=True)}
        assert set(found) == {"token", "booster", "booster+lora", "booster/token midpoint"}
        for name in ("booster", "booster+lora", "booster/token midpoint"):
            concept.init_from_state(found[name])
            loaded, _ = concept.lora_state()
            assert loaded is not None
            for key, value in loaded.items():
                if is_up(key):
                    wanted = predicted[key] if name == "booster+lora" else torch.zeros_like(value)
                else:
                    wanted = booster.unflatten_lora(torch.zeros(booster.config.lora_numel))[key]
                    assert not torch.equal(value, fresh[key])  # not the job's own random A
                torch.testing.assert_close(value, wanted.detach(), atol=1e-6, rtol=0)
    finally:
        concept.close()


def test_a_job_with_another_alpha_gets_the_same_lora_delta(booster_and_base, concept_images):
    """peft scales a LoRA by alpha / rank; the booster predicts at scale 1, so B is rescaled."""
    booster, _ = booster_and_base
    plain = initial_state_from(booster, concept_images, _pivotal(4.0)).unet_lora
    doubled = initial_state_from(booster, concept_images, _pivotal(8.0)).unet_lora
    assert plain is not None and doubled is not None
    for key, value in plain.items():
        torch.testing.assert_close(doubled[key] * (2.0 if is_up(key) else 1.0), value)


def test_the_fixed_down_projection_is_seeded_drawn_like_peft_and_shared_by_leap_tinys_boosters():
    boosters = [load_booster(WEIGHTS / name) for name in ("leap-tiny", "leap-tiny-world")]
    first = boosters[0]
    regenerated = fixed_lora_down(first.config.lora_layout, first.config.lora_rank, first.config.lora_down_seed)
    assert torch.equal(first.lora_down, regenerated)
    assert all(torch.equal(b.lora_down, first.lora_down) for b in boosters)
    # peft's gaussian init: A ~ N(0, 1/rank), so a booster-started LoRA learns at a fresh one's rate.
    assert abs(float(first.lora_down.std()) - 1 / first.config.lora_rank) < 0.01
    other = fixed_lora_down(first.config.lora_layout, first.config.lora_rank, first.config.lora_down_seed + 1)
    assert not torch.equal(other, regenerated)


def test_the_lora_head_is_the_targets_principal_components_and_a_ridge_regression(booster_and_base):
    """Targets that the set features predict linearly are recovered on held-out sets; targets that
    have nothing to do with the features are not (the fit reports it)."""
    booster, _ = booster_and_base
    generator = torch.Generator().manual_seed(0)
    sets, width, numel = 64, booster.config.hidden_width, booster.config.lora_numel
    # Sets that differ in 3 ways: their features and their targets are both (noisy) images of those.
    latent = torch.randn(sets, 3, generator=generator)
    noise = 0.01 * torch.randn(sets, width, generator=generator)
    features = latent @ torch.randn(3, width, generator=generator) + noise
    directions = torch.randn(3, numel, generator=generator)
    lora_up = 0.5 + latent @ directions * 0.01
    report = fit_lora_head(booster, features, lora_up)
    assert report["basis_variance_share"] > 0.999 and report["held_out_lora_r2"] > 0.9
    predicted = booster.lora_up(features)
    assert float((predicted - lora_up).pow(2).sum() / (lora_up - lora_up.mean(0)).pow(2).sum()) < 0.05

    unrelated = 0.5 + torch.randn(sets, 3, generator=generator) @ directions * 0.01
    assert fit_lora_head(booster, features, unrelated)["held_out_lora_r2"] < 0.2


def test_an_embedding_only_state_keeps_its_fixed_lora_for_the_midpoint():
    fixed = {"x.lora_A.weight": torch.ones(2, 3), "x.lora_B.weight": torch.zeros(3, 2)}
    state = InitialState(embedding=torch.ones(1, 4), unet_lora=None, fresh_unet_lora=fixed, note="n")
    blend = state.embedding_only(torch.zeros(1, 4))
    assert blend.unet_lora is fixed and blend.note == "n" and torch.equal(blend.embedding, torch.zeros(1, 4))


def _pixels(booster, images):
    from models.trainer.data import images_to_tensor

    return images_to_tensor(images, booster.config.image_size)[None]
