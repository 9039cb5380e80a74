"""Quality benchmark: does leap-tiny draw what its captions say?

    python -m models.reference.quality [--seeds 4] [--json bench/results/quality.json]

The attribute classifier (trained on renderer ground truth only) scores images the pipeline
generates from captions, separately for (shape, colour) pairs seen in training and for
held-out pairs. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from models.reference.classifier import load_classifier, score
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, is_held_out, render

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "leap-tiny"


def evaluation_concepts() -> dict[str, list[Concept]]:
    """All held-out (shape, colour) pairs, and as many seen pairs spread over every axis."""
    named = [Concept.named(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]
    held_out = [c for c in named if is_held_out(c)]
    seen = [c for c in named if not is_held_out(c)]
    stride = max(1, len(seen) // len(held_out))
    return {"seen": seen[::stride][: len(held_out)], "held_out": held_out}


def load_pipeline(path: str) -> StableDiffusionPipeline:
    pipeline = StableDiffusionPipeline.from_pretrained(path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def generate(
    pipeline: StableDiffusionPipeline, caption: str, seeds: list[int], *, steps: int = 25, guidance_scale: float = 7.0
):
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    return pipeline(
        [caption] * len(seeds), num_inference_steps=steps, guidance_scale=guidance_scale, generator=generators
    ).images


def evaluate(
    pipeline: StableDiffusionPipeline, concepts: dict[str, list[Concept]], seeds: list[int], **sampling
) -> dict[str, dict[str, float]]:
    classifier = load_classifier()
    results: dict[str, dict[str, float]] = {}
    for split, items in concepts.items():
        totals = {"shape": 0.0, "colour": 0.0, "pattern": 0.0}
        reference = {"shape": 0.0, "colour": 0.0, "pattern": 0.0}
        for concept in items:
            images = generate(pipeline, concept.caption(), seeds, **sampling)
            for key, value in score(classifier, images, concept).items():
                totals[key] += value / len(items)
            truth = [render(concept, 10**8 + seed) for seed in seeds]
            for key, value in score(classifier, truth, concept).items():
                reference[key] += value / len(items)
        results[split] = {
            "concepts": len(items),
            "images": len(items) * len(seeds),
            **{k: round(v, 4) for k, v in totals.items()},
            **{f"renderer_{k}": round(v, 4) for k, v in reference.items()},
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=str(DEFAULT_WEIGHTS))
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.0)
    parser.add_argument("--json", type=Path, default=Path("bench/results/quality.json"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    started = time.time()
    pipeline = load_pipeline(args.weights)
    results = evaluate(
        pipeline, evaluation_concepts(), list(range(args.seeds)), steps=args.steps, guidance_scale=args.guidance
    )
    print(
        f"{'split':10} {'concepts':>8} {'images':>7} {'shape':>7} {'colour':>7} {'pattern':>8}   "
        f"(renderer truth: shape/colour/pattern)"
    )
    for split, row in results.items():
        print(
            f"{split:10} {row['concepts']:>8} {row['images']:>7} {row['shape']:>7.1%} {row['colour']:>7.1%} "
            f"{row['pattern']:>8.1%}   ({row['renderer_shape']:.0%}/{row['renderer_colour']:.0%}/"
            f"{row['renderer_pattern']:.0%})"
        )
    report = {
        "benchmark": "leap-tiny quality",
        "weights": args.weights,
        "seeds": args.seeds,
        "sampler": {"scheduler": "DDIM", "steps": args.steps, "guidance_scale": args.guidance},
        "targets": {"seen": 0.8, "held_out": 0.6},
        "results": results,
        "wall_seconds": round(time.time() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
