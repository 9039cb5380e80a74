"""Text booster benchmark: does a booster start make text fine-tuning faster and no worse?

    python -m models.text.booster_bench --data-dir /tmp/leap-data            # SmolLM2-135M, one CPU thread

Concepts: --words held-out vocabulary words (never seen by booster training) and --invented made-up
words (booster_data.INVENTED), each with 8 texts; per seed, 4 texts are the job's examples and the
other 4 the held-out set (loss on their continuations). The learning-rate sweep uses one more held-out
word and the last invented concept, neither of them evaluated. For `token` and `pivotal`:

  baseline   init=token from the generic word "thing", the learning rate picked by a small sweep for
             speed to target (fewest steps to within 2% of the best held-out loss any sweep point reaches)
  booster    init=booster (the trainer's guarded start, so a bad prediction falls back to the token), at
             the baseline's learning rate, at --booster-lr (its embedding rate), or with
             --booster-service-rates at the registry's default rates for the mode
  shuffled   (token only) the booster fed another concept's examples (it reads and scores its
             candidates on those), without the guard
  icl        no training: the 4 examples in the prompt before each held-out prompt

steps: the first evaluated step whose held-out loss is within 2% of the baseline's best (the same
target for every start); speed-up = baseline steps / max(booster steps, 1). Held-out losses are
evaluated on a step grid (EVAL_STEPS), so step counts are grid points. Results are cached per
(mode, concept, seed) in --cache, so a stopped run resumes.

--stop-when-done instead measures default jobs (no `steps`: the registry's cap and learning rates, the
plateau rule of models/trainer/stopping.py) with init=token and init=booster against a long run
(init=token, exactly --long-steps): steps run, stop reason, and the held-out loss of the state each
job keeps (its best evaluated step), as a ratio to the long run's final held-out loss.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.enums import Init
from models.registry import Registry, load_registry
from models.text.base_model import load_text_base, resolve_text_model
from models.text.booster import TextBooster, checked_text_booster
from models.text.booster_data import (
    INVENTED,
    PLACEHOLDER,
    InventedConcept,
    WordConcept,
    split_words,
    vocabulary_words,
    whole_words,
    write_contexts,
)
from models.text.config import TextTrainConfig
from models.text.data import collate, lm_loss, pad_id_of, tokenize_example
from models.text.examples import TextExample
from models.text.train import train
from models.trainer.errors import TrainingCanceled

Concept = WordConcept | InventedConcept
TARGET = 1.02
SHOTS = 4


def eval_grid(steps: int) -> list[int]:
    grid = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200]
    return [s for s in grid if s <= steps] + ([steps] if steps not in grid else [])


@torch.no_grad()
def batch_loss(model, tokenizer, examples, expand=lambda t: t) -> float:
    """Mean loss per labelled token over a batch of held-out examples (their continuations)."""
    rows = [tokenize_example(tokenizer, e, expand=expand, max_length=1024) for e in examples]
    device = next(model.parameters()).device
    return float(lm_loss(model, collate(rows, pad_id_of(tokenizer), device)))


def icl_loss(base, train_examples, held_out) -> float:
    """In-context learning: the job's examples in the prompt, no training."""
    context = "\n".join(e.full_text for e in train_examples) + "\n"
    prompted = [
        TextExample(text=None, prompt=context + e.prompt, completion=e.completion, source=e.source) for e in held_out
    ]
    return batch_loss(base.model, base.tokenizer, prompted)


def bench_resolver(booster: TextBooster, concept: str):
    """The booster's start for the examples it is given (the shuffled ablation gives another concept's)."""

    def resolve(base, examples, config, score):
        vector, note = booster.start(base, examples, PLACEHOLDER, score)
        return vector.expand(config.num_vectors, -1).clone(), f"bench booster ({concept}): {note}"

    return resolve


