"""Default-job benchmark: how many steps a job without `steps` runs, token init vs booster init.

    python -m models.booster.default_jobs [--split val] [--groups world families] [--seeds 3] \
        [--json bench/results/default_jobs.json]

Per concept, seed and mode (textual_inversion, pivotal), through the real `train()` with the
registry's defaults (the service's learning rates, `max_steps` caps, the stopping rule):
- a default job from the token and one from the booster (guarded start): steps run, stop reason,
  wall time, and the final held-out loss (views never uploaded);
- a 400-step token run (the old fixed default) as the quality reference.
Groups, reported apart: `world` (the split's shape-world concepts), `families` (concepts of the
families the booster never trained on, as in models/booster/benchmark.py) and `dev-families`
(concepts of its training families, drawn apart: development concepts for choosing rules).
Reported as medians (and min-max) over concepts and seeds: booster steps / token steps, and each
default job's held-out loss relative to the 400-step run, and each booster job's final held-out loss
relative to its token job's (the "never worse" check: how many end more than 1% worse).
`--eval-every/--patience/--min-delta/--min-steps/--probe-steps/--warmup-steps` try another rule for
booster starts (choose it on --split dev, report on val); `--reuse-token` takes the token jobs from
--json's file (they do not depend on those options) and runs only the booster's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from models.booster.benchmark import FAMILY_SEED, Item, Resolver, booster_resolver, family_items, world_items
from models.booster.families import HELD_OUT_FAMILIES, TRAIN_FAMILIES
from models.booster.resolver import registered_booster
from models.registry import Registry, load_registry
from models.trainer.base_model import load_base, pick_device
from models.trainer.config import StopRule, TrainConfig
from models.trainer.defaults import resolve_base_model
from models.trainer.evaluate import HeldOutLoss
from models.trainer.train import Job, train

MODES = ("textual_inversion", "pivotal")
DEV_FAMILY_SEED = 1  # development concepts of the booster's training families, drawn apart from FAMILY_SEED's
REFERENCE_STEPS = 400


def run_job(
    base_model: str,
    item: Item,
    *,
    mode: str,
    init: str,
    seed: int,
    steps: int | None,
    rule: StopRule,
    held_out: HeldOutLoss,
    registry: Registry,
    booster: Resolver,
    warmup_steps: int = TrainConfig.warmup_steps,
) -> dict[str, Any]:
    """One training; its steps, stop reason, wall time and final held-out loss."""
    final: dict[str, float] = {}

    def on_finish(job: Job) -> None:
        final["loss"] = held_out(job.concept)

    config = TrainConfig(
        base_model=base_model,
        mode=mode,  # type: ignore[arg-type]
        init=init,  # type: ignore[arg-type]
        seed=seed,
        steps=steps,
        stopping=rule,
        warmup_steps=warmup_steps,
    )
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train(
            config,
            item.views,
            Path(out),
            registry=registry,
            booster=booster,
            on_finish=on_finish,
        )
        wall = time.perf_counter() - started
    return {
        "concept": item.name,
        "group": item.group,
        "mode": mode,
        "init": init,
        "seed": seed,
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "init_used": result.init_used,
        "init_scores": result.init_scores,
        "wall_s": round(wall, 3),
        "held_out_loss": round(final["loss"], 6),
        "curve": result.eval_curve,
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 4), "min": round(min(values), 4), "max": round(max(values), 4)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per group and mode ("world/pivotal"): medians and ranges of steps, wall time, and loss
    relative to the 400-step run."""
    summary: dict[str, Any] = {}
    # Runs written before groups existed (reused references, committed results) are the world's.
    for group in dict.fromkeys(r.get("group", "world") for r in runs):
        for mode in MODES:
            summary_of = _summarise([r for r in runs if r.get("group", "world") == group and r["mode"] == mode])
            if summary_of:
                summary[f"{group}/{mode}"] = summary_of
    return summary


