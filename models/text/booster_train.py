"""Training the text booster on a base model's own vocabulary (CPU-friendly, resumable).

    python -m models.text.booster_train --base-model smollm2-135m --data-dir /tmp/leap-data \
        --words 900 --work /tmp/leap-text-booster --out models/text/weights/smollm2-135m

Steps, each cached under --work so a stopped run resumes: (1) the model writes contexts for
--words training words (booster_data); (2) the frozen model reads every context (booster.read_examples);
(3) ridge regressions from the average features of random --shots-example subsets to the words'
embeddings, the ridge strength picked on 10% of the training words; (4) the retrieval reader's
calibration: each probe's mean log-probabilities over the texts of --calibration-words training words;
(5) the booster is saved. Held-out words (booster_data.is_held_out) are never touched.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from models.registry import load_registry
from models.text.base_model import load_text_base, resolve_text_model
from models.text.booster import new_text_booster, read_examples, save_text_booster
from models.text.booster_data import PLACEHOLDER, build_word_concepts, split_words, vocabulary_words

RIDGES = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def subset_features(features: torch.Tensor, shots: int, draws: int, generator: random.Random) -> torch.Tensor:
    """[words, examples, F] -> [words * draws, F]: means over random `shots`-example subsets."""
    words, examples, _ = features.shape
    rows = []
    for _ in range(draws):
        picks = torch.stack([torch.tensor(generator.sample(range(examples), shots)) for _ in range(words)])
        rows.append(torch.gather(features, 1, picks[..., None].expand(-1, -1, features.shape[-1])).mean(1))
    return torch.stack(rows, 1).reshape(words * draws, -1)


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=-1).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--words", type=int, default=900)
    parser.add_argument("--shots", type=int, default=4, help="examples per read (a job's typical count)")
    parser.add_argument("--draws", type=int, default=6, help="random example subsets per word")
    parser.add_argument("--calibration-words", type=int, default=64, help="training words for the retrieval prior")
    parser.add_argument("--work", type=Path, default=Path("/tmp/leap-text-booster"))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    base = load_text_base(resolve_text_model(args.base_model, args.data_dir, load_registry()), torch.device("cpu"))
    booster = new_text_booster(base, args.base_model)
    train_words, held_words = split_words(vocabulary_words(base.tokenizer))
    words = random.Random(args.seed).sample(train_words, min(args.words, len(train_words)))

    timings = {}
    t = time.perf_counter()
    concepts = build_word_concepts(
        base.model,
        base.tokenizer,
        words,
        args.work / "contexts.jsonl",
        on_batch=lambda done, total: print(f"contexts {done}/{total}", flush=True),
    )
    timings["contexts_s"] = round(time.perf_counter() - t, 1)  # ~0 when every word came from the cache

    t = time.perf_counter()
    cache = args.work / f"features-{len(words)}.pt"
    if cache.is_file():
        features = torch.load(cache)
    else:
        texts = [e for c in concepts for e in c.examples(range(len(c.texts)))]
        features = read_examples(base, texts, token=PLACEHOLDER, middle_layer=booster.config.middle_layer)
        features = features.reshape(len(concepts), len(concepts[0].texts), -1)
        torch.save(features, cache)
    timings["features_s"] = round(time.perf_counter() - t, 1)
    print(f"features {tuple(features.shape)} in {timings['features_s']}s", flush=True)

    weight = base.model.get_input_embeddings().weight.detach().float().cpu()
    targets = weight[torch.tensor([c.token_id for c in concepts])]
    generator = random.Random(args.seed)
    order = list(range(len(concepts)))
    generator.shuffle(order)
    cut = len(order) // 10
    valid, fit = torch.tensor(order[:cut]), torch.tensor(order[cut:])
    x_fit = subset_features(features[fit], args.shots, args.draws, generator)
    y_fit = targets[fit].repeat_interleave(args.draws, 0)
    x_valid = subset_features(features[valid], args.shots, 1, generator)
    scores = {}
    for ridge in RIDGES:
        booster.fit(x_fit, y_fit, ridge)
        with torch.no_grad():
            scores[ridge] = cosine(booster(x_valid), targets[valid])
        print(f"ridge {ridge}: validation cosine {scores[ridge]:.4f}", flush=True)
    best = max(scores, key=lambda r: scores[r])
    x_all = subset_features(features, args.shots, args.draws, generator)
    booster.fit(x_all, targets.repeat_interleave(args.draws, 0), best)

    t = time.perf_counter()
    vocabulary = sorted({token_id for _, token_id in vocabulary_words(base.tokenizer)})
    calibration = [c.examples(range(len(c.texts))) for c in concepts[: args.calibration_words]]
    booster.fit_retrieval(base, vocabulary, calibration, PLACEHOLDER)
    timings["retrieval_s"] = round(time.perf_counter() - t, 1)
    print(f"retrieval prior over {len(calibration)} words in {timings['retrieval_s']}s", flush=True)
    booster.config.training = {
        "words": len(concepts),
        "held_out_words_excluded": len(held_words),
        "frames": len(concepts[0].texts),
        "shots": args.shots,
        "draws": args.draws,
        "calibration_words": len(calibration),
        "ridge_validation_cosine": {str(k): round(v, 4) for k, v in scores.items()},
        "generic_word_validation_cosine": round(
            cosine(weight[base.tokenizer(" thing").input_ids[0]][None], targets[valid]), 4
        ),
        "threads": args.threads,
        "timings": {**timings, "total_s": round(time.perf_counter() - started, 1)},
    }
    save_text_booster(booster, args.out)
    print(json.dumps(booster.config.training, indent=2))


if __name__ == "__main__":
    main()
