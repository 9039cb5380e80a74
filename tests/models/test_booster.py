import pytest
import torch
import yaml

from models.booster.registry import booster_initial_state, predict
from models.booster.train import make_booster
from models.trainer.base import load_base, pick_device
from models.trainer.config import TrainConfig
from models.trainer.errors import BaseModelError
from models.trainer.train import train


@pytest.fixture()
def registered_booster(random_tiny, tmp_path, monkeypatch):
    """A (briefly perturbed) booster for random_tiny, registered through LEAP_MODEL_REGISTRY."""
    base = load_base(random_tiny, pick_device("cpu"))
    booster = make_booster(base, "random-tiny", rank=4, image_size=32)
    with torch.no_grad():
        booster.lora_mean.normal_(0, 0.01)
        booster.embedding_head.bias.add_(0.5)
    booster.save(tmp_path / "booster")
    registry = {"default": "random-tiny", "models": {"random-tiny": {
        "path": random_tiny, "resolution": 32, "booster": str(tmp_path / "booster")}}}
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("LEAP_MODEL_REGISTRY", str(tmp_path / "registry.yaml"))
    return booster


def test_booster_is_order_invariant_over_the_image_set(registered_booster, concept_images):
    forward, _ = predict(registered_booster, concept_images)
    backward, _ = predict(registered_booster, list(reversed(concept_images)))
    torch.testing.assert_close(forward, backward, atol=1e-5, rtol=1e-5)


def test_pivotal_starts_from_the_booster_prediction(registered_booster, random_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model="random-tiny", mode="pivotal", init="booster", steps=1, batch_size=1,
                         embedding_lr=1e-9, lora_lr=1e-9, pivot_embedding_lr=1e-9)
    result = train(config, concept_images, tmp_path / "out")
    assert result.init_used == "booster"
    embedding, lora = predict(registered_booster, concept_images)
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "out" / "learned_embeds.safetensors"))["<leap>"]
    torch.testing.assert_close(saved, embedding, atol=1e-5, rtol=0)
    state = booster_initial_state(load_base(random_tiny, pick_device("cpu")), concept_images, config)
    assert state is not None and state.unet_lora is not None
    assert set(state.unet_lora) == set(lora)


def test_a_different_lora_rank_uses_the_embedding_only(registered_booster, random_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model="random-tiny", mode="lora", init="booster", steps=1, batch_size=1, lora_rank=8)
    result = train(config, concept_images, tmp_path)
    assert result.init_used == "booster" and result.init_note.startswith("embedding only")


def test_a_booster_for_another_base_model_fails_clearly(registered_booster, leap_tiny, concept_images, tmp_path,
                                                         monkeypatch):
    registry = {"default": "leap-tiny", "models": {"leap-tiny": {
        "path": leap_tiny, "resolution": 32, "booster": str(tmp_path.parent / "booster-elsewhere")}}}
    registered_booster.save(tmp_path.parent / "booster-elsewhere")
    (tmp_path / "wrong.yaml").write_text(yaml.safe_dump(registry))
    monkeypatch.setenv("LEAP_MODEL_REGISTRY", str(tmp_path / "wrong.yaml"))
    config = TrainConfig(base_model="leap-tiny", mode="textual_inversion", init="booster", steps=1, batch_size=1)
    with pytest.raises(BaseModelError, match="trained for random-tiny"):
        train(config, concept_images, tmp_path / "out")


def test_the_committed_leap_tiny_booster_fits_leap_tiny_and_reads_the_images(leap_tiny):
    """The shipped booster loads for leap-tiny, is small, and predicts different starts for different concepts.

    Whether it speeds training up is measured by models.booster.benchmark, not here."""
    from pathlib import Path

    from models.booster.registry import checked_booster, registered_booster_path
    from models.reference.concepts import benchmark_concepts

    base = load_base(leap_tiny, pick_device("cpu"))
    directory = registered_booster_path(base)
    assert directory is not None
    assert sum(p.stat().st_size for p in Path(directory).iterdir()) <= 10 * 2**20
    booster = checked_booster(directory, base)
    first, second = benchmark_concepts("dev")[:2]
    config = TrainConfig(base_model="leap-tiny", mode="pivotal")
    state_a = booster_initial_state(base, first.views(), config)
    state_b = booster_initial_state(base, second.views(), config)
    assert state_a is not None and state_b is not None
    assert torch.isfinite(state_a.embedding).all()
    assert (state_a.embedding - state_b.embedding).abs().max() > 1e-3
    # This booster's LoRA prediction hurt on the development concepts, so jobs take its embedding only.
    assert not booster.config.use_lora and state_a.unet_lora is None
    assert state_a.note.startswith("embedding only")
