"""Speed-up benchmark: steps to a held-out loss from token init vs. booster init.

    python -m models.booster.benchmark --modes textual_inversion pivotal lora --seeds 3 \
        --json bench/results/booster_generalisation.json

Protocol, per mode and token-vector count:
1. The token-init baseline's learning rate is chosen for SPEED on development concepts (world
   dev concepts and training-family concepts, never an evaluated one): every rate of the sweep runs
   on every development concept; a concept's target is the best held-out loss ANY sweep point
   reaches + 2%; the rate with the fewest median steps to that target wins (a rate that never gets
   there counts as twice the run length). The service's default rate is in the sweep and reported
   beside the winner. `--sweep-only` runs the sweep alone; `--rates-from` takes its choice.
2. Evaluated groups, reported separately: `world` (the in-world validation concepts), `families`
   (concepts of families the booster never trained on, models.booster.families.HELD_OUT_FAMILIES)
   and `skimage` (crops of scikit-image's sample photographs, an independent held-out set that no
   training touches; skipped with a note where scikit-image is not installed).
3. Per concept and seed: a token-init run at the chosen rate sets the target (its best held-out loss
   + 2%) and its steps to it; each booster variant runs the same recipe and counts its steps to the
   same target (reaching it at step 0 counts as 1 step, for either run, so a concept the token already
   meets at step 0 scores 1x at best). Variants: `booster` starts exactly from the main booster's
   prediction (unguarded); `booster+guard` is init=booster through the trainer's guarded start (every
   registered booster's start and the token; with --booster, that folder only); `shuffled` (pivotal
   and lora) is the unguarded prediction from another concept's images (a seeded derangement within
   the group), stopped once it reaches the target.
4. Reported: medians over concepts (each concept's median over seeds) with quartiles. A run that
   misses the target counts as the whole steps budget: where misses exist the booster's steps are a
   lower bound and its speed-up an upper bound, and the miss count stands beside them. Zero-step
   (start) and final held-out losses of both; per run, how many starts or finals are worse than the
   token run's by more than 1%, and the worst; for pivotal and lora, the fraction of the real gain
   the shuffled ablation keeps, and the median pairwise cosine similarity across a group's concepts
   of the predicted LoRAs beside that of the LoRAs the token and booster runs end with (of the
   flattened factors, and of the per-layer updates B @ A, which do not depend on the factors' basis).
Results are written after every concept, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.booster.families import HELD_OUT_FAMILIES, draw_family_concept, render_family
from models.booster.network import Booster, load_booster
from models.booster.resolver import (
    checked_booster,
    initial_state_from,
    predict,
    registered_booster,
    registered_booster_path,
    registered_booster_paths,
)
from models.reference.concepts import benchmark_concepts
from models.registry import Registry, load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.config import TrainConfig
from models.trainer.defaults import registered_defaults, resolve_base_model
from models.trainer.errors import TrainingCanceled
from models.trainer.evaluate import HeldOutLoss
from models.trainer.loop import Start
from models.trainer.train import train

TRAIN_VIEWS, HELD_OUT_VIEWS = 8, 4
VIEW_SEED_BASE = 7_000_000
FAMILY_SEED = 20_261_129  # the held-out family concepts; training draws never use the held-out families
SKIMAGE_IMAGES = ("chelsea", "coffee", "astronaut", "rocket")


@dataclass
class Item:
    """One evaluated concept: the views a user uploads and views only evaluation reads."""

    name: str
    group: str
    views: list[Image.Image]
    held_out: list[Image.Image]


def schedule(steps: int, every: int) -> list[int]:
    """Evaluation points: every step at first (where the booster's advantage shows), then sparser."""
    points = {0, 1, 2, 3, 4, 6, 8, 10, 15, 20, 30, 40} | set(range(50, steps + 1, every)) | {steps}
    return sorted(p for p in points if p <= steps)


def world_items(split: str, count: int | None = None) -> list[Item]:
    """The first `count` concepts of the world's `split` (None: all)."""
    return [
        Item(b.name, "world" if split == "val" else "dev", b.views(), b.held_out_views())
        for b in benchmark_concepts(split)[:count]
    ]


def family_items(families: Sequence[str], per_family: int, seed: int, group: str) -> list[Item]:
    """`per_family` concepts of each family, views rendered from seeds no training draw uses."""
    rng = np.random.default_rng(seed)
    items = []
    for family in families:
        for index in range(per_family):
            concept = draw_family_concept(family, rng)
            views = [render_family(concept, VIEW_SEED_BASE + i) for i in range(TRAIN_VIEWS + HELD_OUT_VIEWS)]
            items.append(Item(f"{family}-{index}", group, views[:TRAIN_VIEWS], views[TRAIN_VIEWS:]))
    return items


def skimage_items(names: Sequence[str]) -> list[Item]:
    """Random crops of scikit-image's sample photographs (evaluation only, never training)."""
    from skimage import data  # eval-only dependency

    items = []
    for name in names:
        array = getattr(data, name)()
        image = Image.fromarray(array if array.ndim == 3 else np.stack([array] * 3, -1)).convert("RGB")
        rng = np.random.default_rng(len(name))
        crops = []
        for _ in range(TRAIN_VIEWS + HELD_OUT_VIEWS):
            side = int(min(image.size) * rng.uniform(0.6, 0.85))
            x = int(rng.integers(0, image.width - side + 1))
            y = int(rng.integers(0, image.height - side + 1))
            crops.append(image.crop((x, y, x + side, y + side)).resize((32, 32), Image.Resampling.LANCZOS))
        items.append(Item(f"skimage-{name}", "skimage", crops[:TRAIN_VIEWS], crops[TRAIN_VIEWS:]))
    return items


@dataclass
class Curve:
    losses: dict[int, float] = field(default_factory=dict)
    init_used: str = ""
    init_note: str = ""
    lora: dict[str, torch.Tensor] | None = None
    """The UNet LoRA the run ended with (modes that train one)."""

    def steps_to(self, target: float) -> int | None:
        return next((step for step, loss in sorted(self.losses.items()) if loss <= target), None)


Resolver = Callable[..., Any]


def booster_resolver(directory: Path, use_lora: bool | None, registry: Registry) -> Resolver:
    """The trainer's booster hook for one booster folder (not necessarily the registered one)."""

    def resolve(base, images, config):
        return initial_state_from(checked_booster(directory, base, registry), images, config, use_lora=use_lora)

    return resolve


def fed_other_images(resolver: Resolver, images: Sequence[Image.Image]) -> Resolver:
    """`resolver` predicting from `images` (another concept's) whatever the job uploads: the shuffled ablation."""

    def resolve(base, _job_images, config):
        return resolver(base, images, config)

    return resolve


def run_curve(
    base_model: str,
    item: Item,
    *,
    mode: str,
    init: str,
    steps: int,
    seed: int,
    rates: dict[str, float],
    eval_steps: list[int],
    out_dir: Path,
    registry: Registry,
    num_vectors: int = 1,
    resolver: Resolver | None = None,
    state_from: Resolver | None = None,
    stop_at: float | None = None,
) -> Curve:
    """One run with held-out loss at `eval_steps`. `resolver`: the trainer's booster hook (init="booster":
    the trainer's guarded start picks among token and booster candidates); `state_from`: start exactly
    from the booster's prediction, unguarded (the trainer's initial_state). `stop_at`: end the run at the
    first evaluation at or below this loss (only its steps to that loss are wanted)."""
    base = load_base(resolve_base_model(base_model, registry), pick_device())
    held_out = HeldOutLoss(base, item.held_out)
    curve = Curve()

    def hook(step: int, job) -> None:
        curve.losses[step] = held_out(job.concept)

    def started(start: Start) -> None:
        curve.init_used, curve.init_note = start.used, start.note

    def finished(job) -> None:
        unet_lora, _ = job.concept.lora_state()
        curve.lora = {k: v.detach().float().cpu().clone() for k, v in unet_lora.items()} if unet_lora else None

    config = TrainConfig(
        base_model=base_model,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        steps=steps,
        seed=seed,
        num_vectors=num_vectors,
        **rates,  # type: ignore[arg-type]
    )
    kwargs: dict[str, Any] = {"booster": resolver} if resolver is not None else {}
    if state_from is not None:
        kwargs["initial_state"] = state_from(base, item.views, config)
    if stop_at is not None:
        kwargs["should_stop"] = lambda: any(loss <= stop_at for loss in curve.losses.values())
    try:
        train(
            config,
            item.views,
            out_dir,
            registry=registry,
            eval_hook=hook,
            eval_steps=eval_steps,
            on_start=started,
            on_finish=finished,
            **kwargs,
        )
    except TrainingCanceled:
        if stop_at is None:
            raise
    return curve


SWEEPS = {
    "textual_inversion": [{"embedding_lr": lr} for lr in (5e-3, 1e-2, 2e-2, 5e-2)],
    "pivotal": [
        {"embedding_lr": emb, "pivot_embedding_lr": emb / 10, "lora_lr": lora}
        for emb, lora in ((1e-2, 3e-3), (2e-2, 1e-3), (2e-2, 3e-3), (2e-2, 1e-2), (5e-2, 3e-3))
    ],
    "lora": [{"lora_lr": lr} for lr in (1e-3, 3e-3, 1e-2, 3e-2)],
}
LORA_MODES = ("pivotal", "lora")
"""Modes whose jobs train a LoRA: the shuffled ablation and the LoRA similarity are measured for them."""
SHUFFLED = "shuffled"
PRODUCT_VARIANTS = ("booster", "booster+guard")


def speed_sweep(
    base_model: str,
    mode: str,
    grid: list[dict[str, float]],
    items: list[Item],
    *,
    steps: int,
    eval_steps: list[int],
    out_dir: Path,
    num_vectors: int,
    registry: Registry,
) -> tuple[dict[str, float], list[dict]]:
    """Pick the baseline's rates by fewest median steps to within 2% of the best any sweep point reaches."""
    curves = [
        [
            run_curve(
                base_model,
                item,
                mode=mode,
                init="token",
                steps=steps,
                seed=0,
                rates=rates,
                eval_steps=eval_steps,
                out_dir=out_dir,
                num_vectors=num_vectors,
                registry=registry,
            )
            for item in items
        ]
        for rates in grid
    ]
    return fastest_rates(grid, [[curve.losses for curve in row] for row in curves], steps, mode)


def fastest_rates(
    grid: list[dict[str, float]], losses: list[list[dict[int, float]]], steps: int, label: str = ""
) -> tuple[dict[str, float], list[dict]]:
    """losses[rate][concept] = {step: held-out loss}; the rate with the fewest median steps to within 2%
    of the best loss any rate reaches on that concept (never reaching it counts as 2 x steps)."""
    concepts = range(len(losses[0]))
    best = [min(min(losses[r][i].values()) for r in range(len(grid))) for i in concepts]
    results: list[dict[str, Any]] = []
    for r, rates in enumerate(grid):
        reached = [next((s for s, v in sorted(losses[r][i].items()) if v <= best[i] * 1.02), None) for i in concepts]
        counted = [s if s is not None else 2 * steps for s in reached]
        results.append(
            {
                "rates": rates,
                "steps_to_best_any_plus_2pct": reached,
                "median_steps": statistics.median(counted),
                "mean_final_loss": statistics.fmean(losses[r][i][steps] for i in concepts),
            }
        )
        print(f"  sweep {label} {rates}: steps {reached}, final {results[-1]['mean_final_loss']:.5f}", flush=True)
    chosen = min(results, key=lambda r: (r["median_steps"], r["mean_final_loss"]))
    for result in results:
        result["chosen"] = result is chosen
        result["at_grid_edge"] = at_grid_edge(result["rates"], grid) if result is chosen else None
    return chosen["rates"], results


def at_grid_edge(rates: dict[str, float], grid: list[dict[str, float]]) -> list[str]:
    """The rates of `rates` that are the smallest or largest the grid tries: a faster rate may lie beyond."""
    edges = []
    for name, value in rates.items():
        tried = [point[name] for point in grid if name in point]
        if len(set(tried)) > 1 and value in (min(tried), max(tried)):
            edges.append(name)
    return edges


# ---- pure summaries of the recorded runs --------------------------------------------------------


def counted_steps(steps: int | None, budget: int) -> int:
    """Steps to the target as the summaries count them: a run that never reaches it counts as the whole
    budget, a censored value (its true count is higher), so a miss can only lower a speed-up."""
    return budget if steps is None else steps


def speedup(token_steps: int, booster_steps: int) -> float:
    """Token steps over booster steps; reaching the target at step 0 counts as 1 step, for either run."""
    return max(token_steps, 1) / max(booster_steps, 1)


def variant_record(curve: Curve, target: float, token_steps: int, budget: int) -> dict[str, Any]:
    """One variant's run against the token run's target (`token_steps`: the token's counted steps)."""
    steps = curve.steps_to(target)
    counted = counted_steps(steps, budget)
    return {
        "steps": steps,
        "reached": steps is not None,
        "counted_steps": counted,
        "zero_step": curve.losses[0],
        "final": curve.losses.get(budget),
        "speedup": speedup(token_steps, counted),
        "init_used": curve.init_used,
        "init_note": curve.init_note,
        "curve": curve.losses,
    }


def per_concept(runs: list[dict], key: Callable[[dict], float | None]) -> dict[str, float | None]:
    """Each concept's median over its seeds (None where no seed has a value)."""
    by: dict[str, list[float]] = {}
    for run in runs:
        value = key(run)
        by.setdefault(run["concept"], [])
        if value is not None:
            by[run["concept"]].append(value)
    return {name: statistics.median(values) if values else None for name, values in by.items()}


def spread(values: list[float] | list[float | None]) -> dict[str, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "q1": None, "q3": None, "min": None, "max": None}
    quartiles = statistics.quantiles(values, n=4, method="inclusive") if len(values) >= 2 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "q1": quartiles[0],
        "q3": quartiles[2],
        "min": min(values),
        "max": max(values),
    }


