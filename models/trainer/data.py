"""A job's training data: images -> VAE latent distributions (computed once) and captions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps

from models.trainer.base_model import BaseComponents
from models.trainer.images import center_crop_resize

# diffusers' textual_inversion example (imagenet_templates_small / imagenet_style_templates_small).
OBJECT_TEMPLATES = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a good painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
)

# DreamBooth-style prompts for one particular person (no article: a person is not "a" kind of thing).
PERSON_TEMPLATES = (
    "a photo of {}",
    "a portrait of {}",
    "a close-up photo of {}",
    "a headshot of {}",
    "a candid photo of {}",
    "a cropped photo of {}",
    "a good photo of {}",
    "a bright photo of {}",
    "a photo of {} smiling",
    "a photo of {} outdoors",
    "a photo of {} looking at the camera",
    "a full-body photo of {}",
)
PRESET_TEMPLATES = {"object": OBJECT_TEMPLATES, "person": PERSON_TEMPLATES, "style": STYLE_TEMPLATES}


def images_to_tensor(images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
    """Centre-crop, resize and scale to [-1, 1], NCHW float32."""
    arrays = [np.asarray(center_crop_resize(image, resolution), dtype=np.float32) for image in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1.0


@dataclass
class LatentSet:
    """Per-image VAE posteriors (mean, std), flipped copies included, already scaled."""

    mean: torch.Tensor
    std: torch.Tensor
    flipped_mean: torch.Tensor | None
    flipped_std: torch.Tensor | None

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def sample(self, index: torch.Tensor, flip: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Draw latents for the chosen images (flipped where `flip`), like a fresh VAE encode."""
        mean, std = self.mean[index], self.std[index]
        if self.flipped_mean is not None and self.flipped_std is not None:
            mean = torch.where(flip[:, None, None, None], self.flipped_mean[index], mean)
            std = torch.where(flip[:, None, None, None], self.flipped_std[index], std)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        return mean + std * noise


@torch.no_grad()
def encode_images(
    base: BaseComponents, images: Sequence[Image.Image], *, resolution: int, flip: bool, batch_size: int = 8
) -> LatentSet:
    """Encode once per job: the images never change, only the sampled latent and flip do."""
    # At most 8 images of 512 px per VAE call: the fp32 VAE's activations at 1024 px (SDXL) would
    # otherwise take more memory than the training steps do.
    batch_size = max(1, min(batch_size, batch_size * 512 * 512 // (resolution * resolution)))
    scale = float(base.vae.config.scaling_factor)
    shift = getattr(base.vae.config, "shift_factor", None) or 0.0

    def encode(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        means, stds = [], []
        for start in range(0, pixels.shape[0], batch_size):
            chunk = pixels[start : start + batch_size].to(base.device, dtype=base.vae.dtype)
            dist = base.vae.encode(chunk).latent_dist
            means.append((dist.mean - shift) * scale)
            stds.append(dist.std * scale)
        return torch.cat(means).float().cpu(), torch.cat(stds).float().cpu()  # sampled on CPU per step

    pixels = images_to_tensor(images, resolution)
    mean, std = encode(pixels)
    if not flip:
        return LatentSet(mean, std, None, None)
    flipped = images_to_tensor([ImageOps.mirror(image) for image in images], resolution)
    flipped_mean, flipped_std = encode(flipped)
    return LatentSet(mean, std, flipped_mean, flipped_std)


def caption_templates(preset: str) -> tuple[str, ...]:
    """The prompt templates of a preset (object, person or style)."""
    return PRESET_TEMPLATES[preset]
