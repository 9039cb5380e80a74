"""Text booster benchmark: does a booster start make text fine-tuning faster, no worse, and better
than giving the examples in the prompt?

    python -m models.text.booster_bench --data-dir DATA                 # SmolLM2-135M, one CPU thread

Concepts: --words held-out vocabulary words (never seen by booster training) and --invented made-up
words (booster_data.INVENTED), each with 8 texts; per seed, 4 texts are the job's examples and the
other 4 the held-out set (loss on their continuations). Held-out words and invented concepts are
summarised apart. For each mode (`token`: the token alone; `pivotal`: the token, then LoRA with it):

  baseline   init=token from the generic word "thing"
  booster    init=booster (the trainer's guarded start, so a bad prediction falls back to the token);
             one booster folder per --boosters entry, all on the same concepts, seeds and split
  same rate  (--same-rate) the booster run again at the baseline's rate where its own differs
  shuffled   (token only) the booster fed another concept's examples, without the guard
  icl        no training: the job's 4 examples in the prompt before each held-out prompt

Learning rates, one rule for every side: each side (baseline, each booster) runs every --rates point
on the sweep concepts (one more held-out word and the last invented concept, never evaluated); per
concept the target is 2% above the best held-out loss any sweep run reached, and each side takes the
point with the fewest steps to it summed over the sweep concepts (ties: the lower best loss).

steps: the first evaluated step whose held-out loss is within 2% of the baseline's best (the same
target for every start); speed-up = max(baseline steps, 1) / max(booster steps, 1), so a baseline
already at its target at step 0 scores a booster that is too 1x; a booster that never reaches the
target scores 0. The held-out loss is taken on a step grid (eval_grid), so steps are grid points.
Every run keeps its best evaluated state (models/text/train.py); `kept` is that state's held-out loss.
Against in-context learning each run reports the first step at or below it, whether its kept state
is, and the prompt tokens a request saves by using the token instead of the examples.

--num-vectors n1 n2 ... trains tokens of several vectors (the booster's one vector repeated in each),
and reports how distinct the vectors are (mean pairwise cosine) at the start and in the kept state.

--stop-when-done instead measures default jobs (no `steps`: the registry's cap and learning rates,
the plateau rule) from the token and from each booster, against in-context learning and optionally a
long fixed run (--long-steps, 0: none).

Results are cached per run in --cache, so a stopped run resumes; --report-only summarises the cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models.enums import Init
from models.registry import Registry, load_registry
from models.text.base_model import TextBase, load_text_base, resolve_text_model
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
from models.text.meta_booster import MetaBooster, checked_meta_booster
from models.text.train import train
from models.trainer.errors import TrainingCanceled

Concept = WordConcept | InventedConcept
Resolver = Callable[..., Any]
TARGET = 1.02
SHOTS = 4
SWEEP_POINTS: dict[str, list[dict[str, float]]] = {
    "token": [{"embedding_lr": lr} for lr in (0.003, 0.01, 0.03, 0.1)],
    "pivotal": [
        {"embedding_lr": lr, "lora_lr": lora, "pivot_embedding_lr": lr / 10}
        for lr, lora in ((0.003, 1e-3), (0.01, 1e-3), (0.03, 1e-3), (0.1, 3e-3))
    ],
}


def eval_grid(steps: int, every: int = 10, pivot_fraction: float = 0.5) -> list[int]:
    """The steps the held-out loss is taken at: dense early, and every step the trainer evaluates
    (multiples of `every`, pivotal's pivot and the last), so the kept state's held-out loss is on it."""
    grid = {0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 80, 100, 120, 150, 200, steps}
    grid |= set(range(0, steps + 1, every)) | {int(steps * pivot_fraction)}
    return sorted(s for s in grid if s <= steps)


@torch.no_grad()
def batch_loss(model, tokenizer, examples, expand=lambda t: t) -> float:
    """Mean loss per labelled token over a batch of held-out examples (their continuations)."""
    rows = [tokenize_example(tokenizer, e, expand=expand, max_length=2048) for e in examples]
    device = next(model.parameters()).device
    return float(lm_loss(model, collate(rows, pad_id_of(tokenizer), device)))


def icl_context(train_examples: Sequence[TextExample]) -> str:
    """What in-context learning puts before each request: the job's examples, one a line."""
    return "\n".join(e.full_text for e in train_examples) + "\n"


def icl_loss(base: TextBase, train_examples: Sequence[TextExample], held_out: Sequence[TextExample]) -> float:
    """In-context learning: the held-out loss with the job's examples in the prompt, no training."""
    context = icl_context(train_examples)
    prompted = [
        TextExample(text=None, prompt=context + (e.prompt or ""), completion=e.completion, source=e.source)
        for e in held_out
    ]
    return batch_loss(base.model, base.tokenizer, prompted)


def icl_prompt_tokens(base: TextBase, train_examples: Sequence[TextExample]) -> int:
    """The tokens in-context learning adds to every request, which a trained token saves."""
    return len(base.tokenizer(icl_context(train_examples), add_special_tokens=False).input_ids)


def speedup(baseline_steps: int | None, booster_steps: int | None) -> float | None:
    """Baseline steps over booster steps to the same target; a side already there at step 0 counts 1
    step; a booster that never gets there scores 0 (None: the baseline never did either)."""
    if baseline_steps is None:
        return None
    if booster_steps is None:
        return 0.0
    return max(baseline_steps, 1) / max(booster_steps, 1)


def steps_to(curve: dict[int, float], target: float) -> int | None:
    """The first grid step at or below target."""
    return next((s for s in sorted(curve) if curve[s] <= target), None)


def versus_icl(curve: dict[int, float], kept: float, icl: float) -> dict[str, Any]:
    """How a run compares with in-context learning: the first step at or below it, and its kept state."""
    return {"icl_step": steps_to(curve, icl), "kept_at_or_below_icl": kept <= icl, "kept_over_icl": kept / icl}


def mean_cosine(vectors: torch.Tensor) -> float | None:
    """Mean pairwise cosine similarity of a token's vectors (1.0: all the same); None for one vector."""
    if vectors.shape[0] < 2:
        return None
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)
    similarity = unit @ unit.T
    count = vectors.shape[0]
    return float((similarity.sum() - similarity.diagonal().sum()) / (count * (count - 1)))


