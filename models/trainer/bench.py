"""Trainer speed benchmark: steps/s and peak memory of each mode, printed as a table and JSON.

    python -m models.trainer.bench                         # leap-tiny on this machine
    python -m models.trainer.bench --sd15-random /tmp/sd15 --mixed-precision bf16
        # an SD-1.5-sized pipeline with random weights at 512 px (for a GPU machine)

Each mode runs `--warmup` steps, then `--steps` timed steps through the real `train()`;
steps/s is the median of per-step rates measured from the progress callback.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch

from models.reference.concepts import benchmark_concepts
from models.registry import Registry, load_registry
from models.trainer.base_model import pick_device
from models.trainer.config import TrainConfig
from models.trainer.train import train

MODES = ("textual_inversion", "lora", "pivotal")


def build_sd15_random(directory: Path) -> Path:
    """Save a pipeline with SD 1.5's architecture (UNet, VAE, CLIP ViT-L/14 text) and random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from models.trainer.sdxl_random import clip_vit_l_config, leap_tiny_tokenizer

    if (directory / "model_index.json").exists():
        return directory
    tokenizer = leap_tiny_tokenizer(directory, max_length=77)
    text_encoder = CLIPTextModel(clip_vit_l_config(tokenizer))
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)  # diffusers' defaults are SD 1.x's
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        sample_size=512,
        layers_per_block=2,
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(directory)
    return directory


def measure(
    base_model: str,
    mode: str,
    *,
    steps: int,
    warmup: int,
    batch_size: int | None,
    mixed_precision: str,
    gradient_checkpointing: bool,
    resolution: int | None,
    registry: Registry,
) -> dict:
    device = pick_device()
    stamps: list[float] = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    config = TrainConfig(
        base_model=base_model,
        mode=mode,  # type: ignore[arg-type]
        init="token",  # type: ignore[arg-type]
        steps=warmup + steps,
        batch_size=batch_size,
        mixed_precision=mixed_precision,  # type: ignore[arg-type]
        gradient_checkpointing=gradient_checkpointing,
        resolution=resolution,
    )
    images = benchmark_concepts("dev")[0].views(size=resolution or 32)
    with tempfile.TemporaryDirectory() as out:
        result = train(
            config, images, Path(out), registry=registry, on_progress=lambda _: stamps.append(time.perf_counter())
        )
    timed = stamps[warmup:]
    rates = [1.0 / (b - a) for a, b in zip(timed, timed[1:], strict=False) if b > a]
    peak = (
        torch.cuda.max_memory_allocated()
        if device.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "mode": mode,
        "device": str(device),
        "batch_size": result.manifest["config"]["batch_size"],
        "resolution": result.manifest["resolution"],
        "mixed_precision": mixed_precision,
        "gradient_checkpointing": gradient_checkpointing,
        "timed_steps": steps,
        "steps_per_second_median": statistics.median(rates) if rates else None,
        "steps_per_second_mean": (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else None,
        "peak_memory_bytes": peak,
        # ru_maxrss only grows: on CPU later modes report the process's peak so far.
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "process max RSS so far",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-model", default="leap-tiny")
    parser.add_argument("--sd15-random", type=Path, help="build (or reuse) an SD-1.5-sized random pipeline here")
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--resolution", type=int)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", type=Path, default=Path("bench/results/trainer_speed.json"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (ignored on a GPU)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    base_model = str(build_sd15_random(args.sd15_random)) if args.sd15_random else args.base_model
    registry = load_registry()
    rows = [
        measure(
            base_model,
            mode,
            steps=args.steps,
            warmup=args.warmup,
            batch_size=args.batch_size,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=args.gradient_checkpointing,
            resolution=args.resolution,
            registry=registry,
        )
        for mode in args.modes
    ]
    print(f"{'mode':18} {'device':7} {'batch':>5} {'res':>4} {'prec':>4} {'steps/s (median)':>17} {'peak memory':>12}")
    for row in rows:
        rate = row["steps_per_second_median"]
        print(
            f"{row['mode']:18} {row['device']:7} {row['batch_size']:>5} {row['resolution']:>4} "
            f"{row['mixed_precision']:>4} {rate if rate is None else round(rate, 2)!s:>17} "
            f"{row['peak_memory_bytes'] / 2**20:>9.0f} MiB"
        )
    report = {
        "benchmark": "trainer speed",
        "base_model": "sd15-random" if args.sd15_random else args.base_model,
        "host": platform.node(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
