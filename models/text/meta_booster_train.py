"""Training the meta-learned text booster end to end through the frozen base model (CPU-friendly, resumable).

    python -m models.text.meta_booster_train --data-dir ~/.cache/leap --words 480 --warm-steps 1500 --steps 3000 \
        --minutes 36 --work /tmp/leap-meta-booster --out /tmp/leap-meta-booster/out

Concepts come from the base model's own vocabulary (booster_data): each whole-word token's 16
contexts (booster_data.FRAMES and MORE_FRAMES), written by the model, with the word replaced by the
concept token. Held-out words (booster_data.is_held_out) and every word of their families (the same
first four letters) are never read; a further slice of training families is kept for validation.
Steps, each cached under --work so a stopped run resumes:

1. contexts (booster_data.build_word_concepts, a JSONL cache);
2. what the frozen reader makes of every context (meta_booster.read_support: pooled states, and each
   text's tokens with their middle-layer states), cached: the base is frozen, so support texts are
   read once;
3. warm start (seconds): the head regresses the word's own input embedding (cosine + scaled MSE)
   from random support subsets; --renamed of the concepts are treated as invented words (renamed:
   no embedding exists for them) and get no target here, only the LM loss of step 4;
4. end to end (the budget): per step, --batch concepts, a random 2-5 of their texts as support and
   --queries other texts as queries; the head's vector is written into the queries' concept token
   (tied: input and output row) and the frozen LM's loss on their continuations is back-propagated
   into the head. Validation every --eval-every steps on fixed support/query splits of the
   validation concepts; the best state is kept. A checkpoint after every evaluation and at the
   end of each --minutes chunk; rerunning the command continues from it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from models.registry import load_registry
from models.text.base_model import TextBase, load_text_base, resolve_text_model
from models.text.booster_data import (
    FRAMES,
    MORE_FRAMES,
    PLACEHOLDER,
    WordConcept,
    build_word_concepts,
    is_held_out,
    vocabulary_words,
)
from models.text.data import IGNORE, pad_id_of, tokenize_example
from models.text.examples import TextExample
from models.text.meta_booster import MetaBooster, Support, new_meta_booster, read_support, save_meta_booster

FAMILY_LETTERS = 4


def family(word: str) -> str:
    """Words sharing their first letters (garden, gardens, gardener) are one family."""
    return word[:FAMILY_LETTERS]


def split_families(words: Sequence[tuple[str, int]]) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(trainable words, held-out words): a held-out word's whole family stays out of training."""
    held = [w for w in words if is_held_out(w[0])]
    held_families = {family(w) for w, _ in held}
    return [w for w in words if family(w[0]) not in held_families], held


def is_validation(word: str, buckets: int = 20) -> bool:
    """A fixed ~5% of the trainable families, never trained on, for picking the kept state."""
    return int(hashlib.sha256(("validation:" + family(word)).encode()).hexdigest(), 16) % buckets == 0


class QueryBatch:
    """Query texts tokenised with the concept token, right-padded: ids, labels, mask, concept index."""

    def __init__(self, tokenizer, token_id: int, rows: list[tuple[int, TextExample]], pad_id: int) -> None:
        tokenised = [(c, tokenize_example(tokenizer, e, expand=lambda t: t, max_length=1024)) for c, e in rows]
        width = max(len(r.ids) for _, r in tokenised)
        self.ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        self.labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
        self.mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (_, row) in enumerate(tokenised):
            self.ids[i, : len(row.ids)] = torch.tensor(row.ids)
            self.labels[i, : len(row.labels)] = torch.tensor(row.labels)
            self.mask[i, : len(row.ids)] = 1
        self.concept = torch.tensor([c for c, _ in tokenised])
        self.token_id = token_id


