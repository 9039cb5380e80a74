"""Image previews of a leap-tiny training: rendered from the written files, the right pictures, the
manifest's `previews` section, and the shared base model left exactly as loaded."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from models.previews import fill, prompt_templates, record
from models.registry import load_registry
from models.trainer.base_model import load_base
from models.trainer.config import TrainConfig
from models.trainer.evaluate import pipeline_for, sample_images
from models.trainer.preview import (
    GRID_FILE,
    LABEL_WIDTH,
    PreviewError,
    cell_size,
    prompt_file,
    render_image_previews,
)
from models.trainer.train import train

REGISTRY = load_registry()


@pytest.fixture(scope="module")
def pivotal_run(leap_tiny, concept_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("pivotal")
    config = TrainConfig(base_model=leap_tiny, mode="pivotal", init="token", steps=4, batch_size=2, token="<cat>")
    return out, train(config, concept_images, out, registry=REGISTRY)


def base_state(leap_tiny):
    base = load_base(leap_tiny, torch.device("cpu"))
    embeddings = base.text_encoder.get_input_embeddings()
    unet_keys = sorted(base.unet.state_dict())
    return len(base.tokenizer), tuple(embeddings.weight.shape), embeddings.weight.sum().item(), unet_keys


def test_previews_render_from_the_written_files_and_leave_the_base_as_loaded(leap_tiny, pivotal_run, tmp_path):
    out, result = pivotal_run
    before_state = base_state(leap_tiny)
    prompts = fill(prompt_templates(REGISTRY.get("leap-tiny")), "<cat>")  # type: ignore[arg-type]
    previews = render_image_previews(leap_tiny, out, token="<cat>", prompts=prompts, seeds=(0, 1), steps=4)

    assert base_state(leap_tiny) == before_state
    assert previews.seconds > 0 and previews.prompts == ["a photo of <cat>", "a close-up picture of <cat>"]
    cell = cell_size(32)
    with Image.open(out / GRID_FILE) as grid:
        assert grid.format == "PNG" and grid.size == (LABEL_WIDTH + 2 * cell, 2 * 2 * cell)
    for index in range(2):
        with Image.open(out / prompt_file(index)) as image:
            assert image.format == "PNG" and image.size == (2 * cell, cell)
    assert [(a.name, a.kind) for a in previews.artifacts] == [
        ("preview.png", "preview_grid"),
        ("preview-1.png", "preview"),
        ("preview-2.png", "preview"),
    ]

    # The fine-tuned row is the concept: the same seeds from the base alone give other pictures.
    base_images = sample_images(pipeline_for(load_base(leap_tiny, torch.device("cpu"))), prompts[:1], (0,), steps=4)
    with Image.open(out / prompt_file(0)) as row:
        tuned = row.crop((0, 0, cell, cell)).convert("RGB")
    assert tuned.tobytes() != base_images[0].resize((cell, cell), Image.Resampling.NEAREST).tobytes()

    artifacts = record(out, result.manifest, result.artifacts, previews)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["previews"]["prompts"] == prompts and manifest["previews"]["seeds"] == [0, 1]
    assert manifest["previews"]["grid"] == "preview.png" and manifest["previews"]["seconds"] > 0
    assert {"preview.png", "preview-1.png", "preview-2.png", "learned_embeds.safetensors"} <= set(manifest["files"])
    assert [a.name for a in artifacts].count("manifest.json") == 1 and artifacts[-1].name == "manifest.json"


def test_files_that_do_not_load_fail_the_previews(leap_tiny, pivotal_run, tmp_path):
    out, _ = pivotal_run
    (tmp_path / "learned_embeds.safetensors").write_bytes(b"not safetensors")
    before_state = base_state(leap_tiny)
    with pytest.raises(PreviewError, match="did not load"):
        render_image_previews(leap_tiny, tmp_path, token="<cat>", prompts=["a photo of <cat>"], seeds=(0,), steps=2)
    assert base_state(leap_tiny) == before_state