def ratio(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else value / reference


def summarise(runs: list[dict], variant: str) -> dict:
    """Medians over concepts of per-concept medians over seeds, for the booster variant `variant`. Every run
    counts: one that missed the target counts as the steps budget, so with misses the booster's steps are a
    lower bound and the speed-up an upper bound (`missed_target_runs` says how many)."""
    runs = [r for r in runs if variant in r["variants"]]
    speed = per_concept(runs, lambda r: r["variants"][variant]["speedup"])
    final_ratio = per_concept(runs, lambda r: ratio(r["variants"][variant]["final"], r["token"]["final"]))
    start_ratio = per_concept(runs, lambda r: ratio(r["variants"][variant]["zero_step"], r["token"]["zero_step"]))
    missed = [r for r in runs if not r["variants"][variant]["reached"]]
    return {
        "concepts": len(speed),
        "runs": len(runs),
        "speedup": spread(list(speed.values())),
        "speedup_by_concept": speed,
        "missed_target_runs": len(missed),
        "concepts_with_missed_runs": sorted({r["concept"] for r in missed}),
        "speedup_bound": "upper bound (missed runs counted as the steps budget)" if missed else "exact",
        "baseline_steps": spread(list(per_concept(runs, lambda r: r["token"]["counted_steps"]).values())),
        "booster_steps": spread(list(per_concept(runs, lambda r: r["variants"][variant]["counted_steps"]).values())),
        "zero_step_loss": {
            "token": spread(list(per_concept(runs, lambda r: r["token"]["zero_step"]).values())),
            "booster": spread(list(per_concept(runs, lambda r: r["variants"][variant]["zero_step"]).values())),
        },
        "final_loss": {
            "token": spread(list(per_concept(runs, lambda r: r["token"]["final"]).values())),
            "booster": spread(list(per_concept(runs, lambda r: r["variants"][variant]["final"]).values())),
        },
        "final_ratio_by_concept": final_ratio,
        "concepts_final_worse_by_over_1pct": sorted(k for k, v in final_ratio.items() if v and v > 1.01),
        "worst_final_ratio": max((v for v in final_ratio.values() if v), default=None),
        "start_ratio_by_concept": start_ratio,
        "concepts_start_worse": sorted(k for k, v in start_ratio.items() if v and v > 1.0),
        "never_worse": never_worse(runs, variant),
    }


def never_worse(runs: list[dict], variant: str, tolerance: float = 0.01) -> dict[str, Any]:
    """Per run, not per median: how many runs' start or final held-out loss exceeds the token run's by more
    than `tolerance`, and the worst case of all."""
    worse, worst = 0, None
    for run in runs:
        record, token = run["variants"][variant], run["token"]
        ratios = {
            "start": ratio(record["zero_step"], token["zero_step"]),
            "final": ratio(record["final"], token["final"]),
        }
        measured = {which: value for which, value in ratios.items() if value is not None}
        worse += any(value > 1 + tolerance for value in measured.values())
        for which, value in measured.items():
            if worst is None or value > worst["ratio"]:
                worst = {"concept": run["concept"], "seed": run["seed"], "which": which, "ratio": value}
    return {"runs": len(runs), "tolerance": tolerance, "runs_worse": worse, "worst": worst}


def gain_kept(runs: list[dict], real: str, ablation: str = SHUFFLED) -> dict[str, Any]:
    """How much of the real booster's gain the ablation keeps: (its median speed-up - 1) over the real one's,
    its steps saved over the real one's (summed over runs, counted steps), and its start's drop in held-out
    loss below the token's over the real one's. None where the real booster gains nothing to keep."""
    runs = [r for r in runs if real in r["variants"] and ablation in r["variants"]]

    def median_speedup(name: str) -> float | None:
        return spread(list(per_concept(runs, lambda r: r["variants"][name]["speedup"]).values()))["median"]

    speed = {name: median_speedup(name) for name in (real, ablation)}
    real_speed, ablated_speed = speed[real], speed[ablation]

    def kept(ablated: float | None, actual: float | None) -> float | None:
        return None if ablated is None or actual is None or actual <= 0 else ablated / actual

    def saved(name: str) -> float:
        return sum(r["token"]["counted_steps"] - r["variants"][name]["counted_steps"] for r in runs)

    def start_gain(name: str) -> float:
        return sum(r["token"]["zero_step"] - r["variants"][name]["zero_step"] for r in runs)

    return {
        "runs": len(runs),
        "real": real,
        "median_speedup": speed,
        "speedup_gain_kept": kept(
            None if ablated_speed is None else ablated_speed - 1, None if real_speed is None else real_speed - 1
        ),
        "steps_saved": {name: saved(name) for name in (real, ablation)},
        "steps_saved_kept": kept(saved(ablation), saved(real)),
        "start_gain": {name: start_gain(name) for name in (real, ablation)},
        "start_gain_kept": kept(start_gain(ablation), start_gain(real)),
    }


def derangement(count: int, seed: int) -> list[int]:
    """A seeded permutation of range(count) that moves every index (uniform over such permutations):
    concept i is fed concept order[i]'s images."""
    if count < 2:
        raise ValueError("a derangement needs at least two concepts")
    rng = random.Random(seed)
    while True:
        order = list(range(count))
        rng.shuffle(order)
        if all(index != other for index, other in enumerate(order)):
            return order


def lora_vectors(tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the LoRA's factors flattened, each layer's update B @ A flattened). Factors depend on the basis a
    run started from (B @ A = (B R^-1)(R A)); the update does not, so it compares LoRAs across runs."""
    keys = sorted(tensors)
    factors = torch.cat([tensors[key].float().flatten() for key in keys])
    updates = [
        (tensors[key.replace("lora_A", "lora_B")].float().flatten(1) @ tensors[key].float().flatten(1)).flatten()
        for key in keys
        if "lora_A" in key
    ]
    return factors, torch.cat(updates)


def median_off_diagonal_cosine(vectors: Sequence[torch.Tensor]) -> float | None:
    """Median cosine similarity over all pairs of distinct vectors (None with fewer than two)."""
    if len(vectors) < 2:
        return None
    unit = torch.nn.functional.normalize(torch.stack([v.float() for v in vectors]), dim=1)
    similarity = unit @ unit.T
    return statistics.median(similarity[i, j].item() for i in range(len(vectors)) for j in range(i + 1, len(vectors)))


def lora_similarity(loras: dict[str, dict[str, torch.Tensor]]) -> dict[str, float | None]:
    """Median pairwise cosine similarity across concepts ({concept: LoRA}), of factors and of updates."""
    flattened = [lora_vectors(tensors) for tensors in loras.values()]
    return {
        "factors": median_off_diagonal_cosine([factors for factors, _ in flattened]),
        "updates": median_off_diagonal_cosine([updates for _, updates in flattened]),
    }


def similarity_summary(
    predicted: dict[str, dict[str, torch.Tensor]], fitted: dict[str, dict[int, dict[str, dict[str, torch.Tensor]]]]
) -> dict[str, Any]:
    """Predicted LoRAs' similarity across concepts beside fitted ones' ({run kind: {seed: {concept: LoRA}}}:
    per seed, then the median over seeds)."""
    report: dict[str, Any] = {"concepts": len(predicted), "predicted": lora_similarity(predicted), "fitted": {}}
    for kind, by_seed in fitted.items():
        per_seed = {seed: lora_similarity(loras) for seed, loras in by_seed.items() if len(loras) >= 2}
        report["fitted"][kind] = {
            part: spread([values[part] for values in per_seed.values()])["median"] for part in ("factors", "updates")
        } | {"per_seed": per_seed}
    return report


def compare_starts(
    base_model: str,
    groups: dict[str, list[Item]],
    boosters: list[Path],
    modes: list[str],
    vector_counts: list[int],
    out_dir: Path,
    registry: Registry,
) -> dict:
    """Zero-step held-out loss of token init and of each booster (and, for pivotal, each booster's
    prediction with and without its LoRA): no training, so it is cheap enough to gate a new booster."""
    eval_steps = [0]
    report: dict[str, Any] = {}
    for mode in modes:
        for count in vector_counts:
            key = f"{mode}/n{count}"
            report[key] = {}
            for group, items in groups.items():
                rows: list[dict[str, Any]] = []
                for item in items:
                    common = dict(
                        mode=mode,
                        steps=1,
                        seed=0,
                        rates={},
                        eval_steps=eval_steps,
                        out_dir=out_dir,
                        num_vectors=count,
                        registry=registry,
                    )
                    row = {"concept": item.name, "token": run_curve(base_model, item, init="token", **common).losses[0]}  # type: ignore[arg-type]
                    for directory in boosters:
                        lora_choices = (None, False) if mode != "textual_inversion" else (None,)
                        for use_lora in lora_choices:
                            name = str(directory) + ("" if use_lora is None else " (embedding only)")
                            curve = run_curve(
                                base_model,
                                item,
                                init="booster",
                                state_from=booster_resolver(directory, use_lora, registry),
                                **common,  # type: ignore[arg-type]
                            )
                            row[name] = curve.losses[0]
                    rows.append(row)
                names = [k for k in rows[0] if k != "concept"]
                report[key][group] = {
                    "rows": rows,
                    "median_ratio_to_token": {n: statistics.median(r[n] / r["token"] for r in rows) for n in names},
                    "better_than_token": {n: sum(r[n] < r["token"] for r in rows) for n in names},
                    "concepts": len(rows),
                }
                for n in names:
                    print(
                        f"  [{key}] {group} {n}: median start/token "
                        f"{report[key][group]['median_ratio_to_token'][n]:.4f}, better on "
                        f"{report[key][group]['better_than_token'][n]}/{len(rows)}",
                        flush=True,
                    )
    return report


@dataclass
class Setup:
    """What every run of one benchmark command shares."""

    base_model: str
    registry: Registry
    steps: int
    seeds: int
    eval_steps: list[int]
    out_dir: Path
    booster: Booster
    resolver: Resolver
    """Starts exactly from the main booster's prediction (unguarded)."""
    guarded_resolver: Resolver
    """The trainer's guarded start, as the service's jobs start."""


def run_variant(
    setup: Setup, item: Item, variant: str, common: dict[str, Any], *, target: float, fed: Item | None
) -> Curve:
    """One booster-started run: guarded, unguarded, or unguarded from another concept's images (`fed`)."""
    if variant == "booster+guard":
        return run_curve(setup.base_model, item, init="booster", resolver=setup.guarded_resolver, **common)
    if variant == "booster":
        return run_curve(setup.base_model, item, init="booster", state_from=setup.resolver, **common)
    if variant == SHUFFLED and fed is not None:
        state_from = fed_other_images(setup.resolver, fed.views)
        return run_curve(setup.base_model, item, init="booster", state_from=state_from, stop_at=target, **common)
    raise ValueError(f"unknown variant {variant!r}")


def run_concept(
    setup: Setup,
    item: Item,
    *,
    seed: int,
    mode: str,
    num_vectors: int,
    rates: dict[str, float],
    variants: list[str],
    fed: Item | None,
) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor] | None]]:
    """One concept and seed: the token run sets the target (its best held-out loss + 2%), then each variant
    runs the same recipe. Returns the record and the LoRA each product run ended with."""
    common = dict(
        mode=mode,
        steps=setup.steps,
        seed=seed,
        rates=rates,
        eval_steps=setup.eval_steps,
        out_dir=setup.out_dir,
        num_vectors=num_vectors,
        registry=setup.registry,
    )
    token = run_curve(setup.base_model, item, init="token", **common)  # type: ignore[arg-type]
    target = min(token.losses.values()) * 1.02
    token_steps = token.steps_to(target)
    record: dict[str, Any] = {
        "concept": item.name,
        "seed": seed,
        "target_loss": target,
        "token": {
            "steps": token_steps,
            "counted_steps": counted_steps(token_steps, setup.steps),
            "zero_step": token.losses[0],
            "final": token.losses[setup.steps],
            "curve": token.losses,
        },
        "variants": {},
    }
    loras = {"token": token.lora}
    for variant in variants:
        curve = run_variant(setup, item, variant, common, target=target, fed=fed)
        record["variants"][variant] = variant_record(curve, target, record["token"]["counted_steps"], setup.steps)
        if variant == SHUFFLED and fed is not None:
            record["variants"][variant]["fed_images_of"] = fed.name
        else:
            loras[variant] = curve.lora
    return record, loras


