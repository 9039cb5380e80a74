"""The guard's rule, measured: which candidate starts it takes, and how they do on views never uploaded.

    python bench/guard_margin.py [--split dev] [--seeds 3] [--json bench/results/guard_margin.json]

Per concept (the world's `--split` concepts and one concept of each booster training family: the
development set; `--split val` with the held-out families to report) and seed, it builds the job's
guard evaluation as the trainer does (uploads of 10 or more: every 5th held back and the boosters
predict from the rest; fewer: the trainer's augmentation of the uploads), scores every candidate
start per row, and measures every candidate's held-out loss (views no upload shows). Then, for each
rule, the start it takes: how often that start is worse than the token's on held-out views (by more
than 1%, by anything), and the held-out gain it keeps (median of start / token). The rules: the
lowest mean on the uploads' own means (`training_images`, no margin), and the lowest mean among the
candidates whose paired gain over the token exceeds k standard errors, or a relative margin m.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.scratch import write_results  # noqa: E402
from models.booster.benchmark import FAMILY_SEED, Item  # noqa: E402
from models.booster.families import HELD_OUT_FAMILIES, TRAIN_FAMILIES, draw_family_concept, render_family  # noqa: E402
from models.booster.resolver import (  # noqa: E402
    checked_booster,
    initial_state_from,
    registered_booster,
    registered_booster_paths,
)
from models.reference.concepts import benchmark_concepts  # noqa: E402
from models.reference.world import render  # noqa: E402
from models.registry import load_registry  # noqa: E402
from models.trainer.base_model import load_base, pick_device  # noqa: E402
from models.trainer.concept import InitialState  # noqa: E402
from models.trainer.config import TrainConfig  # noqa: E402
from models.trainer.data import caption_templates  # noqa: E402
from models.trainer.defaults import resolve_base_model  # noqa: E402
from models.trainer.evaluate import HeldOutLoss  # noqa: E402
from models.trainer.guard import _over, candidates, choose_start, paired_gain, snapshot  # noqa: E402
from models.trainer.sdxl import concept_model  # noqa: E402
from models.trainer.stopping import SeededEval, split_for_eval  # noqa: E402

DEV_FAMILY_SEED = 1  # concepts of the training families, drawn apart from FAMILY_SEED's
STANDARD_ERRORS = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0)
RELATIVE_MARGINS = (0.005, 0.01, 0.02)
VIEW_SEED_BASE = 7_000_000


EXTRA_VIEW_SEEDS = VIEW_SEED_BASE + 100  # uploads beyond the first 8: seeds no held-out view uses


def dev_items(split: str, uploads: int) -> list[Item]:
    """The world's split concepts and one concept per family (training families for dev, held out for
    val), each with `uploads` uploads and its 4 held-out views."""
    items = []
    for concept in benchmark_concepts(split):
        extra = [render(concept.concept, EXTRA_VIEW_SEEDS + i) for i in range(uploads - 8)]
        items.append(Item(concept.name, "world", concept.views() + extra, concept.held_out_views()))
    families, seed = (TRAIN_FAMILIES, DEV_FAMILY_SEED) if split == "dev" else (HELD_OUT_FAMILIES, FAMILY_SEED)
    rng = np.random.default_rng(seed)
    for family in families:
        drawn = draw_family_concept(family, rng)
        views = [render_family(drawn, VIEW_SEED_BASE + i) for i in range(12)]
        extra = [render_family(drawn, EXTRA_VIEW_SEEDS + i) for i in range(uploads - 8)]
        items.append(Item(f"{family}-0", "families", views[:8] + extra, views[8:]))
    return items


def every_booster(registry):
    """A resolver offering every registered booster's start, whatever its heads (multi-vector jobs:
    the copies of a booster without a head beside the others' distinct vectors)."""

    def resolve(base, images, config):
        states = []
        for index, directory in enumerate(registered_booster_paths(base, registry)):
            state = initial_state_from(checked_booster(directory, base, registry), images, config)
            states.append(state if index == 0 else replace(state, name=directory.name))
        return states

    return resolve


def measure(item: Item, seed: int, base, registry, booster, mode: str, num_vectors: int = 1) -> dict[str, Any]:
    """Per candidate: per-row guard losses (the job's evaluation and the uploads' means), held-out loss."""
    config = TrainConfig(base_model="leap-tiny", mode=mode, seed=seed, init="booster", num_vectors=num_vectors)  # type: ignore[arg-type]
    train_images, eval_images, source = split_for_eval(item.views)
    augment = source != "held_back"
    prompt = caption_templates("object")[0]
    evaluation = SeededEval(base, eval_images, resolution=32, prompt=prompt, seed=seed, augment=augment, flip=True)
    uploads = SeededEval(base, item.views, resolution=32, prompt=prompt, seed=seed)
    held_out = HeldOutLoss(base, item.held_out)
    concept = concept_model(base, token="<leap>", num_vectors=num_vectors)
    try:
        if mode == "pivotal":
            concept.add_lora(rank=4, alpha=4.0, text_encoder=False)
        concept.init_from_token("object")
        resolved = booster(base, train_images, config)
        states = [resolved] if isinstance(resolved, InitialState) else list(resolved)
        found = candidates(concept.embedding.detach().clone(), states, has_lora=mode == "pivotal")
        fresh = snapshot(concept)
        rows: dict[str, dict[str, Any]] = {}
        for candidate in found:
            concept.init_from_state(_over(fresh, candidate.state))
            rows[candidate.name] = {
                "evaluation": evaluation.per_row(concept),
                "uploads": uploads.per_row(concept),
                "held_out": held_out(concept),
            }
    finally:
        concept.close()
    return {"concept": item.name, "seed": seed, "mode": mode, "source": source, "rows": rows, "vectors": num_vectors}


