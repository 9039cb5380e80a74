"""A stand-in for models.trainer.train.train with the same signature, for worker mechanics tests
(leases, progress, cancel, crashes) that must be fast and deterministic. The end-to-end test
uses the real trainer. Behaviour is chosen by the token:
  <oom>   raises OutOfMemory after a step       <crash>  raises an unexpected error
  <slow>  0.1 s per step (cancel, crash tests)  anything else: 0.01 s per step
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from models.trainer.config import Artifact, Progress, TrainConfig, TrainResult
from models.trainer.errors import OutOfMemory, TrainingCanceled


def _write(path: Path, data: bytes, kind: str) -> Artifact:
    path.write_bytes(data)
    return Artifact(name=path.name, kind=kind, path=path, bytes=len(data), sha256=hashlib.sha256(data).hexdigest())


def train(
    config: TrainConfig,
    images: Sequence[Image.Image],
    out_dir: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    steps = config.steps or 10
    delay = 0.1 if config.token == "<slow>" else 0.01
    started = time.monotonic()
    for step in range(1, steps + 1):
        if should_stop is not None and should_stop():
            raise TrainingCanceled(f"stopped at step {step - 1}")
        time.sleep(delay)
        if config.token == "<oom>":
            raise OutOfMemory("out of GPU memory at batch size 4")
        if config.token == "<crash>":
            raise RuntimeError("boom")
        if on_progress is not None:
            on_progress(Progress(step=step, total=steps, loss=1.0 / step, eta_s=(steps - step) * delay))
    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts = [
        _write(
            out_dir / "learned_embeds.safetensors",
            f"embedding {config.token} {len(images)}".encode(),
            "embedding",
        ),
        _write(out_dir / "pytorch_lora_weights.safetensors", b"lora" * 64, "lora"),
    ]
    manifest = {"token": config.token, "steps": steps, "images": len(images)}
    artifacts.append(_write(out_dir / "manifest.json", json.dumps(manifest).encode(), "manifest"))
    return TrainResult(
        out_dir=out_dir,
        artifacts=artifacts,
        manifest=manifest,
        steps=steps,
        init_used="token",
        device="cpu",
        compute_seconds=time.monotonic() - started,
        losses=[],
    )