def run_group(
    setup: Setup,
    items: list[Item],
    *,
    mode: str,
    num_vectors: int,
    rates: dict[str, float],
    variants: list[str],
    entry: dict[str, Any],
    save: Callable[[], None],
) -> None:
    """Every concept of one group over every seed, summarised into `entry` (saved after each concept)."""
    notes = entry.setdefault("notes", [])
    if SHUFFLED in variants and (mode not in LORA_MODES or len(items) < 2):
        variants = [v for v in variants if v != SHUFFLED]
        notes.append("no shuffled ablation: it runs for pivotal and lora modes on groups of two or more concepts")
    # Seed s feeds each concept the images of another concept of the group, by derangement(seed=s).
    feeds = {seed: derangement(len(items), seed) for seed in range(setup.seeds)} if SHUFFLED in variants else {}
    runs: list[dict] = entry.setdefault("runs", [])
    fitted: dict[str, dict[int, dict[str, dict[str, torch.Tensor]]]] = {}
    for index, item in enumerate(items):
        for seed in range(setup.seeds):
            fed = items[feeds[seed][index]] if feeds else None
            record, loras = run_concept(
                setup, item, seed=seed, mode=mode, num_vectors=num_vectors, rates=rates, variants=variants, fed=fed
            )
            runs.append(record)
            for kind, lora in loras.items():
                if lora is not None:
                    fitted.setdefault(kind, {}).setdefault(seed, {})[item.name] = lora
            shown = {v: r["steps"] for v, r in record["variants"].items()}
            print(
                f"  [{mode}/n{num_vectors}] {item.name} seed {seed}: token {record['token']['steps']} steps, {shown}",
                flush=True,
            )
        entry["summary"] = {v: summarise(runs, v) for v in variants}
        if SHUFFLED in variants:
            real = next(v for v in ("booster", "booster+guard") if v in variants)
            entry["shuffled_gain_kept"] = gain_kept(runs, real)
        if mode in LORA_MODES:
            predicted = {done.name: predict(setup.booster, done.views, num_vectors)[1] for done in items[: index + 1]}
            entry["lora_similarity"] = similarity_summary(predicted, fitted) | {
                "booster_use_lora": setup.booster.config.use_lora
            }
        save()


