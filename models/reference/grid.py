"""Draw a picture grid: one row per caption, renderer ground truth first, then one image per seed.

python -m models.reference.grid --out grid.png
python -m models.reference.grid --caption "a photo of a red striped star" --seeds 0 1 2 3
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from models.reference.quality import DEFAULT_WEIGHTS, generate, load_pipeline
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, render

DEFAULT_CAPTIONS = (
    "a photo of a red striped star",
    "a photo of a blue dotted circle",
    "a photo of a green checkered cross",
    "a photo of a pink solid heart",
    "a photo of a orange solid triangle",
    "a photo of a cyan striped hexagon",
    "a photo of a teal dotted circle",  # a held-out pair
    "a photo of a purple striped square",  # a held-out pair
)


def concept_of(caption: str) -> Concept | None:
    """The world concept a caption names, for the ground-truth column (None if it names none)."""
    words = caption.lower().split()
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in COLOURS), None)
    pattern = next((w for w in words if w in PATTERNS), "solid")
    return Concept.named(shape, colour, pattern) if shape and colour else None


def draw_grid(rows: list[tuple[str, Image.Image | None, list[Image.Image]]], cell: int = 96) -> Image.Image:
    label_width = 260
    columns = 1 + max(len(images) for _, _, images in rows)
    grid = Image.new("RGB", (label_width + columns * cell, len(rows) * cell + 20), "white")
    draw = ImageDraw.Draw(grid)
    draw.text((label_width, 4), "truth", fill="black")
    draw.text((label_width + cell, 4), "generated (one seed per column)", fill="black")
    for index, (caption, truth, images) in enumerate(rows):
        top = 20 + index * cell
        draw.text((6, top + cell // 2 - 6), caption.replace("a photo of a ", ""), fill="black")
        for column, image in enumerate([truth, *images]):
            if image is not None:
                grid.paste(
                    image.resize((cell - 4, cell - 4), Image.Resampling.NEAREST),
                    (label_width + column * cell + 2, top + 2),
                )
    return grid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--caption", action="append", help="repeatable; default: a fixed set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--out", type=Path, default=Path("grid.png"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    pipeline = load_pipeline(args.weights)
    rows = []
    for caption in args.caption or DEFAULT_CAPTIONS:
        concept = concept_of(caption)
        truth = render(concept, 0) if concept else None
        rows.append(
            (caption, truth, generate(pipeline, caption, args.seeds, steps=args.steps, guidance_scale=args.guidance))
        )
    draw_grid(rows).save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
