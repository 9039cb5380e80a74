"""Train leap-tiny from scratch on the shape world and save it as a diffusers folder.

    python -m models.reference.train_tiny --out models/reference/weights/leap-tiny

Stages: tokenizer -> VAE -> render + encode the caption dataset once -> text encoder and
UNet together with the denoising loss. Every stage checkpoints into --work-dir and a
rerun resumes where the last one stopped. Budget: about 30 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from models.reference.architecture import (
    make_sample_scheduler,
    make_text_encoder,
    make_train_scheduler,
    make_unet,
    make_vae,
)
from models.reference.tokenizer import write_tokenizer
from models.reference.world import COLOURS, PATTERNS, SHAPES, Concept, is_held_out, render

CAPTION_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a picture of a {}",
    "a good photo of a {}",
    "a close up photo of the {}",
    "a clean photo of a {}",
    "the {}",
    "a {}",
)


@dataclass
class ReferenceTrainConfig:
    """Hyperparameters of the from-scratch run (the defaults made the committed weights)."""

    seed: int = 0
    vae_steps: int = 1500
    vae_batch: int = 32
    vae_lr: float = 3e-3
    vae_kl_weight: float = 1e-6
    dataset_size: int = 40_000
    random_colour_share: float = 0.15
    partial_caption_share: float = 0.15
    empty_caption_share: float = 0.1
    unet_steps: int = 4_000
    unet_batch: int = 64
    unet_lr: float = 1e-3
    warmup_steps: int = 200
    min_snr_gamma: float = 5.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    threads: int = 2


def describe(concept: Concept, rng: np.random.Generator, config: ReferenceTrainConfig) -> str:
    """A caption for a training image: mostly full, sometimes partial or empty (for CFG)."""
    draw = rng.random()
    if draw < config.empty_caption_share:
        return ""
    colour = concept.colour_name or "coloured"
    words = [colour, concept.pattern, concept.shape]
    if draw < config.empty_caption_share + config.partial_caption_share:
        drop = rng.integers(0, 2)  # drop the colour or the pattern, never the shape
        words.pop(int(drop))
    template = CAPTION_TEMPLATES[int(rng.integers(0, len(CAPTION_TEMPLATES)))]
    return template.format(" ".join(words))


def training_concepts(rng: np.random.Generator, count: int, config: ReferenceTrainConfig) -> list[Concept]:
    """Random named concepts (never a held-out pair) plus some random in-between colours."""
    named = [Concept.named(s, c, p) for s in SHAPES for c in COLOURS for p in PATTERNS]
    named = [concept for concept in named if not is_held_out(concept)]
    concepts = []
    for _ in range(count):
        if rng.random() < config.random_colour_share:
            rgb = tuple(int(v) for v in rng.integers(0, 256, size=3))
            concepts.append(
                Concept(
                    shape=str(rng.choice(SHAPES)),
                    colour=rgb,  # type: ignore[arg-type]
                    pattern=str(rng.choice(PATTERNS)),
                )
            )
        else:
            concepts.append(named[int(rng.integers(0, len(named)))])
    return concepts


def to_tensor(images: list) -> torch.Tensor:
    array = np.stack([np.asarray(image, dtype=np.float32) for image in images])
    return torch.from_numpy(array).permute(0, 3, 1, 2) / 127.5 - 1.0


class Checkpoints:
    """Stage checkpoints in the work dir: a rerun resumes from the newest one."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)

    def path(self, stage: str) -> Path:
        return self.work_dir / f"{stage}.pt"

    def load(self, stage: str) -> dict | None:
        path = self.path(stage)
        return torch.load(path, weights_only=False) if path.exists() else None

    def save(self, stage: str, state: dict) -> None:
        tmp = self.path(stage).with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path(stage))  # atomic: a kill never leaves a half-written checkpoint


def train_vae(config: ReferenceTrainConfig, checkpoints: Checkpoints) -> AutoencoderKL:
    vae = make_vae()
    optimizer = torch.optim.Adam(vae.parameters(), lr=config.vae_lr)
    state = checkpoints.load("vae")
    start = 0
    if state:
        vae.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    rng = np.random.default_rng([config.seed, 1, start])
    progress = tqdm(range(start, config.vae_steps), initial=start, total=config.vae_steps, desc="vae")
    for step in progress:
        concepts = training_concepts(rng, config.vae_batch, config)
        images = to_tensor([render(c, int(rng.integers(0, 2**31))) for c in concepts])
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, images) + config.vae_kl_weight * posterior.kl().mean()
        for group in optimizer.param_groups:
            group["lr"] = config.vae_lr * cosine_factor(step, config.vae_steps, warmup=50)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.vae_steps:
            checkpoints.save("vae", {"model": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step + 1})
    vae.eval().requires_grad_(False)
    return vae


