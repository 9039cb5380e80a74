"""Evaluation of a trained concept: held-out denoising loss and sampled images.

Both work on a live job (`Job` from an eval hook, so curves can be measured mid-run) and
are deterministic: fixed timesteps, fixed noise seeds, fixed sampling seeds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image

from models.trainer.base_model import BaseComponents
from models.trainer.concept import ConceptModel
from models.trainer.data import LatentSet, encode_images
from models.trainer.loss import denoising_loss

EVAL_TIMESTEPS = (50, 150, 250, 350, 450, 550, 650, 750, 850, 950)
EVAL_PROMPT = "a photo of a {}"


class HeldOutLoss:
    """Denoising loss of a concept on its held-out views at fixed timesteps and noise."""

    def __init__(
        self,
        base: BaseComponents,
        images: Sequence[Image.Image],
        *,
        resolution: int | None = None,
        noise_seeds: Sequence[int] = (0, 1),
        prompt: str = EVAL_PROMPT,
    ) -> None:
        self.base = base
        self.prompt = prompt
        latents: LatentSet = encode_images(base, images, resolution=resolution or base.resolution, flip=False)
        count = len(latents)
        timesteps = torch.tensor(EVAL_TIMESTEPS)
        # Every (view, timestep, noise seed) once: the mean is over a fixed, reproducible grid.
        rows = [(view, int(t), seed) for seed in noise_seeds for view in range(count) for t in timesteps]
        self.latents = torch.stack([latents.mean[view] for view, _, _ in rows]).to(base.device)
        self.timesteps = torch.tensor([t for _, t, _ in rows], device=base.device)
        noise = [
            torch.randn(latents.mean.shape[1:], generator=torch.Generator().manual_seed(seed * 1000 + i))
            for i, (_, _, seed) in enumerate(rows)
        ]
        self.noise = torch.stack(noise).to(base.device)

    @torch.no_grad()
    def __call__(self, concept: ConceptModel, batch_size: int = 40) -> float:
        prompt = concept.prompt(self.prompt)
        total, count = 0.0, 0
        for start in range(0, self.latents.shape[0], batch_size):
            stop = start + batch_size
            latents = self.latents[start:stop]
            loss = denoising_loss(
                self.base,
                concept,
                latents,
                [prompt] * latents.shape[0],
                self.noise[start:stop],
                self.timesteps[start:stop],
            )
            total += float(loss) * latents.shape[0]
            count += latents.shape[0]
        return total / count


def pipeline_for(base: BaseComponents, concept: ConceptModel | None = None) -> StableDiffusionPipeline:
    """A sampling pipeline over the shared modules (with the concept's token when given); SDXL's for SDXL."""
    if base.text_encoder_2 is not None:
        pipeline = StableDiffusionXLPipeline(
            vae=base.vae,
            text_encoder=base.text_encoder,
            text_encoder_2=base.text_encoder_2,
            unet=base.unet,
            tokenizer=concept.tokenizer if concept else base.tokenizer,
            tokenizer_2=getattr(concept, "tokenizer_2", None) or base.tokenizer_2,
            scheduler=DDIMScheduler.from_config(base.noise_scheduler.config),
        )
        pipeline.set_progress_bar_config(disable=True)
        return pipeline  # the same call interface as SD's
    pipeline = StableDiffusionPipeline(
        vae=base.vae,
        text_encoder=base.text_encoder,
        unet=base.unet,
        tokenizer=concept.tokenizer if concept else base.tokenizer,
        scheduler=DDIMScheduler.from_config(base.noise_scheduler.config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@torch.no_grad()
def sample_images(
    pipeline: StableDiffusionPipeline,
    prompts: Sequence[str],
    seeds: Sequence[int],
    *,
    steps: int = 25,
    guidance_scale: float = 7.0,
    batch_size: int = 8,
) -> list[Image.Image]:
    """One image per (prompt, seed), prompt-major, each from its own CPU generator so batches don't
    matter; up to batch_size images per pipeline call (one call costs about the same at any small size)."""
    pairs = [(prompt, seed) for prompt in prompts for seed in seeds]
    images: list[Image.Image] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        output = pipeline(
            [prompt for prompt, _ in chunk],
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for _, seed in chunk],
            output_type="pil",
        )
        images.extend(output.images)
    return images
