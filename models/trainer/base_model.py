"""Loading a base pipeline once per process, and the device/precision choice.

The same code loads leap-tiny from its folder and SD 1.5 / 2.1 / SDXL by path or hub id: it
reads only standard diffusers sub-folders (tokenizer, text_encoder, vae, unet, scheduler, and for
SDXL tokenizer_2 and text_encoder_2). SDXL is the registry's `family: sdxl`, or detected from
model_index.json's StableDiffusionXLPipeline.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from models.enums import Family
from models.registry import SDXL_PIPELINE, folder_family
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
    tokenizer_2: CLIPTokenizer | None = None
    """SDXL's second tokenizer (OpenCLIP bigG's); None for SD 1.x/2.x."""
    text_encoder_2: CLIPTextModelWithProjection | None = None
    """SDXL's second text encoder, whose projected pooled output conditions the UNet too."""

    @property
    def family(self) -> Family:
        return Family.SDXL if self.text_encoder_2 is not None else Family.SD

    @property
    def text_encoders(self) -> list[Any]:  # CLIPTextModel, then CLIPTextModelWithProjection
        return [encoder for encoder in (self.text_encoder, self.text_encoder_2) if encoder is not None]

    @property
    def text_widths(self) -> tuple[int, ...]:
        """Each text encoder's token-embedding width (SDXL: CLIP ViT-L's 768, then bigG's 1280)."""
        return tuple(int(encoder.get_input_embeddings().weight.shape[1]) for encoder in self.text_encoders)

    @property
    def resolution(self) -> int:
        return int(self.unet.config.sample_size) * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def embedding_width(self) -> int:
        """The width of a token's vectors: the encoders' widths together (SDXL trains one row in each)."""
        return sum(self.text_widths)


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


def detect_family(source: str) -> Family:
    """SDXL where model_index.json names StableDiffusionXLPipeline, else SD (a folder or a hub id)."""
    family = folder_family(source)
    if family is not None:
        return family
    try:
        from diffusers import DiffusionPipeline

        class_name = DiffusionPipeline.load_config(source).get("_class_name")
    except (OSError, ValueError) as error:
        raise BaseModelError(f"cannot load base model {source!r}: {error}") from error
    return Family.SDXL if class_name == SDXL_PIPELINE else Family.SD


_cache: dict[tuple[str, str, torch.dtype], BaseComponents] = {}
_lock = threading.Lock()


def load_base(
    source: str, device: torch.device, weight_dtype: torch.dtype = torch.float32, *, family: Family | None = None
) -> BaseComponents:
    """Load (or reuse) the frozen components of a diffusers SD or SDXL pipeline (`family` None: detected)."""
    key = (source, str(device), weight_dtype)
    with _lock:
        if key in _cache:
            return _cache[key]
        family = family or detect_family(source)
        tokenizer_2 = text_encoder_2 = None
        try:
            tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer")
            text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", torch_dtype=weight_dtype)
            # The VAE stays fp32 in every precision: half-precision SD 1.x and SDXL VAEs overflow.
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
            unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=weight_dtype)
            noise_scheduler = DDPMScheduler.from_pretrained(source, subfolder="scheduler")
            if family == Family.SDXL:
                tokenizer_2 = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer_2")
                text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(
                    source, subfolder="text_encoder_2", torch_dtype=weight_dtype
                )
        except (OSError, ValueError, KeyError) as error:
            raise BaseModelError(f"cannot load base model {source!r}: {error}") from error
        components = BaseComponents(source, tokenizer, text_encoder, vae, unet, noise_scheduler, device, weight_dtype)
        components.tokenizer_2, components.text_encoder_2 = tokenizer_2, text_encoder_2
        for module in (*components.text_encoders, vae, unet):
            module.requires_grad_(False)
            module.eval()
            module.to(device)
        _cache[key] = components
        return components


def clear_cache() -> None:
    """Forget every loaded base model (tests use it to mimic a fresh process)."""
    with _lock:
        _cache.clear()