Booster = tuple[TextBooster, MetaBooster | None]


def bench_resolver(booster: Booster, concept: str) -> Resolver:
    """The booster's start for the examples it is given (with a meta booster, its prediction is one more
    candidate, as a job scores it), computed once per set of examples: it depends only on them (and the
    base model), so sweep, same-rate and repeated runs reuse it."""
    cache: dict[tuple, tuple[torch.Tensor, str]] = {}
    retrieval, meta = booster

    def resolve(base, examples, config, score):
        key = tuple(e.full_text for e in examples)
        if key not in cache:
            extra = [("meta booster", meta.predict_folds(base, examples, PLACEHOLDER))] if meta is not None else []
            cache[key] = retrieval.start(base, examples, PLACEHOLDER, score, extra)
        vector, note = cache[key]
        return vector.reshape(-1, vector.shape[-1]).expand(config.num_vectors, -1).clone(), f"bench ({concept}): {note}"

    return resolve


def run(
    config: TextTrainConfig,
    examples,
    held_out,
    *,
    registry: Registry,
    resolver: Resolver | None = None,
    guard: bool = True,
    stop_below: float | None = None,
) -> dict:
    """One training run: held-out loss on the step grid (stops early once below `stop_below`), the
    held-out loss of the state it keeps, and how distinct its vectors are at the start and kept."""
    curve: dict[int, float] = {}
    vectors: dict[int, torch.Tensor] = {}
    grid = eval_grid(config.steps or 0, config.stopping.eval_every, config.pivot_fraction)

    def hook(step, job):
        curve[step] = batch_loss(job.base.model, job.concept.tokenizer, held_out, job.concept.expand)
        vectors[step] = job.concept.input_vectors.detach().clone()

    stop = (lambda: bool(curve) and curve[max(curve)] <= stop_below) if stop_below is not None else None
    started = time.perf_counter()
    record: dict[str, Any] = {}
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
            losses = result.manifest["eval_losses"]
            kept_step = losses["best_step"]
            record = {
                "init_used": result.init_used,
                "guard": result.manifest.get("init_guard"),
                "init_note": result.init_note,
                "eval_losses": losses,
                "kept_step": kept_step,
                "kept": curve[kept_step],
                "final": curve[max(curve)],
                "cosine_start": mean_cosine(vectors[0]),
                "cosine_kept": mean_cosine(vectors[kept_step]),
            }
        except TrainingCanceled:
            record = {"init_used": "stopped early", "guard": None, "init_note": ""}
    return {"curve": curve, **record, "seconds": round(time.perf_counter() - started, 1)}


