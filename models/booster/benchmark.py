"""Speed-up benchmark: steps to a held-out loss from token init vs. booster init.

    python -m models.booster.benchmark --modes textual_inversion pivotal --seeds 3 \
        --json bench/results/booster_generalisation.json

Protocol, per mode and token-vector count:
1. The token-init baseline's learning rate is chosen for SPEED on development concepts (world
   dev concepts and training-family concepts, never an evaluated one): every rate of the sweep runs
   on every development concept; a concept's target is the best held-out loss ANY sweep point
   reaches + 2%; the rate with the fewest median steps to that target wins (a rate that never gets
   there counts as twice the run length). The service's default rate is in the sweep and reported
   beside the winner.
2. Evaluated groups, reported separately: `world` (the in-world validation concepts), `families`
   (concepts of families the booster never trained on, models.booster.families.HELD_OUT_FAMILIES)
   and `skimage` (crops of scikit-image's sample photographs, an independent held-out set that no
   training touches; skipped with a note where scikit-image is not installed).
3. Per concept and seed: a token-init run at the chosen rate sets the target (its best held-out loss
   + 2%) and its steps to it; a booster-init run with the same recipe (to the full length, so final
   losses compare) counts its steps to the same target (reaching it at step 0 counts as 1 step, for
   either run, so a concept the token already meets at step 0 scores 1x at best). Two booster variants:
   `booster` starts exactly from the main booster's prediction (unguarded), `booster+guard` is
   init=booster through the trainer's guarded start (the token and every registered booster's start,
   with their midpoints, scored on the job's images; with --booster, that folder only).
4. Reported: medians over concepts (each concept's median over seeds) with quartiles, zero-step
   (start) and final held-out losses of both, and per concept whether the booster's start or its
   final loss is worse than the token's (final: by more than 1%).
Results are written after every concept, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.booster.families import HELD_OUT_FAMILIES, draw_family_concept, render_family
from models.booster.network import load_booster
from models.booster.resolver import checked_booster, initial_state_from, registered_booster, registered_booster_path
from models.reference.concepts import benchmark_concepts
from models.registry import Registry, load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.config import TrainConfig
from models.trainer.defaults import registered_defaults, resolve_base_model
from models.trainer.evaluate import HeldOutLoss
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

    def steps_to(self, target: float) -> int | None:
        return next((step for step, loss in sorted(self.losses.items()) if loss <= target), None)


Resolver = Callable[..., Any]


def booster_resolver(directory: Path, use_lora: bool | None, registry: Registry) -> Resolver:
    """The trainer's booster hook for one booster folder (not necessarily the registered one)."""

    def resolve(base, images, config):
        return initial_state_from(checked_booster(directory, base, registry), images, config, use_lora=use_lora)

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
) -> Curve:
    """One run with held-out loss at `eval_steps`. `resolver`: the trainer's booster hook (init="booster":
    the trainer's guarded start picks among token and booster candidates); `state_from`: start exactly
    from the booster's prediction, unguarded (the trainer's initial_state)."""
    base = load_base(resolve_base_model(base_model, registry), pick_device())
    held_out = HeldOutLoss(base, item.held_out)
    curve = Curve()

    def hook(step: int, job) -> None:
        curve.losses[step] = held_out(job.concept)

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
    result = train(config, item.views, out_dir, registry=registry, eval_hook=hook, eval_steps=eval_steps, **kwargs)
    curve.init_used, curve.init_note = result.init_used, result.init_note
    return curve


SWEEPS = {
    "textual_inversion": [{"embedding_lr": lr} for lr in (5e-3, 1e-2, 2e-2, 5e-2)],
    "pivotal": [
        {"embedding_lr": emb, "pivot_embedding_lr": emb / 10, "lora_lr": lora}
        for emb, lora in ((1e-2, 3e-3), (2e-2, 1e-3), (2e-2, 3e-3), (5e-2, 3e-3))
    ],
}


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
    return chosen["rates"], results


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


