"""The attribute classifier: the honest judge of what a generated image shows.

It is trained only on renderer ground truth (never on pipeline outputs) and kept apart from
the pipeline's weights. Blur and noise augmentations make it fair to slightly soft
generations. `python -m models.reference.classifier` retrains it (about 2 minutes on CPU).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, nearest_colour, render

DEFAULT_PATH = Path(__file__).resolve().parent / "weights" / "classifier" / "classifier.safetensors"
COLOUR_NAMES = tuple(COLOURS)


class AttributeClassifier(nn.Module):
    """A small CNN with one head per attribute (shape, colour, pattern)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(
            block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.shape = nn.Linear(128, len(SHAPES))
        self.colour = nn.Linear(128, len(COLOURS))
        self.pattern = nn.Linear(128, len(PATTERNS))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.features(images)
        return self.shape(features), self.colour(features), self.pattern(features)


def _to_tensor(images: Sequence[Image.Image]) -> torch.Tensor:
    array = np.stack([np.asarray(image.convert("RGB").resize((32, 32)), dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


def _augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    if rng.random() < 0.6:
        image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.2, 1.0))))
    if rng.random() < 0.5:
        noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, rng.uniform(2, 10), (32, 32, 3))
        image = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    return image


def train_classifier(steps: int = 1200, batch: int = 64, seed: int = 0) -> AttributeClassifier:
    torch.manual_seed(seed)
    rng = np.random.default_rng([seed, 7])
    model = AttributeClassifier()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in (progress := tqdm(range(steps), desc="classifier")):
        shapes = rng.integers(0, len(SHAPES), batch)
        colours = rng.integers(0, len(COLOURS), batch)
        patterns = rng.integers(0, len(PATTERNS), batch)
        images = [
            _augment(render(Concept.named(SHAPES[s], COLOUR_NAMES[c], PATTERNS[p]), int(rng.integers(2**31))), rng)
            for s, c, p in zip(shapes, colours, patterns, strict=True)
        ]
        logits = model(_to_tensor(images))
        targets = [torch.from_numpy(a).long() for a in (shapes, colours, patterns)]
        loss = torch.stack([F.cross_entropy(out, target) for out, target in zip(logits, targets, strict=True)]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=f"{float(loss):.3f}")
    return model.eval()


def load_classifier(path: Path = DEFAULT_PATH) -> AttributeClassifier:
    model = AttributeClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval()


@torch.no_grad()
def classify(model: AttributeClassifier, images: Sequence[Image.Image]) -> list[dict[str, str]]:
    """Predicted shape, colour and pattern for each image."""
    shape, colour, pattern = model(_to_tensor(images))
    return [
        {"shape": SHAPES[int(s)], "colour": COLOUR_NAMES[int(c)], "pattern": PATTERNS[int(p)]}
        for s, c, p in zip(shape.argmax(1), colour.argmax(1), pattern.argmax(1), strict=True)
    ]


def score(model: AttributeClassifier, images: Sequence[Image.Image], concept: Concept) -> dict[str, float]:
    """Share of images whose predicted attributes match the concept (colour: nearest named colour)."""
    predictions = classify(model, images)
    expected_colour = concept.colour_name or nearest_colour(concept.colour)
    n = max(1, len(predictions))
    return {
        "shape": sum(p["shape"] == concept.shape for p in predictions) / n,
        "colour": sum(p["colour"] == expected_colour for p in predictions) / n,
        "pattern": sum(p["pattern"] == concept.pattern for p in predictions) / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = train_classifier(steps=args.steps)
    # Accuracy on fresh renders (seeds the training never drew) as a sanity figure.
    rng = np.random.default_rng(12345)
    concepts = [Concept.named(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]
    images = [render(c, 10**9 + int(rng.integers(10**6))) for c in concepts]
    predictions = classify(model, images)
    accuracy = {
        key: float(
            np.mean(
                [
                    p[key] == getattr(c, "colour_name" if key == "colour" else key)
                    for p, c in zip(predictions, concepts, strict=True)
                ]
            )
        )
        for key in ("shape", "colour", "pattern")
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(args.out))
    (args.out.parent / "classifier.json").write_text(json.dumps({"render_accuracy": accuracy}, indent=2))
    print(json.dumps({"render_accuracy": accuracy}))


if __name__ == "__main__":
    main()