@dataclass
class Bench:
    """What every run of one benchmark invocation shares."""

    base_model: str
    data_dir: str | None
    registry: Registry
    steps: int
    num_vectors: int = 1

    def config(self, mode: str, init: Init, seed: int, rates: dict[str, float], steps: int | None = None):
        return TextTrainConfig(
            base_model=self.base_model,
            mode=mode,  # type: ignore[arg-type]
            init=init,
            steps=steps or self.steps,
            num_vectors=self.num_vectors,
            batch_size=4,
            seed=seed,
            device="cpu",
            data_dir=self.data_dir,
            **rates,  # type: ignore[arg-type]
        )


def choose(curves: dict[tuple[int, str], dict[int, float]], points: int, names: Sequence[str], target: dict) -> dict:
    """Score each point by its summed steps to the concepts' targets (never: 10x the run's length)."""
    scores = []
    for index in range(points):
        runs = [curves[(index, name)] for name in names]
        reached = [steps_to(curve, target[name]) for curve, name in zip(runs, names, strict=True)]
        length = max(max(curve) for curve in runs)
        total = sum(r if r is not None else 10 * length for r in reached)
        scores.append(
            {"steps_to_target": reached, "total": total, "best": statistics.mean(min(c.values()) for c in runs)}
        )
    chosen = min(range(points), key=lambda i: (scores[i]["total"], scores[i]["best"]))
    return {"scores": scores, "chosen": chosen}


def sweep(
    bench: Bench,
    mode: str,
    points,
    concepts,
    sides: dict[str, Resolver | None],
    steps: int,
    targets: dict[str, float] | None = None,
) -> dict:
    """Every side at every point on the sweep concepts; one target per concept (2% above the best any
    run reached, or `targets` from an earlier sweep of other sides); each side takes its own point by
    the same criterion (see the module's docstring)."""
    curves: dict[str, dict[tuple[int, str], dict[int, float]]] = {side: {} for side in sides}
    for side, make_resolver in sides.items():
        for index, point in enumerate(points):
            for name, examples, held_out in concepts:
                init = Init.TOKEN if make_resolver is None else Init.BOOSTER
                resolver = None if make_resolver is None else make_resolver(name)
                config = bench.config(mode, init, 0, point, steps=steps)
                curves[side][(index, name)] = run(
                    config, examples, held_out, registry=bench.registry, resolver=resolver
                )["curve"]
    names = [name for name, _, _ in concepts]
    target = targets or {
        name: TARGET * min(min(c[(i, name)].values()) for c in curves.values() for i in range(len(points)))
        for name in names
    }
    result: dict[str, Any] = {"points": points, "concepts": names, "targets": target, "sides": {}}
    for side in sides:
        choice = choose(curves[side], len(points), names, target)
        result["sides"][side] = {**choice, "rates": points[choice["chosen"]]}
    return result


def concept_sets(base, words: int, invented: int) -> tuple[list[tuple[str, str, Concept]], list[Concept]]:
    """(evaluated concepts, the sweep's concepts): the sweep tunes on the next held-out word and the
    last invented concept, which are not evaluated (invented is at most len(INVENTED) - 1)."""
    _, held = split_words(vocabulary_words(base.tokenizer))
    held = whole_words(base.model, base.tokenizer, random.Random(1234).sample(held, 8 * (words + 1)))
    written = write_contexts(base.model, base.tokenizer, held[: words + 1])
    concepts: list[tuple[str, str, Concept]] = [("word", c.word, c) for c in written[:words]]
    made_up: list[tuple[str, str, Concept]] = [
        ("invented", c.word, c) for c in INVENTED[: min(invented, len(INVENTED) - 1)]
    ]
    return concepts + made_up, [written[words], INVENTED[-1]]