def summarise(runs: list[dict], variant: str) -> dict:
    """Medians over concepts of per-concept medians over seeds, for the booster variant `variant`."""
    runs = [r for r in runs if variant in r["variants"]]
    speed = per_concept(runs, lambda r: r["variants"][variant]["speedup"])
    final_ratio = per_concept(runs, lambda r: r["variants"][variant]["final"] / r["token"]["final"])
    start_ratio = per_concept(runs, lambda r: r["variants"][variant]["zero_step"] / r["token"]["zero_step"])
    return {
        "concepts": len(speed),
        "runs": len(runs),
        "speedup": spread([v for v in speed.values() if v is not None]),
        "speedup_by_concept": speed,
        "missed_target_runs": sum(r["variants"][variant]["steps"] is None for r in runs),
        "baseline_steps": spread(
            [v for v in per_concept(runs, lambda r: r["token"]["steps"]).values() if v is not None]
        ),
        "booster_steps": spread(
            [v for v in per_concept(runs, lambda r: r["variants"][variant]["steps"]).values() if v is not None]
        ),
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
    }


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--modes", nargs="+", default=["textual_inversion", "pivotal"])
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
    parser.add_argument("--rates", type=json.loads, help="skip the sweep: these baseline rates (JSON object)")
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
        default=["booster", "booster+guard"],
        help="booster: start exactly from the prediction (unguarded); booster+guard: init=booster, "
        "the trainer's guarded start",
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
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    registry = load_registry()
    base_path = resolve_base_model(args.base_model, registry)
    directory = args.booster or registered_booster_path(load_base(base_path, pick_device()), registry)
    if directory is None:
        parser.error(f"no booster registered for {args.base_model}: give --booster")
    use_lora = {"auto": None, "yes": True, "no": False}[args.use_lora]
    resolver = booster_resolver(Path(directory), use_lora, registry)
    # Guarded runs start as the service's jobs do: every registered booster is a candidate (without --booster).
    guarded_resolver = resolver if args.booster or args.use_lora != "auto" else registered_booster(registry)
    groups: dict[str, list[Item]] = {}
    notes: list[str] = []
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
    dev = world_items("dev", args.sweep_world) + family_items(args.sweep_families, 1, FAMILY_SEED + 1, "dev")
    defaults = registered_defaults(args.base_model, registry)
    report: dict[str, Any] = {
        "benchmark": "booster speed-up (speed-tuned baseline)",
        "base_model": args.base_model,
        "booster": str(directory),
        "booster_training": load_booster(Path(directory)).config.training,
        "use_lora": args.use_lora,
        "steps": args.steps,
        "seeds": args.seeds,
        "variants": args.variants,
        "groups": {name: [item.name for item in items] for name, items in groups.items()},
        "sweep_concepts": [item.name for item in dev],
        "notes": notes,
        "results": {},
    }
    eval_steps = schedule(args.steps, args.eval_every)
    for mode in args.modes:
        for num_vectors in args.num_vectors:
            key = f"{mode}/n{num_vectors}"
            default_rates = {k: v for k, v in defaults.get(mode, {}).items() if k.endswith("_lr")}
            sweep_results: list[dict]
            if args.rates:
                rates, sweep_results = args.rates, []
            else:
                print(f"[{key}] speed sweep on {len(dev)} development concepts", flush=True)
                grid = SWEEPS[mode] + ([default_rates] if default_rates and default_rates not in SWEEPS[mode] else [])
                rates, sweep_results = speed_sweep(
                    args.base_model,
                    mode,
                    grid,
                    dev,
                    steps=args.steps,
                    eval_steps=eval_steps,
                    out_dir=args.work_dir,
                    num_vectors=num_vectors,
                    registry=registry,
                )
            entry: dict[str, Any] = {
                "baseline_rates": rates,
                "service_default_rates": default_rates,
                "sweep": sweep_results,
                "groups": {},
            }
            report["results"][key] = entry
            for group, items in groups.items():
                runs: list[dict] = []
                entry["groups"][group] = {"runs": runs}
                for item in items:
                    for seed in range(args.seeds):
                        common = dict(
                            mode=mode,
                            steps=args.steps,
                            seed=seed,
                            rates=rates,
                            eval_steps=eval_steps,
                            out_dir=args.work_dir,
                            num_vectors=num_vectors,
                            registry=registry,
                        )
                        token = run_curve(args.base_model, item, init="token", **common)
                        target = min(token.losses.values()) * 1.02
                        record: dict[str, Any] = {
                            "concept": item.name,
                            "seed": seed,
                            "target_loss": target,
                            "token": {
                                "steps": token.steps_to(target),
                                "zero_step": token.losses[0],
                                "final": token.losses[args.steps],
                                "curve": token.losses,
                            },
                            "variants": {},
                        }
                        for variant in args.variants:
                            guarded = variant == "booster+guard"
                            boosted = run_curve(
                                args.base_model,
                                item,
                                init="booster",
                                resolver=guarded_resolver if guarded else None,
                                state_from=None if guarded else resolver,
                                **common,
                            )
                            steps = boosted.steps_to(target)
                            base_steps = record["token"]["steps"]
                            speedup = (
                                max(base_steps, 1) / max(steps, 1)
                                if steps is not None and base_steps is not None
                                else None
                            )
                            record["variants"][variant] = {
                                "steps": steps,
                                "zero_step": boosted.losses[0],
                                "final": boosted.losses[args.steps],
                                "speedup": speedup,
                                "init_used": boosted.init_used,
                                "init_note": boosted.init_note,
                                "curve": boosted.losses,
                            }
                        runs.append(record)
                        shown = {v: r["steps"] for v, r in record["variants"].items()}
                        print(
                            f"  [{key}] {group} {item.name} seed {seed}: token {record['token']['steps']} steps, "
                            f"{shown}",
                            flush=True,
                        )
                    entry["groups"][group]["summary"] = {v: summarise(runs, v) for v in args.variants}
                    report["wall_seconds"] = round(time.time() - started, 1)
                    write(args.json, report)
    print_table(report)
    write(args.json, report)
    print(f"wrote {args.json}")


