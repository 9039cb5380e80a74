"""`leap demo`: the embedded service end to end, over HTTP, the way a client would use it.

Starts `leap serve`, submits the bundled sample images, follows progress live, downloads and
verifies the artifacts (the worker's previews among them), then renders a larger before/after grid
(base model vs. fine-tuned, same prompts and seeds, more of them) with the same preview code. The
grid is the only part that imports torch, in this client process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console

from app.client import ApiError, LeapClient
from app.client.previews import preview_path
from app.client.progress import follow
from app.enums import TrainingStatus
from app.settings import get_settings
from app.tenants.local_key import ensure_local_key

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "models" / "reference" / "samples"
PROMPTS = ("a photo of {token}", "a close-up picture of {token}")
"""The grid's prompts; `{token}` is the training's token, as in preview_prompts."""
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
    """Base model vs. fine-tuned from the downloaded files: rows are prompts (before, after), columns
    are seeds; the workers' preview code at the demo's prompts, seeds and 25 sampling steps."""
    from models.previews import fill
    from models.registry import load_registry
    from models.trainer.preview import GRID_FILE, render_image_previews

    entry = load_registry(get_settings().model_registry).get(base_model)
    if entry is None:
        raise RuntimeError(f"{base_model} is not in the model registry")
    with tempfile.TemporaryDirectory() as folder:
        render_image_previews(
            entry.path,
            artifacts,
            token=token,
            prompts=fill(PROMPTS, token),
            seeds=SEEDS,
            device="cpu",
            out_dir=Path(folder),
        )
        shutil.move(Path(folder) / GRID_FILE, out)


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
            preview = preview_path(training, folder)
            if preview is not None and training.previews is not None:
                console.print(f"preview (rendered by the worker in {training.previews.seconds:.2f}s): {preview}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    console.print("rendering a larger before/after grid (base vs. fine-tuned, same prompts and seeds)...")
    grid_path = out / f"{training.id}-grid.png"
    _grid(training.base_model, folder, training.token, grid_path)
    console.print(f"artifacts: {folder}\npreview: {preview}\ngrid: {grid_path}")
    return 0