def split(concept, seed: int):
    order = list(range(len(concept.texts)))
    random.Random(seed).shuffle(order)
    return concept.examples(order[:SHOTS]), concept.held_out(order[SHOTS : 2 * SHOTS])


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def compare(
    bench: Bench,
    base: TextBase,
    mode: str,
    seed: int,
    examples: Sequence[TextExample],
    held_out: Sequence[TextExample],
    *,
    rates: dict[str, dict[str, float]],
    boosters: dict[str, Resolver],
    shuffled: dict[str, Resolver] | None = None,
    same_rate: bool = False,
) -> dict:
    """One concept and seed: the baseline, each booster (at its own rate, and at the baseline's where
    `same_rate` and they differ), the shuffled ablations, and in-context learning, all on the same split."""
    registry = bench.registry
    icl = icl_loss(base, examples, held_out)
    baseline = run(bench.config(mode, Init.TOKEN, seed, rates["baseline"]), examples, held_out, registry=registry)
    target = TARGET * min(baseline["curve"].values())
    baseline_steps = steps_to(baseline["curve"], target)
    record: dict[str, Any] = {
        "icl": icl,
        "icl_prompt_tokens": icl_prompt_tokens(base, examples),
        "target": target,
        "baseline": {**baseline, "steps": baseline_steps, **versus_icl(baseline["curve"], baseline["kept"], icl)},
        "boosters": {},
    }

    def side(run_result: dict) -> dict:
        steps = steps_to(run_result["curve"], target)
        return {
            **run_result,
            "steps": steps,
            "speedup": speedup(baseline_steps, steps),
            **(versus_icl(run_result["curve"], run_result["kept"], icl) if "kept" in run_result else {}),
        }

    for name, resolver in boosters.items():
        own = rates[name]
        entry = {
            "rates": own,
            "own_rate": side(
                run(
                    bench.config(mode, Init.BOOSTER, seed, own),
                    examples,
                    held_out,
                    registry=registry,
                    resolver=resolver,
                )
            ),
        }
        if same_rate:
            if own == rates["baseline"]:
                entry["same_rate"] = entry["own_rate"]
            else:
                config = bench.config(mode, Init.BOOSTER, seed, rates["baseline"])
                entry["same_rate"] = side(run(config, examples, held_out, registry=registry, resolver=resolver))
        if shuffled is not None and name in shuffled:
            config = bench.config(mode, Init.BOOSTER, seed, own)
            ablation = run(
                config, examples, held_out, registry=registry, resolver=shuffled[name], guard=False, stop_below=target
            )
            entry["shuffled"] = side(ablation)
        record["boosters"][name] = entry
    return json.loads(json.dumps(record))  # int curve keys become strings, as when cached


def curve_of(entry: dict) -> dict[int, float]:
    return {int(step): loss for step, loss in entry["curve"].items()}


