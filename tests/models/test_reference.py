import json
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from models.reference.classifier import classify, load_classifier, score
from models.reference.quality import generate
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, render


def test_leap_tiny_loads_like_any_stable_diffusion_pipeline(leap_tiny):
    index = json.loads((Path(leap_tiny) / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipeline = StableDiffusionPipeline.from_pretrained(leap_tiny)
    assert pipeline.vae_scale_factor == 4 and pipeline.unet.config.sample_size == 8
    image = pipeline(
        "a photo of a red striped star", num_inference_steps=3, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (32, 32)


def test_the_tokenizer_ships_in_clip_bpe_format(leap_tiny):
    folder = Path(leap_tiny) / "tokenizer"
    assert (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file()


def test_classifier_recognises_renderer_ground_truth():
    classifier = load_classifier()
    concepts = [Concept.named(s, c, p) for s, c, p in zip(SHAPES, list(COLOURS)[:8], PATTERNS * 2, strict=True)]
    predictions = classify(classifier, [render(c, 5_000_000 + i) for i, c in enumerate(concepts)])
    assert sum(p["shape"] == c.shape for p, c in zip(predictions, concepts, strict=True)) >= 7
    assert sum(p["colour"] == c.colour_name for p, c in zip(predictions, concepts, strict=True)) >= 7


def test_generations_show_what_the_caption_says(leap_tiny):
    pipeline = StableDiffusionPipeline.from_pretrained(leap_tiny)
    pipeline.set_progress_bar_config(disable=True)
    classifier = load_classifier()
    concepts = [
        Concept.named("star", "red", "solid"),
        Concept.named("circle", "blue", "dotted"),
        Concept.named("square", "green", "striped"),
        Concept.named("heart", "pink", "solid"),
    ]
    totals = {"shape": 0.0, "colour": 0.0}
    for concept in concepts:
        accuracy = score(classifier, generate(pipeline, concept.caption(), [0, 1, 2], steps=20), concept)
        for key in totals:
            totals[key] += accuracy[key] / len(concepts)
    # Chance is 1/8 for shape and 1/12 for colour; the benchmark measures the real rates.
    assert totals["shape"] >= 0.5 and totals["colour"] >= 0.5, totals
