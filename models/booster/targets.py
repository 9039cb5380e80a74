"""Fitted textual-inversion targets: many concepts' embeddings optimised at once.

    python -m models.booster.targets --base-model leap-tiny --out runs/booster-targets/leap-tiny

LEAP's word sets give (images, embedding) pairs only for what one vocabulary word names.
A personalised concept ("this purple striped square") has no word, so its target is what
textual inversion itself converges to: each set's own token vector, fitted with the trainer's
loss and token init (at the textual-inversion baseline's best learning rate, 5e-3), with many
sets sharing every UNet pass. Two things make the targets learnable: a small L2 pull towards
the token init picks one optimum among the many equally good ones (without it the vectors
grew to 10x a vocabulary vector's norm and near-identical concepts got scattered targets),
and Polyak averaging over the last quarter of the fit removes most of its step-to-step noise.
Measured on the validation concepts, these targets sit below the baseline's best + 2%.

World concepts (never close to a benchmark concept) are fitted by default; `--families` fits
concepts of procedural families (models.booster.families; the shipped leap-tiny booster's
targets), `--from-index --num-vectors n` refits another target set's concepts with n vectors,
`--data` fits a word-set dataset from models.booster.dataset (any base model). Resumable: chunks
already fitted are kept.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from models.booster.apply import Ids, PlaceholderTokenizers, per_row_denoising_loss, word_embedding
from models.booster.dataset import load_sets
from models.booster.families import FAMILIES, HELD_OUT_FAMILIES, TRAIN_FAMILIES, draw_family_concept, render_family
from models.booster.network import Booster, load_booster
from models.reference.concepts import benchmark_concepts
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, render
from models.registry import load_registry
from models.trainer.base_model import BaseComponents, load_base, pick_device
from models.trainer.concept import placeholder_tokens
from models.trainer.data import OBJECT_TEMPLATES, LatentSet, encode_images, images_to_tensor
from models.trainer.defaults import resolve_base_model

INDEX_FILE = "targets.json"
TOKEN = "<fit>"


def fit_embeddings(
    base: BaseComponents,
    image_sets: Sequence[Sequence[Image.Image]],
    *,
    steps: int,
    lr: float,
    rows_per_set: int = 4,
    seed: int = 0,
    prior: float = 0.0,
    average_from: float = 0.75,
    num_vectors: int = 1,
) -> tuple[torch.Tensor, list[float]]:
    """Fitted token vectors per image set ([sets, width], or [sets, num_vectors, width] when num_vectors > 1)
    and each set's mean loss over the last quarter."""
    tokens = placeholder_tokens(TOKEN, num_vectors)
    tokenizers = PlaceholderTokenizers(base, tokens)
    batched = tokenizers.batched(base, {})
    generator = torch.Generator().manual_seed(seed)
    sets = len(image_sets)
    latents = [encode_images(base, images, resolution=base.resolution, flip=True) for images in image_sets]
    start = word_embedding(base).to(base.device)
    embedding = start.repeat(sets, num_vectors, 1).requires_grad_(True)
    optimizer = torch.optim.AdamW([embedding], lr=lr, weight_decay=0.0)
    average = torch.zeros_like(embedding)
    averaged, tail = 0, int(steps * average_from)
    tail_losses = torch.zeros(sets)
    try:
        for step in range(steps):
            batch, ids, noise, timesteps = _training_batch(base, latents, tokenizers, tokens, rows_per_set, generator)
            batched.set(embedding, {}, rows_per_set=rows_per_set)
            per_row = per_row_denoising_loss(base, batch, ids, noise, timesteps)
            per_set = per_row.view(sets, rows_per_set).mean(1)
            # Summed over sets: each set's gradient is exactly its own job's gradient.
            (per_set.sum() + prior * (embedding - start).pow(2).sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= tail:
                average += embedding.detach()
                averaged += 1
                tail_losses += per_set.detach().cpu()
    finally:
        batched.close()
    fitted = (average / max(averaged, 1)).cpu()
    return (fitted[:, 0] if num_vectors == 1 else fitted), (tail_losses / max(averaged, 1)).tolist()


def _training_batch(
    base: BaseComponents,
    latents: Sequence[LatentSet],
    tokenizers: PlaceholderTokenizers,
    tokens: Sequence[str],
    rows_per_set: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, Ids, torch.Tensor, torch.Tensor]:
    """One step's rows, grouped per set as a job samples them: (latents, prompt ids, noise, timesteps)."""
    sample = []
    for latent in latents:
        index = torch.randint(0, len(latent), (rows_per_set,), generator=generator)
        flip = torch.rand(rows_per_set, generator=generator) < 0.5
        sample.append(latent.sample(index, flip, generator))
    batch = torch.cat(sample).to(base.device)
    prompts = [
        OBJECT_TEMPLATES[int(i)].format(" ".join(tokens))
        for i in torch.randint(0, len(OBJECT_TEMPLATES), (batch.shape[0],), generator=generator)
    ]
    ids = tokenizers(prompts, base.device)
    noise = torch.randn(batch.shape, generator=generator).to(base.device)
    timesteps = torch.randint(
        0, base.noise_scheduler.config.num_train_timesteps, (batch.shape[0],), generator=generator
    ).to(base.device)
    return batch, ids, noise, timesteps


def fit_lora_up(
    base: BaseComponents,
    booster: Booster,
    image_sets: Sequence[Sequence[Image.Image]],
    embeddings: torch.Tensor,
    *,
    steps: int,
    lr: float,
    rows_per_set: int = 4,
    seed: int = 0,
    prior: float = 0.0,
    average_from: float = 0.75,
) -> tuple[torch.Tensor, list[float]]:
    """Each set's LoRA up-projections (B, flat [sets, booster.config.lora_numel]) fitted on the booster's
    fixed down-projections with the token held at `embeddings` ([sets, width]), and each set's mean
    loss over the last quarter.

    B starts at zero, as a booster-started job's does; with A shared, every fitted B lives in one space
    (B A determines B), so their mean and principal components mean something. The L2 `prior` keeps
    the many equally good B's near zero, as the embedding targets' prior does."""
    tokens = placeholder_tokens(TOKEN, 1)
    tokenizers = PlaceholderTokenizers(base, tokens)
    batched = tokenizers.batched(base, booster.config.lora_layout)
    generator = torch.Generator().manual_seed(seed)
    sets = len(image_sets)
    latents = [encode_images(base, images, resolution=base.resolution, flip=True) for images in image_sets]
    fixed = booster.to(base.device)
    up = torch.zeros(sets, booster.config.lora_numel, device=base.device, requires_grad=True)
    optimizer = torch.optim.AdamW([up], lr=lr, weight_decay=0.0)
    vectors = embeddings.reshape(sets, 1, -1).to(base.device)
    average = torch.zeros_like(up)
    averaged, tail = 0, int(steps * average_from)
    tail_losses = torch.zeros(sets)
    try:
        for step in range(steps):
            batch, ids, noise, timesteps = _training_batch(base, latents, tokenizers, tokens, rows_per_set, generator)
            batched.set(vectors, fixed.unflatten_lora(up), rows_per_set=rows_per_set)
            per_set = per_row_denoising_loss(base, batch, ids, noise, timesteps).view(sets, rows_per_set).mean(1)
            (per_set.sum() + prior * up.pow(2).sum()).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step >= tail:
                average += up.detach()
                averaged += 1
                tail_losses += per_set.detach().cpu()
    finally:
        batched.close()
    return (average / max(averaged, 1)).cpu(), (tail_losses / max(averaged, 1)).tolist()


def is_benchmark_like(concept: Concept, excluded: list[Concept], distance: float = 80.0) -> bool:
    """True for anything close to a benchmark concept: those stay unseen by the booster."""
    for other in excluded:
        if other.shape == concept.shape and other.pattern == concept.pattern:
            gap = sum((a - b) ** 2 for a, b in zip(other.colour, concept.colour, strict=True)) ** 0.5
            if gap < distance:
                return True
    return False


def draw_concept(rng: np.random.Generator, excluded: list[Concept]) -> Concept:
    while True:
        shape, pattern = str(rng.choice(SHAPES)), str(rng.choice(PATTERNS))
        if rng.random() < 0.5:
            name = str(rng.choice(list(COLOURS)))
            concept = Concept(shape=shape, colour=COLOURS[name], pattern=pattern, colour_name=name)
        else:
            rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
            concept = Concept(shape=shape, colour=rgb, pattern=pattern)  # type: ignore[arg-type]
        if not is_benchmark_like(concept, excluded):
            return concept


def world_sets(count: int, views: int, seed: int) -> list[dict]:
    """`count` world concepts away from every benchmark concept, with the render seeds of their views."""
    rng = np.random.default_rng(seed)
    excluded = [item.concept for item in benchmark_concepts()]
    entries = []
    for _ in range(count):
        concept = draw_concept(rng, excluded)
        entries.append({"concept": asdict(concept), "seeds": [int(s) for s in rng.integers(0, 2**31, size=views)]})
    return entries


def family_sets(count: int, views: int, seed: int, families: Sequence[str]) -> list[dict]:
    """`count` concepts drawn evenly from `families` (world concepts stay away from benchmark ones)."""
    rng = np.random.default_rng([seed, 1])
    excluded = [item.concept for item in benchmark_concepts()]
    entries = []
    for i in range(count):
        family = families[i % len(families)]
        entry: dict[str, Any]
        if family == "world":
            entry = {"concept": asdict(draw_concept(rng, excluded))}
        else:
            entry = draw_family_concept(family, rng)
        entry["seeds"] = [int(s) for s in rng.integers(0, 2**31, size=views)]
        entries.append(entry)
    return entries


def render_entry(entry: dict, seed: int, size: int) -> Image.Image:
    """One view of a fitted entry: a world concept or a family concept."""
    if "family" in entry:
        return render_family({"family": entry["family"], "params": entry["params"]}, seed, size)
    return render(concept_of(entry), seed, size)


def concept_of(entry: dict) -> Concept:
    fields = dict(entry["concept"])
    fields["colour"] = tuple(fields["colour"])
    return Concept(**fields)


def load_targets(directory: Path) -> tuple[list[dict], torch.Tensor]:
    """(entries, embeddings [n, width]) of a fitted target set."""
    index = json.loads((directory / INDEX_FILE).read_text())
    embeddings = load_file(str(directory / "targets.safetensors"))["embeddings"]
    done = embeddings.shape[0]
    return index["entries"][:done], embeddings


def load_lora_targets(directory: Path) -> tuple[list[dict], torch.Tensor]:
    """(entries, fitted up-projections [n, lora_numel]) of a LoRA target set (`--lora`)."""
    index = json.loads((directory / INDEX_FILE).read_text())
    lora_up = load_file(str(directory / "targets.safetensors"))["lora_up"]
    return index["entries"][: lora_up.shape[0]], lora_up


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--out", type=Path, default=Path("runs/booster-targets/leap-tiny"))
    parser.add_argument("--concepts", type=int, default=512, help="world concepts to fit (without --data)")
    parser.add_argument("--views", type=int, default=8, help="rendered views per world concept")
    parser.add_argument("--data", type=Path, help="fit a word-set dataset (models.booster.dataset) instead")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument(
        "--prior",
        type=float,
        default=0.01,
        help="L2 pull towards the token init: picks one optimum among equally good ones",
    )
    parser.add_argument("--chunk", type=int, default=64, help="sets fitted together (one UNet batch)")
    parser.add_argument(
        "--families",
        nargs="+",
        default=["world"],
        help="concept families (models.booster.families), 'train' for all of TRAIN_FAMILIES",
    )
    parser.add_argument("--num-vectors", type=int, default=1, help="token vectors fitted per concept")
    parser.add_argument(
        "--from-index",
        type=Path,
        help="fit the concepts of another target set's index (e.g. multi-vector fits of the same sets)",
    )
    parser.add_argument(
        "--lora",
        type=Path,
        metavar="BOOSTER",
        help="fit LoRA up-projections (B) on this booster's fixed down-projections instead, the token held "
        "at the booster's prediction (use --lr 0.003, the LoRA rate, and a small --prior)",
    )
    parser.add_argument("--rows", type=int, default=4, help="noised samples per set per step")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    families = list(TRAIN_FAMILIES) if args.families == ["train"] else args.families
    for family in families:
        if family not in FAMILIES:
            parser.error(f"--families: unknown family {family!r}")
        if family in HELD_OUT_FAMILIES:
            print(f"warning: {family} is a held-out family: the benchmark measures generalisation on it")
    torch.set_num_threads(args.threads)
    started = time.time()
    base = load_base(resolve_base_model(args.base_model, load_registry()), pick_device())
    args.out.mkdir(parents=True, exist_ok=True)
    index_path, weights_path = args.out / INDEX_FILE, args.out / "targets.safetensors"
    if index_path.exists():
        index = json.loads(index_path.read_text())
    else:
        if args.from_index is not None:
            entries = json.loads((args.from_index / INDEX_FILE).read_text())["entries"][: args.concepts]
        elif args.data is not None:
            entries = [{"word": word} for word, _ in load_sets(args.data)]
        elif families == ["world"]:
            entries = world_sets(args.concepts, args.views, args.seed)
        else:
            entries = family_sets(args.concepts, args.views, args.seed, families)
        index = {
            "base_model": args.base_model,
            "steps": args.steps,
            "lr": args.lr,
            "prior": args.prior,
            "rows": args.rows,
            "num_vectors": args.num_vectors,
            "families": families,
            "lora_from": str(args.lora) if args.lora else None,
            "data": str(args.data) if args.data else "families",
            "entries": entries,
        }
        index_path.write_text(json.dumps(index))
    entries = index["entries"]
    words = dict(load_sets(args.data)) if args.data else {}
    booster = load_booster(args.lora) if args.lora else None
    key = "lora_up" if booster else "embeddings"
    fitted: list[torch.Tensor] = []
    starts: list[torch.Tensor] = []
    losses: list[float] = []
    if weights_path.exists():
        done = load_file(str(weights_path))
        fitted, losses = list(done[key]), done["losses"].tolist()
        starts = list(done["embeddings"]) if booster else []
    chunks = tqdm(
        range(len(fitted), len(entries), args.chunk),
        desc="fitting",
        unit="chunk",
        initial=len(fitted) // args.chunk,
        total=-(-len(entries) // args.chunk),
    )
    for start in chunks:
        chunk = entries[start : start + args.chunk]
        image_sets = [
            words[entry["word"]]
            if "word" in entry
            else [render_entry(entry, seed, base.resolution) for seed in entry["seeds"]]
            for entry in chunk
        ]
        seed = args.seed * 7919 + start
        if booster is None:
            embeddings, chunk_losses = fit_embeddings(
                base,
                image_sets,
                steps=args.steps,
                lr=args.lr,
                prior=args.prior,
                seed=seed,
                rows_per_set=args.rows,
                num_vectors=args.num_vectors,
            )
            fitted += list(embeddings)
            saved = {"embeddings": torch.stack(fitted)}
        else:
            with torch.no_grad():  # the job's start: the booster's prediction from the set's views
                pixels = torch.stack([images_to_tensor(images, booster.config.image_size) for images in image_sets])
                predicted = booster.vectors(booster.hidden(pixels), 1)[:, 0]
            lora_up, chunk_losses = fit_lora_up(
                base,
                booster,
                image_sets,
                predicted,
                steps=args.steps,
                lr=args.lr,
                prior=args.prior,
                seed=seed,
                rows_per_set=args.rows,
            )
            fitted += list(lora_up)
            starts += list(predicted)
            saved = {"lora_up": torch.stack(fitted), "embeddings": torch.stack(starts)}
        losses += chunk_losses
        tmp = weights_path.with_suffix(".tmp")
        saved = {name: value.contiguous() for name, value in saved.items()}
        save_file({**saved, "losses": torch.tensor(losses)}, str(tmp))
        tmp.replace(weights_path)  # after every chunk: a rerun resumes
        chunks.set_postfix(loss=f"{sum(chunk_losses) / len(chunk_losses):.4f}")
    print(f"{len(fitted)} fitted targets in {args.out} ({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
