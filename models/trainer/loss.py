"""The diffusion training objective, shared by the training loop, the guard and the evaluations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.trainer.base_model import BaseComponents
from models.trainer.concept import ConceptModel


def denoising_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet predicts: the noise, or the velocity for v-prediction models (SD 2.x 768)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    return noise


def denoising_loss(
    base: BaseComponents,
    concept: ConceptModel,
    latents: torch.Tensor,
    prompts: list[str],
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    *,
    per_sample: bool = False,
) -> torch.Tensor:
    """The diffusion training loss of a concept on latents (`per_sample`: one value per row)."""
    noisy = base.noise_scheduler.add_noise(latents, noise, timesteps)
    pixels = 2 ** (len(base.vae.config.block_out_channels) - 1)
    hidden, added = concept.conditioning(prompts, (latents.shape[-2] * pixels, latents.shape[-1] * pixels))
    if added is not None:
        added = {name: value.to(base.weight_dtype) for name, value in added.items()}
    prediction = base.unet(
        noisy.to(base.weight_dtype), timesteps, hidden.to(base.weight_dtype), added_cond_kwargs=added
    ).sample
    target = denoising_target(base.noise_scheduler, latents, noise, timesteps)
    if per_sample:
        return F.mse_loss(prediction.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
    return F.mse_loss(prediction.float(), target.float())
