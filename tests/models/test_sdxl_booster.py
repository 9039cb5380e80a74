"""The booster on SDXL: the dataset builder, fitted targets and booster training handle both
encoders (a token vector spans both), and the trained booster starts a job through the guard."""

import sys

import pytest
import torch
import yaml

from models.booster import targets as targets_command
from models.booster import train_booster as booster_command
from models.booster.apply import BatchedConcepts, PlaceholderTokenizers, per_row_denoising_loss, word_embedding
from models.booster.dataset import build, load_sets
from models.booster.network import load_booster
from models.booster.resolver import registered_booster
from models.registry import load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.config import TrainConfig
from models.trainer.sdxl import SDXLConcept
from models.trainer.sdxl_random import TINY_WIDTHS, build_tiny_sdxl
from models.trainer.train import train


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory) -> str:
    return str(build_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl-booster") / "pipeline"))


def test_batched_concepts_give_each_encoder_its_slice_as_the_job_concept_does(tiny_sdxl):
    """One set through BatchedConcepts == the trainer's SDXLConcept with the same vectors."""
    base = load_base(tiny_sdxl, pick_device("cpu"))
    vectors = torch.randn(1, 2, sum(TINY_WIDTHS)) * 0.1
    latents, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    timesteps = torch.tensor([100, 600])
    tokens = ["<b>", "<b>_1"]
    tokenizers = PlaceholderTokenizers(base, tokens)
    batched = tokenizers.batched(base, {})
    try:
        batched.set(vectors, {}, rows_per_set=2)
        with torch.no_grad():
            per_row = per_row_denoising_loss(
                base, latents, tokenizers(["a photo of <b> <b>_1"] * 2, base.device), noise, timesteps
            )
    finally:
        batched.close()
    assert isinstance(batched, BatchedConcepts) and len(batched._placeholders) == 2

    from models.trainer.loss import denoising_loss

    concept = SDXLConcept(base, token="<b>", num_vectors=2)
    try:
        with torch.no_grad():
            concept.embedding.copy_(vectors[0])
            expected = denoising_loss(base, concept, latents, [concept.prompt("a photo of {}")] * 2, noise, timesteps)
    finally:
        concept.close()
    torch.testing.assert_close(per_row.mean(), expected)
    # The token init spans both encoders.
    assert word_embedding(base).shape == (sum(TINY_WIDTHS),)


def test_the_dataset_builder_samples_words_from_the_sdxl_pipeline(tiny_sdxl, tmp_path):
    base = load_base(tiny_sdxl, pick_device("cpu"))
    with torch.no_grad():
        build(base, ["star", "circle"], tmp_path / "words", images_per_word=2, steps=2, guidance_scale=2.0)
    sets = load_sets(tmp_path / "words")
    assert [word for word, _ in sets] == ["star", "circle"]
    assert all(len(images) == 2 and images[0].size == (32, 32) for _, images in sets)


def test_a_tiny_sdxl_booster_trains_end_to_end_and_starts_jobs_through_the_guard(
    tiny_sdxl, concept_images, tmp_path, monkeypatch
):
    threads = str(torch.get_num_threads())  # the commands set it process-wide; later tests expect the same
    common = ["--base-model", tiny_sdxl, "--threads", threads]
    monkeypatch.setattr(
        sys,
        "argv",
        [sys.executable, *common, "--concepts", "2", "--views", "4", "--steps", "2", "--chunk", "2"]
        + ["--out", str(tmp_path / "targets")],
    )
    targets_command.main()
    _, fitted = targets_command.load_targets(tmp_path / "targets")
    assert fitted.shape == (2, sum(TINY_WIDTHS))  # both encoders' rows, fitted together

    # Regression onto the targets and the end-to-end denoising loss (which trains the LoRA head) at once.
    monkeypatch.setattr(
        sys,
        "argv",
        [sys.executable, *common, "--targets", str(tmp_path / "targets"), "--embedding-weight", "1"]
        + ["--denoise-weight", "1", "--steps", "3", "--sets", "2", "--input-views", "3", "--target-views", "2"]
        + ["--pool-views", "5", "--rank", "2", "--work-dir", str(tmp_path / "work"), "--out", str(tmp_path / "b")],
    )
    booster_command.main()
    booster = load_booster(tmp_path / "b")
    assert booster.config.embedding_width == sum(TINY_WIDTHS)
    untrained = booster_command.make_booster(load_base(tiny_sdxl, pick_device("cpu")), tiny_sdxl, rank=2, image_size=32)
    assert not torch.equal(booster.lora_basis, untrained.lora_basis)
    assert not torch.equal(booster.embedding_head.weight, untrained.embedding_head.weight)

    registry_file = tmp_path / "registry.yaml"
    registry_file.write_text(
        yaml.safe_dump(
            {
                "default": "tiny-xl",
                "models": {
                    "tiny-xl": {"path": tiny_sdxl, "resolution": 32, "family": "sdxl", "booster": str(tmp_path / "b")}
                },
            }
        )
    )
    registry = load_registry(registry_file)
    config = TrainConfig(base_model="tiny-xl", mode="pivotal", init="booster", steps=2, lora_rank=2, batch_size=2)
    result = train(config, concept_images, tmp_path / "out", registry=registry, booster=registered_booster(registry))
    assert set(result.init_scores) == {"token", "booster", "booster+lora", "booster/token midpoint"}
    winner = result.manifest["init_guard"]["winner"]
    assert winner in result.init_scores and result.init_note.startswith("guarded start: ")
    # The token is left only for a candidate that beats it beyond the margin, and then the lowest one.
    if winner != "token":
        assert f"{winner} beat the token" in result.init_note
        assert result.init_scores[winner] == min(result.init_scores.values())
    assert result.manifest["init_used"] == ("token" if winner == "token" else "booster")