def run(
    config: TextTrainConfig, examples, held_out, *, registry: Registry, resolver=None, guard=True, stop_below=None
) -> dict:
    """One training run; held-out loss on the step grid (stops early once below `stop_below`)."""
    curve: dict[int, float] = {}
    grid = eval_grid(config.steps or 0)

    def hook(step, job):
        curve[step] = batch_loss(job.base.model, job.concept.tokenizer, held_out, job.concept.expand)

    stop = (lambda: bool(curve) and curve[max(curve)] <= stop_below) if stop_below is not None else None
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        try:
            result = train(
                config,
                examples,
                Path(out),
                registry=registry,
                booster_resolver=resolver,
                eval_hook=hook,
                eval_steps=grid,
                should_stop=stop,
                guarded_start=guard,
            )
            init_used, guard_scores, note = result.init_used, result.manifest.get("init_guard"), result.init_note
        except TrainingCanceled:
            init_used, guard_scores, note = "stopped early", None, ""
    return {
        "curve": curve,
        "init_used": init_used,
        "guard": guard_scores,
        "init_note": note,
        "seconds": round(time.perf_counter() - started, 1),
    }


def steps_to(curve: dict[int, float], target: float) -> int | None:
    return next((s for s in sorted(curve) if curve[s] <= target), None)


def sweep(base_model, data_dir, mode, points, concepts, steps, registry: Registry) -> dict:
    """Each learning-rate point on a few concepts: the point with the fewest steps to target wins."""
    curves = {}
    for index, point in enumerate(points):
        for name, examples, held_out in concepts:
            config = TextTrainConfig(
                base_model=base_model,
                mode=mode,
                init=Init.TOKEN,
                steps=steps,
                batch_size=4,
                seed=0,
                device="cpu",
                data_dir=data_dir,
                **point,
            )
            curves[(index, name)] = run(config, examples, held_out, registry=registry)["curve"]
    best = {name: min(min(curves[(i, name)].values()) for i in range(len(points))) for name, _, _ in concepts}
    scores = []
    for index, point in enumerate(points):
        reached = [steps_to(curves[(index, name)], TARGET * best[name]) for name, _, _ in concepts]
        total = sum(r if r is not None else 10 * steps for r in reached)
        scores.append({"point": point, "steps_to_target": reached, "total": total})
    chosen = min(range(len(points)), key=lambda i: scores[i]["total"])
    return {"points": scores, "chosen": points[chosen]}


def concept_sets(base, args) -> tuple[list[tuple[str, str, Concept]], list[Concept]]:
    """(evaluated concepts, the sweep's concepts): the sweep tunes on the next held-out word and the
    last invented concept, which are not evaluated (--invented is at most len(INVENTED) - 1)."""
    _, held = split_words(vocabulary_words(base.tokenizer))
    held = whole_words(base.model, base.tokenizer, random.Random(1234).sample(held, 8 * (args.words + 1)))
    written = write_contexts(base.model, base.tokenizer, held[: args.words + 1])
    concepts: list[tuple[str, str, Concept]] = [("word", c.word, c) for c in written[: args.words]]
    invented: list[tuple[str, str, Concept]] = [
        ("invented", c.word, c) for c in INVENTED[: min(args.invented, len(INVENTED) - 1)]
    ]
    return concepts + invented, [written[args.words], INVENTED[-1]]


