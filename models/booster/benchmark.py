"""Speed-up benchmark: steps to a held-out loss from token init vs. booster init.

    python -m models.booster.benchmark [--seeds 3] [--json bench/results/booster.json]

Protocol, per mode (textual_inversion, pivotal):
1. Learning-rate sweep for the token-init baseline on the *development* concepts; the
   best mean final held-out loss wins, so the validation concepts stay untouched.
2. On every *validation* concept and seed: a long baseline run (token init, best rate);
   its target is its best held-out loss + 2%, its steps are the first evaluation at or
   under the target. A booster run with the same recipe counts its steps to that same
   target (0 = the booster's prediction already meets it).
3. Fidelity after each run (held-out loss; classifier accuracy on generated samples) --
   the booster run stops once it reaches the target, so its fidelity is measured there --
   and the booster's zero-step quality.
Prints a table of medians and writes all runs to JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.reference.classifier import load_classifier, score
from models.reference.concepts import BenchmarkConcept, benchmark_concepts
from models.trainer.base import load_base, pick_device
from models.trainer.config import TrainConfig
from models.trainer.defaults import resolve_base_model
from models.trainer.errors import TrainingCanceled
from models.trainer.evaluate import HeldOutLoss, pipeline_for, sample_images
from models.trainer.train import Job, train

SAMPLE_SEEDS = (0, 1, 2, 3)


def schedule(steps: int, every: int) -> list[int]:
    """Evaluation points: every step at first (where the booster's advantage shows), then sparser."""
    points = set(range(0, min(steps, 10) + 1)) | set(range(10, min(steps, 50) + 1, 5))
    points |= set(range(50, steps + 1, every)) | {steps}
    return sorted(points)


@dataclass
class Curve:
    """Held-out loss by step, plus fidelity samples at the start and the end."""

    losses: dict[int, float] = field(default_factory=dict)
    accuracy: dict[str, dict[str, float]] = field(default_factory=dict)

    def steps_to(self, target: float) -> int | None:
        return next((step for step, loss in sorted(self.losses.items()) if loss <= target), None)


def run_curve(base_model: str, item: BenchmarkConcept, *, mode: str, init: str, steps: int, seed: int,
              rates: dict[str, float], eval_steps: list[int], classifier, out_dir: Path, sample: bool = True,
              stop_at: float | None = None) -> Curve:
    """One run with held-out loss at `eval_steps`; with `stop_at`, it ends once the loss reaches it."""
    base = load_base(resolve_base_model(base_model), pick_device())
    held_out = HeldOutLoss(base, item.held_out_views())
    curve = Curve()
    reached = False

    def fidelity(job: Job) -> dict[str, float]:
        images = sample_images(pipeline_for(job.base, job.concept), [job.concept.prompt("a photo of a {}")],
                               SAMPLE_SEEDS)
        return score(classifier, images, item.concept)

    def hook(step: int, job: Job) -> None:
        nonlocal reached
        curve.losses[step] = held_out(job.concept)
        if sample and step == 0:
            curve.accuracy["start"] = fidelity(job)
        reached = stop_at is not None and curve.losses[step] <= stop_at
        if sample and (step == steps or reached):
            curve.accuracy["end"] = curve.accuracy["start"] if step == 0 else fidelity(job)

    config = TrainConfig(base_model=base_model, mode=mode, init=init, steps=steps, seed=seed,  # type: ignore[arg-type]
                         **rates)  # type: ignore[arg-type]
    with contextlib.suppress(TrainingCanceled):  # stopped at the target: later steps cannot change the count
        train(config, item.views(), out_dir, eval_hook=hook, eval_steps=eval_steps, should_stop=lambda: reached)
    return curve


def sweep(base_model: str, mode: str, grid: list[dict[str, float]], *, steps: int, classifier, out_dir: Path,
          concepts: list[BenchmarkConcept]) -> tuple[dict[str, float], list[dict]]:
    """Pick the baseline's rates by mean final held-out loss on development concepts."""
    results: list[dict[str, Any]] = []
    for rates in grid:
        finals = [run_curve(base_model, item, mode=mode, init="token", steps=steps, seed=0, rates=rates,
                            eval_steps=[steps], classifier=classifier, out_dir=out_dir, sample=False).losses[steps]
                  for item in concepts]
        results.append({"rates": rates, "mean_final_loss": statistics.fmean(finals)})
        print(f"  sweep {mode} {rates}: mean final held-out loss {results[-1]['mean_final_loss']:.5f}", flush=True)
    best = min(results, key=lambda r: r["mean_final_loss"])
    return best["rates"], results


SWEEPS = {
    "textual_inversion": [{"embedding_lr": lr} for lr in (5e-3, 2e-2, 5e-2)],
    "pivotal": [{"embedding_lr": emb, "pivot_embedding_lr": emb / 10, "lora_lr": lora}
                for emb, lora in ((2e-2, 1e-3), (5e-2, 3e-3), (2e-2, 1e-2))],
}


def summarise(runs: list[dict]) -> dict:
    ratios = [r["speedup"] for r in runs if r["speedup"] is not None]
    def median(key: str, sub: str | None = None):
        values = [r[key][sub] if sub else r[key] for r in runs if (r[key][sub] if sub else r[key]) is not None]
        return statistics.median(values) if values else None
    return {
        "runs": len(runs),
        "median_speedup": statistics.median(ratios) if ratios else None,
        "speedup_quartiles": statistics.quantiles(ratios, n=4) if len(ratios) >= 2 else ratios,
        "booster_missed_target": sum(r["booster_steps"] is None for r in runs),
        "median_baseline_steps": median("baseline_steps"),
        "median_booster_steps": median("booster_steps"),
        "median_final_loss": {"baseline": median("final_loss", "baseline"), "booster": median("final_loss", "booster"),
                              "booster_zero_step": median("final_loss", "booster_zero_step")},
        "median_accuracy": {
            name: {attr: statistics.median(r["accuracy"][name][attr] for r in runs) for attr in ("shape", "colour")}
            for name in ("baseline", "booster", "booster_zero_step")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--modes", nargs="+", default=["textual_inversion", "pivotal"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=400, help="length of every run (baseline and booster)")
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--sweep-concepts", type=int, default=3, help="development concepts used by the sweep")
    parser.add_argument("--concepts", type=int, default=0, help="limit validation concepts (0 = all)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/booster.json"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/booster-benchmark"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.time()
    classifier = load_classifier()
    validation = benchmark_concepts("val")[: args.concepts or None]
    report: dict = {"benchmark": "booster speed-up", "base_model": args.base_model, "steps": args.steps,
                    "eval_every": args.eval_every, "seeds": args.seeds, "modes": {}}
    for mode in args.modes:
        print(f"[{mode}] learning-rate sweep on development concepts", flush=True)
        rates, sweep_results = sweep(args.base_model, mode, SWEEPS[mode], steps=args.steps, classifier=classifier,
                                     out_dir=args.work_dir, concepts=benchmark_concepts("dev")[: args.sweep_concepts])
        runs = []
        for item in validation:
            for seed in range(args.seeds):
                common = dict(mode=mode, steps=args.steps, seed=seed, rates=rates, classifier=classifier,
                              eval_steps=schedule(args.steps, args.eval_every), out_dir=args.work_dir)
                baseline = run_curve(args.base_model, item, init="token", **common)  # type: ignore[arg-type]
                target = min(baseline.losses.values()) * 1.02
                boosted = run_curve(args.base_model, item, init="booster", stop_at=target,
                                    **common)  # type: ignore[arg-type]
                baseline_steps = baseline.steps_to(target)
                booster_steps = boosted.steps_to(target)
                speedup = (baseline_steps / max(booster_steps, 1)) if booster_steps is not None and baseline_steps \
                    else None
                runs.append({
                    "concept": item.name, "seed": seed, "target_loss": target,
                    "baseline_steps": baseline_steps, "booster_steps": booster_steps, "speedup": speedup,
                    "final_loss": {"baseline": baseline.losses[args.steps],
                                   "booster": boosted.losses[max(boosted.losses)],
                                   "booster_zero_step": boosted.losses[0], "token_zero_step": baseline.losses[0]},
                    "accuracy": {"baseline": baseline.accuracy["end"], "booster": boosted.accuracy["end"],
                                 "booster_zero_step": boosted.accuracy["start"]},
                    "curves": {"baseline": baseline.losses, "booster": boosted.losses},
                })
                print(f"  {item.name} seed {seed}: baseline {baseline_steps} steps, booster {booster_steps} steps"
                      f" -> {speedup if speedup is None else round(speedup, 1)}x", flush=True)
        report["modes"][mode] = {"baseline_rates": rates, "sweep": sweep_results, "summary": summarise(runs),
                                 "runs": runs}
    report["wall_seconds"] = round(time.time() - started, 1)
    print_table(report)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


def print_table(report: dict) -> None:
    columns = ("mode", "runs", "base steps", "boost steps", "speed-up", "quartiles", "final loss base/boost",
               "boost@0 loss", "shape acc base/boost/@0", "colour acc base/boost/@0")
    rows = [columns]
    for mode, entry in report["modes"].items():
        s = entry["summary"]
        loss, acc = s["median_final_loss"], s["median_accuracy"]
        quartiles = s["speedup_quartiles"]
        rows.append((
            mode, str(s["runs"]), str(s["median_baseline_steps"]), str(s["median_booster_steps"]),
            f"{s['median_speedup']:.1f}x" if s["median_speedup"] else "-",
            f"{quartiles[0]:.1f}-{quartiles[-1]:.1f}" if quartiles else "-",
            f"{loss['baseline']:.4f}/{loss['booster']:.4f}", f"{loss['booster_zero_step']:.4f}",
            "/".join(f"{acc[k]['shape']:.2f}" for k in ("baseline", "booster", "booster_zero_step")),
            "/".join(f"{acc[k]['colour']:.2f}" for k in ("baseline", "booster", "booster_zero_step")),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    for row in rows:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))


if __name__ == "__main__":
    main()