def never_worse(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """Each booster job's final held-out loss over its token job's: the spread, and how many end worse
    (by anything, by more than 1%)."""
    ratios = [b["held_out_loss"] / t["held_out_loss"] - 1 for t, b in pairs]
    return {
        "booster_loss_vs_token": spread(ratios),
        "booster_worse_than_token": sum(r > 0 for r in ratios),
        "booster_worse_by_1pct": sum(r > 0.01 for r in ratios),
    }


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    keyed = {(r["concept"], r["seed"], r["init"]): r for r in runs}
    pairs = [
        (keyed[(c, s, "token")], keyed[(c, s, "booster")], keyed[(c, s, "reference")])
        for (c, s, i) in keyed
        if i == "token" and (c, s, "booster") in keyed and (c, s, "reference") in keyed
    ]
    if not pairs:
        # Without 400-step references (--no-reference): the token/booster comparison alone.
        duos = [
            (keyed[(c, s, "token")], keyed[(c, s, "booster")])
            for (c, s, i) in keyed
            if i == "token" and (c, s, "booster") in keyed
        ]
        if not duos:
            return None
        return {
            "runs": len(duos),
            "token_steps": spread([t["steps"] for t, _ in duos]),
            "booster_steps": spread([b["steps"] for _, b in duos]),
            "booster_over_token_steps": spread([b["steps"] / t["steps"] for t, b in duos]),
            **never_worse(duos),
            "booster_start_won": sum(b["init_used"] == "booster" for _, b in duos),
        }
    return {
        "runs": len(pairs),
        "token_steps": spread([t["steps"] for t, _, _ in pairs]),
        "booster_steps": spread([b["steps"] for _, b, _ in pairs]),
        "booster_over_token_steps": spread([b["steps"] / t["steps"] for t, b, _ in pairs]),
        "token_loss_vs_400": spread([t["held_out_loss"] / r["held_out_loss"] - 1 for t, _, r in pairs]),
        "booster_loss_vs_400": spread([b["held_out_loss"] / r["held_out_loss"] - 1 for _, b, r in pairs]),
        "booster_within_1pct_of_400": sum(b["held_out_loss"] <= 1.01 * r["held_out_loss"] for _, b, r in pairs),
        **never_worse([(t, b) for t, b, _ in pairs]),
        "token_wall_s": spread([t["wall_s"] for t, _, _ in pairs]),
        "booster_wall_s": spread([b["wall_s"] for _, b, _ in pairs]),
        "booster_start_won": sum(b["init_used"] == "booster" for _, b, _ in pairs),
        "stop_reasons": sorted({x["stop_reason"] for t, b, _ in pairs for x in (t, b)}),
    }


def table(summary: dict[str, Any]) -> str:
    def fmt(d: dict[str, float], pct: bool = False) -> str:
        f = (lambda v: f"{v * 100:+.2f}%") if pct else (lambda v: f"{v:g}")
        return f"{f(d['median'])} [{f(d['min'])}, {f(d['max'])}]"

    lines = [
        f"{'group/mode':<26} {'token steps':<22} {'booster steps':<22} {'booster/token':<26} "
        f"{'token loss vs 400':<30} {'booster loss vs 400':<30} {'booster loss vs token':<30} {'worse >1%':<9}"
    ]
    for mode, s in summary.items():
        lines.append(
            f"{mode:<26} {fmt(s['token_steps']):<22} {fmt(s['booster_steps']):<22} "
            f"{fmt(s['booster_over_token_steps']):<26} "
            f"{fmt(s['token_loss_vs_400'], True) if 'token_loss_vs_400' in s else '-':<30} "
            f"{fmt(s['booster_loss_vs_400'], True) if 'booster_loss_vs_400' in s else '-':<30} "
            f"{fmt(s['booster_loss_vs_token'], True):<30} {s['booster_worse_by_1pct']}/{s['runs']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--split", default="val", choices=("dev", "val"), help="the world's concepts")
    parser.add_argument("--concepts", type=int, default=0, help="first N world concepts of the split (0: all)")
    parser.add_argument(
        "--groups",
        nargs="+",
        default=["world"],
        choices=("world", "families", "dev-families"),
        help="families: held out of booster training; dev-families: concepts of its training families (development)",
    )
    parser.add_argument("--per-family", type=int, default=1, help="concepts per held-out family")
    parser.add_argument("--dev-families", type=int, default=len(TRAIN_FAMILIES), help="first N training families")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--no-reference", action="store_true", help="skip the 400-step runs (reuse --json's)")
    parser.add_argument("--eval-every", type=int, default=StopRule.eval_every)
    parser.add_argument("--patience", type=int, default=StopRule.patience)
    parser.add_argument("--min-delta", type=float, default=StopRule.min_delta)
    parser.add_argument("--min-steps", type=int, default=StopRule.min_steps)
    parser.add_argument("--probe-steps", type=int, default=StopRule.probe_steps, help="0: no probe")
    parser.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps, help="0: no warm-up")
    parser.add_argument("--reuse-token", action="store_true", help="take the token jobs from --json's file")
    parser.add_argument("--booster", type=Path, help="only this booster folder (default: every registered one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rule = replace(
        StopRule(),
        eval_every=args.eval_every,
        patience=args.patience,
        min_delta=args.min_delta,
        min_steps=args.min_steps,
        probe_steps=args.probe_steps,
    )
    items: list[Item] = []
    if "world" in args.groups:
        items += world_items(args.split, args.concepts or None)
    if "families" in args.groups:
        items += family_items(HELD_OUT_FAMILIES, args.per_family, FAMILY_SEED, "families")
    if "dev-families" in args.groups:
        items += family_items(TRAIN_FAMILIES[: args.dev_families], 1, DEV_FAMILY_SEED, "dev-families")
    registry = load_registry()
    booster = booster_resolver(args.booster, None, registry) if args.booster else registered_booster(registry)
    base = load_base(resolve_base_model(args.base_model, registry), pick_device())
    previous = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    references = {(r["concept"], r["mode"], r["seed"]): r for r in previous.get("runs", []) if r["init"] == "reference"}
    tokens = {(r["concept"], r["mode"], r["seed"]): r for r in previous.get("runs", []) if r["init"] == "token"}
    runs: list[dict[str, Any]] = []
    for item in items:
        held_out = HeldOutLoss(base, item.held_out)
        for mode in args.modes.split(","):
            for seed in range(args.seeds):
                for init in ("token", "booster"):
                    if init == "token" and args.reuse_token and (item.name, mode, seed) in tokens:
                        runs.append(tokens[(item.name, mode, seed)])
                        continue
                    runs.append(
                        run_job(
                            args.base_model,
                            item,
                            mode=mode,
                            init=init,
                            seed=seed,
                            steps=None,
                            rule=rule,
                            held_out=held_out,
                            registry=registry,
                            booster=booster,
                            warmup_steps=args.warmup_steps,
                        )
                    )
                    print(json.dumps({k: v for k, v in runs[-1].items() if k != "curve"}), flush=True)
                reference = references.get((item.name, mode, seed))
                if reference is None and not args.no_reference:
                    reference = {
                        **run_job(
                            args.base_model,
                            item,
                            mode=mode,
                            init="token",
                            seed=seed,
                            steps=REFERENCE_STEPS,
                            rule=rule,
                            held_out=held_out,
                            registry=registry,
                            booster=booster,
                        ),
                        "init": "reference",
                    }
                    print(json.dumps({k: v for k, v in reference.items() if k != "curve"}), flush=True)
                if reference is not None:
                    runs.append({**reference, "group": item.group})
    summary = summarise(runs)
    print(table(summary))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "base_model": args.base_model,
            "split": args.split,
            "booster": str(args.booster) if args.booster else "registered",
            "seeds": args.seeds,
            "rule": asdict(rule),
            "warmup_steps": args.warmup_steps,
            "device": str(base.device),
            "summary": summary,
            "runs": runs,
        }
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
