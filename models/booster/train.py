"""Train a booster for one base model, end to end through the frozen base (HyperDreamBooth-style).

    python -m models.booster.train --base-model leap-tiny --out models/booster/weights/leap-tiny

Each step draws concept sets from the world (never a benchmark concept), feeds some views
to the booster and scores its predicted embedding + LoRA with the base model's denoising
loss on other views of the same concept: the loss textual inversion and pivotal tuning
minimise, so the prediction lands near where fine-tuning would go. Resumable from --work-dir.

Sets come from two sources: the world renderer (leap-tiny's own domain) and, LEAP-style,
a dataset built by models.booster.dataset from the base model's own words (the images it
draws of a word, paired with that word's embedding, which adds a regression target for the
predicted vectors). For SD 1.5 use only the second (--world-share 0).

Why end to end rather than regressing onto fitted per-concept LoRAs: fitting a target LoRA
per concept costs a full pivotal run each (thousands of runs), and LoRA factors have no
unique optimum (A, B can rotate), so regression targets are noisy; the denoising loss needs
no targets and scores exactly what the fine-tune continues from.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from models.booster.apply import BatchedConcepts, base_fingerprint, lora_layout
from models.booster.dataset import load_sets
from models.booster.network import Booster, BoosterConfig
from models.reference.concepts import benchmark_concepts
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, render
from models.trainer.base import BaseComponents, load_base, pick_device
from models.trainer.data import OBJECT_TEMPLATES, images_to_tensor
from models.trainer.defaults import resolve_base_model
from models.trainer.train import denoising_target

TOKEN = "<booster>"


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


def make_booster(base: BaseComponents, base_model: str, *, rank: int, image_size: int) -> Booster:
    ids = base.tokenizer("object", add_special_tokens=False).input_ids
    initial = base.text_encoder.get_input_embeddings().weight[ids[0]].detach().float().cpu()
    config = BoosterConfig(base_model=base_model, base_fingerprint=base_fingerprint(base),
                           embedding_width=base.embedding_width, lora_rank=rank,
                           lora_layout=lora_layout(base, rank), image_size=image_size)
    return Booster(config, initial_embedding=initial)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--out", type=Path, default=Path("models/booster/weights/leap-tiny"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/booster-leap-tiny"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sets", type=int, default=8)
    parser.add_argument("--input-views", type=int, default=4)
    parser.add_argument("--target-views", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint-every", type=int, default=250)
    parser.add_argument("--data", type=Path, help="a dataset from models.booster.dataset (word sets)")
    parser.add_argument("--world-share", type=float, default=1.0,
                        help="share of sets drawn from the world renderer when --data is given (else 1)")
    parser.add_argument("--embedding-weight", type=float, default=0.5,
                        help="weight of the word-embedding regression loss on word sets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()

    device = pick_device()
    base = load_base(resolve_base_model(args.base_model), device)
    booster = make_booster(base, args.base_model, rank=args.rank, image_size=args.image_size).to(device)
    optimizer = torch.optim.AdamW(booster.parameters(), lr=args.lr, weight_decay=0.0)
    checkpoint = args.work_dir / "booster.pt"
    start, earlier_seconds = 0, 0.0
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        booster.load_state_dict(state["booster"])
        optimizer.load_state_dict(state["optimizer"])
        start, earlier_seconds = state["step"], state.get("wall_seconds", 0.0)
    args.work_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = copy.deepcopy(base.tokenizer)
    tokenizer.add_tokens([TOKEN])
    token_id = tokenizer.convert_tokens_to_ids(TOKEN)
    batched = BatchedConcepts(base, token_id, booster.config.lora_layout)
    excluded = [item.concept for item in benchmark_concepts()]
    views = args.input_views + args.target_views
    word_sets = load_sets(args.data) if args.data else []
    if len(word_sets) and min(len(images) for _, images in word_sets) < views:
        parser.error(f"every word set needs at least {views} images (--input-views + --target-views)")
    table = base.text_encoder.get_input_embeddings().weight.detach().float()
    word_embeddings = {word: table[base.tokenizer(word, add_special_tokens=False).input_ids[0]].cpu()
                       for word, _ in word_sets}
    rng = np.random.default_rng([args.seed, start])
    generator = torch.Generator().manual_seed(args.seed * 7919 + start)
    scheduler = base.noise_scheduler
    resolution = base.resolution
    progress = tqdm(range(start, args.steps), initial=start, total=args.steps, desc="booster")
    for step in progress:
        rendered, targets_embedding = [], []
        for _ in range(args.sets):
            if word_sets and rng.random() >= args.world_share:
                word, images = word_sets[int(rng.integers(len(word_sets)))]
                order = rng.permutation(len(images))[:views]
                rendered.append([images[int(i)] for i in order])
                targets_embedding.append(word_embeddings[word])
            else:
                concept = draw_concept(rng, excluded)
                rendered.append([render(concept, int(rng.integers(2**31)), resolution) for _ in range(views)])
                targets_embedding.append(None)
        inputs = torch.stack([images_to_tensor(r[: args.input_views], args.image_size) for r in rendered])
        targets = images_to_tensor([img for r in rendered for img in r[args.input_views :]], resolution)
        with torch.no_grad():
            dist = base.vae.encode(targets.to(device)).latent_dist
            latents = dist.sample(generator=None) * base.vae.config.scaling_factor
        embedding, lora_flat = booster(inputs.to(device))
        batched.set(embedding, booster.unflatten_lora(lora_flat), rows_per_set=args.target_views)
        prompts = [OBJECT_TEMPLATES[int(i)].format(TOKEN)
                   for i in rng.integers(0, len(OBJECT_TEMPLATES), size=latents.shape[0])]
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(device)
        noise = torch.randn(latents.shape, generator=generator).to(device)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(device)
        prediction = base.unet(scheduler.add_noise(latents, noise, timesteps), timesteps,
                               base.text_encoder(ids)[0]).sample
        loss = F.mse_loss(prediction, denoising_target(scheduler, latents, noise, timesteps))
        with_target = [i for i, t in enumerate(targets_embedding) if t is not None]
        if with_target:
            wanted = torch.stack([targets_embedding[i] for i in with_target]).to(device)
            # Normalised so the weight means the same for any base model's embedding scale.
            regression = F.mse_loss(embedding[with_target, 0], wanted) / wanted.pow(2).mean()
            loss = loss + args.embedding_weight * regression
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(booster.parameters(), 1.0)
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % args.checkpoint_every == 0 or step + 1 == args.steps:
            tmp = checkpoint.with_suffix(".tmp")
            torch.save({"booster": booster.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1,
                        "wall_seconds": earlier_seconds + time.time() - started}, tmp)
            tmp.replace(checkpoint)
    batched.close()
    booster.config.training = {**{k: str(v) for k, v in vars(args).items()},
                               "wall_seconds": round(earlier_seconds + time.time() - started, 1)}
    booster.cpu().save(args.out)
    print(f"saved {args.out} ({sum(p.numel() for p in booster.parameters()) / 1e6:.2f}M parameters)"
          f" config={asdict(booster.config)['base_model']}")


if __name__ == "__main__":
    main()
