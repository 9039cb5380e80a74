"""The real trainer with two faults injected, for the worker's failure-handling tests only.

Selected like any trainer, with LEAP_TRAINER=tests.service.fault_injection:train. Every token but
the two below trains leap-tiny for real. The faults are injected because they cannot be produced
for real here:
  <oom>    torch.cuda.OutOfMemoryError after the first step: there is no GPU on the test machines to
           exhaust. It is raised inside the real loop, so the trainer's own translation to
           OutOfMemory (and the worker's out_of_memory code) is what gets tested.
  <crash>  a RuntimeError after the first step: an unexpected bug cannot be caused on purpose.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from models.trainer.config import Progress, TrainConfig, TrainResult
from models.trainer.train import train as real_train


def _out_of_memory() -> BaseException:
    return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def _crash() -> BaseException:
    return RuntimeError("boom")


FAULTS: dict[str, Callable[[], BaseException]] = {"<oom>": _out_of_memory, "<crash>": _crash}


def train(
    config: TrainConfig,
    images: Sequence[Image.Image],
    out_dir: Path,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """models.trainer.train.train, raising the token's fault from inside the loop after a step."""
    fault = FAULTS.get(config.token)
    if fault is None:
        return real_train(config, images, out_dir, on_progress=on_progress, should_stop=should_stop, **kwargs)

    def progress_then_fault(progress: Progress) -> None:
        if on_progress is not None:
            on_progress(progress)
        raise fault()

    return real_train(config, images, out_dir, on_progress=progress_then_fault, should_stop=should_stop, **kwargs)
