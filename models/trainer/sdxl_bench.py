"""SDXL trainer speed and memory on a GPU: pivotal at 1024 px in bf16, batch 1 and 4, with and
without gradient checkpointing, through the real `train()` on an SDXL-sized pipeline with random
weights (models.trainer.sdxl_random: the 2.6B-parameter UNet, CLIP ViT-L and OpenCLIP bigG).

    python -m models.trainer.sdxl_bench --pipeline /tmp/sdxl --json bench/results/trainer_speed_sdxl_bf16.json

Each configuration runs `--warmup` steps, then `--steps` timed ones (models.trainer.bench.measure:
steps/s is the median of per-step rates; pivotal's two phases each take half the steps). Peak memory
is torch.cuda.max_memory_allocated() of the whole job (the frozen weights included), reset before
each configuration. A configuration that runs out of memory is recorded as such.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path

import torch

from models.registry import load_registry
from models.trainer.bench import measure
from models.trainer.errors import OutOfMemory
from models.trainer.sdxl_random import build_sdxl_random


def parameter_counts(pipeline: Path) -> dict[str, int]:
    """Parameters of the saved UNet and text encoders (read from the safetensors headers)."""
    from safetensors import safe_open

    counts = {}
    for part in ("unet", "text_encoder", "text_encoder_2"):
        total = 0
        for file in sorted((pipeline / part).glob("*.safetensors")):
            with safe_open(str(file), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is no mapping
                    total += _numel(handle.get_slice(key).get_shape())
        counts[part] = total
    return counts


def _numel(shape: list[int]) -> int:
    total = 1
    for side in shape:
        total *= side
    return total


def run_matrix(
    pipeline: Path, *, batch_sizes: list[int], checkpointing: list[bool], steps: int, warmup: int, resolution: int
) -> list[dict]:
    """One row per (gradient checkpointing, batch size): pivotal, bf16."""
    registry = load_registry()
    rows = []
    for gradient_checkpointing in checkpointing:
        for batch_size in batch_sizes:
            started = time.perf_counter()
            try:
                row = measure(
                    str(pipeline),
                    "pivotal",
                    steps=steps,
                    warmup=warmup,
                    batch_size=batch_size,
                    mixed_precision="bf16",
                    gradient_checkpointing=gradient_checkpointing,
                    resolution=resolution,
                    registry=registry,
                )
            except OutOfMemory as error:
                row = {
                    "mode": "pivotal",
                    "batch_size": batch_size,
                    "resolution": resolution,
                    "mixed_precision": "bf16",
                    "gradient_checkpointing": gradient_checkpointing,
                    "error": error.message,
                    "peak_memory_bytes": torch.cuda.max_memory_allocated(),
                }
                torch.cuda.empty_cache()
            row["wall_seconds"] = round(time.perf_counter() - started, 1)
            row["peak_memory_gib"] = round(row["peak_memory_bytes"] / 2**30, 2)
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", type=Path, default=Path("/tmp/sdxl"), help="built here unless it exists")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--checkpointing", choices=("off", "on", "both"), default="both")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--json", type=Path, default=Path("bench/results/trainer_speed_sdxl_bf16.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU (the pipeline is SDXL-sized)")
    started = time.perf_counter()
    build_sdxl_random(args.pipeline, device="cuda")
    built_seconds = time.perf_counter() - started
    gc.collect()  # the built pipeline's modules: freed before the jobs' memory is measured
    torch.cuda.empty_cache()
    checkpointing = {"off": [False], "on": [True], "both": [False, True]}[args.checkpointing]
    rows = run_matrix(
        args.pipeline,
        batch_sizes=args.batch_sizes,
        checkpointing=checkpointing,
        steps=args.steps,
        warmup=args.warmup,
        resolution=args.resolution,
    )
    report = {
        "benchmark": "trainer speed, SDXL-sized random weights",
        "base_model": "sdxl-random",
        "parameters": parameter_counts(args.pipeline),
        "pipeline_build_seconds": round(built_seconds, 1),
        "host": platform.node(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        "results": rows,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