def choose_rates(args: argparse.Namespace, key: str, mode: str, num_vectors: int, setup: Setup) -> dict[str, Any]:
    """The token baseline's rates: swept for speed on development concepts, read from an earlier sweep's
    JSON (--rates-from), or given (--rates)."""
    defaults = registered_defaults(args.base_model, setup.registry)
    default_rates = {k: v for k, v in defaults.get(mode, {}).items() if k.endswith("_lr")}
    chosen: dict[str, Any] = {"service_default_rates": default_rates}
    if args.rates:
        return chosen | {"baseline_rates": args.rates, "rates_source": "given (--rates)", "sweep": []}
    if args.rates_from:
        earlier = json.loads(args.rates_from.read_text())
        if earlier.get("steps") != args.steps or key not in earlier.get("results", {}):
            raise SystemExit(f"{args.rates_from} has no {args.steps}-step sweep for {key}")
        found = earlier["results"][key]
        return chosen | {
            "baseline_rates": found["baseline_rates"],
            "rates_source": f"speed sweep in {args.rates_from} on {', '.join(earlier['sweep_concepts'])}",
            "sweep": found["sweep"],
        }
    dev = development_items(args)
    print(f"[{key}] speed sweep on {len(dev)} development concepts", flush=True)
    grid = SWEEPS[mode] + ([default_rates] if default_rates and default_rates not in SWEEPS[mode] else [])
    rates, sweep = speed_sweep(
        args.base_model,
        mode,
        grid,
        dev,
        steps=args.steps,
        eval_steps=setup.eval_steps,
        out_dir=setup.out_dir,
        num_vectors=num_vectors,
        registry=setup.registry,
    )
    return chosen | {"baseline_rates": rates, "rates_source": "speed sweep in this run", "sweep": sweep}


