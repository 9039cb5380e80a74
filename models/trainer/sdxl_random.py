"""SDXL pipelines with random weights, built from configs: a tiny one for tests, a full-size one for GPU checks.

Nothing is downloaded. The tiny pipeline follows diffusers' own SDXL tests (a UNet with
addition_embed_type="text_time", two small CLIP text encoders, a small VAE), with text encoders of
different widths so that a mix-up of the two encoders' slices fails loudly. The full-size one has
SDXL base 1.0's architecture: the 2.6B-parameter UNet, CLIP ViT-L/14 and OpenCLIP bigG/14 with
projection, and the 4-block VAE (1024 px).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from models.reference.tokenizer import write_tokenizer

TINY_WIDTHS = (32, 48)
"""The tiny pipeline's text encoder widths (SDXL: 768 and 1280)."""


def leap_tiny_tokenizer(directory: Path, max_length: int | None = None) -> CLIPTokenizer:
    """leap-tiny's BPE tokenizer (SDXL's real ones are CLIP's 49408-word vocabulary)."""
    token_dir = write_tokenizer(directory / "_tokenizer")
    if max_length is not None:
        config = json.loads((token_dir / "tokenizer_config.json").read_text())
        (token_dir / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": max_length}))
    return CLIPTokenizer.from_pretrained(token_dir)


def _scheduler() -> EulerDiscreteScheduler:
    """SDXL base 1.0's scheduler config."""
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )


def _save(directory: Path, **components) -> Path:
    StableDiffusionXLPipeline(**components, scheduler=_scheduler()).save_pretrained(directory)
    for leftover in (directory / "_tokenizer").glob("*"):
        leftover.unlink()
    (directory / "_tokenizer").rmdir()
    return directory


def build_tiny_sdxl(directory: Path, *, seed: int = 0) -> Path:
    """Save a tiny random-weight StableDiffusionXLPipeline (32 px) to `directory`."""
    if (directory / "model_index.json").exists():
        return directory
    tokenizer = leap_tiny_tokenizer(directory)
    torch.manual_seed(seed)
    encoders = [
        model(
            CLIPTextConfig(
                vocab_size=len(tokenizer),
                hidden_size=width,
                intermediate_size=2 * width,
                num_hidden_layers=2,
                num_attention_heads=4,
                max_position_embeddings=tokenizer.model_max_length,
                hidden_act="gelu",
                projection_dim=32,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
        for model, width in ((CLIPTextModel, TINY_WIDTHS[0]), (CLIPTextModelWithProjection, TINY_WIDTHS[1]))
    ]
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six time ids, then the pooled projection
        cross_attention_dim=sum(TINY_WIDTHS),
        norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=8,
        scaling_factor=0.13025,
    )
    return _save(
        directory,
        vae=vae,
        text_encoder=encoders[0],
        text_encoder_2=encoders[1],
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
    )


def _clip_text_config(
    tokenizer: CLIPTokenizer,
    *,
    hidden_size: int,
    intermediate_size: int,
    num_hidden_layers: int,
    num_attention_heads: int,
    hidden_act: str,
) -> CLIPTextConfig:
    """A full-size CLIP text encoder's config: CLIP's 49408 words and 77 positions, a projection as wide
    as the hidden states, the special tokens taken from `tokenizer`."""
    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=1,
    )


def clip_vit_l_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """CLIP ViT-L/14's text encoder config: SD 1.5's text encoder and SDXL's first."""
    return _clip_text_config(
        tokenizer,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        hidden_act="quick_gelu",
    )


def sdxl_unet(device: torch.device | str = "cpu") -> UNet2DConditionModel:
    """SDXL base 1.0's UNet (about 2.6B parameters), random weights."""
    with torch.device(device):
        return UNet2DConditionModel(
            sample_size=128,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(320, 640, 1280),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),
            cross_attention_dim=2048,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )


def build_sdxl_random(
    directory: Path, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16
) -> Path:
    """Save a pipeline with SDXL base 1.0's architecture and random weights (`dtype`; the VAE in fp32),
    its weights initialised on `device` (a GPU makes it take seconds)."""
    if (directory / "model_index.json").exists():
        return directory
    tokenizer = leap_tiny_tokenizer(directory, max_length=77)
    torch.manual_seed(0)
    with torch.device(device):
        clip_l = CLIPTextModel(clip_vit_l_config(tokenizer))
        clip_g = CLIPTextModelWithProjection(
            _clip_text_config(
                tokenizer,
                hidden_size=1280,
                intermediate_size=5120,
                num_hidden_layers=32,
                num_attention_heads=20,
                hidden_act="gelu",
            )
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            sample_size=1024,
            layers_per_block=2,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            scaling_factor=0.13025,
        )
    unet = sdxl_unet(device)
    return _save(
        directory,
        vae=vae,
        text_encoder=clip_l.to(dtype),
        text_encoder_2=clip_g.to(dtype),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet.to(dtype),
    )