def query_loss(base: TextBase, batch: QueryBatch, vectors: torch.Tensor, *, reduce: bool = True) -> torch.Tensor:
    """The frozen LM's loss on the queries with each one's concept token set to its concept's vector.

    vectors [concepts, width] (tied) or [concepts, 2 * width] (input row, output row); differentiable
    in `vectors` only. The token's logit is one extra column (the token id lies past the table)."""
    model = base.model
    width = base.width
    table = model.get_input_embeddings().weight
    ids = batch.ids.to(base.device)
    is_token = ids == batch.token_id
    embeds = table[ids.clamp(max=table.shape[0] - 1)]
    rows = vectors[batch.concept.to(base.device)]
    embeds = torch.where(is_token[..., None], rows[:, None, :width].to(embeds.dtype), embeds)
    body = model.get_decoder() if hasattr(model, "get_decoder") else model.model
    hidden = body(inputs_embeds=embeds, attention_mask=batch.mask.to(base.device)).last_hidden_state
    out_rows = rows[:, :width] if vectors.shape[1] == width else rows[:, width:]
    logits = model.get_output_embeddings()(hidden).float()
    extra = (hidden.float() * out_rows[:, None, :].float()).sum(-1, keepdim=True)
    logits = torch.cat([logits, extra], -1)
    labels = batch.labels.to(base.device)
    labels = torch.where(labels == batch.token_id, logits.shape[-1] - 1, labels)
    losses = F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGNORE, reduction="none"
    ).reshape(len(ids), -1)
    counted = (labels[:, 1:] != IGNORE).float()
    if reduce:
        return losses.sum() / counted.sum().clamp(min=1)
    return losses.sum(1) / counted.sum(1).clamp(min=1)


def concept_tokenizer(base: TextBase, token: str = PLACEHOLDER):
    """A copy of the base tokenizer with the concept token added (the shared one never changes)."""
    import copy

    tokenizer = copy.deepcopy(base.tokenizer)
    tokenizer.add_tokens([token])
    return tokenizer, tokenizer.convert_tokens_to_ids(token)


def episodes(
    generator: random.Random, count: int, texts: int, queries: int, shots: tuple[int, int]
) -> tuple[list[list[int]], list[list[int]]]:
    """Support and query indices for `count` concepts (one support size for the whole batch)."""
    k = generator.randint(*shots)
    supports, query_sets = [], []
    for _ in range(count):
        order = list(range(texts))
        generator.shuffle(order)
        supports.append(order[:k])
        query_sets.append(order[k : k + queries])
    return supports, query_sets


def predict(
    booster: MetaBooster,
    bank: Support,
    table: torch.Tensor,
    concepts: Sequence[int],
    supports: Sequence[Sequence[int]],
) -> torch.Tensor:
    """The head's vectors [concepts, outputs * width] for these concepts' support texts."""
    support = bank.take(concepts, supports)
    return booster(support, table[support.ids])