def development_items(args: argparse.Namespace) -> list[Item]:
    """The rate sweep's concepts: world dev concepts and training-family concepts, never an evaluated one."""
    return world_items("dev", args.sweep_world) + family_items(args.sweep_families, 1, FAMILY_SEED + 1, "dev")


def evaluated_groups(args: argparse.Namespace, notes: list[str]) -> dict[str, list[Item]]:
    groups: dict[str, list[Item]] = {}
    for group in args.groups:
        if group == "world":
            groups["world"] = world_items("val", args.world_concepts)
        elif group == "families":
            groups["families"] = family_items(HELD_OUT_FAMILIES, args.per_family, FAMILY_SEED, "families")
        elif group == "skimage":
            try:
                groups["skimage"] = skimage_items(args.skimage_images)
            except ImportError:
                notes.append("scikit-image is not installed: the skimage group was skipped")
    return groups


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--modes", nargs="+", default=["textual_inversion", "pivotal", "lora"])
    parser.add_argument("--num-vectors", type=int, nargs="+", default=[1])
    parser.add_argument("--groups", nargs="+", default=["families", "world", "skimage"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="length of every run (baseline and booster)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--world-concepts", type=int, default=2, help="in-world validation concepts (of 8)")
    parser.add_argument("--per-family", type=int, default=2, help="concepts per held-out family")
    parser.add_argument("--skimage-images", nargs="+", default=list(SKIMAGE_IMAGES[:2]))
    parser.add_argument("--sweep-world", type=int, default=2, help="world dev concepts in the rate sweep")
    parser.add_argument(
        "--sweep-families",
        nargs="*",
        default=["noise"],
        help="training families with one dev concept each in the rate sweep",
    )
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument("--rates", type=json.loads, help="skip the sweep: these baseline rates (JSON object)")
    rates.add_argument("--rates-from", type=Path, help="skip the sweep: the rates an earlier sweep's JSON chose")
    rates.add_argument("--sweep-only", action="store_true", help="only run the rate sweep and write its JSON")
    parser.add_argument("--booster", type=Path, help="booster folder (default: the registered one)")
    parser.add_argument(
        "--use-lora",
        choices=("auto", "yes", "no"),
        default="auto",
        help="auto: as the booster's config says; yes/no override it (ablation)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["booster", "booster+guard", SHUFFLED],
        choices=("booster", "booster+guard", SHUFFLED),
        help="booster: start exactly from the prediction (unguarded); booster+guard: init=booster, the trainer's "
        "guarded start; shuffled: the unguarded prediction from another concept's images (pivotal and lora)",
    )
    parser.add_argument(
        "--starts-only",
        type=Path,
        nargs="+",
        metavar="BOOSTER",
        help="only compare the zero-step held-out loss of these boosters with token init",
    )
    parser.add_argument("--json", type=Path, default=Path("bench/results/booster_generalisation.json"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/booster-benchmark"))
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    registry = load_registry()
    base_path = resolve_base_model(args.base_model, registry)
    directory = args.booster or registered_booster_path(load_base(base_path, pick_device()), registry)
    if directory is None:
        raise SystemExit(f"no booster registered for {args.base_model}: give --booster")
    use_lora = {"auto": None, "yes": True, "no": False}[args.use_lora]
    resolver = booster_resolver(Path(directory), use_lora, registry)
    notes: list[str] = []
    groups = {} if args.sweep_only else evaluated_groups(args, notes)
    if args.starts_only:
        gate: dict[str, Any] = {
            "benchmark": "booster starts (zero-step held-out loss)",
            "base_model": args.base_model,
            "groups": {name: [item.name for item in items] for name, items in groups.items()},
            "notes": notes,
            "results": compare_starts(
                args.base_model, groups, args.starts_only, args.modes, args.num_vectors, args.work_dir, registry
            ),
        }
        write(args.json, gate)
        print(f"wrote {args.json}")
        return
    setup = Setup(
        base_model=args.base_model,
        registry=registry,
        steps=args.steps,
        seeds=args.seeds,
        eval_steps=schedule(args.steps, args.eval_every),
        out_dir=args.work_dir,
        booster=load_booster(Path(directory)),
        resolver=resolver,
        # Guarded runs start as the service's jobs do: every registered booster is a candidate (without --booster).
        guarded_resolver=resolver if args.booster or args.use_lora != "auto" else registered_booster(registry),
    )
    report: dict[str, Any] = {
        "benchmark": "booster rate sweep" if args.sweep_only else "booster speed-up (speed-tuned baseline)",
        "base_model": args.base_model,
        "booster": str(directory),
        "booster_training": setup.booster.config.training,
        "measured_with": source_state(
            list(
                dict.fromkeys(
                    [Path(directory), *registered_booster_paths(load_base(base_path, pick_device()), registry)]
                )
            )
        ),
        "use_lora": args.use_lora,
        "steps": args.steps,
        "seeds": args.seeds,
        "variants": args.variants,
        "groups": {name: [item.name for item in items] for name, items in groups.items()},
        "sweep_concepts": [item.name for item in development_items(args)],
        "notes": notes,
        "results": {},
    }

    def save() -> None:
        report["wall_seconds"] = round(time.time() - started, 1)
        write(args.json, report)

    for mode in args.modes:
        for num_vectors in args.num_vectors:
            key = f"{mode}/n{num_vectors}"
            entry = choose_rates(args, key, mode, num_vectors, setup) | {"groups": {}}
            report["results"][key] = entry
            save()
            for group, items in groups.items():
                entry["groups"][group] = {}
                run_group(
                    setup,
                    items,
                    mode=mode,
                    num_vectors=num_vectors,
                    rates=entry["baseline_rates"],
                    variants=args.variants,
                    entry=entry["groups"][group],
                    save=save,
                )
    print_table(report)
    save()
    print(f"wrote {args.json}")


def source_state(boosters: Sequence[Path]) -> dict[str, Any]:
    """What a result was measured with: the files under models/ that differ from the checkout's commit,
    and each booster's weights digest (every registered booster and the guard shape the guarded runs)."""
    try:
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "models"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        status = "(not a git checkout)"
    weights = {str(folder): folder / "booster.safetensors" for folder in boosters}
    return {
        "uncommitted_under_models": status.splitlines(),
        "booster_sha256": {
            name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in weights.items() if path.is_file()
        },
    }


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def _f(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table_rows(report: dict) -> list[tuple[str, ...]]:
    """One row per (mode, vectors, group, variant): the figures the benchmarks page quotes."""
    rows: list[tuple[str, ...]] = []
    for key, entry in report["results"].items():
        for group, results in entry["groups"].items():
            for variant, summary in results.get("summary", {}).items():
                rows.append((key, group, variant, *summary_cells(summary, variant, results)))
    return rows


def summary_cells(s: dict, variant: str, results: dict) -> tuple[str, ...]:
    """A variant's table cells; "<=" marks a speed-up that counts missed runs as the steps budget."""
    bound = "<=" if s["missed_target_runs"] else ""
    speed = s["speedup"]
    worse = s["never_worse"]
    worst = worse["worst"] or {}
    kept = results.get("shuffled_gain_kept")
    similarity = results.get("lora_similarity")
    cosine = ""
    if similarity and "token" in similarity["fitted"] and variant == "booster+guard":
        cosine = f"{_f(similarity['predicted']['updates'], 2)}/{_f(similarity['fitted']['token']['updates'], 2)}"
    return (
        f"{s['runs'] - s['missed_target_runs']}/{s['runs']}",
        _f(s["baseline_steps"]["median"], 0),
        _f(s["booster_steps"]["median"], 0),
        f"{bound}{_f(speed['median'], 1)}x ({_f(speed['q1'], 1)}-{_f(speed['q3'], 1)})",
        f"{_f(s['zero_step_loss']['token']['median'])}/{_f(s['zero_step_loss']['booster']['median'])}",
        f"{_f(s['final_loss']['token']['median'])}/{_f(s['final_loss']['booster']['median'])}",
        f"{worse['runs_worse']} ({worst.get('which', '-')} {_f(worst.get('ratio'), 3)})",
        _f(kept["speedup_gain_kept"], 2) if kept and variant == kept["real"] else "",
        cosine,
    )


def print_table(report: dict) -> None:
    columns = (
        "mode/vectors",
        "group",
        "variant",
        "reached",
        "base steps",
        "boost steps",
        "speed-up (IQR)",
        "start loss token/boost",
        "final loss token/boost",
        "runs worse >1% (worst)",
        "shuffled keeps",
        "LoRA cos pred/fitted",
    )
    rows = [columns, *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
