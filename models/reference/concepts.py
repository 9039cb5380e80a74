"""The personalization benchmark set: concepts leap-tiny was never taught by name.

Each concept is a held-out (shape, colour) pair or an unnamed in-between colour, with
TRAIN_VIEWS views to fine-tune on and HELD_OUT_VIEWS further views that only evaluation
reads. The set is split into a development part (for tuning recipes and the booster) and
a validation part that no training or tuning touches; benchmarks report on validation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from models.reference.world import Concept, is_held_out, mix_colours, render

TRAIN_VIEWS = 8
HELD_OUT_VIEWS = 4
VIEW_SEED_BASE = 7_000_000  # far from any seed the base model's training drew


@dataclass(frozen=True)
class BenchmarkConcept:
    name: str
    concept: Concept
    split: str  # "dev" | "val"

    def views(self, size: int = 32) -> list[Image.Image]:
        """The views a user would upload."""
        return [render(self.concept, VIEW_SEED_BASE + i, size) for i in range(TRAIN_VIEWS)]

    def held_out_views(self, size: int = 32) -> list[Image.Image]:
        """Views never used for fitting: the held-out denoising loss is measured on them."""
        return [render(self.concept, VIEW_SEED_BASE + TRAIN_VIEWS + i, size) for i in range(HELD_OUT_VIEWS)]


def _between(shape: str, a: str, b: str, pattern: str) -> Concept:
    return Concept(shape=shape, colour=mix_colours(a, b), pattern=pattern)


def _held_out(shape: str, colour: str, pattern: str) -> Concept:
    concept = Concept.named(shape, colour, pattern)
    assert is_held_out(concept), f"{shape}/{colour} must be a pair the base model never saw"
    return concept


_DEV = {
    "dev-teal-dotted-circle": _held_out("circle", "teal", "dotted"),
    "dev-yellow-solid-star": _held_out("star", "yellow", "solid"),
    "dev-brown-striped-triangle": _held_out("triangle", "brown", "striped"),
    "dev-redorange-checkered-square": _between("square", "red", "orange", "checkered"),
    "dev-bluecyan-solid-heart": _between("heart", "blue", "cyan", "solid"),
    "dev-greenlime-dotted-hexagon": _between("hexagon", "green", "lime", "dotted"),
}
_VAL = {
    "val-purple-striped-square": _held_out("square", "purple", "striped"),
    "val-teal-checkered-hexagon": _held_out("hexagon", "teal", "checkered"),
    "val-brown-solid-cross": _held_out("cross", "brown", "solid"),
    "val-purple-dotted-diamond": _held_out("diamond", "purple", "dotted"),
    "val-yellow-striped-heart": _held_out("heart", "yellow", "striped"),
    "val-pinkmagenta-solid-star": _between("star", "pink", "magenta", "solid"),
    "val-orangeyellow-dotted-circle": _between("circle", "orange", "yellow", "dotted"),
    "val-tealblue-striped-diamond": _between("diamond", "teal", "blue", "striped"),
}


def benchmark_concepts(split: str | None = None) -> list[BenchmarkConcept]:
    """The benchmark concepts, optionally only one split ("dev" or "val")."""
    items = [BenchmarkConcept(n, c, "dev") for n, c in _DEV.items()]
    items += [BenchmarkConcept(n, c, "val") for n, c in _VAL.items()]
    return [item for item in items if split is None or item.split == split]


def write_views(concept: BenchmarkConcept, out_dir: Path) -> list[Path]:
    """Save a concept's upload views as PNG files (for the CLI, the demo and the service)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(concept.views()):
        path = out_dir / f"{concept.name}-{index}.png"
        image.save(path)
        paths.append(path)
    return paths
