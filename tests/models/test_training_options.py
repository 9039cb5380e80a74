"""Training options: per-image captions and presets become the prompts the trainer encodes; the batch
size is the number of prompts per step."""

from __future__ import annotations

import pytest

from models.registry import load_registry
from models.trainer.captions import caption_template
from models.trainer.concept import ConceptModel
from models.trainer.config import TrainConfig
from models.trainer.data import PERSON_TEMPLATES, STYLE_TEMPLATES
from models.trainer.errors import InvalidConfigError, InvalidImagesError
from models.trainer.train import train

REGISTRY = load_registry()


@pytest.fixture
def encoded(monkeypatch) -> list[list[str]]:
    """Every batch of prompts the trainer encodes, as it encodes them (the real encoder still runs)."""
    batches: list[list[str]] = []
    original = ConceptModel.encode_prompts

    def recording(self, prompts):
        batches.append(list(prompts))
        return original(self, prompts)

    monkeypatch.setattr(ConceptModel, "encode_prompts", recording)
    return batches


@pytest.mark.parametrize(
    ("caption", "template"),
    [
        ("a photo of [trigger] on a beach", "a photo of {} on a beach"),
        ("[TOKEN] in the snow, {watercolor}", "{} in the snow, {{watercolor}}"),
        ("TOK at night", "{} at night"),
        ("a <leap> on grass", "a {} on grass"),
        ("a dog\non the\tbeach ", "{}, a dog on the beach"),  # no placeholder: the token in front
        ("TOKENS and tokens", "{}, TOKENS and tokens"),  # TOK only as a word
    ],
)
def test_caption_places_the_token(caption, template):
    assert caption_template(caption, "<leap>") == template


def test_captions_are_the_prompts_of_their_images_and_the_preset_the_others(
    leap_tiny, concept_images, encoded, tmp_path
):
    images = concept_images[:3]
    config = TrainConfig(
        base_model=leap_tiny, mode="lora", init="token", steps=6, batch_size=3, preset="person", seed=1
    )
    captions = ["a red [trigger] on grass", None, "TOK at night"]
    result = train(config, images, tmp_path, registry=REGISTRY, captions=captions)
    assert encoded and all(len(batch) == 3 for batch in encoded)  # batch_size prompts per step
    prompts = {prompt for batch in encoded for prompt in batch}
    person = {template.format("<leap>") for template in PERSON_TEMPLATES}
    assert {"a red <leap> on grass", "<leap> at night"} <= prompts
    assert prompts - {"a red <leap> on grass", "<leap> at night"} <= person
    assert prompts & person  # the uncaptioned image trained on the person templates
    assert (result.manifest["num_captions"], result.manifest["preset"], result.manifest["batch_size"]) == (
        2,
        "person",
        3,
    )


def test_the_style_preset_picks_the_style_templates(leap_tiny, concept_images, encoded, tmp_path):
    config = TrainConfig(
        base_model=leap_tiny, mode="textual_inversion", init="token", steps=2, batch_size=2, preset="style"
    )
    train(config, concept_images[:2], tmp_path, registry=REGISTRY)
    prompts = {prompt for batch in encoded for prompt in batch}
    assert prompts and prompts <= {template.format("<leap>") for template in STYLE_TEMPLATES}


def test_captions_are_checked_against_the_images(leap_tiny, concept_images, tmp_path):
    config = TrainConfig(base_model=leap_tiny, mode="lora", init="token", steps=1, batch_size=1)
    with pytest.raises(InvalidImagesError, match="1 captions for 2 images"):
        train(config, concept_images[:2], tmp_path, registry=REGISTRY, captions=["one"])
    with pytest.raises(InvalidImagesError, match="caption of image 2"):
        train(config, concept_images[:2], tmp_path, registry=REGISTRY, captions=[None, "x" * 1001])
    with pytest.raises(InvalidConfigError) as error:
        TrainConfig(base_model=leap_tiny, preset="cartoon").validate()  # type: ignore[arg-type]
    assert error.value.field == "preset"