@torch.no_grad()
def build_dataset(config: ReferenceTrainConfig, vae: AutoencoderKL, checkpoints: Checkpoints) -> dict:
    """Render and encode the caption dataset once; latents are scaled to unit variance."""
    cached = checkpoints.load("dataset")
    if cached:
        return cached
    rng = np.random.default_rng([config.seed, 2])
    concepts = training_concepts(rng, config.dataset_size, config)
    means, stds = [], []
    for start in tqdm(range(0, len(concepts), 256), desc="encode"):
        chunk = concepts[start : start + 256]
        images = to_tensor([render(c, int(rng.integers(0, 2**31))) for c in chunk])
        dist = vae.encode(images).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    mean, std = torch.cat(means), torch.cat(stds)
    scaling_factor = float(1.0 / mean.std())
    dataset = {
        "latent_mean": mean.half(),
        "latent_std": std.half(),
        "scaling_factor": scaling_factor,
        "concepts": [(c.shape, c.colour, c.pattern, c.colour_name) for c in concepts],
    }
    checkpoints.save("dataset", dataset)
    return dataset


def cosine_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 5% of the peak learning rate."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def train_denoiser(config: ReferenceTrainConfig, tokenizer, dataset: dict, checkpoints: Checkpoints):
    """Text encoder and UNet trained together from scratch; returns their EMA copies."""
    torch.manual_seed(config.seed)
    text_encoder, unet = make_text_encoder(tokenizer), make_unet()
    parameters = list(text_encoder.parameters()) + list(unet.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_lr, weight_decay=1e-2)
    ema_text_encoder, ema_unet = copy.deepcopy(text_encoder), copy.deepcopy(unet)
    scheduler = make_train_scheduler()
    alphas = scheduler.alphas_cumprod
    snr = alphas / (1 - alphas)
    start = 0
    state = checkpoints.load("denoiser")
    if state:
        text_encoder.load_state_dict(state["text_encoder"])
        unet.load_state_dict(state["unet"])
        ema_text_encoder.load_state_dict(state["ema_text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["step"]
    concepts = [Concept(shape=s, colour=tuple(c), pattern=p, colour_name=n) for s, c, p, n in dataset["concepts"]]
    latent_mean = dataset["latent_mean"].float()
    latent_std = dataset["latent_std"].float()
    scale = dataset["scaling_factor"]
    generator = torch.Generator().manual_seed(config.seed * 1000 + start)
    rng = np.random.default_rng([config.seed, 3, start])
    progress = tqdm(range(start, config.unet_steps), initial=start, total=config.unet_steps, desc="unet+text")
    for step in progress:
        index = torch.randint(0, len(concepts), (config.unet_batch,), generator=generator)
        latents = latent_mean[index] + latent_std[index] * torch.randn(latent_mean[index].shape, generator=generator)
        latents = latents * scale
        captions = [describe(concepts[int(i)], rng, config) for i in index]
        ids = tokenizer(
            captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        prediction = unet(noisy, timesteps, text_encoder(ids)[0]).sample
        # Min-SNR weighting (Hang et al. 2023) converges faster than the plain loss.
        weight = torch.clamp(snr[timesteps], max=config.min_snr_gamma) / snr[timesteps]
        loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weight).mean()
        for group in optimizer.param_groups:
            group["lr"] = config.unet_lr * cosine_factor(step, config.unet_steps, config.warmup_steps)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for model, ema in ((text_encoder, ema_text_encoder), (unet, ema_unet)):
                for p, e in zip(model.parameters(), ema.parameters(), strict=True):
                    e.lerp_(p, 1 - decay)
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.unet_steps:
            checkpoints.save(
                "denoiser",
                {
                    "text_encoder": text_encoder.state_dict(),
                    "unet": unet.state_dict(),
                    "ema_text_encoder": ema_text_encoder.state_dict(),
                    "ema_unet": ema_unet.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step + 1,
                },
            )
    return ema_text_encoder, ema_unet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("models/reference/weights/leap-tiny"))
    parser.add_argument("--work-dir", type=Path, default=Path("runs/leap-tiny"))
    for name, value in asdict(ReferenceTrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args()
    config = ReferenceTrainConfig(**{k: getattr(args, k) for k in asdict(ReferenceTrainConfig())})
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.time()

    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer(args.work_dir / "tokenizer"))
    checkpoints = Checkpoints(args.work_dir)
    vae = train_vae(config, checkpoints)
    dataset = build_dataset(config, vae, checkpoints)
    text_encoder, unet = train_denoiser(config, tokenizer, dataset, checkpoints)

    vae.register_to_config(scaling_factor=dataset["scaling_factor"])
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=make_sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(args.out, safe_serialization=True)
    # transformers writes only tokenizer.json; keep the CLIP BPE files beside it too.
    write_tokenizer(args.out / "tokenizer")
    (args.out / "leap_tiny_training.json").write_text(
        json.dumps({"config": asdict(config), "wall_seconds": round(time.time() - started, 1)}, indent=2)
    )
    print(f"saved {args.out} in {time.time() - started:.0f}s")


if __name__ == "__main__":
    main()
