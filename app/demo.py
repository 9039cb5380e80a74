"""`leap demo`: the embedded service end to end, over HTTP, the way a client would use it.

Starts `leap serve`, submits the bundled sample images, follows progress live, downloads and
verifies the artifacts, then renders a before/after grid (base model vs. fine-tuned, same
prompts and seeds). The grid is the only part that imports torch, in this client process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
from rich.console import Console

from app.client import ApiError, LeapClient
from app.client.progress import follow
from app.enums import TrainingStatus
from app.settings import get_settings
from app.tenants.local_key import ensure_local_key

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "models" / "reference" / "samples"
PROMPTS = ("a photo of {token}", "a close-up picture of {token}")
SEEDS = (0, 1, 2, 3)

console = Console()


def _start_server(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _wait_ready(base_url: str, server: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError("leap serve exited; run `leap serve` to see why")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"leap serve was not ready after {timeout:.0f}s")


def _grid(base_model: str, artifacts: Path, token: str, out: Path) -> None:
    """Base model vs. fine-tuned: rows are prompts (before, after), columns are seeds."""
    import torch
    from PIL import Image, ImageDraw

    from models.registry import load_registry
    from models.trainer.base_model import load_base
    from models.trainer.evaluate import pipeline_for, sample_images

    entry = load_registry(get_settings().model_registry).get(base_model)
    if entry is None:
        raise RuntimeError(f"{base_model} is not in the model registry")
    base = load_base(entry.path, torch.device("cpu"))
    pipeline = pipeline_for(base)
    prompts = [prompt.format(token=token) for prompt in PROMPTS]
    before = sample_images(pipeline, prompts, SEEDS)
    if (artifacts / "learned_embeds.safetensors").is_file():
        pipeline.load_textual_inversion(str(artifacts / "learned_embeds.safetensors"), token=token)
    if (artifacts / "pytorch_lora_weights.safetensors").is_file():
        pipeline.load_lora_weights(str(artifacts), weight_name="pytorch_lora_weights.safetensors")
    after = sample_images(pipeline, prompts, SEEDS)

    cell, label = 128, 200
    grid = Image.new("RGB", (label + cell * len(SEEDS), cell * 2 * len(prompts)), "white")
    draw = ImageDraw.Draw(grid)
    for row_index, prompt in enumerate(prompts):
        for half, (name, images) in enumerate((("base", before), ("fine-tuned", after))):
            top = (row_index * 2 + half) * cell
            wrapped = textwrap.fill(prompt, width=30)
            draw.text((6, top + cell // 2 - 16), f"{name}:\n{wrapped}", fill="black")
            for column, image in enumerate(images[row_index * len(SEEDS) : (row_index + 1) * len(SEEDS)]):
                grid.paste(image.resize((cell, cell), Image.Resampling.NEAREST), (label + column * cell, top))
    grid.save(out)


def run_demo(*, steps: int | None, out: Path, port: int) -> int:
    """Run the demo; returns the process exit code."""
    from app.db import upgrade_database

    samples = sorted(SAMPLES_DIR.glob("*.png"))
    if len(samples) < 2:
        console.print(f"[red]no sample images in {SAMPLES_DIR}")
        return 1
    settings = get_settings()
    upgrade_database(settings)
    key = ensure_local_key(settings)
    base_url = f"http://127.0.0.1:{port}"
    console.print(f"starting the embedded service on {base_url} (data in {settings.data_dir})")
    server = _start_server(port)
    try:
        _wait_ready(base_url, server)
        with LeapClient(base_url, key) as client:
            try:
                created = client.submit(samples, steps=steps)
            except ApiError as error:
                console.print(f"[red]submission refused: {error}")
                return 1
            console.print(f"submitted {len(samples)} images: training {created.id}")
            training = follow(client, created.id, console)
            if training.status != TrainingStatus.SUCCEEDED or training.usage is None or training.started_at is None:
                console.print(f"[red]training {training.status}: {training.error}")
                return 1
            queued = (training.started_at - training.created_at).total_seconds()
            console.print(
                f"done: {training.usage.steps} steps in {training.usage.compute_seconds:.1f}s on "
                f"{training.usage.device}; init used: {training.init_used}; queued -> claimed {queued:.2f}s"
            )
            if training.init_note:
                console.print(f"  ({training.init_note})")
            folder = out / training.id
            client.download(training, folder)
            for artifact in training.artifacts:
                console.print(f"  {artifact.kind:<10} {artifact.name}  {artifact.bytes} bytes  sha256 ok")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    grid_path = out / f"{training.id}-grid.png"
    console.print("rendering before/after grid (base vs. fine-tuned, same prompts and seeds)...")
    _grid(training.base_model, folder, training.token, grid_path)
    console.print(f"artifacts: {folder}\ngrid: {grid_path}")
    return 0
