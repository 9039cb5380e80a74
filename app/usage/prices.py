"""Billable units from the configured price table (pure functions)."""

from __future__ import annotations

import math

from app.settings import PriceTable


def device_class(device: str | None) -> str:
    """gpu, cpu, mps or unknown, from a device name such as 'cuda:NVIDIA H100' or 'cpu'."""
    name = (device or "").lower()
    if name.startswith("cuda"):
        return "gpu"
    if name.startswith(("cpu", "mps")):
        return name[:3]
    return "unknown"


def billable_units(
    prices: PriceTable,
    *,
    mode: str,
    base_model: str,
    steps: int,
    images: int,
    device_class: str | None = None,
    kind: str = "image",
    examples: int = 0,
) -> int:
    """Whole units, rounded up; a training that did nothing costs nothing. Text trainings (kind
    text) are priced from the text list: per 1000 steps by mode, plus per example."""
    if kind == "text":
        rate = prices.text_units_per_1000_steps.get(mode, 0.0)
        per_input = examples * prices.units_per_text_example
    else:
        rate = prices.units_per_1000_steps.get(mode, 0.0)
        per_input = images * prices.units_per_image
    multiplier = prices.base_model_multiplier.get(base_model, 1.0)
    if device_class is not None:
        multiplier *= prices.device_class_multiplier.get(device_class, 1.0)
    raw = steps / 1000 * rate * multiplier + (per_input if steps > 0 else 0.0)
    # Rounded first so that float noise (e.g. 4.000000000001) does not cost a whole unit.
    return math.ceil(round(raw, 6))