def warm_start(
    booster: MetaBooster,
    bank: Support,
    table: torch.Tensor,
    concepts: Sequence[int],
    targets: torch.Tensor,
    *,
    steps: int,
    batch: int,
    generator: random.Random,
    lr: float = 1e-3,
) -> list[float]:
    """Regress the word's own input embedding from support subsets (cosine + MSE scaled by its norm)."""
    optimizer = torch.optim.AdamW(booster.parameters(), lr=lr, weight_decay=0.01)
    scale = targets.pow(2).sum(-1).mean()
    losses = []
    texts = bank.pooled.shape[1]
    for _ in range(steps):
        chosen = [generator.randrange(len(concepts)) for _ in range(batch)]
        supports, _ = episodes(generator, batch, texts, 0, (2, 5))
        predicted = predict(booster, bank, table, [concepts[c] for c in chosen], supports)[:, : targets.shape[1]]
        wanted = targets[chosen]
        loss = (1 - F.cosine_similarity(predicted, wanted, dim=-1)).mean() + (predicted - wanted).pow(2).sum(
            -1
        ).mean() / scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def validation_loss(
    base: TextBase,
    booster: MetaBooster,
    bank: Support,
    table: torch.Tensor,
    indices: Sequence[int],
    concepts: Sequence[WordConcept],
    tokenizer,
    token_id,
) -> float:
    """Mean query loss over the validation concepts: texts 0-3 as support, 4-7's continuations as queries."""
    pad = pad_id_of(tokenizer)
    total = 0.0
    for start in range(0, len(indices), 8):
        chunk = list(indices[start : start + 8])
        vectors = predict(booster, bank, table, chunk, [range(4)] * len(chunk))
        rows = [(i, e) for i, c in enumerate(chunk) for e in concepts[c].held_out(range(4, 8))]
        total += float(query_loss(base, QueryBatch(tokenizer, token_id, rows, pad), vectors)) * len(chunk)
    return total / len(indices)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="smollm2-135m")
    parser.add_argument("--data-dir")
    parser.add_argument("--words", type=int, default=400, help="vocabulary concepts (training + validation)")
    parser.add_argument("--renamed", type=float, default=0.3, help="fraction treated as invented (no target)")
    parser.add_argument("--warm-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=400, help="end-to-end steps in all (resumable)")
    parser.add_argument("--minutes", type=float, default=14.0, help="stop this chunk after so many minutes")
    parser.add_argument("--batch", type=int, default=6, help="concepts per end-to-end step")
    parser.add_argument("--queries", type=int, default=2, help="query texts per concept")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--eval-every", type=int, default=40)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--pointer-heads", type=int, default=4, help="0: no pointer to the examples' words")
    parser.add_argument("--work", type=Path, default=Path("/tmp/leap-meta-booster"))
    parser.add_argument("--out", type=Path, help="where the kept state is saved when the run ends")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cuda: the base model and the head on the GPU")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    base = load_text_base(resolve_text_model(args.base_model, args.data_dir, load_registry()), device)
    base.model.requires_grad_(False)
    trainable, held = split_families(vocabulary_words(base.tokenizer))
    order = list(trainable)
    random.Random(args.seed).shuffle(order)
    words = order[: args.words]  # a larger --words extends the same list (and the contexts cache)
    state_path = args.work / "state.pt"
    state = torch.load(state_path, map_location=device, weights_only=False) if state_path.is_file() else {}
    timings = state.get("timings", {})

    t = time.perf_counter()
    concepts = build_word_concepts(
        base.model,
        base.tokenizer,
        words,
        args.work / f"contexts-{len(FRAMES) + len(MORE_FRAMES)}.jsonl",
        frames=FRAMES + MORE_FRAMES,
        on_batch=lambda done, total: print(f"contexts {done}/{total}", flush=True),
    )
    timings.setdefault("contexts_s", round(time.perf_counter() - t, 1))

    t = time.perf_counter()
    cache = args.work / f"support-{len(words)}.pt"
    if cache.is_file():
        bank = Support(**torch.load(cache))
    else:
        booster = new_meta_booster(base, args.base_model, hidden=args.hidden)
        texts = [text for c in concepts for text in c.texts]
        read = read_support(base, texts, PLACEHOLDER, middle_layer=booster.config.middle_layer)
        shape = (len(concepts), len(concepts[0].texts))
        bank = read.map(lambda x: x.reshape(*shape, *x.shape[1:]))
        torch.save(vars(bank), cache)
        timings["features_s"] = round(time.perf_counter() - t, 1)
    print(f"support {tuple(bank.pooled.shape)}, tokens {tuple(bank.ids.shape)}", flush=True)
    texts_per_concept = bank.pooled.shape[1]

    valid = [i for i, c in enumerate(concepts) if is_validation(c.word)]
    train = [i for i, c in enumerate(concepts) if not is_validation(c.word)]
    valid = valid or train[-2:]  # tiny runs only
    generator = random.Random(args.seed)
    renamed = set(generator.sample(train, int(args.renamed * len(train))))
    tokenizer, token_id = concept_tokenizer(base)
    table = base.model.get_input_embeddings().weight.detach().float()

    booster = new_meta_booster(base, args.base_model, hidden=args.hidden, pointer_heads=args.pointer_heads)
    flat = bank.pooled[train].reshape(-1, bank.pooled.shape[-1])
    booster.feature_mean.copy_(flat.mean(0))
    booster.feature_std.copy_(flat.std(0).clamp(min=1e-4))
    booster.to(device)
    bank = bank.map(lambda x: x.to(device))
    if "booster" in state:
        booster.load_state_dict(state["booster"])
    else:
        t = time.perf_counter()
        targeted = [i for i in train if i not in renamed]
        targets = table[torch.tensor([concepts[i].token_id for i in targeted])]
        losses = warm_start(
            booster, bank, table, targeted, targets, steps=args.warm_steps, batch=64, generator=random.Random(args.seed)
        )
        timings["warm_start_s"] = round(time.perf_counter() - t, 1)
        print(f"warm start: loss {losses[0]:.3f} -> {sum(losses[-50:]) / 50:.3f}", flush=True)
        state = {"step": 0, "curve": [], "timings": timings}
    optimizer = torch.optim.AdamW(booster.parameters(), lr=args.lr, weight_decay=0.01)
    if "optimizer" in state:
        optimizer.load_state_dict(state["optimizer"])
    if not state["curve"]:
        loss = validation_loss(base, booster, bank, table, valid, concepts, tokenizer, token_id)
        state["curve"].append([0, round(loss, 4)])
        state["best"] = {"step": 0, "loss": loss, "booster": {k: v.clone() for k, v in booster.state_dict().items()}}
        print(f"step 0: validation query loss {loss:.4f}", flush=True)
    step_generator = random.Random(args.seed * 1000 + state["step"])
    pad = pad_id_of(tokenizer)
    chunk_started = time.perf_counter()
    e2e_seconds = state.get("e2e_s", 0.0)

    def checkpoint() -> None:
        state.update(booster=booster.state_dict(), optimizer=optimizer.state_dict(), timings=timings)
        state["e2e_s"] = round(e2e_seconds, 1)
        torch.save(state, state_path)

    while state["step"] < args.steps and time.perf_counter() - chunk_started < args.minutes * 60:
        t = time.perf_counter()
        chosen = step_generator.sample(train, args.batch)
        supports, query_sets = episodes(step_generator, args.batch, texts_per_concept, args.queries, (2, 5))
        vectors = predict(booster, bank, table, chosen, supports)
        pairs = zip(chosen, query_sets, strict=True)
        rows = [(i, e) for i, (c, q) in enumerate(pairs) for e in concepts[c].held_out(q)]
        step_loss = query_loss(base, QueryBatch(tokenizer, token_id, rows, pad), vectors)
        optimizer.zero_grad()
        step_loss.backward()
        torch.nn.utils.clip_grad_norm_(booster.parameters(), 1.0)
        optimizer.step()
        state["step"] += 1
        e2e_seconds += time.perf_counter() - t
        if state["step"] % 10 == 0 or state["step"] <= 3:
            took = time.perf_counter() - t
            print(f"step {state['step']}: query loss {float(step_loss.detach()):.4f} ({took:.2f}s)", flush=True)
        if state["step"] % args.eval_every == 0:
            value = validation_loss(base, booster, bank, table, valid, concepts, tokenizer, token_id)
            state["curve"].append([state["step"], round(value, 4)])
            print(f"step {state['step']}: validation query loss {value:.4f}", flush=True)
            if value < state["best"]["loss"]:
                state["best"] = {
                    "step": state["step"],
                    "loss": value,
                    "booster": {k: v.clone() for k, v in booster.state_dict().items()},
                }
            checkpoint()
    timings["end_to_end_s"] = round(e2e_seconds, 1)
    checkpoint()
    print(f"chunk ended at step {state['step']} after {time.perf_counter() - started:.0f}s", flush=True)
    if args.out is not None:  # the kept state so far (a later chunk saves again)
        booster.load_state_dict(state["best"]["booster"])
        booster.config.training = {
            "concepts": len(train),
            "renamed_concepts": len(renamed),
            "validation_concepts": len(valid),
            "held_out_words_excluded": len(held),
            "held_out_families_excluded": len({family(w) for w, _ in held}),
            "texts_per_concept": int(texts_per_concept),
            "frames": len(FRAMES) + len(MORE_FRAMES),
            "support_sizes": [2, 5],
            "queries_per_concept": args.queries,
            "batch_concepts": args.batch,
            "warm_start_steps": args.warm_steps,
            "end_to_end_steps": state["step"],
            "lr": args.lr,
            "kept_step": state["best"]["step"],
            "validation_curve": state["curve"],
            "threads": args.threads,
            "timings": timings,
        }
        save_meta_booster(booster, args.out)
        print(json.dumps(booster.config.training, indent=2))


if __name__ == "__main__":
    main()
