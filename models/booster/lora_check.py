"""Development check of a booster's LoRA prediction (training families and world dev concepts only).

    python -m models.booster.lora_check --booster models/booster/weights/leap-tiny \
        --json bench/results/booster_lora_dev.json

For each development concept (fresh draws of the training families, never a held-out family, and
the world's dev split) and seed, three pivotal (and, with --modes, lora) runs at leap-tiny's default
rates, held-out-view loss at fixed steps:
- `token`: the initializer token and the job's own fresh LoRA (random A, zero B);
- `embedding`: the booster's embedding, LoRA from the booster's fixed A with zero B;
- `embedding+lora`: the booster's embedding and predicted LoRA (fixed A, predicted B).
Plus how concept-specific the predictions are: pairwise cosine similarity of the predicted B's across
the concepts beside that of B's fitted to each concept (models.booster.targets.fit_lora_up), both
raw and centred on the booster's mean B, and each concept's predicted-vs-fitted cosine.
It is a quick check for choosing; the speed-up benchmark (models.booster.benchmark) is the judge.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.booster.benchmark import Item, family_items, run_curve, world_items
from models.booster.families import TRAIN_FAMILIES
from models.booster.network import Booster, load_booster
from models.booster.resolver import initial_state_from
from models.booster.targets import fit_lora_up
from models.registry import load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.data import images_to_tensor
from models.trainer.defaults import registered_defaults, resolve_base_model

DEV_SEED = 31_337  # development draws of the training families: neither fitted nor benchmarked


def dev_items(per_family: int, world: int) -> list[Item]:
    families = [name for name in TRAIN_FAMILIES if name != "world"]
    return family_items(families, per_family, DEV_SEED, "dev") + world_items("dev", world)


def pairwise(vectors: torch.Tensor) -> dict[str, float]:
    """Median and max cosine similarity over distinct pairs of rows."""
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cosine = unit @ unit.T
    pairs = cosine[torch.triu(torch.ones_like(cosine, dtype=torch.bool), diagonal=1)].tolist()
    return {"median": round(statistics.median(pairs), 4), "max": round(max(pairs), 4)}


def similarity(booster: Booster, items: list[Item], base_model: str, *, steps: int) -> dict:
    """Predicted vs fitted B's of the items: how alike across concepts, and how alike per concept."""
    registry = load_registry()
    base = load_base(resolve_base_model(base_model, registry), pick_device())
    with torch.no_grad():
        pixels = torch.stack([images_to_tensor(item.views, booster.config.image_size) for item in items])
        hidden = booster.hidden(pixels)
        predicted, embeddings = booster.lora_up(hidden), booster.vectors(hidden, 1)[:, 0]
    fitted, _ = fit_lora_up(
        base, booster, [item.views for item in items], embeddings, steps=steps, lr=0.003, prior=0.001, rows_per_set=2
    )
    mean = booster.lora_mean.detach()
    per_concept = torch.nn.functional.cosine_similarity(predicted - mean, fitted - mean, dim=1)
    return {
        "predicted": pairwise(predicted),
        "fitted": pairwise(fitted),
        "predicted_centred": pairwise(predicted - mean),
        "fitted_centred": pairwise(fitted - mean),
        "predicted_vs_own_fitted_centred": {
            item.name: round(float(value), 4) for item, value in zip(items, per_concept, strict=True)
        },
        "norms": {
            "predicted": round(float(predicted.norm(dim=1).median()), 3),
            "fitted": round(float(fitted.norm(dim=1).median()), 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--booster", type=Path, default=Path("models/booster/weights/leap-tiny"))
    parser.add_argument("--modes", nargs="+", default=["pivotal"], choices=("pivotal", "lora"))
    parser.add_argument("--per-family", type=int, default=1)
    parser.add_argument("--world", type=int, default=2, help="world dev concepts")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--fit-steps", type=int, default=150, help="steps of the per-concept B fits (similarity)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    registry = load_registry()
    booster = load_booster(args.booster)
    items = dev_items(args.per_family, args.world)
    eval_steps = sorted({0, 5, 10, 20, 30, 40, args.steps} & set(range(args.steps + 1)))
    report: dict = {"booster": str(args.booster), "steps": args.steps, "eval_steps": eval_steps, "runs": []}

    def start(use_lora: bool):
        def resolve(base, images, config):
            state = initial_state_from(booster, images, config, use_lora=use_lora)
            return state if use_lora else state.embedding_only()

        return resolve

    variants = {"token": None, "embedding": start(False), "embedding+lora": start(True)}
    with tempfile.TemporaryDirectory() as scratch:
        for mode in args.modes:
            rates = {k: v for k, v in registered_defaults(args.base_model, registry)[mode].items() if "lr" in k}
            for item in items:
                for seed in range(args.seeds):
                    run: dict = {"mode": mode, "concept": item.name, "seed": seed}
                    for name, state_from in variants.items():
                        curve = run_curve(
                            args.base_model,
                            item,
                            mode=mode,
                            init="token",
                            steps=args.steps,
                            seed=seed,
                            rates=rates,
                            eval_steps=eval_steps,
                            out_dir=Path(scratch) / name,
                            registry=registry,
                            state_from=state_from,
                        )
                        run[name] = {str(step): round(loss, 6) for step, loss in sorted(curve.losses.items())}
                    report["runs"].append(run)
                    print(mode, item.name, seed, {k: (run[k]["0"], run[k][str(args.steps)]) for k in variants})
    report["summary"] = summarise(report["runs"], list(variants), eval_steps)
    report["similarity"] = similarity(booster, items, args.base_model, steps=args.fit_steps)
    report["wall_seconds"] = round(time.time() - started, 1)
    print_table(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))


def summarise(runs: list[dict], variants: list[str], eval_steps: list[int]) -> dict:
    """Per mode and variant: the median over concepts (of medians over seeds) of the held-out loss
    relative to the token run's at the same step, at every evaluated step."""
    summary: dict = {}
    for mode in sorted({run["mode"] for run in runs}):
        chosen = [run for run in runs if run["mode"] == mode]
        concepts = sorted({run["concept"] for run in chosen})
        summary[mode] = {}
        for variant in variants:
            ratios = {}
            for step in eval_steps:
                per = [
                    statistics.median(
                        run[variant][str(step)] / run["token"][str(step)] for run in chosen if run["concept"] == name
                    )
                    for name in concepts
                ]
                ratios[str(step)] = {"median": round(statistics.median(per), 4), "max": round(max(per), 4)}
            summary[mode][variant] = ratios
    return summary


def print_table(report: dict) -> None:
    for mode, variants in report["summary"].items():
        steps = report["eval_steps"]
        print(f"\n{mode}: held-out loss / token run's at the same step (median over concepts, max)")
        print("variant".ljust(16) + "".join(f"step {s}".rjust(16) for s in steps))
        for variant, ratios in variants.items():
            cells = "".join(f"{ratios[str(s)]['median']:.3f} ({ratios[str(s)]['max']:.3f})".rjust(16) for s in steps)
            print(variant.ljust(16) + cells)
    sim = report["similarity"]
    print("\npairwise cosine of B across concepts (median, max):")
    for key in ("predicted", "fitted", "predicted_centred", "fitted_centred"):
        print(f"  {key:20s} {sim[key]['median']:.3f} {sim[key]['max']:.3f}")
    own = list(sim["predicted_vs_own_fitted_centred"].values())
    print(f"  predicted vs own fitted (centred), median {statistics.median(own):.3f}")


if __name__ == "__main__":
    main()