def summarise(records: list[dict], mode: str, booster: str, kind: str | None) -> dict:
    """Medians per concept (over seeds), then over concepts; kind: word, invented or None (all)."""
    rows = [
        r for r in records if r["mode"] == mode and (kind is None or r["kind"] == kind) and booster in r["boosters"]
    ]
    by_concept: dict[str, list[dict]] = {}
    for r in rows:
        by_concept.setdefault(r["concept"], []).append(r)

    def of(r: dict, variant: str) -> dict:
        return r["boosters"][booster].get(variant) or {}

    per_concept = []
    for name, runs in by_concept.items():
        per_concept.append(
            {
                "concept": name,
                "kind": runs[0]["kind"],
                "seeds": len(runs),
                "speedup": median([of(r, "own_rate").get("speedup") for r in runs]),
                "speedup_same_rate": median([of(r, "same_rate").get("speedup") for r in runs]),
                "shuffled_speedup": median([of(r, "shuffled").get("speedup") for r in runs]),
                "baseline_steps": median([r["baseline"]["steps"] for r in runs]),
                "booster_steps": median([of(r, "own_rate").get("steps") for r in runs]),
                "zero_step_generic": median([curve_of(r["baseline"])[0] for r in runs]),
                "zero_step_booster": median([curve_of(of(r, "own_rate"))[0] for r in runs]),
                "kept_baseline": median([r["baseline"]["kept"] for r in runs]),
                "kept_booster": median([of(r, "own_rate")["kept"] for r in runs]),
                "final_baseline": median([r["baseline"]["final"] for r in runs]),
                "final_booster": median([of(r, "own_rate")["final"] for r in runs]),
                "icl": median([r["icl"] for r in runs]),
                "icl_prompt_tokens": median([r["icl_prompt_tokens"] for r in runs]),
                "icl_step_baseline": median([r["baseline"]["icl_step"] for r in runs]),
                "icl_step_booster": median([of(r, "own_rate")["icl_step"] for r in runs]),
                "booster_kept_at_or_below_icl_runs": sum(of(r, "own_rate")["kept_at_or_below_icl"] for r in runs),
                "baseline_kept_at_or_below_icl_runs": sum(r["baseline"]["kept_at_or_below_icl"] for r in runs),
                "booster_chosen_runs": sum(of(r, "own_rate")["init_used"] == "booster" for r in runs),
                "cosine_start": median([of(r, "own_rate").get("cosine_start") for r in runs]),
                "cosine_kept": median([of(r, "own_rate").get("cosine_kept") for r in runs]),
            }
        )
    count = max(len(per_concept), 1)

    def share(condition) -> float:
        return sum(bool(condition(c)) for c in per_concept) / count

    speed = median([c["speedup"] for c in per_concept])
    shuffled = median([c["shuffled_speedup"] for c in per_concept])
    return {
        "mode": mode,
        "booster": booster,
        "kind": kind or "all",
        "concepts": len(per_concept),
        "runs": len(rows),
        "per_concept": per_concept,
        "median_speedup": speed,
        "median_speedup_same_rate": median([c["speedup_same_rate"] for c in per_concept]),
        "median_shuffled_speedup": shuffled,
        "shuffled_share_of_gain": (shuffled - 1) / (speed - 1)
        if shuffled is not None and speed and speed > 1
        else None,
        "zero_step_better_than_generic": share(lambda c: c["zero_step_booster"] < c["zero_step_generic"]),
        "median_zero_step_booster_over_icl": median([c["zero_step_booster"] / c["icl"] for c in per_concept]),
        "median_kept_booster_over_baseline": median([c["kept_booster"] / c["kept_baseline"] for c in per_concept]),
        "worst_kept_booster_over_baseline": max(
            (c["kept_booster"] / c["kept_baseline"] for c in per_concept), default=None
        ),
        "booster_kept_at_or_below_icl": share(lambda c: c["kept_booster"] <= c["icl"]),
        "baseline_kept_at_or_below_icl": share(lambda c: c["kept_baseline"] <= c["icl"]),
        "booster_kept_at_or_below_icl_runs": sum(of(r, "own_rate")["kept_at_or_below_icl"] for r in rows)
        / max(len(rows), 1),
        "baseline_kept_at_or_below_icl_runs": sum(r["baseline"]["kept_at_or_below_icl"] for r in rows)
        / max(len(rows), 1),
        "median_icl_prompt_tokens": median([c["icl_prompt_tokens"] for c in per_concept]),
        "median_kept_booster": median([c["kept_booster"] for c in per_concept]),
        "median_icl": median([c["icl"] for c in per_concept]),
        "guard_chose_booster_runs": sum(of(r, "own_rate")["init_used"] == "booster" for r in rows) / max(len(rows), 1),
    }


