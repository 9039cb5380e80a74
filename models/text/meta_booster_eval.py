"""Zero-step starts on held-out concepts: what each start's held-out loss is before any training.

    python -m models.text.meta_booster_eval --data-dir ~/.cache/leap --out bench/results/text_meta_booster_starts.json

Concepts: --words held-out vocabulary words (booster_data.is_held_out: neither booster trained on
them or, for the meta booster, on any word of their families) and the first --invented made-up
words (booster_data.INVENTED), chosen and split exactly as models/text/booster_bench.py does: per
seed, 4 texts are the examples, the other 4 the queries (loss on their continuations). Starts:

  token       the initializer word "thing"'s embedding
  retrieval   the retrieval/ridge booster's pick (TextBooster.start, without the meta candidate)
  meta        the meta booster's prediction alone
  combined    TextBooster.start with the meta prediction as one more candidate, scored on the
              examples it did not read (what a job gets)
  shuffled    the meta booster fed the next concept's examples (the queries stay this concept's)
  icl         no token: the 4 examples in the prompt before each query, the token written as text
  icl_meta    the 4 examples in the prompt and the meta booster's token

Every loss is the mean per labelled token over the queries' continuations (one batch).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from pathlib import Path

import torch

from models.registry import load_registry
from models.text.base_model import load_text_base, resolve_text_model
from models.text.booster import checked_text_booster, registered_text_booster_path
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
from models.text.concept import TextConcept
from models.text.data import collate, lm_loss, pad_id_of, tokenize_example
from models.text.examples import TextExample
from models.text.meta_booster import checked_meta_booster
from models.text.train import start_scorer

SHOTS = 4
STARTS = ("token", "retrieval", "meta", "combined", "shuffled", "icl", "icl_meta")


@torch.no_grad()
def batch_loss(model, tokenizer, examples) -> float:
    rows = [tokenize_example(tokenizer, e, expand=lambda t: t, max_length=1024) for e in examples]
    return float(lm_loss(model, collate(rows, pad_id_of(tokenizer), next(model.parameters()).device)))


def in_context(examples, queries) -> list[TextExample]:
    context = "\n".join(e.full_text for e in examples) + "\n"
    return [
        TextExample(text=None, prompt=context + q.prompt, completion=q.completion, source=q.source) for q in queries
    ]


def split(concept, seed: int):
    order = list(range(len(concept.texts)))
    random.Random(seed).shuffle(order)
    return concept.examples(order[:SHOTS]), concept.held_out(order[SHOTS : 2 * SHOTS])


def summary(rows: list[dict]) -> dict:
    """Medians over concepts of each concept's median over seeds, and how the starts compare."""
    per_concept: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(r["concept"] for r in rows):
        mine = [r for r in rows if r["concept"] == name]
        per_concept[name] = {k: statistics.median(r[k] for r in mine) for k in STARTS}
    medians = {k: round(statistics.median(c[k] for c in per_concept.values()), 4) for k in STARTS}
    gain = [c["token"] - c["meta"] for c in per_concept.values()]
    kept = [c["token"] - c["shuffled"] for c in per_concept.values()]
    return {
        "concepts": len(per_concept),
        "median_loss": medians,
        "mean_loss": {k: round(statistics.mean(c[k] for c in per_concept.values()), 4) for k in STARTS},
        "meta_over_icl": round(medians["meta"] / medians["icl"], 4),
        "combined_over_icl": round(medians["combined"] / medians["icl"], 4),
        "retrieval_over_icl": round(medians["retrieval"] / medians["icl"], 4),
        "meta_within_5pct_of_icl": sum(c["meta"] <= 1.05 * c["icl"] for c in per_concept.values()),
        "meta_below_retrieval": sum(c["meta"] < c["retrieval"] for c in per_concept.values()),
        "job_picked_meta": f"{sum('meta booster' in r['combined_note'] for r in rows)} of {len(rows)} runs",
        "shuffled_kept_gain": round(sum(kept) / sum(gain), 4) if sum(gain) > 0 else None,
        "per_concept": {n: {k: round(v, 4) for k, v in c.items()} for n, c in per_concept.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--words", type=int, default=8)
    parser.add_argument("--invented", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--meta", type=Path, help="a meta booster folder (default: the registered booster's)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    registry = load_registry()
    base = load_text_base(resolve_text_model(args.base_model, args.data_dir, registry), torch.device("cpu"))
    directory = registered_text_booster_path(base, args.base_model, registry)
    assert directory is not None, f"no text booster registered for {args.base_model}"
    booster = checked_text_booster(directory, base)
    meta = checked_meta_booster(args.meta or directory, base)
    _, held = split_words(vocabulary_words(base.tokenizer))
    held = whole_words(base.model, base.tokenizer, random.Random(1234).sample(held, 8 * (args.words + 1)))
    concepts: list[tuple[str, WordConcept | InventedConcept]]
    concepts = [("word", c) for c in write_contexts(base.model, base.tokenizer, held[: args.words])]
    concepts += [("invented", c) for c in INVENTED[: min(args.invented, len(INVENTED) - 1)]]  # the last tunes sweeps

    records = []
    concept = TextConcept(base, token=PLACEHOLDER, num_vectors=1)
    try:
        score = start_scorer(base, concept, 1024)

        def loss_with(vector: torch.Tensor, queries) -> float:
            with torch.no_grad():
                concept.input_vectors.copy_(vector.to(concept.input_vectors)[None])
            return batch_loss(base.model, concept.tokenizer, queries)

        for seed in range(args.seeds):
            for index, (kind, item) in enumerate(concepts):
                examples, queries = split(item, seed)
                other, _ = split(concepts[(index + 1) % len(concepts)][1], seed)
                concept.init_from_token("thing")
                token = concept.input_vectors[0].detach().clone()
                folds = meta.predict_folds(base, examples, PLACEHOLDER)
                meta_vector = folds[0][0]
                retrieval, retrieval_note = booster.start(base, examples, PLACEHOLDER, score)
                # What a job gets: TextBooster.start with the meta candidate scored on examples it did not read.
                combined, combined_note = booster.start(base, examples, PLACEHOLDER, score, [("meta booster", folds)])
                losses = {
                    "token": loss_with(token, queries),
                    "retrieval": loss_with(retrieval, queries),
                    "meta": loss_with(meta_vector, queries),
                    "combined": loss_with(combined, queries),
                    "shuffled": loss_with(meta.predict(base, other, PLACEHOLDER), queries),
                    "icl_meta": loss_with(meta_vector, in_context(examples, queries)),
                    "icl": batch_loss(base.model, base.tokenizer, in_context(examples, queries)),
                }
                record = {
                    "kind": kind,
                    "concept": item.word,
                    "seed": seed,
                    **{k: round(v, 4) for k, v in losses.items()},
                }
                record["retrieval_note"], record["combined_note"] = retrieval_note, combined_note
                records.append(record)
                print(" ".join(f"{k}={v}" for k, v in record.items() if "note" not in k), flush=True)
    finally:
        concept.close()

    result = {
        "command": "python -m models.text.meta_booster_eval "
        + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None and k != "out"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} CPU thread, torch {torch.__version__}",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "seeds": args.seeds,
        "shots": SHOTS,
        "meta_booster": str(args.meta or directory),
        "held_out_words": summary([r for r in records if r["kind"] == "word"]),
        "invented": summary([r for r in records if r["kind"] == "invented"]),
        "all": summary(records),
        "runs": records,
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"{'':>16}" + "".join(f"{k:>11}" for k in STARTS))
    for name in ("held_out_words", "invented", "all"):
        medians = result[name]["median_loss"]
        print(f"{name:>16}" + "".join(f"{medians[k]:>11.4f}" for k in STARTS))
    for name in ("held_out_words", "invented", "all"):
        part = result[name]
        print(
            f"{name}: meta/icl {part['meta_over_icl']}, combined/icl {part['combined_over_icl']}, "
            f"retrieval/icl {part['retrieval_over_icl']}, shuffled keeps {part['shuffled_kept_gain']} of the gain"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