def decide(case: dict[str, Any], rule: str, value: float) -> str:
    rows = case["rows"]
    if rule == "training_images":
        return choose_start({name: float(r["uploads"].mean()) for name, r in rows.items()})
    scores = {name: float(r["evaluation"].mean()) for name, r in rows.items()}
    token = rows["token"]["evaluation"]
    gains = {name: paired_gain(token, r["evaluation"]) for name, r in rows.items() if name != "token"}
    if rule == "standard_errors":
        return choose_start(scores, gains, standard_errors=value)
    eligible = ["token"] + [name for name, gain in gains.items() if gain.mean > value]
    return min(eligible, key=scores.__getitem__)


def summarise(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rules = [("training_images", 0.0)] + [("standard_errors", k) for k in STANDARD_ERRORS]
    rules += [("relative", m) for m in RELATIVE_MARGINS]
    out = []
    for rule, value in rules:
        ratios, names = [], []
        for case in cases:
            name = decide(case, rule, value)
            names.append(name)
            ratios.append(case["rows"][name]["held_out"] / case["rows"]["token"]["held_out"])
        oracle = [min(r["held_out"] for r in c["rows"].values()) / c["rows"]["token"]["held_out"] for c in cases]
        out.append(
            {
                "rule": rule,
                "value": value,
                "decisions": len(cases),
                "left_token": sum(name != "token" for name in names),
                "worse_than_token": sum(r > 1.0 for r in ratios),
                "worse_by_1pct": sum(r > 1.01 for r in ratios),
                "worst": round(max(ratios), 4),
                "median_start_over_token": round(statistics.median(ratios), 4),
                "mean_start_over_token": round(statistics.fmean(ratios), 4),
                "oracle_mean": round(statistics.fmean(oracle), 4),
            }
        )
    return out


def candidate_summary(cases: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Each candidate's start: held-out loss over the token's (median, worst, best) across cases."""
    ratios: dict[str, list[float]] = {}
    for case in cases:
        token = case["rows"]["token"]["held_out"]
        for name, row in case["rows"].items():
            if name != "token":
                ratios.setdefault(name, []).append(row["held_out"] / token)
    return {
        name: {"median": round(statistics.median(v), 4), "worst": round(max(v), 4), "best": round(min(v), 4)}
        for name, v in ratios.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="dev", choices=("dev", "val"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--uploads", type=int, nargs="+", default=[8, 12], help="upload counts (12: held back)")
    parser.add_argument("--modes", default="textual_inversion,pivotal")
    parser.add_argument("--num-vectors", type=int, default=1, help="over 1: every booster's start, copies included")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    registry = load_registry()
    base = load_base(resolve_base_model("leap-tiny", registry), pick_device())
    booster = registered_booster(registry) if args.num_vectors == 1 else every_booster(registry)
    result: dict[str, Any] = {"split": args.split, "seeds": args.seeds, "device": str(base.device), "summary": {}}
    runs = []
    for uploads in args.uploads:
        cases = []
        for item in dev_items(args.split, uploads):
            for mode in args.modes.split(","):
                for seed in range(args.seeds):
                    cases.append(measure(item, seed, base, registry, booster, mode, args.num_vectors))
        summary = summarise(cases)
        key = f"{uploads} uploads ({cases[0]['source']})"
        result["summary"][key] = summary
        print(key)
        print(f"{'rule':<24} {'left token':>10} {'worse':>6} {'>1%':>5} {'worst':>7} {'median':>7} {'mean':>7}")
        for row in summary:
            print(
                f"{row['rule'] + ' ' + format(row['value'], 'g'):<24} {row['left_token']:>4}/{row['decisions']:<5} "
                f"{row['worse_than_token']:>6} {row['worse_by_1pct']:>5} {row['worst']:>7} "
                f"{row['median_start_over_token']:>7} {row['mean_start_over_token']:>7}"
            )
        print(f"oracle mean {summary[0]['oracle_mean']}", flush=True)
        per_candidate = candidate_summary(cases)
        result["summary"][f"{key}: candidates"] = per_candidate
        for name, row in per_candidate.items():
            print(f"  {name:<34} held-out / token: median {row['median']} worst {row['worst']} best {row['best']}")
        runs += [
            {
                **{k: v for k, v in case.items() if k != "rows"},
                "uploads": uploads,
                "candidates": {
                    name: {
                        "evaluation": round(float(r["evaluation"].mean()), 6),
                        "uploads": round(float(r["uploads"].mean()), 6),
                        "held_out": round(r["held_out"], 6),
                        "gain": paired_gain(case["rows"]["token"]["evaluation"], r["evaluation"]).__dict__
                        if name != "token"
                        else None,
                    }
                    for name, r in case["rows"].items()
                },
            }
            for case in cases
        ]
    result["runs"] = runs
    write_results(args.json, result)


if __name__ == "__main__":
    main()