def write(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)


def table_rows(report: dict) -> list[tuple[str, ...]]:
    """One row per (mode, vectors, group, variant): the figures the README quotes."""
    rows: list[tuple[str, ...]] = []
    for key, entry in report["results"].items():
        for group, results in entry["groups"].items():
            for variant, s in results.get("summary", {}).items():

                def f(value, digits=4):
                    return "-" if value is None else f"{value:.{digits}f}"

                rows.append(
                    (
                        key,
                        group,
                        variant,
                        str(s["concepts"]),
                        str(entry["baseline_rates"]),
                        f(s["baseline_steps"]["median"], 0),
                        f(s["booster_steps"]["median"], 0),
                        f"{f(s['speedup']['median'], 1)}x ({f(s['speedup']['q1'], 1)}-{f(s['speedup']['q3'], 1)})",
                        f"{f(s['zero_step_loss']['token']['median'])}/{f(s['zero_step_loss']['booster']['median'])}",
                        f"{f(s['final_loss']['token']['median'])}/{f(s['final_loss']['booster']['median'])}",
                        f"{f(s['worst_final_ratio'], 3)}",
                        str(len(s["concepts_start_worse"])),
                        str(s["missed_target_runs"]),
                    )
                )
    return rows


def print_table(report: dict) -> None:
    columns = (
        "mode/vectors",
        "group",
        "variant",
        "concepts",
        "baseline rates",
        "base steps",
        "boost steps",
        "speed-up (IQR)",
        "start loss token/boost",
        "final loss token/boost",
        "worst final ratio",
        "start worse",
        "missed",
    )
    rows = [columns, *table_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