def split(concept, seed: int):
    order = list(range(len(concept.texts)))
    random.Random(seed).shuffle(order)
    return concept.examples(order[:SHOTS]), concept.held_out(order[SHOTS : 2 * SHOTS])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarise(records: list[dict], mode: str) -> dict:
    rows = [r for r in records if r["mode"] == mode]
    by_concept: dict[str, list[dict]] = {}
    for r in rows:
        by_concept.setdefault(r["concept"], []).append(r)
    per_concept = []
    for name, runs in by_concept.items():
        per_concept.append(
            {
                "concept": name,
                "kind": runs[0]["kind"],
                "speedup": median([r["speedup"] for r in runs]),
                "shuffled_speedup": median([r.get("shuffled_speedup") for r in runs]),
                "baseline_steps": median([r["baseline_steps"] for r in runs]),
                "booster_steps": median([r["booster_steps"] for r in runs]),
                "zero_step_generic": median([r["baseline_curve"]["0"] for r in runs]),
                "zero_step_booster": median([r["booster_curve"]["0"] for r in runs]),
                "final_baseline": median([r["baseline_final"] for r in runs]),
                "final_booster": median([r["booster_final"] for r in runs]),
                "icl": median([r["icl"] for r in runs]),
                "booster_chosen": sum(r["booster_init_used"] == "booster" for r in runs),
                "seeds": len(runs),
            }
        )
    zero_wins = [c["zero_step_booster"] < c["zero_step_generic"] for c in per_concept]
    final_ratio = [c["final_booster"] / c["final_baseline"] for c in per_concept]
    return {
        "mode": mode,
        "concepts": len(per_concept),
        "per_concept": per_concept,
        "median_speedup": median([c["speedup"] for c in per_concept]),
        "median_shuffled_speedup": median([c["shuffled_speedup"] for c in per_concept]),
        "zero_step_better_than_generic": sum(zero_wins) / max(len(zero_wins), 1),
        "zero_step_better_than_generic_runs": sum(r["booster_curve"]["0"] < r["baseline_curve"]["0"] for r in rows)
        / max(len(rows), 1),
        "booster_final_at_or_below_icl_runs": sum(r["booster_final"] <= r["icl"] for r in rows) / max(len(rows), 1),
        "guard_chose_booster_runs": sum(r["booster_init_used"] == "booster" for r in rows) / max(len(rows), 1),
        "runs": len(rows),
        "worst_final_ratio_booster_over_baseline": max(final_ratio) if final_ratio else None,
        "median_final_booster": median([c["final_booster"] for c in per_concept]),
        "median_icl": median([c["icl"] for c in per_concept]),
        "booster_final_at_or_below_icl": sum(c["final_booster"] <= c["icl"] for c in per_concept)
        / max(len(per_concept), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--booster", type=Path, default=Path(__file__).parent / "weights" / "smollm2-135m")
    parser.add_argument("--words", type=int, default=2)
    parser.add_argument("--invented", type=int, default=3, help="at most 3: the fourth tunes the sweep")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=24, help="the longer run's length (both starts)")
    parser.add_argument("--sweep-steps", type=int, default=24)
    parser.add_argument("--modes", nargs="+", default=["token", "pivotal"])
    parser.add_argument(
        "--booster-lr",
        type=float,
        help="the booster's (and shuffled) runs' embedding_lr, e.g. the service's default; default: the baseline's",
    )
    parser.add_argument(
        "--booster-service-rates",
        action="store_true",
        help="the booster's (and shuffled) runs take every learning rate from the registry's defaults for the mode",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/leap-text-booster-bench.jsonl"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/text_booster.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="summarise the cache, run nothing new")
    parser.add_argument(
        "--stop-when-done",
        action="store_true",
        help="default jobs (no steps) with token and booster starts against a long run",
    )
    parser.add_argument("--long-steps", type=int, default=200, help="--stop-when-done: the long run's steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    registry = load_registry()
    base = load_text_base(resolve_text_model(args.base_model, args.data_dir, registry), torch.device("cpu"))
    booster = checked_text_booster(args.booster, base)
    concepts, sweep_concepts = concept_sets(base, args)
    if args.stop_when_done:
        stop_when_done(args, booster, concepts, started, registry)
        return
    done = {}
    if args.cache.is_file():
        for line in args.cache.read_text().splitlines():
            record = json.loads(line)
            done[record["key"]] = record

    sweep_points = {
        "token": [{"embedding_lr": lr} for lr in (0.01, 0.03, 0.1)],
        "pivotal": [
            {"embedding_lr": lr, "lora_lr": lora, "pivot_embedding_lr": lr / 10}
            for lr, lora in ((0.01, 1e-3), (0.03, 1e-3), (0.1, 3e-3))
        ],
    }
    sweeps = {}
    for mode in args.modes:
        key = f"sweep:{mode}"
        if key not in done:
            # A held-out word and an invented concept that are not evaluated, seed 0.
            sets = [(c.word, *split(c, 0)) for c in sweep_concepts]
            result = sweep(args.base_model, args.data_dir, mode, sweep_points[mode], sets, args.sweep_steps, registry)
            done[key] = {"key": key, "concepts": [name for name, _, _ in sets], **result}
            with args.cache.open("a") as handle:
                handle.write(json.dumps(done[key]) + "\n")
        sweeps[mode] = done[key]
        print(f"{mode}: sweep chose {done[key]['chosen']}", flush=True)

    records = []
    for seed in range(args.seeds):  # seeds outermost: a run stopped early still covers every concept and mode
        for mode in args.modes:
            for index, (kind, name, concept) in enumerate(concepts):
                key = f"{mode}:{name}:{seed}"
                if key in done:
                    records.append(done[key])
                    continue
                if args.report_only:
                    continue
                examples, held_out = split(concept, seed)
                other = concepts[(index + 1) % len(concepts)]
                other_examples, _ = split(other[2], seed)
                common = {
                    "base_model": args.base_model,
                    "mode": mode,
                    "steps": args.steps,
                    "batch_size": 4,
                    "seed": seed,
                    "device": "cpu",
                    "data_dir": args.data_dir,
                    **sweeps[mode]["chosen"],
                }
                boosted_common = {**common, **({"embedding_lr": args.booster_lr} if args.booster_lr else {})}
                if args.booster_service_rates:  # unset rates are filled from the registry (train.prepare)
                    boosted_common = {k: v for k, v in common.items() if k not in sweeps[mode]["chosen"]}
                baseline = run(TextTrainConfig(init=Init.TOKEN, **common), examples, held_out, registry=registry)
                target = TARGET * min(baseline["curve"].values())
                boosted = run(
                    TextTrainConfig(init=Init.BOOSTER, **boosted_common),
                    examples,
                    held_out,
                    registry=registry,
                    resolver=bench_resolver(booster, name),
                )
                record = {
                    "key": key,
                    "mode": mode,
                    "kind": kind,
                    "concept": name,
                    "seed": seed,
                    "baseline_curve": baseline["curve"],
                    "booster_curve": boosted["curve"],
                    "booster_init_used": boosted["init_used"],
                    "booster_init_note": boosted["init_note"],
                    "guard": boosted["guard"],
                    "baseline_steps": steps_to(baseline["curve"], target),
                    "booster_steps": steps_to(boosted["curve"], target),
                    "baseline_final": baseline["curve"][args.steps],
                    "booster_final": boosted["curve"][args.steps],
                    "icl": icl_loss(base, examples, held_out),
                    "seconds": baseline["seconds"] + boosted["seconds"],
                }
                record["speedup"] = (
                    record["baseline_steps"] / max(record["booster_steps"], 1)
                    if record["booster_steps"] is not None
                    else 0.0
                )
                if mode == "token":
                    other_booster = bench_resolver(booster, other[1])
                    shuffled = run(
                        TextTrainConfig(init=Init.BOOSTER, **boosted_common),
                        examples,
                        held_out,
                        registry=registry,
                        resolver=lambda b, e, c, s, o=other_examples, r=other_booster: r(b, o, c, s),
                        guard=False,
                        stop_below=target,
                    )
                    record["shuffled_curve"] = shuffled["curve"]
                    record["shuffled_steps"] = steps_to(shuffled["curve"], target)
                    record["shuffled_speedup"] = (
                        record["baseline_steps"] / max(record["shuffled_steps"], 1)
                        if record["shuffled_steps"] is not None
                        else 0.0
                    )
                record = json.loads(json.dumps(record))  # int curve keys become strings, as when cached
                with args.cache.open("a") as handle:
                    handle.write(json.dumps(record) + "\n")
                records.append(record)
                print(
                    f"{key}: baseline {record['baseline_steps']} steps, booster {record['booster_steps']} "
                    f"({record['booster_init_used']}), zero-step {record['baseline_curve']['0']:.3f} -> "
                    f"{record['booster_curve']['0']:.3f}, final {record['baseline_final']:.3f} / "
                    f"{record['booster_final']:.3f}, icl {record['icl']:.3f}",
                    flush=True,
                )
    summaries = [summarise(records, mode) for mode in args.modes]
    print(
        f"\n{'mode':8} {'speed-up':>9} {'shuffled':>9} {'0-step<generic':>15} {'worst final ratio':>18} "
        f"{'final (booster)':>16} {'icl':>7}"
    )
    for summary in summaries:
        speedup = summary["median_shuffled_speedup"]
        shuffled_cell = "-" if speedup is None else f"{speedup:.2f}x"
        print(
            f"{summary['mode']:8} {summary['median_speedup']:>8.2f}x {shuffled_cell:>9} "
            f"{summary['zero_step_better_than_generic']:>15.0%} "
            f"{summary['worst_final_ratio_booster_over_baseline']:>18.4f} {summary['median_final_booster']:>16.3f} "
            f"{summary['median_icl']:>7.3f}"
        )
    report = {
        "benchmark": "text booster",
        "base_model": args.base_model,
        "booster": booster.config.training,
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "settings": {
            "words": args.words,
            "invented": args.invented,
            "seeds": args.seeds,
            "steps": args.steps,
            "sweep_steps": args.sweep_steps,
            "booster_lr": args.booster_lr,
            "booster_service_rates": args.booster_service_rates,
            "shots": SHOTS,
            "target": TARGET,
            "eval_steps": eval_grid(args.steps),
        },
        "sweeps": {m: {k: v for k, v in s.items() if k != "key"} for m, s in sweeps.items()},
        "summaries": summaries,
        "records": records,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


def default_job(config: TextTrainConfig, examples, held_out, *, registry: Registry, resolver=None) -> dict:
    """A job without steps: what it ran, why it stopped, and the held-out loss of the state it keeps."""
    curve: dict[int, float] = {}

    def hook(step, job):
        curve[step] = batch_loss(job.base.model, job.concept.tokenizer, held_out, job.concept.expand)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        # The plateau rule evaluates at multiples of eval_every (and at a phase's end or the cap, which
        # for the registered caps and rule are multiples too): the hook sees each state the rule scores.
        every = config.stopping.eval_every
        result = train(
            config,
            examples,
            Path(out),
            registry=registry,
            booster_resolver=resolver,
            eval_hook=hook,
            eval_steps=range(0, 20_001, every),
        )
    # Kept: the best evaluated step; with 4-9 examples the rerun on all of them, which the hook saw
    # at its own steps 0..best_step, so its last state is curve[best_step] too.
    stopping = result.manifest["stopping"]
    kept = stopping["best_step"]
    return {
        "steps": result.steps,
        "stop_reason": result.stop_reason,
        "evaluated_on": stopping["evaluated_on"],
        "refit_steps": stopping.get("refit_steps"),
        "kept_step": kept,
        "held_out": curve[kept],
        "pivot_step": result.manifest["pivot_step"],
        "init_used": result.init_used,
        "seconds": round(time.perf_counter() - started, 1),
    }


def stop_when_done(args, booster, concepts, started: float, registry: Registry) -> None:
    """Default jobs (registry cap and rates) from the token and from the booster, against a long run."""

    records = []
    for seed in range(args.seeds):
        for mode in args.modes:
            for _kind, name, concept in concepts:
                examples, held_out = split(concept, seed)
                common = {
                    "base_model": args.base_model,
                    "mode": mode,
                    "seed": seed,
                    "device": "cpu",
                    "data_dir": args.data_dir,
                }
                long = run(
                    TextTrainConfig(init=Init.TOKEN, steps=args.long_steps, **common),
                    examples,
                    held_out,
                    registry=registry,
                )
                long_final = long["curve"][args.long_steps]
                token = default_job(TextTrainConfig(init=Init.TOKEN, **common), examples, held_out, registry=registry)
                boosted = default_job(
                    TextTrainConfig(init=Init.BOOSTER, **common),
                    examples,
                    held_out,
                    registry=registry,
                    resolver=bench_resolver(booster, name),
                )
                record = {
                    "mode": mode,
                    "concept": name,
                    "seed": seed,
                    "long_final": long_final,
                    "long_best": min(long["curve"].values()),
                    "token": token,
                    "booster": boosted,
                    "token_ratio": token["held_out"] / long_final,
                    "booster_ratio": boosted["held_out"] / long_final,
                }
                records.append(record)
                print(
                    f"{mode}:{name}:{seed}: long {args.long_steps} steps -> {long_final:.3f}; "
                    f"token {token['steps']} ({token['stop_reason']}) -> {token['held_out']:.3f} "
                    f"({record['token_ratio']:.3f}x); booster[{boosted['init_used']}] {boosted['steps']} "
                    f"({boosted['stop_reason']}) -> {boosted['held_out']:.3f} ({record['booster_ratio']:.3f}x)",
                    flush=True,
                )
    for mode in args.modes:
        rows = [r for r in records if r["mode"] == mode]
        print(
            f"{mode}: median steps token {median([r['token']['steps'] for r in rows])}, booster "
            f"{median([r['booster']['steps'] for r in rows])}; within 1% of the long run: token "
            f"{sum(r['token_ratio'] <= 1.01 for r in rows)}/{len(rows)}, booster "
            f"{sum(r['booster_ratio'] <= 1.01 for r in rows)}/{len(rows)}"
        )
    report = {
        "benchmark": "text stop when done",
        "base_model": args.base_model,
        "long_steps": args.long_steps,
        "threads": torch.get_num_threads(),
        "records": records,
        "seconds": round(time.perf_counter() - started, 1),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