def load_cache(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            done[record["key"]] = record
    return done


def append(path: Path, record: dict) -> None:
    with path.open("a") as handle:
        handle.write(json.dumps(record) + "\n")


def parse_boosters(values: Sequence[str]) -> dict[str, tuple[Path, Path | None]]:
    """NAME=FOLDER[+META_FOLDER]: a text booster, with a meta booster whose prediction joins its candidates."""
    named: dict[str, tuple[Path, Path | None]] = {}
    for value in values:
        name, _, folders = value.rpartition("=")
        folder, _, meta = folders.partition("+")
        named[name or Path(folder).name] = (Path(folder), Path(meta) if meta else None)
    return named


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument(
        "--boosters",
        nargs="+",
        default=[f"retrieval={Path(__file__).parent / 'weights' / 'smollm2-135m'}"],
        help="NAME=FOLDER text boosters to compare on the same concepts",
    )
    parser.add_argument("--words", type=int, default=2)
    parser.add_argument("--invented", type=int, default=3, help="at most 7: the last made-up word tunes the sweep")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30, help="each fixed run's length")
    parser.add_argument("--sweep-steps", type=int, default=30)
    parser.add_argument("--modes", nargs="+", default=["token", "pivotal"])
    parser.add_argument("--num-vectors", type=int, nargs="+", default=[1])
    parser.add_argument(
        "--sweep-one-vector", action="store_true", help="runs of several vectors take the one-vector sweep's rates"
    )
    parser.add_argument("--same-rate", action="store_true", help="also each booster at the baseline's rate")
    parser.add_argument("--no-shuffled", action="store_true", help="skip the shuffled-input ablation")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/leap-text-booster-bench.jsonl"))
    parser.add_argument("--json", type=Path, default=Path("bench/results/text_booster.json"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report-only", action="store_true", help="summarise the cache, run nothing new")
    parser.add_argument("--stop-when-done", action="store_true", help="default jobs (no steps) instead")
    parser.add_argument("--long-steps", type=int, default=0, help="--stop-when-done: a long fixed run (0: none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    registry = load_registry()
    base = load_text_base(resolve_text_model(args.base_model, args.data_dir, registry), torch.device("cpu"))
    boosters: dict[str, Booster] = {
        name: (checked_text_booster(folder, base), checked_meta_booster(meta, base) if meta else None)
        for name, (folder, meta) in parse_boosters(args.boosters).items()
    }
    concepts, sweep_concepts = concept_sets(base, args.words, args.invented)
    done = load_cache(args.cache)
    if args.stop_when_done:
        stop_when_done(args, base, boosters, concepts, done, started, registry)
        return
    records = []
    report_sweeps: dict[str, Any] = {}
    for vectors in args.num_vectors:
        bench = Bench(args.base_model, args.data_dir, registry, args.steps, num_vectors=vectors)
        for mode in args.modes:
            # Several vectors take the one-vector sweep's rates with --sweep-one-vector (one sweep fewer).
            swept = 1 if args.sweep_one_vector else vectors
            key = f"sweep:{mode}:{swept}:{args.sweep_steps}"
            cached = done.get(key)
            sides: dict[str, Any] = {"baseline": None}
            sides.update({name: (lambda concept, b=b: bench_resolver(b, concept)) for name, b in boosters.items()})
            # A side the cached sweep lacks (another booster) is swept against the cached targets.
            missing = {side: r for side, r in sides.items() if cached is None or side not in cached["sides"]}
            if missing and not args.report_only:
                bench = Bench(args.base_model, args.data_dir, registry, args.steps, num_vectors=swept)
                sets = [(c.word, *split(c, 0)) for c in sweep_concepts]
                targets = cached["targets"] if cached else None
                result = sweep(bench, mode, SWEEP_POINTS[mode], sets, missing, args.sweep_steps, targets)
                if cached:
                    result = {**cached, "sides": {**cached["sides"], **result["sides"]}}
                done[key] = {**result, "key": key}
                append(args.cache, done[key])
                bench = Bench(args.base_model, args.data_dir, registry, args.steps, num_vectors=vectors)
            if key not in done or any(side not in done[key]["sides"] for side in sides):
                continue
            chosen = {side: done[key]["sides"][side]["rates"] for side in sides}
            report_sweeps[key] = {k: v for k, v in done[key].items() if k != "key"}
            print(f"{mode} x{vectors}: sweep chose {chosen}", flush=True)
            records += fixed_runs(args, bench, base, mode, boosters, concepts, chosen, done)
    summaries = [
        {"num_vectors": vectors, **summarise([r for r in records if r["num_vectors"] == vectors], mode, name, kind)}
        for vectors in args.num_vectors
        for mode in args.modes
        for name in boosters
        for kind in ("word", "invented", None)
    ]
    print_table(summaries)
    write_report(
        args,
        {
            "benchmark": "text booster",
            "settings": settings_of(args),
            "sweeps": report_sweeps,
            "summaries": summaries,
            "records": records,
        },
        started,
    )


def fixed_runs(args, bench: Bench, base, mode: str, boosters, concepts, rates, done: dict) -> list[dict]:
    records = []
    for seed in range(args.seeds):  # seeds outermost: a run stopped early still covers every concept
        for index, (kind, name, concept) in enumerate(concepts):
            key = f"{mode}:{bench.num_vectors}:{name}:{seed}:{','.join(boosters)}:{args.steps}"
            if key not in done:
                if args.report_only:
                    continue
                examples, held_out = split(concept, seed)
                other = concepts[(index + 1) % len(concepts)]
                other_examples, _ = split(other[2], seed)

                def shuffled_resolver(b, other_name=other[1], given=other_examples):
                    resolve = bench_resolver(b, other_name)
                    return lambda base_, examples_, config, score: resolve(base_, given, config, score)

                record = compare(
                    bench,
                    base,
                    mode,
                    seed,
                    examples,
                    held_out,
                    rates=rates,
                    boosters={n: bench_resolver(b, name) for n, b in boosters.items()},
                    shuffled=None
                    if mode != "token" or args.no_shuffled
                    else {n: shuffled_resolver(b) for n, b in boosters.items()},
                    same_rate=args.same_rate,
                )
                done[key] = {
                    "key": key,
                    "mode": mode,
                    "num_vectors": bench.num_vectors,
                    "kind": kind,
                    "concept": name,
                    "seed": seed,
                    **record,
                }
                append(args.cache, done[key])
                print_record(done[key])
            records.append(done[key])
    return records


def print_record(record: dict) -> None:
    parts = [
        f"{record['key']}: icl {record['icl']:.3f} ({record['icl_prompt_tokens']} tokens); baseline "
        f"{record['baseline']['steps']} steps, kept {record['baseline']['kept']:.3f}"
    ]
    for name, entry in record["boosters"].items():
        own = entry["own_rate"]
        parts.append(
            f"{name}[{own['init_used']}] {own['steps']} steps ({own['speedup']}x), 0-step {curve_of(own)[0]:.3f}, "
            f"kept {own['kept']:.3f}"
            + (f", same-rate {entry['same_rate']['speedup']}x" if "same_rate" in entry else "")
            + (f", shuffled {entry['shuffled']['speedup']}x" if "shuffled" in entry else "")
        )
    print("; ".join(parts), flush=True)


def print_table(summaries: list[dict]) -> None:
    print(
        f"\n{'mode':8} {'n':>2} {'booster':10} {'kind':9} {'speed-up':>9} {'same-rate':>9} {'shuffled':>9} "
        f"{'0-step/icl':>10} {'kept<=icl':>9} {'base<=icl':>9} {'kept/base':>9} {'icl tokens':>10}"
    )

    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    for s in summaries:
        print(
            f"{s['mode']:8} {s['num_vectors']:>2} {s['booster']:10} {s['kind']:9} "
            f"{cell(s['median_speedup'], '.2f'):>9} "
            f"{cell(s['median_speedup_same_rate'], '.2f'):>9} {cell(s['median_shuffled_speedup'], '.2f'):>9} "
            f"{cell(s['median_zero_step_booster_over_icl'], '.3f'):>10} {s['booster_kept_at_or_below_icl']:>9.0%} "
            f"{s['baseline_kept_at_or_below_icl']:>9.0%} {cell(s['median_kept_booster_over_baseline'], '.3f'):>9} "
            f"{cell(s['median_icl_prompt_tokens'], '.0f'):>10}"
        )


def settings_of(args) -> dict:
    return {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("cache", "json", "report_only")
    } | {"shots": SHOTS, "target": TARGET, "eval_steps": eval_grid(args.steps), "sweep_points": SWEEP_POINTS}


def write_report(args, report: dict, started: float) -> None:
    report = {
        **report,
        "base_model": args.base_model,
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
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
        "start": curve[0],
        "held_out": curve[kept],
        "pivot_step": result.manifest["pivot_step"],
        "init_used": result.init_used,
        "seconds": round(time.perf_counter() - started, 1),
    }


def stop_when_done(args, base, boosters, concepts, done: dict, started: float, registry: Registry) -> None:
    """Default jobs (registry cap and rates) from the token and from each booster, against in-context
    learning (and a long fixed run where --long-steps)."""
    records = []
    for seed in range(args.seeds):
        for mode in args.modes:
            for kind, name, concept in concepts:
                key = f"default:{mode}:{name}:{seed}:{','.join(boosters)}:{args.long_steps}"
                if key in done:
                    records.append(done[key])
                    continue
                if args.report_only:
                    continue
                examples, held_out = split(concept, seed)
                common = {
                    "base_model": args.base_model,
                    "mode": mode,
                    "seed": seed,
                    "device": "cpu",
                    "data_dir": args.data_dir,
                }
                icl = icl_loss(base, examples, held_out)
                record: dict[str, Any] = {
                    "key": key,
                    "mode": mode,
                    "kind": kind,
                    "concept": name,
                    "seed": seed,
                    "icl": icl,
                    "icl_prompt_tokens": icl_prompt_tokens(base, examples),
                }
                if args.long_steps:
                    config = TextTrainConfig(init=Init.TOKEN, steps=args.long_steps, **common)
                    long = run(config, examples, held_out, registry=registry)
                    record["long"] = {"kept": long["kept"], "final": long["final"], "best": min(long["curve"].values())}
                jobs = {
                    "token": default_job(
                        TextTrainConfig(init=Init.TOKEN, **common), examples, held_out, registry=registry
                    )
                }
                for booster_name, booster in boosters.items():
                    jobs[booster_name] = default_job(
                        TextTrainConfig(init=Init.BOOSTER, **common),
                        examples,
                        held_out,
                        registry=registry,
                        resolver=bench_resolver(booster, name),
                    )
                for job in jobs.values():
                    job["kept_at_or_below_icl"] = job["held_out"] <= icl
                    job["kept_over_icl"] = job["held_out"] / icl
                record["jobs"] = jobs
                done[key] = record
                append(args.cache, record)
                records.append(record)
                print(
                    f"{key}: icl {icl:.3f} ({record['icl_prompt_tokens']} tokens); "
                    + "; ".join(
                        f"{n}[{j['init_used']}] {j['steps']} steps ({j['stop_reason']}) kept {j['held_out']:.3f} "
                        f"(start {j['start']:.3f})"
                        for n, j in jobs.items()
                    ),
                    flush=True,
                )
    summaries = []
    for mode in args.modes:
        rows = [r for r in records if r["mode"] == mode]
        for name in ["token", *boosters]:
            started_jobs = [r["jobs"][name] for r in rows if name in r["jobs"]]
            token_jobs = [r["jobs"]["token"] for r in rows if name in r["jobs"]]
            summary = {
                "mode": mode,
                "start": name,
                "runs": len(started_jobs),
                "median_steps": median([j["steps"] for j in started_jobs]),
                "median_kept_over_icl": median([j["kept_over_icl"] for j in started_jobs]),
                "kept_at_or_below_icl_runs": sum(j["kept_at_or_below_icl"] for j in started_jobs)
                / max(len(started_jobs), 1),
                "median_steps_over_token": median(
                    [j["steps"] / t["steps"] for j, t in zip(started_jobs, token_jobs, strict=True) if t["steps"]]
                ),
                "kept_at_or_below_token_runs": sum(
                    j["held_out"] <= t["held_out"] for j, t in zip(started_jobs, token_jobs, strict=True)
                )
                / max(len(started_jobs), 1),
                "median_kept_over_token": median(
                    [j["held_out"] / t["held_out"] for j, t in zip(started_jobs, token_jobs, strict=True)]
                ),
                "worst_kept_over_token": max(
                    (j["held_out"] / t["held_out"] for j, t in zip(started_jobs, token_jobs, strict=True)), default=None
                ),
            }
            summaries.append(summary)
            print(
                f"{mode} {name}: median steps {summary['median_steps']} ({summary['median_steps_over_token']} of the "
                f"token job's), kept <= icl {summary['kept_at_or_below_icl_runs']:.0%}, kept <= token job's "
                f"{summary['kept_at_or_below_token_runs']:.0%} (median ratio {summary['median_kept_over_token']})"
            )
    write_report(
        args,
        {"benchmark": "text default jobs", "settings": settings_of(args), "summaries": summaries, "records": records},
        started,
    )


if __name__ == "__main__":
    main()
