"""Loading a base pipeline once per process, and the device/precision choice.

The same code loads leap-tiny from its folder and SD 1.5 / 2.1 by path or hub id: it
reads only standard diffusers sub-folders (tokenizer, text_encoder, vae, unet, scheduler).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from models.trainer.errors import BaseModelError

_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class BaseComponents:
    """The frozen parts of a Stable Diffusion pipeline, shared by every job in a process."""

    source: str
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler
    device: torch.device
    weight_dtype: torch.dtype

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def embedding_width(self) -> int:
        return int(self.text_encoder.get_input_embeddings().weight.shape[1])


def pick_device(requested: str | None = None) -> torch.device:
    """cuda, then mps, then cpu, unless one is requested."""
    if requested:
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def weight_dtype_for(mixed_precision: str, device: torch.device) -> torch.dtype:
    # Half precision on CPU is slow and lossy: frozen weights stay fp32 there.
    return torch.float32 if device.type == "cpu" else _DTYPES[mixed_precision]


_cache: dict[tuple[str, str, torch.dtype], BaseComponents] = {}
_lock = threading.Lock()


def load_base(source: str, device: torch.device, weight_dtype: torch.dtype = torch.float32) -> BaseComponents:
    """Load (or reuse) the frozen components of a diffusers SD pipeline."""
    key = (source, str(device), weight_dtype)
    with _lock:
        if key in _cache:
            return _cache[key]
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=weight_dtype)
            # The VAE stays fp32 in every precision: half-precision SD 1.x VAEs overflow.
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=weight_dtype)
            noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
        except (OSError, ValueError, KeyError) as error:
            raise BaseModelError(f"cannot load base model {source!r}: {error}") from error
        for module in (text_encoder, vae, unet):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        components = BaseComponents(source, tokenizer, text_encoder, vae, unet, noise_scheduler, device, weight_dtype)
        _cache[key] = components
        return components


def clear_cache() -> None:
    """Forget every loaded base model (tests use it to mimic a fresh process)."""
    with _lock:
        _cache.clear()
